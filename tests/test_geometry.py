"""Camera model, back-projection and rigid transforms, checked against Open3D and closed-form geometry."""
from __future__ import annotations

import numpy as np
import pytest

from ov3d_ros.geometry import (
    CameraModel,
    backproject,
    check_rigid,
    invert_rigid,
    project,
    transform_points,
)

CAMERA = CameraModel(width=64, height=48, fx=52.5, fy=51.0, cx=31.7, cy=23.2)


def rotation(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    skew = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def pose(axis=(0.3, -1.0, 0.4), angle=0.7, t=(1.5, -0.4, 2.2)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation(axis, angle)
    T[:3, 3] = t
    return T


def random_rgbd(camera: CameraModel, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Depth in (0.3, 6) m with every kind of invalid pixel, and a random colour image."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.3, 6.0, (camera.height, camera.width)).astype(np.float32)
    flat = depth.reshape(-1)
    picks = rng.choice(flat.size, 40, replace=False)
    flat[picks[:10]] = 0.0
    flat[picks[10:20]] = np.nan
    flat[picks[20:30]] = np.inf
    flat[picks[30:]] = 9.0  # beyond max_depth in the tests below
    color = rng.integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
    return depth, color


# ----------------------------------------------------------------------------------------------------------------------
# CameraModel
# ----------------------------------------------------------------------------------------------------------------------
def test_camera_K_and_from_K_round_trip():
    K = CAMERA.K
    assert K.dtype == np.float64
    np.testing.assert_array_equal(K, [[52.5, 0, 31.7], [0, 51.0, 23.2], [0, 0, 1]])
    assert CameraModel.from_K(K, 64, 48) == CAMERA
    K4 = np.eye(4)
    K4[:3, :3] = K
    assert CameraModel.from_K(K4, 64, 48) == CAMERA  # ScanNet intrinsic_depth.txt layout


@pytest.mark.parametrize("K, match", [
    (np.zeros((3, 3)), "singular"),
    (np.array([[500.0, 0, 320], [0, 0.0, 240], [0, 0, 1]]), "singular"),
    (np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 2]]), "last row"),
    (np.array([[500.0, 3.0, 320], [0, 500, 240], [0, 0, 1]]), "skew"),
    (np.eye(2), "3x3"),
    (np.array([[np.nan, 0, 1], [0, 1, 1], [0, 0, 1]]), "non-finite"),
])
def test_camera_from_bad_K_raises(K, match):
    with pytest.raises(ValueError, match=match):
        CameraModel.from_K(K, 640, 480)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(width=0), ValueError, "width"),
    (dict(height=-3), ValueError, "height"),
    (dict(fx=0.0), ValueError, "fx"),
    (dict(fy=-1.0), ValueError, "fy"),
    (dict(cx=np.nan), ValueError, "cx"),
    (dict(width=64.5), TypeError, "width"),
])
def test_camera_validation(kwargs, error, match):
    args = dict(width=64, height=48, fx=50.0, fy=50.0, cx=32.0, cy=24.0) | kwargs
    with pytest.raises(error, match=match):
        CameraModel(**args)


def test_camera_scaled_keeps_rays_through_pixel_centres():
    # The same world point seen at full and half resolution lands on pixels whose centres cover the same area:
    # u_half + 0.5 = (u_full + 0.5) / 2.
    half = CAMERA.scaled(0.5)
    assert (half.width, half.height) == (32, 24)
    pts = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 3.0], [0.0, 0.0, 1.0]])
    uv_full, _ = project(pts, CAMERA, np.eye(4))
    uv_half, _ = project(pts, half, np.eye(4))
    np.testing.assert_allclose(uv_half + 0.5, (uv_full + 0.5) / 2, atol=1e-12)
    with pytest.raises(ValueError, match="factor"):
        CAMERA.scaled(0.0)


# ----------------------------------------------------------------------------------------------------------------------
# Rigid transforms
# ----------------------------------------------------------------------------------------------------------------------
def test_check_rigid_accepts_pose_and_returns_float64():
    T = pose().astype(np.float32)
    out = check_rigid(T)
    assert out.dtype == np.float64 and out.shape == (4, 4)
    np.testing.assert_array_equal(out, T.astype(np.float64))


