"""Frames, partial clouds, the voxel map and point matching, on scenes whose geometry is known in closed form."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ov3d_ros.cloud import PointCloud
from ov3d_ros.fusion import PartialCloud, RGBDFrame, SurfaceConfig, VoxelMap, make_partial_cloud
from ov3d_ros.matching import match_points
from ov3d_ros.geometry import CameraModel, project

torch.set_num_threads(1)

CAMERA = CameraModel(width=160, height=120, fx=120.0, fy=120.0, cx=79.5, cy=59.5)

# A closed room of about 4 x 4 x 3 m with a box standing on the floor: every view's depth is exact ray casting. The
# surfaces sit off the voxel grids used below, so no surface straddles a voxel boundary by accident.
ROOM_LO, ROOM_HI = np.array([-0.013, -0.027, -0.011]), np.array([4.012, 3.987, 2.993])
BOX_LO, BOX_HI = np.array([1.713, 1.608, -0.011]), np.array([2.517, 2.291, 1.106])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world pose of a REP 103 optical camera at ``eye`` looking at ``target`` (z forward, y down)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def surface_color(p: np.ndarray) -> np.ndarray:
    """A colour that is a function of the world point, so every view agrees on it."""
    cell = np.floor(p / 0.25).astype(np.int64)
    checker = (cell.sum(axis=1) % 2).astype(np.float64)
    rgb = np.stack([60 + 150 * checker, 40 + 50 * (p[:, 2] / 3.0), 200 - 120 * checker], axis=1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render(T_world_cam: np.ndarray, camera: CameraModel = CAMERA, box: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact depth (float32 metres along the optical axis) and colour of the room seen from ``T_world_cam``
    (``box`` False: the room with its box taken away)."""
    v, u = np.mgrid[0:camera.height, 0:camera.width]
    rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones(u.shape)], -1).reshape(-1, 3)
    dirs = rays @ T_world_cam[:3, :3].T  # unit optical-axis component, so the ray parameter t is the depth
    eye = T_world_cam[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo, t_hi = (ROOM_LO - eye) / dirs, (ROOM_HI - eye) / dirs
        t_room = np.nanmin(np.where(dirs > 0, t_hi, np.where(dirs < 0, t_lo, np.inf)), axis=1)
        b_lo, b_hi = (BOX_LO - eye) / dirs, (BOX_HI - eye) / dirs
        t_near = np.max(np.minimum(b_lo, b_hi), axis=1)
        t_far = np.min(np.maximum(b_lo, b_hi), axis=1)
    hits_box = (t_near <= t_far) & (t_near > 0) & box
    t = np.where(hits_box, np.minimum(t_near, t_room), t_room)
    points = eye + t[:, None] * dirs
    depth = t.reshape(camera.height, camera.width).astype(np.float32)
    color = surface_color(points).reshape(camera.height, camera.width, 3)
    return depth, color


def frame_at(eye, target, index=0, camera: CameraModel = CAMERA, box: bool = True) -> RGBDFrame:
    T = look_at(eye, target)
    depth, color = render(T, camera, box)
    return RGBDFrame(color=color, depth=depth, camera=camera, T_world_cam=T, index=index, stamp=index / 30)


VIEW_A = ((0.4, 0.5, 1.6), (3.0, 3.2, 0.6))
VIEW_B = ((1.1, 0.3, 1.4), (3.4, 2.6, 0.9))
VIEW_FAR = ((3.6, 3.6, 1.5), (0.5, 0.5, 1.0))  # looks back at the walls behind A and B


# ----------------------------------------------------------------------------------------------------------------------
# RGBDFrame / PartialCloud
# ----------------------------------------------------------------------------------------------------------------------
def test_rendered_scene_lies_on_the_room_surfaces():
    # The fixture itself: every back-projected point is on a wall/floor/ceiling or on the box surface.
    partial = make_partial_cloud(frame_at(*VIEW_A), max_depth=20.0)
    p = partial.xyz.astype(np.float64)
    on_room = np.min(np.abs(np.concatenate([p - ROOM_LO, p - ROOM_HI], axis=1)), axis=1) < 1e-4
    inside_box = np.all((p > BOX_LO - 1e-4) & (p < BOX_HI + 1e-4), axis=1)
    on_box = inside_box & (np.min(np.abs(np.concatenate([p - BOX_LO, p - BOX_HI], axis=1)), axis=1) < 1e-4)
    assert np.all(on_room | on_box) and on_box.sum() > 100


def test_make_partial_cloud_fields():
    frame = frame_at(*VIEW_A, index=7)
    partial = make_partial_cloud(frame, max_depth=20.0, stride=2)
    assert isinstance(partial, PartialCloud)
    assert partial.index == 7 and partial.stride == 2 and partial.camera == CAMERA
    np.testing.assert_array_equal(partial.T_world_cam, frame.T_world_cam)
    assert len(partial) == (CAMERA.width // 2) * (CAMERA.height // 2)  # closed room: every pixel is valid
    u, v = partial.pixels[:, 0], partial.pixels[:, 1]
    assert np.all(u % 2 == 0) and np.all(v % 2 == 0)
    np.testing.assert_array_equal(partial.rgb, frame.color[v, u])
    uv, z = project(partial.xyz, CAMERA, frame.T_world_cam)
    np.testing.assert_allclose(uv, partial.pixels, atol=1e-3)
    np.testing.assert_allclose(z, frame.depth[v, u], rtol=1e-6)
    np.testing.assert_allclose(partial.camera_center, VIEW_A[0])

    cloud = partial.to_cloud("odom")
    assert isinstance(cloud, PointCloud) and cloud.frame_id == "odom" and cloud.extras["frame_index"] == 7
    np.testing.assert_array_equal(cloud.xyz, partial.xyz)
    np.testing.assert_array_equal(cloud.rgb, partial.rgb)


def test_make_partial_cloud_uint16_depth_scale():
    frame = frame_at(*VIEW_A)
    depth_mm = np.rint(frame.depth * 4000.0).astype(np.uint16)  # e.g. a 0.25 mm sensor: 4000 units per metre
    metric = make_partial_cloud(frame, max_depth=20.0)
    scaled = make_partial_cloud(RGBDFrame(frame.color, depth_mm, CAMERA, frame.T_world_cam, depth_scale=4000.0),
                                max_depth=20.0)
    np.testing.assert_array_equal(scaled.pixels, metric.pixels)
    np.testing.assert_allclose(scaled.xyz, metric.xyz, atol=5e-4)  # quantisation: 0.125 mm along a ray


def _good_frame_kwargs():
    frame = frame_at(*VIEW_A)
    return dict(color=frame.color, depth=frame.depth, camera=CAMERA, T_world_cam=frame.T_world_cam)


@pytest.mark.parametrize("change, error, match", [
    (dict(color=np.zeros((100, 160, 3), np.uint8)), ValueError, "size"),
    (dict(depth=np.ones((120, 150), np.float32)), ValueError, "size"),
    (dict(color=np.zeros((120, 160, 3), np.float64)), TypeError, "uint8"),
    (dict(depth=np.ones((120, 160), np.int32)), TypeError, "int32"),
    (dict(depth=np.ones((120, 160), np.float64)), TypeError, "float64"),
    (dict(T_world_cam=np.diag([1.0, 1.0, 1.0, 2.0])), ValueError, "last row"),
    (dict(T_world_cam=np.diag([1.0, 1.0, -1.0, 1.0])), ValueError, "det"),
    (dict(T_world_cam=np.diag([1.0, 2.0, 1.0, 1.0])), ValueError, "orthonormal"),
    (dict(camera=CameraModel(320, 240, 100.0, 100.0, 160.0, 120.0)), ValueError, "camera"),
    (dict(depth_scale=0.0), ValueError, "depth_scale"),
])
def test_frame_validate_names_the_problem(change, error, match):
    frame = RGBDFrame(**(_good_frame_kwargs() | change))
    with pytest.raises(error, match=match):
        frame.validate()
    with pytest.raises(error, match=match):
        make_partial_cloud(frame)


def test_dtype_errors_are_also_value_errors():
    # The architecture promises ValueError from validate(); dtype problems are TypeErrors too.
    frame = RGBDFrame(**(_good_frame_kwargs() | dict(depth=np.ones((120, 160), np.int32))))
    with pytest.raises(ValueError):
        frame.validate()


# ----------------------------------------------------------------------------------------------------------------------
# VoxelMap
# ----------------------------------------------------------------------------------------------------------------------
def reference_fusion(clouds, voxel_size: float) -> dict[tuple, dict]:
    """Independent per-voxel reference with plain Python dictionaries: float64 sums of points and colours."""
    voxels: dict[tuple, dict] = {}
    for cloud in clouds:
        keys = np.floor(cloud.xyz.astype(np.float64) / voxel_size).astype(np.int64)
        for key, p, c in zip(map(tuple, keys), cloud.xyz.astype(np.float64), cloud.rgb.astype(np.int64)):
            entry = voxels.setdefault(key, {"n": 0, "p": np.zeros(3), "c": np.zeros(3, np.int64)})
            entry["n"] += 1
            entry["p"] += p
            entry["c"] += c
    return voxels


def voxel_indices(vmap: VoxelMap) -> np.ndarray:
    """(M, 3) integer voxel indices of the map's voxels, in its export order."""
    return np.floor(vmap.voxel_centers().cpu().numpy() / vmap.voxel_size).astype(np.int64)


def simple_cloud(xyz, rgb, T=None, index=0) -> PartialCloud:
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    return PartialCloud(xyz=xyz, rgb=rgb, pixels=np.zeros((len(xyz), 2), np.int32), index=index,
                        T_world_cam=np.eye(4) if T is None else T, camera=CAMERA)


def test_voxel_map_matches_reference_means_and_counts():
    rng = np.random.default_rng(0)
    clouds = [simple_cloud(rng.uniform(-0.3, 0.3, (3000, 3)), rng.integers(0, 256, (3000, 3)), index=i)
              for i in range(3)]
    vmap = VoxelMap(voxel_size=0.05)
    for cloud in clouds:
        vmap.integrate(cloud)
    ref = reference_fusion(clouds, 0.05)
    out = vmap.to_cloud()
    assert len(vmap) == len(out) == len(ref)
    keys = voxel_indices(vmap)
    assert {tuple(k) for k in keys} == set(ref)
    n = np.array([ref[tuple(k)]["n"] for k in keys])
    mean_p = np.array([ref[tuple(k)]["p"] for k in keys]) / n[:, None]
    mean_c = np.array([ref[tuple(k)]["c"] for k in keys]) / n[:, None]
    np.testing.assert_array_equal(out.extras["count"], n)
    np.testing.assert_allclose(out.xyz, mean_p, atol=2e-6)  # 1 um rounding per point + float32 output
    assert np.max(np.abs(out.rgb - mean_c)) <= 0.5 + 1e-9  # the mean colour, rounded
    seen_by = [{tuple(q) for q in np.floor(c.xyz.astype(np.float64) / 0.05).astype(np.int64)} for c in clouds]
    frames_seen = np.array([sum(tuple(k) in seen for seen in seen_by) for k in keys])
    np.testing.assert_array_equal(out.extras["frames"], frames_seen)
    np.testing.assert_array_equal(out.extras["last_seen"], [max(i + 1 for i, seen in enumerate(seen_by)
                                                                if tuple(k) in seen) for k in keys])


def test_voxel_map_running_mean_colour_and_position():
    vmap = VoxelMap()  # default 2 cm voxels
    assert vmap.voxel_size == 0.02
    vmap.integrate(simple_cloud([[0.001, 0.001, 0.001]], [[10, 20, 30]]))
    vmap.integrate(simple_cloud([[0.003, 0.005, 0.019], [0.019, 0.002, 0.010]], [[40, 50, 60], [100, 0, 255]]))
    vmap.integrate(simple_cloud([[0.030, 0.0, 0.0]], [[1, 2, 3]]))
    out = vmap.to_cloud()
    assert len(vmap) == 2
    np.testing.assert_array_equal(out.extras["count"], [3, 1])
    np.testing.assert_array_equal(out.extras["frames"], [2, 1])
    np.testing.assert_array_equal(out.extras["last_seen"], [2, 3])
    np.testing.assert_allclose(out.xyz[0], [0.023 / 3, 0.008 / 3, 0.030 / 3], atol=1e-7)
    np.testing.assert_array_equal(out.rgb[0], [50, 23, 115])  # (150, 70, 345) / 3 rounded half up
    np.testing.assert_array_equal(out.rgb[1], [1, 2, 3])


def test_voxel_map_integrates_rendered_frames_like_the_reference():
    frames = [frame_at(*VIEW_A, index=0), frame_at(*VIEW_B, index=1)]
    partials = [make_partial_cloud(f, max_depth=20.0, stride=2) for f in frames]
    vmap = VoxelMap(voxel_size=0.1, surface=None)  # running means (the surface step: the tests further down)
    for p in partials:
        vmap.integrate(p)
    ref = reference_fusion(partials, 0.1)
    out = vmap.to_cloud()
    assert len(out) == len(ref)
    assert int(out.extras["count"].sum()) == sum(len(p) for p in partials)
    keys = voxel_indices(vmap)
    mean_p = np.array([ref[tuple(k)]["p"] / ref[tuple(k)]["n"] for k in keys])
    np.testing.assert_allclose(out.xyz, mean_p, atol=2e-6)


def test_voxel_map_capacity_evicts_least_recently_observed_then_fewest_frames():
    vs = 0.1
    centre = lambda i: [[(i + 0.5) * vs, 0.05, 0.05]]  # noqa: E731 - voxel i along x
    vmap = VoxelMap(voxel_size=vs, capacity=4)
    white = [[255, 255, 255]]
    vmap.integrate(simple_cloud(centre(0) + centre(1), white * 2))  # tick 1: voxels 0, 1
    vmap.integrate(simple_cloud(centre(2) + centre(3), white * 2))  # tick 2: voxels 2, 3
    vmap.integrate(simple_cloud(centre(1), white))  # tick 3: voxel 1 again (frames = 2)
    assert len(vmap) == 4 and vmap.evicted == 0
    vmap.integrate(simple_cloud(centre(4), white))  # tick 4: over capacity by one
    # Oldest last_seen is tick 1 (voxel 0): evicted.
    np.testing.assert_array_equal(np.floor(vmap.to_cloud().xyz[:, 0] / vs), [1, 2, 3, 4])
    vmap.integrate(simple_cloud(centre(5) + centre(6), white * 2))  # tick 5: over by two
    # Voxels 2 and 3 share the oldest last_seen (tick 2) and one frame each: both go, before voxel 1 (tick 3).
    np.testing.assert_array_equal(np.floor(vmap.to_cloud().xyz[:, 0] / vs), [1, 4, 5, 6])
    vmap.integrate(simple_cloud(centre(4) + centre(7), white * 2))  # tick 6: voxel 4 re-seen, 7 new
    np.testing.assert_array_equal(np.floor(vmap.to_cloud().xyz[:, 0] / vs), [4, 5, 6, 7])
    assert vmap.evicted == 4 and len(vmap) <= vmap.capacity


def test_voxel_map_eviction_ties_broken_by_frames_then_key():
    vs = 0.1
    vmap = VoxelMap(voxel_size=vs, capacity=3)
    pts = lambda *ids: simple_cloud([[(i + 0.5) * vs, 0.05, 0.05] for i in ids], [[0, 0, 0]] * len(ids))  # noqa
    vmap.integrate(pts(0, 1))  # tick 1
    vmap.integrate(pts(0, 2, 3, 4))  # tick 2: this frame alone fills the map beyond capacity
    # Over by two: voxel 1 (last seen at tick 1) goes first; then, among tick-2 voxels, the fewest frames (2, 3, 4
    # were seen once, 0 twice), then the smallest key: voxel 2.
    np.testing.assert_array_equal(np.floor(vmap.to_cloud().xyz[:, 0] / vs), [0, 3, 4])
    np.testing.assert_array_equal(vmap.to_cloud().extras["frames"], [2, 1, 1])


def test_voxel_map_bounded_over_a_long_sequence():
    rng = np.random.default_rng(5)
    vmap = VoxelMap(voxel_size=0.05, capacity=1500)
    for i in range(30):
        centre = np.array([0.2 * i, 0.0, 0.0])
        vmap.integrate(simple_cloud(centre + rng.uniform(-0.3, 0.3, (800, 3)), rng.integers(0, 256, (800, 3))))
        assert len(vmap) <= 1500
    # The survivors are the most recent voxels: nothing from the first frames, far behind, is left.
    assert vmap.to_cloud().xyz[:, 0].min() > 0.2 * 20 - 0.3


def test_voxel_map_eviction_batches_down_to_a_low_water_mark():
    vs = 0.1
    vmap = VoxelMap(voxel_size=vs, capacity=64)
    vmap.integrate(simple_cloud([[(i + 0.5) * vs, 0.05, 0.05] for i in range(60)], np.zeros((60, 3))))
    vmap.integrate(simple_cloud([[(i + 0.5) * vs, 0.05, 0.05] for i in range(60, 70)], np.zeros((10, 3))))
    # 70 voxels > 64: evict the overflow (6) plus capacity // 32 (2), the oldest first.
    assert len(vmap) == 62 and vmap.evicted == 8
    np.testing.assert_array_equal(voxel_indices(vmap)[:, 0], np.arange(8, 70))


def test_voxel_map_points_far_apart_use_the_sparse_block_lookup():
    # Two clusters 300 m apart on every axis: the frame's block box (3750^3 blocks) is far too large for the dense
    # lookup, so the blocks are sorted instead.
    rng = np.random.default_rng(9)
    pts = np.concatenate([rng.uniform(-0.2, 0.2, (500, 3)), rng.uniform(-0.2, 0.2, (500, 3)) + 300.0])
    clouds = [simple_cloud(pts, rng.integers(0, 256, (1000, 3))), simple_cloud(pts[::-1] + 0.01, np.zeros((1000, 3)))]
    vmap = VoxelMap(voxel_size=0.02)
    for cloud in clouds:
        vmap.integrate(cloud)
    ref = reference_fusion(clouds, 0.02)
    keys = voxel_indices(vmap)
    assert {tuple(k) for k in keys} == set(ref)
    np.testing.assert_array_equal(vmap.to_cloud().extras["count"], [ref[tuple(k)]["n"] for k in keys])


def test_voxel_map_clear_radius_keeps_a_local_map():
    vmap = VoxelMap(voxel_size=0.05, clear_radius=1.0)
    rng = np.random.default_rng(6)
    pts = rng.uniform(-3, 3, (5000, 3))
    T = np.eye(4)
    T[:3, 3] = [0.5, -0.5, 0.2]
    vmap.integrate(simple_cloud(pts, rng.integers(0, 256, (5000, 3)), T=T))
    centres = vmap.voxel_centers().numpy()
    assert len(vmap) > 0 and np.all(np.linalg.norm(centres - T[:3, 3], axis=1) <= 1.0)
    expected = {tuple(k) for k in np.floor(pts / 0.05).astype(np.int64)
                if np.linalg.norm((k + 0.5) * 0.05 - T[:3, 3]) <= 1.0}
    assert len(vmap) == len(expected)


def test_voxel_map_clear_around_inside_and_outside(tmp_path):
    rng = np.random.default_rng(7)
    pts = rng.uniform(-1, 1, (4000, 3))
    vmap = VoxelMap(voxel_size=0.1)
    vmap.integrate(simple_cloud(pts, np.zeros((4000, 3))))
    total = len(vmap)
    inner = VoxelMap.load(vmap.save(tmp_path / "inner.npz"))
    removed = vmap.clear_around([0, 0, 0], 0.5, keep_inside=False)
    assert removed > 0 and len(vmap) == total - removed
    assert np.all(np.linalg.norm(vmap.voxel_centers().numpy(), axis=1) > 0.5)
    inner.clear_around([0, 0, 0], 0.5)
    assert np.all(np.linalg.norm(inner.voxel_centers().numpy(), axis=1) <= 0.5)
    assert len(inner) == removed  # the two halves partition the map
    with pytest.raises(ValueError, match="center_xyz"):
        vmap.clear_around([0, 0], 1.0)


def test_voxel_map_save_load_is_lossless(tmp_path):
    partials = [make_partial_cloud(frame_at(*VIEW_A, index=0), max_depth=20.0, stride=2),
                make_partial_cloud(frame_at(*VIEW_B, index=1), max_depth=20.0, stride=2),
                make_partial_cloud(frame_at(*VIEW_FAR, index=2), max_depth=20.0, stride=2)]
    vmap = VoxelMap(voxel_size=0.05, capacity=5000, clear_radius=8.0)
    vmap.integrate(partials[0])
    vmap.integrate(partials[1])
    path = vmap.save(tmp_path / "map")
    assert path.name == "map.npz" and path.exists()
    loaded = VoxelMap.load(path)
    assert (loaded.voxel_size, loaded.capacity, loaded.clear_radius) == (0.05, 5000, 8.0)
    a, b = vmap.to_cloud(), loaded.to_cloud()
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    for name in ("count", "frames", "last_seen"):
        np.testing.assert_array_equal(a.extras[name], b.extras[name])
    # Continuing from the loaded map gives exactly what continuing the original gives (clock, eviction and all).
    vmap.integrate(partials[2])
    loaded.integrate(partials[2])
    assert vmap.evicted == loaded.evicted > 0
    np.testing.assert_array_equal(vmap.to_cloud().xyz, loaded.to_cloud().xyz)
    np.testing.assert_array_equal(vmap.to_cloud().extras["last_seen"], loaded.to_cloud().extras["last_seen"])
    np.testing.assert_array_equal(vmap.keys.numpy(), loaded.keys.numpy())


def test_voxel_map_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", data=np.zeros((3, 10), np.int64))
    with pytest.raises(ValueError, match="not a saved VoxelMap"):
        VoxelMap.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        VoxelMap.load(tmp_path / "junk.npz")


def test_voxel_map_reset_and_errors():
    vmap = VoxelMap(voxel_size=0.05)
    vmap.integrate(simple_cloud([[0.0, 0.0, 0.0]], [[1, 1, 1]]))
    vmap.reset()
    assert len(vmap) == 0 and len(vmap.to_cloud()) == 0
    assert vmap.integrate(simple_cloud(np.zeros((0, 3)), np.zeros((0, 3)))) == 0  # an empty frame is fine
    with pytest.raises(ValueError, match="voxel_size"):
        VoxelMap(voxel_size=0.0)
    with pytest.raises(ValueError, match="capacity"):
        VoxelMap(capacity=0)
    with pytest.raises(ValueError, match="clear_radius"):
        VoxelMap(clear_radius=-1.0)
    with pytest.raises(TypeError, match="PartialCloud"):
        vmap.integrate(np.zeros((3, 3)))
    bad = PointCloud(xyz=np.array([[np.nan, 0.0, 0.0]]), rgb=np.zeros((1, 3), np.uint8))
    with pytest.raises(ValueError, match="not finite"):
        vmap.integrate(bad)
    far = PointCloud(xyz=np.array([[1e6, 0.0, 0.0]]), rgb=np.zeros((1, 3), np.uint8))
    with pytest.raises(ValueError, match="voxel index range"):
        vmap.integrate(far)
    assert len(vmap) == 0  # a rejected cloud leaves the map untouched


def test_voxel_map_accepts_point_clouds_and_is_deterministic():
    rng = np.random.default_rng(8)
    clouds = [PointCloud(xyz=rng.normal(size=(2000, 3)), rgb=rng.integers(0, 256, (2000, 3)).astype(np.uint8))
              for _ in range(3)]
    maps = [VoxelMap(voxel_size=0.1, capacity=1200) for _ in range(2)]
    for vmap in maps:
        for cloud in clouds:
            vmap.integrate(cloud)
    a, b = maps[0].to_cloud(), maps[1].to_cloud()
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.extras["count"], b.extras["count"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_voxel_map_gpu_equals_cpu():
    partials = [make_partial_cloud(frame_at(*v, index=i), max_depth=20.0) for i, v in
                enumerate((VIEW_A, VIEW_B, VIEW_FAR))]
    maps = [VoxelMap(voxel_size=0.03, capacity=20000, device=d) for d in ("cpu", "cuda")]
    for vmap in maps:
        for p in partials:
            vmap.integrate(p)
    a, b = maps[0].to_cloud(), maps[1].to_cloud()
    assert maps[1].evicted > 0
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    for name in ("count", "frames", "last_seen"):
        np.testing.assert_array_equal(a.extras[name], b.extras[name])


def test_compiled_integration_equals_the_torch_path_bit_for_bit():
    """On a CPU the compiled loops (voxel_kernels) integrate, in one part or several at once; torch's path (CUDA's)
    must give the very same map: every array, through new voxels, carving, surface sums, eviction and frames whose
    blocks span a huge box."""
    views = [(v, True) for v in BOX_VIEWS] + [(v, False) for v in BOX_VIEWS] + [(VIEW_FAR, True)]
    partials = [make_partial_cloud(frame_at(*v, index=i, box=box), max_depth=20.0) for i, (v, box) in
                enumerate(views)]  # the box is taken away, then carved
    rng = np.random.default_rng(3)
    far = np.concatenate([rng.uniform(-0.2, 0.2, (500, 3)), rng.uniform(-0.2, 0.2, (500, 3)) + 300.0])
    clouds = partials + [simple_cloud(far, rng.integers(0, 256, (1000, 3)))]
    maps = []
    for compiled, threads in ((False, 1), (True, 1), (True, 2), (True, 3)):
        vmap = VoxelMap(voxel_size=0.03, capacity=40000, surface=SurfaceConfig(surface=True, every=1))
        vmap.compiled, vmap.threads = compiled, threads
        for p in clouds:
            vmap.integrate(p)
        maps.append(vmap)
    reference = maps[0]._sorted_arrays()
    assert maps[0].evicted > 0 and maps[0].carved > 0 and bool(reference["surface_weight"].any())
    for vmap in maps[1:]:
        assert (vmap.evicted, vmap.carved) == (maps[0].evicted, maps[0].carved), vmap.threads
        arrays = vmap._sorted_arrays()
        for name in reference:
            assert torch.equal(arrays[name], reference[name]), (name, vmap.threads)


def test_block_index_merge_gives_the_same_rows_and_index_compiled_and_in_torch():
    """New block keys get the next rows in key order and join the sorted index; known keys keep their rows."""
    from ov3d_ros import voxel_kernels
    from ov3d_ros.voxel_grid import merge_block_index

    rng = np.random.default_rng(9)
    universe = np.unique(rng.integers(0, 1 << 40, 3000))
    for n_index, n_query, n_known in ((0, 50, 0), (400, 0, 0), (400, 120, 120), (400, 120, 60), (400, 300, 0)):
        index_keys = np.sort(rng.choice(universe, n_index, replace=False))
        index_rows = rng.permutation(n_index).astype(np.int64)
        others = np.setdiff1d(universe, index_keys)
        query = np.sort(np.concatenate([rng.choice(index_keys, n_known, replace=False),
                                        rng.choice(others, n_query - n_known, replace=False)]))
        got = voxel_kernels.merge_blocks(index_keys, index_rows, query)
        want = merge_block_index(*(torch.from_numpy(a) for a in (index_keys, index_rows, query)))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w.numpy())
        rows, keys, merged = got
        assert np.all(np.diff(keys) > 0) and set(keys) == set(index_keys) | set(query)
        known = np.isin(query, index_keys)
        np.testing.assert_array_equal(rows[known], index_rows[np.searchsorted(index_keys, query[known])])
        np.testing.assert_array_equal(rows[~known], n_index + np.arange((~known).sum()))
        np.testing.assert_array_equal(merged[np.searchsorted(keys, query)], rows)


def test_blocks_in_view_holds_every_block_the_camera_sees_and_the_compiled_rows_are_the_same():
    """Every block holding a point that projects into the image within the depth range is chosen (points drawn
    inside random blocks, seen from random poses), and the compiled loop chooses exactly torch's blocks."""
    from ov3d_ros import voxel_kernels
    from ov3d_ros.voxel_grid import BLOCK_BITS, blocks_in_view, pack_blocks, view_bounds

    rng = np.random.default_rng(5)
    voxel, max_range = 0.05, 3.0
    side = voxel * (1 << BLOCK_BITS)
    blocks = rng.integers(-20, 20, (4000, 3))
    keys = pack_blocks(torch.from_numpy(blocks))
    for pose in range(12):
        R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        R *= np.sign(np.linalg.det(R))  # a rotation
        origin = rng.uniform(-1.0, 1.0, 3)
        chosen = blocks_in_view(keys, voxel, CAMERA, torch.from_numpy(R), torch.from_numpy(origin), max_range).numpy()
        for threads in (1, 2, 3):
            rows = voxel_kernels.rows_in_view(keys.numpy(), view_bounds(voxel, CAMERA, max_range), R, origin, threads)
            np.testing.assert_array_equal(rows, np.flatnonzero(chosen))
        points = (blocks[:, None, :] + rng.uniform(0.0, 1.0, (len(blocks), 16, 3))) * side  # 16 inside each block
        q = (points - origin) @ R  # camera coordinates
        z = q[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = CAMERA.fx * q[..., 0] / z + CAMERA.cx, CAMERA.fy * q[..., 1] / z + CAMERA.cy
        seen = ((z > 0.01) & (z < max_range) & (u > 0.5) & (u < CAMERA.width - 1.5) & (v > 0.5)
                & (v < CAMERA.height - 1.5)).any(axis=1)
        assert seen.sum() > 20, pose
        assert chosen[seen].all(), pose
        assert chosen.sum() < len(blocks), pose  # and not simply every block


def test_a_map_that_cannot_make_room_for_new_voxels_stays_consistent(monkeypatch):
    """An integration that fails to allocate its new voxels (MemoryError) leaves no cell marked in the table: the
    same cloud integrated afterwards gives the map a single integration gives."""
    first, second = (make_partial_cloud(frame_at(*v, index=i), max_depth=20.0, stride=2)
                     for i, v in enumerate((VIEW_A, VIEW_B)))
    reference = VoxelMap(voxel_size=0.05)
    vmap = VoxelMap(voxel_size=0.05)
    for m in (reference, vmap):
        m.threads = 2
        m.integrate(first)
    reference.integrate(second)

    def no_room(self, needed):
        raise MemoryError("no room")

    with monkeypatch.context() as patch:
        patch.setattr(VoxelMap, "_reserve_voxels", no_room)
        with pytest.raises(MemoryError):
            vmap.integrate(second)
    assert int((vmap._table[:vmap._n_blocks] < -1).sum()) == 0  # no cell left marked
    vmap.integrate(second)
    got, want = vmap.to_cloud(), reference.to_cloud()
    np.testing.assert_array_equal(got.xyz, want.xyz)
    np.testing.assert_array_equal(got.rgb, want.rgb)
    np.testing.assert_array_equal(got.extras["count"], want.extras["count"])


def test_voxel_map_write_ply_round_trip(tmp_path):
    from ov3d_ros.data import ply

    vmap = VoxelMap(voxel_size=0.05)
    vmap.integrate(make_partial_cloud(frame_at(*VIEW_A), max_depth=20.0, stride=4))
    path = vmap.write_ply(tmp_path / "map.ply")
    cloud, extras = ply.read_ply(path)
    ref = vmap.to_cloud()
    np.testing.assert_array_equal(cloud.xyz, ref.xyz)
    np.testing.assert_array_equal(cloud.rgb, ref.rgb)
    np.testing.assert_array_equal(np.asarray(extras["count"]), ref.extras["count"])


# ----------------------------------------------------------------------------------------------------------------------
# match_points
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_views():
    return (make_partial_cloud(frame_at(*VIEW_A, index=0), max_depth=20.0),
            make_partial_cloud(frame_at(*VIEW_B, index=1), max_depth=20.0))


def visible_in(a: PartialCloud, b: PartialCloud, tolerance: float = 1e-3) -> np.ndarray:
    """Ground truth: which points of ``a`` does camera ``b`` see (in its image and not occluded)?

    Uses the analytic depth b's camera would measure along the exact ray to each point.
    """
    uv, z = project(a.xyz, b.camera, b.T_world_cam)
    with np.errstate(invalid="ignore"):
        inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] < b.camera.width - 0.5) & \
                 (uv[:, 1] >= -0.5) & (uv[:, 1] < b.camera.height - 0.5)
    visible = np.zeros(len(a), dtype=bool)
    idx = np.nonzero(inside)[0]
    # Render b's depth exactly at the (sub-pixel) projections with a camera whose principal point moves them to
    # pixel centres: one ray per point.
    eye = b.T_world_cam[:3, 3]
    dirs = (a.xyz[idx].astype(np.float64) - eye) / z[idx, None]  # optical-axis component 1
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo, t_hi = (ROOM_LO - eye) / dirs, (ROOM_HI - eye) / dirs
        t_room = np.nanmin(np.where(dirs > 0, t_hi, np.where(dirs < 0, t_lo, np.inf)), axis=1)
        b_lo, b_hi = (BOX_LO - eye) / dirs, (BOX_HI - eye) / dirs
        t_near = np.max(np.minimum(b_lo, b_hi), axis=1)
        t_far = np.min(np.maximum(b_lo, b_hi), axis=1)
    t = np.where((t_near <= t_far) & (t_near > 0), np.minimum(t_near, t_room), t_room)
    visible[idx] = np.abs(t - z[idx]) < tolerance
    return visible


def test_match_points_voxel(two_views):
    a, b = two_views
    vs = 0.05
    ia, ib = match_points(a, b, method="voxel", voxel_size=vs)
    assert ia.dtype == np.int64 and ib.dtype == np.int64
    assert len(np.unique(ia)) == len(ia) and len(np.unique(ib)) == len(ib)  # one pair per shared voxel
    assert np.all(np.diff(ia) > 0)
    # Same voxel: equal voxel indices, hence within a voxel diagonal in 3D.
    np.testing.assert_array_equal(np.floor(a.xyz[ia] / vs), np.floor(b.xyz[ib] / vs))
    assert np.max(np.linalg.norm(a.xyz[ia] - b.xyz[ib], axis=1)) <= np.sqrt(3) * vs
    # Each pair holds the point nearest the voxel centre in each cloud.
    for cloud, idx in ((a, ia), (b, ib)):
        keys = np.floor(cloud.xyz.astype(np.float64) / vs).astype(np.int64)
        dist = np.linalg.norm(cloud.xyz - (keys + 0.5) * vs, axis=1)
        best = {}
        for i, k in enumerate(map(tuple, keys)):
            if k not in best or dist[i] < dist[best[k]]:
                best[k] = i
        assert all(best[tuple(keys[i])] == i for i in idx[:500])
    # Most of the overlap is found: the voxels of a's points that b really sees.
    overlap_voxels = {tuple(k) for k in np.floor(a.xyz[visible_in(a, b)] / vs).astype(np.int64)}
    assert len(overlap_voxels) > 500
    assert len(ia) >= 0.9 * len(overlap_voxels)  # measured 0.98


def test_match_points_reprojection(two_views):
    a, b = two_views
    tol = 0.03
    ia, ib = match_points(a, b, method="reprojection", depth_tolerance=tol)
    assert ia.dtype == np.int64 and ib.dtype == np.int64 and np.all(np.diff(ia) > 0)
    assert len(np.unique(ib)) == len(ib)  # one-to-one
    # A pair is one surface spot: a's point is within half a pixel (diagonal) of b's ray and within tol in depth.
    dist = np.linalg.norm(a.xyz[ia].astype(np.float64) - b.xyz[ib], axis=1)
    pixel_size = np.linalg.norm(b.xyz[ib] - b.camera_center, axis=1) / b.camera.fx
    assert np.all(dist <= 0.75 * pixel_size + tol)
    # Most points of a that b sees are paired ...
    visible = visible_in(a, b)
    assert visible.sum() > 5000
    paired = np.zeros(len(a), dtype=bool)
    paired[ia] = True
    assert paired[visible].mean() > 0.9  # measured 0.95: a few are lost to one-to-one pairing where b is sparser
    # ... and points that the box hides from b are not (a few within half a pixel of its silhouette may be).
    in_front = project(a.xyz, b.camera, b.T_world_cam)[1] > 0
    hidden = in_front & ~visible_in(a, b, tolerance=tol)
    assert hidden.sum() > 1000
    assert paired[hidden].mean() < 0.005


def test_match_points_reprojection_recall_with_same_sampling():
    # The same camera moved slightly: nearly every point of a has its own pixel in b.
    a = make_partial_cloud(frame_at(*VIEW_A), max_depth=20.0, stride=2)
    eye = np.array(VIEW_A[0]) + [0.03, -0.02, 0.01]
    b = make_partial_cloud(frame_at(eye, VIEW_A[1]), max_depth=20.0, stride=2)
    ia, ib = match_points(a, b, method="reprojection", depth_tolerance=0.03)
    visible = visible_in(a, b)
    assert len(ia) >= 0.85 * visible.sum()
    assert np.max(np.linalg.norm(a.xyz[ia] - b.xyz[ib], axis=1)) < 0.1


def test_match_points_identity_and_errors(two_views):
    a, _ = two_views
    for method in ("voxel", "reprojection"):
        ia, ib = match_points(a, a, method=method, voxel_size=0.02)
        if method == "reprojection":
            np.testing.assert_array_equal(ia, np.arange(len(a)))
        np.testing.assert_array_equal(ia, ib)
    with pytest.raises(ValueError, match="method"):
        match_points(a, a, method="nearest")
    with pytest.raises(TypeError, match="PartialCloud"):
        match_points(a, a.to_cloud())
    with pytest.raises(ValueError, match="depth_tolerance"):
        match_points(a, a, method="reprojection", depth_tolerance=-1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Free space and surfaces (SurfaceConfig)
# ----------------------------------------------------------------------------------------------------------------------
SURFACE = SurfaceConfig(surface=True, every=1)  # the step on every frame, surface points on
BOX_VIEWS = [((0.4, 0.5, 1.6), (2.1, 1.9, 0.5)), ((0.6, 3.4, 1.5), (2.1, 1.9, 0.5)),
             ((3.5, 0.6, 1.7), (2.1, 1.9, 0.5)), ((3.4, 3.5, 1.4), (2.1, 1.9, 0.5))]


def _inside_box(xyz: np.ndarray, shrink: float) -> np.ndarray:
    return np.all((xyz >= BOX_LO + shrink) & (xyz <= BOX_HI - shrink), axis=1)


def test_carving_removes_a_box_taken_away_and_keeps_the_room():
    vmap = VoxelMap(voxel_size=0.04, surface=SURFACE)
    for i, view in enumerate(BOX_VIEWS):
        vmap.integrate(make_partial_cloud(frame_at(*view, index=i), max_depth=20.0))
    before = vmap.to_cloud().xyz
    assert _inside_box(before, 0.05).sum() == 0 and np.sum(np.abs(before - BOX_HI).min(axis=1) < 0.03) > 50
    on_box = np.all((before >= BOX_LO - 0.03) & (before <= BOX_HI + 0.03), axis=1) & (before[:, 2] > 0.05)
    assert on_box.sum() > 500  # the box's faces are in the map
    after = [make_partial_cloud(frame_at(*view, index=4 + i, box=False), max_depth=20.0)
             for i, view in enumerate(BOX_VIEWS)]
    for partial in after[:2]:
        vmap.integrate(partial)
    # Above the floor by more than its noise margin (voxel_size + carve_margin * d^2 along the line of sight: the
    # voxels just above a surface cannot be told from its noise).
    box_left = lambda xyz: np.all((xyz >= BOX_LO - 0.01) & (xyz <= BOX_HI + 0.01), axis=1) & (xyz[:, 2] > 0.1)
    assert box_left(vmap.to_cloud().xyz).sum() > 100  # two views through it: not yet evidence enough
    for partial in after[2:]:
        vmap.integrate(partial)
    out = vmap.to_cloud()
    assert box_left(out.xyz).sum() == 0 and vmap.carved > 500
    keys = vmap.keys.numpy()
    assert len(keys) == len(vmap) and np.all(keys[1:] > keys[:-1])  # the map's index is whole after removals
    # The room the box hid and the rest of the room: every point the views without the box saw has a map point.
    seen = np.concatenate([p.xyz for p in after])
    from scipy.spatial import cKDTree
    assert np.mean(cKDTree(out.xyz).query(seen)[0] < 0.05) > 0.99


def _plane_frame(T: np.ndarray, normal, point, index: int, noise: float = 0.0, seed: int = 0) -> RGBDFrame:
    """A depth image of the plane through ``point`` with ``normal`` (0 where the ray misses it or goes past 5 m,
    the default SurfaceConfig.max_range)."""
    v, u = np.mgrid[0:CAMERA.height, 0:CAMERA.width]
    rays = np.stack([(u - CAMERA.cx) / CAMERA.fx, (v - CAMERA.cy) / CAMERA.fy, np.ones(u.shape)], -1)
    n_cam = T[:3, :3].T @ np.asarray(normal, dtype=np.float64)
    offset = float(n_cam @ (T[:3, :3].T @ (np.asarray(point, dtype=np.float64) - T[:3, 3])))
    with np.errstate(divide="ignore"):
        depth = offset / (rays @ n_cam)
    depth += noise * np.random.default_rng(seed).standard_normal(depth.shape)
    depth = np.where((depth > 0.2) & (depth < 5.0), depth, 0.0).astype(np.float32)
    color = np.full(depth.shape + (3,), 128, np.uint8)
    return RGBDFrame(color=color, depth=depth, camera=CAMERA, T_world_cam=T, index=index)


def test_a_wall_seen_at_80_degrees_is_neither_carved_nor_thinned_away():
    # The wall x = 1.5 m; the camera looks along it, 80 degrees off its normal, from a few places.
    tilt = np.deg2rad(80.0)
    frames = []
    for i, (dx, dy) in enumerate([(0.0, 0.0), (0.05, 0.1), (-0.05, 0.2), (0.02, -0.1), (0.0, 0.3), (0.04, 0.15)]):
        eye = np.array([dx, dy, 1.2])
        target = eye + np.array([np.cos(tilt), np.sin(tilt), 0.0])
        frames.append(_plane_frame(look_at(eye, target), (1.0, 0.0, 0.0), (1.5, 0.0, 0.0), i, 0.002, seed=i))
    vmap = VoxelMap(voxel_size=0.02, surface=SURFACE)
    vmap.integrate(make_partial_cloud(frames[0]))
    first = set(vmap.keys.tolist())
    for frame in frames[1:]:
        vmap.integrate(make_partial_cloud(frame))
    assert vmap.carved == 0 and first <= set(vmap.keys.tolist())
    # Exported: points on the wall (noise averaged down) covering all of what the views saw.
    out = vmap.to_cloud()
    assert np.median(np.abs(out.xyz[:, 0] - 1.5)) < 0.002
    from scipy.spatial import cKDTree
    seen = np.concatenate([make_partial_cloud(f).xyz for f in frames])
    assert np.mean(cKDTree(out.xyz).query(seen)[0] < 0.03) > 0.99


def test_voxels_outside_the_view_or_behind_the_surface_are_untouched():
    vmap = VoxelMap(voxel_size=0.05, surface=SURFACE)
    for i, view in enumerate((VIEW_A, VIEW_B)):
        vmap.integrate(make_partial_cloud(frame_at(*view, index=i), max_depth=20.0))
    state = lambda: {name: vmap._sorted_arrays()[name].numpy().copy()
                     for name in ("keys", "free", "surface_sum", "surface_weight")}
    old = state()
    far = frame_at(*VIEW_FAR, index=2)
    vmap.integrate(make_partial_cloud(far, max_depth=20.0))
    new = state()
    kept = np.isin(new["keys"], old["keys"])
    assert kept.sum() == len(old["keys"])  # nothing removed: the far view sees no free space in front of them
    centres = (voxel_indices(vmap) + 0.5) * 0.05
    uv, z = project(centres, CAMERA, far.T_world_cam)
    depth = far.depth_metres()
    # Clear of the view (3 pixels off the image, its voxel's mean can lie half a voxel off the centre) or behind
    # the farthest depth of the 7x7 pixels around the projection by more than the margin.
    with np.errstate(invalid="ignore"):
        iu, iv = np.rint(uv[:, 0]).astype(np.int64), np.rint(uv[:, 1]).astype(np.int64)
        in_image = (z > 0) & (iu >= -3) & (iu < CAMERA.width + 3) & (iv >= -3) & (iv < CAMERA.height + 3)
    farthest = np.pad(depth, 3, mode="edge")
    farthest = np.max([farthest[dv:dv + CAMERA.height, du:du + CAMERA.width] for dv in range(7) for du in range(7)],
                      axis=0)
    behind = np.zeros(len(z), bool)
    inside = in_image & (iu >= 0) & (iu < CAMERA.width) & (iv >= 0) & (iv < CAMERA.height)
    far_depth = farthest[iv[inside], iu[inside]]
    behind[inside] = z[inside] > far_depth + 0.05 + 0.01 * far_depth ** 2 + 0.05
    untouched = kept & ((~in_image) | behind)
    assert untouched.sum() > 200
    before = {name: value[np.searchsorted(old["keys"], new["keys"][untouched])] for name, value in old.items()}
    for name in ("free", "surface_sum", "surface_weight"):
        np.testing.assert_array_equal(new[name][untouched], before[name])


def test_surface_point_is_the_noise_weighted_mean_of_the_measured_surface():
    """A wall at z = 1.005 m seen head-on from 1.005 m (exact) and from 2.005 m by a camera that measures 1 cm too
    far: the voxel's point is (w1 * 1.005 + w2 * 1.015) / (w1 + w2), w = round(4096 / d^4)."""
    eye_near, eye_far = np.eye(4), np.eye(4)
    eye_far[2, 3] = -1.0
    near = _plane_frame(eye_near, (0, 0, 1), (0, 0, 1.005), 0)
    far = _plane_frame(eye_far, (0, 0, 1), (0, 0, 1.015), 1)
    vmap = VoxelMap(voxel_size=0.02, surface=SURFACE)
    vmap.integrate(make_partial_cloud(near))
    np.testing.assert_allclose(vmap.to_cloud().xyz[:, 2], 1.005, atol=2e-6)
    vmap.integrate(make_partial_cloud(far))
    out = vmap.to_cloud()
    w1, w2 = round(4096 / 1.005 ** 4), round(4096 / 2.015 ** 4)
    central = np.hypot(out.xyz[:, 0], out.xyz[:, 1]) < 0.2
    np.testing.assert_allclose(out.xyz[central, 2], (w1 * 1.005 + w2 * 1.015) / (w1 + w2), atol=3e-6)


def test_a_point_no_view_measured_is_exported_once_a_second_frame_hits_it():
    """Speckle (a flying pixel no later view sees through, e.g. because something hides it then) is not exported
    while one frame alone hit it and no view measured a surface there; a second frame makes it a point."""
    vmap = VoxelMap(voxel_size=0.02, surface=SURFACE)
    vmap.integrate(make_partial_cloud(_plane_frame(np.eye(4), (0, 0, 1), (0, 0, 1.005), 0)))  # a measured wall
    wall = len(vmap.to_cloud())
    speck = simple_cloud(np.array([[0.3, 0.2, 0.5]]), np.array([[255, 0, 0]]))  # no camera: no surface step
    vmap.integrate(speck)
    assert len(vmap.to_cloud()) == wall and len(vmap) == wall + 1  # kept, not exported
    vmap.integrate(speck)
    out = vmap.to_cloud()
    assert len(out) == wall + 1 and np.any(np.all(np.abs(out.xyz - [0.3, 0.2, 0.5]) < 1e-5, axis=1))


def test_running_means_without_the_surface_step_and_maps_saved_before_it(tmp_path):
    partials = [make_partial_cloud(frame_at(*view, index=i), max_depth=20.0) for i, view in enumerate(BOX_VIEWS)]
    plain = VoxelMap(voxel_size=0.05, surface=None)
    for p in partials:
        plain.integrate(p)
    ref = reference_fusion(partials, 0.05)
    assert len(plain.to_cloud()) == len(ref) and plain.carved == 0
    # A map saved by format version 1 (no surface arrays) loads with no evidence yet.
    path = plain.save(tmp_path / "map.npz")
    with np.load(path) as archive:
        v1 = {k: archive[k] for k in archive.files if k not in ("free", "surface_sum", "surface_weight")}
    v1["version"] = np.array(1)
    np.savez(tmp_path / "v1.npz", **v1)
    loaded = VoxelMap.load(tmp_path / "v1.npz", surface=None)
    np.testing.assert_array_equal(loaded.to_cloud().xyz, plain.to_cloud().xyz)
    assert int(loaded._surface_weight[:len(loaded)].sum()) == 0


def test_the_default_map_carves_every_second_frame_and_keeps_running_means():
    """SurfaceConfig(): free-space votes on every 4th frame, points are the running means (no surface step)."""
    vmap = VoxelMap(voxel_size=0.05)
    partials = [make_partial_cloud(frame_at(*view, index=i), max_depth=20.0) for i, view in enumerate(BOX_VIEWS)]
    for p in partials:
        vmap.integrate(p)
    ref = reference_fusion(partials, 0.05)
    out = vmap.to_cloud()
    keys = voxel_indices(vmap)
    assert len(out) == len(ref) == len(vmap)
    np.testing.assert_allclose(out.xyz, [ref[tuple(k)]["p"] / ref[tuple(k)]["n"] for k in keys], atol=2e-6)
    after = [make_partial_cloud(frame_at(*view, index=4 + i, box=False), max_depth=20.0)
             for i, view in enumerate(BOX_VIEWS * 3)]
    for p in after:  # twelve frames, three of them observed (every 4th: the same view each time)
        vmap.integrate(p)
    left = vmap.to_cloud().xyz
    assert vmap.carved > 300 and np.sum(np.all((left >= BOX_LO) & (left <= BOX_HI), axis=1) & (left[:, 2] > 0.1)) == 0
    with pytest.raises(ValueError, match="every"):
        SurfaceConfig(every=0)