def _bad_poses():
    scaled = pose()
    scaled[:3, :3] *= 1.1
    shear = pose()
    shear[0, 1] += 0.05
    reflection = pose()
    reflection[:3, 0] *= -1  # orthonormal, det = -1
    last_row = pose()
    last_row[3] = [0, 0, 1, 1]
    nan = pose()
    nan[1, 3] = np.nan
    return [(scaled, "orthonormal"), (shear, "orthonormal"), (reflection, "det"), (last_row, "last row"),
            (nan, "non-finite"), (np.eye(3), "4x4")]


@pytest.mark.parametrize("T, match", _bad_poses())
def test_check_rigid_names_the_problem(T, match):
    with pytest.raises(ValueError, match=match):
        check_rigid(T, "T_world_cam")
    with pytest.raises(ValueError, match="T_world_cam"):
        check_rigid(T, "T_world_cam")


def test_invert_and_transform_points():
    T = pose()
    T_inv = invert_rigid(T)
    np.testing.assert_allclose(T_inv @ T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(T_inv, np.linalg.inv(T), atol=1e-12)
    pts = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    moved = transform_points(T, pts)
    assert moved.dtype == np.float32
    expected = pts.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(moved, expected, atol=1e-5)
    np.testing.assert_allclose(transform_points(T_inv, moved), pts, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        transform_points(T, pts[:, :2])


def test_project_inverts_backproject_and_flags_points_behind():
    depth, _ = random_rgbd(CAMERA)
    T = pose()
    bp = backproject(depth, CAMERA, T, min_depth=0.1, max_depth=8.0)
    uv, z = project(bp.xyz, CAMERA, T)
    np.testing.assert_allclose(uv, bp.pixels, atol=2e-4)  # float32 points at up to ~8 m
    rows, cols = bp.pixels[:, 1], bp.pixels[:, 0]
    np.testing.assert_allclose(z, depth[rows, cols], rtol=1e-6)
    behind = transform_points(T, np.array([[0.0, 0.0, -1.0], [0.2, 0.1, 2.0]]))
    uv, z = project(behind, CAMERA, T)
    assert np.all(np.isnan(uv[0])) and z[0] == pytest.approx(-1.0)
    np.testing.assert_allclose(uv[1], [CAMERA.fx * 0.1 + CAMERA.cx, CAMERA.fy * 0.05 + CAMERA.cy])


# ----------------------------------------------------------------------------------------------------------------------
# Back-projection
# ----------------------------------------------------------------------------------------------------------------------
def test_backproject_plane_closed_form():
    # A fronto-parallel plane at z = 2 m: x = (u - cx) z / fx, y = (v - cy) z / fy exactly.
    depth = np.full((CAMERA.height, CAMERA.width), 2.0, dtype=np.float32)
    bp = backproject(depth, CAMERA)
    v, u = np.mgrid[0:CAMERA.height, 0:CAMERA.width]
    expected = np.stack([(u - CAMERA.cx) * 2 / CAMERA.fx, (v - CAMERA.cy) * 2 / CAMERA.fy,
                         np.full(u.shape, 2.0)], axis=-1).reshape(-1, 3)
    assert bp.xyz.dtype == np.float32 and bp.rgb.dtype == np.uint8 and bp.pixels.dtype == np.int32
    np.testing.assert_allclose(bp.xyz, expected, atol=1e-6)
    np.testing.assert_array_equal(bp.pixels, np.stack([u, v], axis=-1).reshape(-1, 2))  # row-major (u, v)
    np.testing.assert_array_equal(bp.rgb, 0)


def test_backproject_drops_invalid_and_keeps_pixel_and_colour():
    depth, color = random_rgbd(CAMERA)
    bp = backproject(depth, CAMERA, None, color, min_depth=0.5, max_depth=8.0)
    rows, cols = bp.pixels[:, 1], bp.pixels[:, 0]
    d = depth[rows, cols]
    assert np.all(np.isfinite(d)) and np.all((d >= 0.5) & (d <= 8.0))
    expected_valid = np.isfinite(depth) & (depth >= 0.5) & (depth <= 8.0)
    assert len(bp.xyz) == int(expected_valid.sum())
    np.testing.assert_array_equal(bp.rgb, color[rows, cols])
    np.testing.assert_allclose(bp.xyz[:, 2], d)


def test_backproject_stride_subsamples_the_full_result():
    depth, color = random_rgbd(CAMERA, seed=3)
    full = backproject(depth, CAMERA, pose(), color, max_depth=8.0)
    strided = backproject(depth, CAMERA, pose(), color, max_depth=8.0, stride=3)
    on_grid = (full.pixels[:, 0] % 3 == 0) & (full.pixels[:, 1] % 3 == 0)
    np.testing.assert_array_equal(strided.pixels, full.pixels[on_grid])
    np.testing.assert_array_equal(strided.xyz, full.xyz[on_grid])
    np.testing.assert_array_equal(strided.rgb, full.rgb[on_grid])


def test_backproject_is_the_same_in_parts_and_from_views_of_larger_images():
    """The compiled loop writes each row's points where the counts of the rows before put them: any number of parts
    gives the same points, bit for bit; images that are views (strided, or a channel-reversed colour) read the same
    pixels; no limit on the depth still drops inf and NaN."""
    from ov3d_ros.pixel_kernels import backproject_pixels

    depth, color = random_rgbd(CAMERA, seed=5)
    depth[3, :7] = np.inf
    reference = backproject(depth, CAMERA, pose(), color, min_depth=0.0, max_depth=np.inf)
    assert len(reference.xyz) == int((np.isfinite(depth) & (depth > 0)).sum()) and np.isfinite(reference.xyz).all()
    sub_w, sub_h = CAMERA.width, CAMERA.height
    ray_x = ((np.arange(sub_w) - CAMERA.cx) / CAMERA.fx).astype(np.float32)
    ray_y = ((np.arange(sub_h) - CAMERA.cy) / CAMERA.fy).astype(np.float32)
    to_world = np.concatenate([pose()[:3, :3].T, pose()[None, :3, 3]]).astype(np.float32)
    for threads in (1, 2, 3, 7):
        xyz, rgb, pixels = backproject_pixels(depth, 0.0, 1, 0.0, np.inf, ray_x, ray_y, to_world, color, threads)
        np.testing.assert_array_equal(xyz, reference.xyz)
        np.testing.assert_array_equal(rgb, reference.rgb)
        np.testing.assert_array_equal(pixels, reference.pixels)
    wide = np.zeros((CAMERA.height, 2 * CAMERA.width), np.float32)
    wide[:, ::2] = depth
    bgr = np.ascontiguousarray(color[:, :, ::-1])
    viewed = backproject(wide[:, ::2], CAMERA, pose(), bgr[:, :, ::-1], min_depth=0.0, max_depth=np.inf, stride=2)
    strided = backproject(depth, CAMERA, pose(), color, min_depth=0.0, max_depth=np.inf, stride=2)
    for got, want in zip(viewed, strided):
        np.testing.assert_array_equal(got, want)
    no_color = backproject(depth, CAMERA, pose(), None, min_depth=0.0, max_depth=np.inf)
    np.testing.assert_array_equal(no_color.xyz, reference.xyz)
    assert not no_color.rgb.any()


def test_backproject_uint16_millimetres_equals_float_metres():
    rng = np.random.default_rng(4)
    depth_mm = rng.integers(0, 7000, (CAMERA.height, CAMERA.width)).astype(np.uint16)
    depth_mm[0, :5] = 0  # the sensor's "no return"
    from_mm = backproject(depth_mm, CAMERA, pose(), depth_scale=1000.0)
    from_m = backproject((depth_mm / 1000.0).astype(np.float32), CAMERA, pose())
    np.testing.assert_array_equal(from_mm.pixels, from_m.pixels)
    np.testing.assert_allclose(from_mm.xyz, from_m.xyz, atol=1e-6)
    # Default limits: 0.1 m <= d <= 10 m, i.e. 100..10000 mm; 0 is never a point.
    assert len(from_mm.xyz) == int(np.count_nonzero(depth_mm >= 100))
    assert np.all(depth_mm[from_mm.pixels[:, 1], from_mm.pixels[:, 0]] >= 100)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["float32", "uint16"])
def test_backproject_matches_open3d(kind, stride):
    import open3d as o3d  # the reference implementation
    camera = CameraModel(width=160, height=120, fx=131.0, fy=129.5, cx=80.3, cy=58.9)
    depth, color = random_rgbd(camera, seed=7)
    T = pose()
    max_depth = 7.5  # no pixel sits exactly on it: Open3D truncates at >= depth_trunc, we keep <= max_depth
    if kind == "uint16":
        depth_in = np.where(np.isfinite(depth), np.minimum(depth, 60.0) * 1000.0, 0.0).astype(np.uint16)
        o3d_scale = 1000.0
    else:
        depth_in = depth
        o3d_scale = 1.0  # Open3D divides float depth by depth_scale too
    ours = backproject(depth_in, camera, T, color, depth_scale=1000.0, min_depth=0.0, max_depth=max_depth,
                       stride=stride)

    # Open3D has no stride here: give it the subsampled images and the intrinsics of that pixel grid
    # (column c of the subsampled image is pixel u = c * stride of ours).
    o3d_depth = np.ascontiguousarray(depth_in[::stride, ::stride])
    o3d_color = np.ascontiguousarray(color[::stride, ::stride])
    cam_used = CameraModel(width=o3d_depth.shape[1], height=o3d_depth.shape[0], fx=camera.fx / stride,
                           fy=camera.fy / stride, cx=camera.cx / stride, cy=camera.cy / stride)
    rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(o3d_color), o3d.geometry.Image(o3d_depth), depth_scale=o3d_scale, depth_trunc=max_depth,
        convert_rgb_to_intensity=False)
    intrinsic = o3d.camera.PinholeCameraIntrinsic(cam_used.width, cam_used.height, cam_used.fx, cam_used.fy,
                                                  cam_used.cx, cam_used.cy)
    # Open3D's extrinsic is world-to-camera: the inverse of our camera-to-world pose.
    ref = o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intrinsic, invert_rigid(T))
    ref_xyz = np.asarray(ref.points)
    ref_rgb = np.rint(np.asarray(ref.colors) * 255).astype(np.uint8)
    # Both walk the valid pixels in row-major order, so the point lists line up one to one.
    assert len(ours.xyz) == len(ref_xyz) > 0.8 * o3d_depth.size
    np.testing.assert_allclose(ours.xyz, ref_xyz, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ours.rgb, ref_rgb)


@pytest.mark.parametrize("depth, color, error, match", [
    (np.ones((48, 64), np.float32), np.zeros((40, 64, 3), np.uint8), ValueError, "size"),
    (np.ones((48, 64), np.float32), np.zeros((48, 64, 3), np.float64), TypeError, "uint8"),
    (np.ones((48, 64), np.float32), np.zeros((48, 64), np.uint8), ValueError, "H, W, 3"),
    (np.ones((48, 64), np.int32), None, TypeError, "int32"),
    (np.ones((48, 64), np.float64), None, TypeError, "float64"),
    (np.ones((40, 64), np.float32), None, ValueError, "camera"),
    (np.ones((48, 64, 1), np.float32), None, ValueError, "2-D"),
])
def test_backproject_rejects_bad_images(depth, color, error, match):
    with pytest.raises(error, match=match):
        backproject(depth, CAMERA, None, color)


def test_backproject_rejects_bad_arguments():
    depth = np.ones((48, 64), np.float32)
    with pytest.raises(ValueError, match="orthonormal"):
        backproject(depth, CAMERA, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="stride"):
        backproject(depth, CAMERA, stride=0)
    with pytest.raises(ValueError, match="min_depth"):
        backproject(depth, CAMERA, min_depth=3.0, max_depth=1.0)
    with pytest.raises(ValueError, match="depth_scale"):
        backproject(depth.astype(np.uint16), CAMERA, depth_scale=0.0)
    with pytest.raises(TypeError, match="CameraModel"):
        backproject(depth, CAMERA.K)


def test_quaternion_round_trip_and_rejects_zero():
    from ov3d_ros.geometry import matrix_to_quaternion, quaternion_to_matrix

    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = -q if q[3] < 0 else q
        R = quaternion_to_matrix(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(matrix_to_quaternion(R), q, atol=1e-12)
    # A 90 degree turn about +z (x, y, z, w order) sends x to y.
    np.testing.assert_allclose(quaternion_to_matrix([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)]) @ [1, 0, 0],
                               [0, 1, 0], atol=1e-12)
    with pytest.raises(ValueError, match="not a rotation"):
        quaternion_to_matrix([0, 0, 0, 0])


def test_slerp_is_the_constant_speed_turn_between_two_rotations():
    from ov3d_ros.geometry import quaternion_to_matrix, slerp

    q0 = np.array([0, 0, 0, 1.0])
    q1 = np.array([0, 0, np.sin(0.6), np.cos(0.6)])  # 1.2 rad about z
    for a in (0.0, 0.25, 0.5, 1.0):
        R = quaternion_to_matrix(slerp(q0, q1, a))
        assert np.arctan2(R[1, 0], R[0, 0]) == pytest.approx(1.2 * a)
    # -q is the same rotation: slerp takes the short way, not a 2*pi - 1.2 rad turn.
    R = quaternion_to_matrix(slerp(q0, -q1, 0.5))
    assert np.arctan2(R[1, 0], R[0, 0]) == pytest.approx(0.6)
