"""Synthetic rooms and their renderer, checked against the analytic geometry they are built from."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ov3d_ros.data.synthetic import (
    CLASS_NAMES,
    Box,
    Cylinder,
    SceneObject,
    Sphere,
    MATERIALS,
    SyntheticRoom,
    ViewVariation,
    default_camera,
    labelled_reconstruction,
    render_sequence,
)
from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import backproject, check_rigid, project

FLOOR, WALL = CLASS_NAMES.index("floor"), CLASS_NAMES.index("wall")


def _points_by_class(frame_set):
    """Back-projected world points (noise-free frames) with the class of their pixel."""
    pts, cls = [], []
    for sf in frame_set:
        bp = backproject(sf.frame.depth, sf.frame.camera, sf.frame.T_world_cam, min_depth=0.05, max_depth=20)
        pts.append(bp.xyz.astype(np.float64))
        cls.append(sf.class_map[bp.pixels[:, 1], bp.pixels[:, 0]])
    return np.concatenate(pts), np.concatenate(cls)


def test_class_names_cover_the_required_classes():
    required = {"wall", "floor", "table", "chair", "cabinet", "sofa", "bed", "lamp", "monitor", "bin", "book",
                "picture"}
    assert required <= set(CLASS_NAMES)
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_generate_is_deterministic_and_seed_dependent():
    a, b, c = SyntheticRoom.generate(11), SyntheticRoom.generate(11), SyntheticRoom.generate(12)
    assert repr(a) == repr(b)
    for oa, ob in zip(a.objects, b.objects):
        assert oa.class_name == ob.class_name and oa.instance_id == ob.instance_id
        np.testing.assert_array_equal(oa.color, ob.color)
        np.testing.assert_array_equal(oa.aabb()[0], ob.aabb()[0])
    assert not np.allclose(a.size, c.size)


def test_render_is_deterministic_by_seed(room):
    f1 = render_sequence(room, n_frames=3, width=64, height=48, noise=True, seed=5)
    f2 = render_sequence(room, n_frames=3, width=64, height=48, noise=True, seed=5)
    f3 = render_sequence(room, n_frames=3, width=64, height=48, noise=True, seed=6)
    for a, b in zip(f1, f2):
        np.testing.assert_array_equal(a.frame.depth, b.frame.depth)
        np.testing.assert_array_equal(a.frame.color, b.frame.color)
        np.testing.assert_array_equal(a.class_map, b.class_map)
    assert not np.array_equal(f1[0].frame.depth, f3[0].frame.depth)
    np.testing.assert_array_equal(f1[0].class_map, f3[0].class_map)  # noise never changes the ground truth


def test_view_variation_off_renders_exactly_as_without_it(room):
    plain = render_sequence(room, n_frames=2, width=64, height=48, noise=True, seed=5)
    off = render_sequence(room, n_frames=2, width=64, height=48, noise=True, seed=5, variation=ViewVariation())
    for a, b in zip(plain, off):
        np.testing.assert_array_equal(a.frame.color, b.frame.color)
        np.testing.assert_array_equal(a.frame.depth, b.frame.depth)
        np.testing.assert_array_equal(a.frame.T_world_cam, b.frame.T_world_cam)


def test_exposure_and_white_balance_scale_each_frame_by_its_own_gain(room):
    plain = render_sequence(room, n_frames=3, width=64, height=48, noise=False)
    varied = render_sequence(room, n_frames=3, width=64, height=48, noise=False,
                             variation=ViewVariation(exposure=0.2, white_balance=0.05))
    gains = []
    for a, b in zip(plain, varied):
        np.testing.assert_array_equal(a.frame.depth, b.frame.depth)  # geometry and pose are untouched
        np.testing.assert_array_equal(a.frame.T_world_cam, b.frame.T_world_cam)
        src, dst = a.frame.color.reshape(-1, 3).astype(float), b.frame.color.reshape(-1, 3).astype(float)
        ok = (src > 40).all(1) & (src < 180).all(1) & (dst < 250).all(1)  # well exposed, not clipped
        ratio = dst[ok] / src[ok]
        assert ok.sum() > 500
        # One gain per channel for the whole frame: the ratio is flat up to the 8-bit rounding.
        assert (ratio.std(axis=0) < 0.02).all(), ratio.std(axis=0)
        gains.append(np.median(ratio, axis=0))
    gains = np.array(gains)
    assert np.ptp(gains.mean(axis=1)) > 0.02  # exposure differs between frames
    assert np.ptp(gains - gains.mean(axis=1, keepdims=True)) > 0.01  # and so does the tint


def test_recorded_pose_error_has_the_asked_spread():
    rng = np.random.default_rng(0)
    T = np.eye(4)
    T[:3, 3] = (1.0, 2.0, 1.5)
    v = ViewVariation(pose_rot_deg=0.5, pose_trans_m=0.01)
    angles, offsets = [], []
    for _ in range(4000):
        Tr = check_rigid(v.recorded_pose(T, rng))
        angles.append(math.degrees(math.acos(np.clip((np.trace(Tr[:3, :3]) - 1) / 2, -1, 1))))
        offsets.append(Tr[:3, 3] - T[:3, 3])
    # |N(0, sigma)| has mean sigma * sqrt(2 / pi).
    assert np.mean(angles) == pytest.approx(0.5 * math.sqrt(2 / math.pi), rel=0.05)
    np.testing.assert_allclose(np.std(offsets, axis=0), 0.01, rtol=0.06)


def test_pose_error_moves_the_recorded_pose_but_not_the_image(room):
    plain = render_sequence(room, n_frames=2, width=64, height=48, noise=True, seed=2)
    varied = render_sequence(room, n_frames=2, width=64, height=48, noise=True, seed=2,
                             variation=ViewVariation(pose_rot_deg=1.0, pose_trans_m=0.02))
    for a, b in zip(plain, varied):
        np.testing.assert_array_equal(a.frame.color, b.frame.color)
        np.testing.assert_array_equal(a.frame.depth, b.frame.depth)
        assert not np.allclose(a.frame.T_world_cam, b.frame.T_world_cam)
        check_rigid(b.frame.T_world_cam)


@pytest.mark.parametrize("bad", [dict(exposure=-0.1), dict(pose_rot_deg=float("nan")), dict(white_balance="x")])
def test_view_variation_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="ViewVariation"):
        ViewVariation(**bad)


@pytest.mark.parametrize("seed", range(8))
def test_rooms_have_the_promised_size_and_content(seed):
    room = SyntheticRoom.generate(seed)
    assert 4.0 <= room.size[0] <= 7.0 and 4.0 <= room.size[1] <= 7.0
    assert 8 <= len(room.furniture) <= 20
    counts = room.class_counts()
    assert counts["floor"] == 1 and counts["wall"] == 4
    ids = [o.instance_id for o in room.objects]
    assert ids == list(range(len(ids)))
    for obj in room.furniture:
        lo, hi = obj.aabb()
        assert np.all(lo[:2] >= -1e-9) and hi[0] <= room.size[0] + 1e-9 and hi[1] <= room.size[1] + 1e-9
        assert lo[2] >= -1e-9 and hi[2] < room.wall_height


def test_all_classes_appear_across_rooms():
    seen = set()
    for seed in range(12):
        seen |= set(SyntheticRoom.generate(seed).class_counts())
    assert seen == set(CLASS_NAMES)


def _signature(obj):
    kinds = sorted(type(p).__name__ for p in obj.primitives)
    return tuple(kinds)


def test_each_class_has_one_consistent_shape():
    expected = {
        "chair": ("Box",) * 6,  # seat + 4 legs + backrest
        "table": ("Box",) * 5,  # top + 4 legs
        "sofa": ("Box",) * 4,  # seat + back + 2 arms
        "bed": ("Box",) * 2,  # mattress block + headboard
        "cabinet": ("Box",),
        "book": ("Box",),
        "picture": ("Box",),
        "monitor": ("Box",) * 3,  # foot + neck + panel
        "bin": ("Cylinder", "Cylinder"),  # bottom plate + open wall
        "lamp": ("Cylinder", "Cylinder", "Cylinder", "Sphere"),  # base + pole + shade + bulb
    }
    for seed in range(10):
        for obj in SyntheticRoom.generate(seed).furniture:
            assert _signature(obj) == expected[obj.class_name], (seed, obj.class_name)
            if obj.class_name == "bin":
                wall = max(obj.primitives, key=lambda p: p.z1)
                assert not wall.cap_top, "a bin has no lid"
            if obj.class_name == "chair":
                legs = [p for p in obj.primitives if abs(p.center[2] - p.half[2]) < 1e-9]  # standing on the floor
                assert len(legs) == 4 and all(np.all(p.half[:2] < 0.03) for p in legs)


def test_objects_do_not_interpenetrate():
    # Surface samples of one object must not lie more than 5 mm deep inside another's solid parts.
    for seed in range(6):
        room = SyntheticRoom.generate(seed)
        furniture = room.furniture
        for a in furniture:
            pts = np.concatenate([p.sample_surface(0.04)[0] for p in a.primitives])
            for b in furniture:
                if b is a:
                    continue
                for prim in b.primitives:
                    if prim.solid:
                        assert not prim.contains(pts, -0.005).any(), (seed, a.class_name, b.class_name)


def test_supported_things_rest_on_tables_or_cabinets_and_pictures_hang_on_walls():
    for seed in range(10):
        room = SyntheticRoom.generate(seed)
        tops = [(o.aabb()[1][2], o) for o in room.furniture if o.class_name in ("table", "cabinet")]
        for obj in room.furniture:
            lo, hi = obj.aabb()
            if obj.class_name in ("book", "monitor") or (obj.class_name == "lamp" and lo[2] > 0):
                support = [o for z, o in tops if abs(z - lo[2]) < 1e-9]
                assert support, (seed, obj.class_name, lo[2])
                if obj.class_name != "book":
                    assert support[0].class_name == "table"  # monitors and table lamps stand on tables
                slo, shi = support[0].aabb()
                centre = (lo[:2] + hi[:2]) / 2
                assert np.all(centre >= slo[:2]) and np.all(centre <= shi[:2])
            if obj.class_name == "picture":
                gaps = [lo[0], lo[1], room.size[0] - hi[0], room.size[1] - hi[1]]
                assert min(abs(g) for g in gaps) < 1e-9  # flush on a wall
                assert 0.5 < lo[2] and hi[2] < room.wall_height
            if obj.class_name in ("table", "chair", "cabinet", "sofa", "bed", "bin"):
                assert abs(lo[2]) < 1e-9  # on the floor


def _colours_by_class(appearance):
    colours = {}
    for seed in range(15):
        for obj in SyntheticRoom.generate(seed, appearance=appearance).objects:
            colours.setdefault(obj.class_name, []).append(obj.color)
    return {name: np.array(cols) for name, cols in colours.items()}


def test_instance_colours_vary_within_every_class():
    for appearance in ("random", "materials"):
        for name, cols in _colours_by_class(appearance).items():
            if len(cols) >= 5:
                assert np.std(cols, axis=0).max() > 0.05, (appearance, name)


def test_material_colours_are_typical_of_their_class():
    colours = _colours_by_class("materials")
    brightness = {name: cols.max(axis=1) for name, cols in colours.items()}  # HSV value
    saturation = {name: 1 - cols.min(axis=1) / np.maximum(cols.max(axis=1), 1e-9) for name, cols in colours.items()}
    # Walls are light and pale, monitors mostly dark, books saturated: as their materials promise.
    assert brightness["wall"].min() >= 0.65 and saturation["wall"].max() <= 0.3 + 1e-9
    assert np.mean(brightness["monitor"] <= 0.25 + 1e-9) >= 0.5
    assert saturation["book"].min() >= 0.45 - 1e-9
    assert set(MATERIALS) == set(CLASS_NAMES)


def test_appearance_changes_colours_only():
    a = SyntheticRoom.generate(4, appearance="materials")
    b = SyntheticRoom.generate(4, appearance="random")
    assert [o.class_name for o in a.objects] == [o.class_name for o in b.objects]
    for oa, ob in zip(a.objects, b.objects):
        for pa, pb in zip(oa.primitives, ob.primitives):
            np.testing.assert_array_equal(pa.aabb()[0], pb.aabb()[0])
            np.testing.assert_array_equal(pa.aabb()[1], pb.aabb()[1])
    assert any(not np.allclose(oa.color, ob.color) for oa, ob in zip(a.objects, b.objects))
    with pytest.raises(ValueError, match="appearance"):
        SyntheticRoom.generate(0, appearance="neon")


def test_labelled_reconstruction_keeps_each_pixels_class_on_observed_surfaces(room, clean_frames, gt_cloud):
    rec = labelled_reconstruction(clean_frames, 0.02, stride=2)
    assert len(rec.xyz) > 10_000 and rec.label.shape == rec.instance.shape == (len(rec.xyz),)
    # Every reconstructed point lies on a ground-truth surface of its own class (clean depth, 2 cm voxels).
    from scipy.spatial import cKDTree

    d, i = cKDTree(gt_cloud.xyz).query(rec.xyz)
    assert np.median(d) < 0.01
    near = d < 0.01
    assert np.mean(gt_cloud.label[i[near]] == rec.label[near]) > 0.97
    # Majority vote per voxel, so a voxel's class is one its pixels had: the floor points are at z = 0.
    floor = rec.label == FLOOR
    assert np.abs(rec.xyz[floor, 2]).max() < 0.011
    # Observed surfaces only: far fewer points than every exposed surface.
    assert len(rec.xyz) < len(gt_cloud.xyz)
    with pytest.raises(ValueError, match="no frames"):
        labelled_reconstruction([])


def test_poses_are_rigid_optical_frames_looking_down_and_overlapping(room, clean_frames):
    centre = np.array(room.trajectory["center"])
    for sf in clean_frames:
        T = check_rigid(sf.frame.T_world_cam)
        x_axis, y_axis, z_axis = T[:3, 0], T[:3, 1], T[:3, 2]
        assert abs(x_axis[2]) < 1e-9  # no roll: image x stays horizontal
        assert y_axis[2] < 0  # image y points down
        pitch = math.degrees(math.asin(-z_axis[2]))
        assert 5 < pitch < 25
        assert 1.2 <= T[2, 3] <= 1.6
        to_centre = centre - T[:2, 3]
        assert z_axis[:2] @ to_centre > 0  # looking into the room
    # Consecutive frames of the default 60-frame loop overlap strongly: most points of frame i are in frame i+1.
    dense = render_sequence(room, n_frames=4, width=80, height=60, noise=False, loop_fraction=4 / 60)
    cam = dense[0].frame.camera
    for a, b in zip(dense[:-1], dense[1:]):
        bp = backproject(a.frame.depth, cam, a.frame.T_world_cam, min_depth=0.05, max_depth=20)
        uv, z = project(bp.xyz, cam, b.frame.T_world_cam)
        inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] < cam.width - 0.5) & (uv[:, 1] >= -0.5) & (
            uv[:, 1] < cam.height - 0.5)
        assert inside.mean() > 0.8


def test_rendered_frames_are_valid_rgbd_frames(clean_frames):
    for sf in clean_frames:
        assert isinstance(sf.frame, RGBDFrame)
        sf.frame.validate()
        assert sf.frame.color.dtype == np.uint8 and sf.frame.depth.dtype == np.float32
        assert sf.class_map.dtype == np.int32 and sf.instance_map.dtype == np.int32
        assert sf.class_map.shape == sf.frame.depth.shape
        # Rays that escape (no ceiling) have no depth and no class, and only those.
        np.testing.assert_array_equal(sf.frame.depth == 0, sf.class_map == -1)
        np.testing.assert_array_equal(sf.class_map == -1, sf.instance_map == -1)


def test_backprojected_floor_and_walls_land_on_their_planes(room, clean_frames):
    pts, cls = _points_by_class(clean_frames)
    floor = pts[cls == FLOOR]
    assert len(floor) > 1000
    np.testing.assert_allclose(floor[:, 2], 0.0, atol=2e-4)
    walls = pts[cls == WALL]
    assert len(walls) > 1000
    Lx, Ly = room.size
    dist = np.min(np.abs(np.stack([walls[:, 0], walls[:, 1], Lx - walls[:, 0], Ly - walls[:, 1]])), axis=0)
    assert dist.max() < 2e-4
    assert np.all(walls[:, 2] > -1e-4) and np.all(walls[:, 2] < room.wall_height + 1e-4)


def test_backprojected_points_lie_on_the_ground_truth_cloud(clean_frames, gt_cloud, near):
    pts, cls = _points_by_class(clean_frames[:3])
    sample = np.random.default_rng(0).choice(len(pts), 1500, replace=False)
    # GT samples sit at cell centres at most 2 cm apart: every surface point is within ~1.5 cm of one.
    assert near(pts[sample], gt_cloud.xyz.astype(np.float64), 0.016) > 0.99


def _single_object_room(prims, name="cabinet"):
    obj = SceneObject(name, 0, prims, np.array([0.5, 0.5, 0.5]))
    return SyntheticRoom((10.0, 10.0), 3.0, [obj], {"center": (0, 0), "radii": (1, 1), "height": 1.0,
                                                  "phase": 0.0, "pitch": 0.0}, seed=0)


def _camera_pose(position, forward):
    forward = np.asarray(forward, float) / np.linalg.norm(forward)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, np.cross(forward, right), forward, position
    return T


def test_depth_matches_the_analytic_distance_to_a_box_face():
    # A box whose face x = 2.5 faces a camera at the origin looking along +x.
    room = _single_object_room([Box([3.0, 0.0, 1.0], [0.5, 0.4, 0.3])])
    cam = default_camera(80, 60)
    T = _camera_pose([0, 0, 1.0], [1, 0, 0])
    view = room.render(T, cam)
    hit = view["prim"] == 0
    assert hit.sum() > 100
    np.testing.assert_allclose(view["depth"][hit], 2.5, atol=1e-9)  # the optical axis is normal to the face
    # The face spans y in [-0.4, 0.4], z in [0.7, 1.3]: pixels inside the projected rectangle hit, outside miss.
    u = np.arange(cam.width)
    v = np.arange(cam.height)
    y_world = -(u - cam.cx) / cam.fx * 2.5  # camera x = -world y
    z_world = 1.0 - (v - cam.cy) / cam.fy * 2.5
    expected = ((z_world >= 0.7) & (z_world <= 1.3))[:, None] & (np.abs(y_world) <= 0.4)[None, :]
    np.testing.assert_array_equal(hit, expected)
    np.testing.assert_allclose(view["normal"][hit], np.tile([-1.0, 0, 0], (hit.sum(), 1)), atol=1e-12)


def test_rotated_box_cylinder_and_sphere_hits_satisfy_their_equations():
    box = Box([3.0, -0.8, 1.0], [0.3, 0.2, 0.25], yaw=0.6)
    cone = Cylinder(3.2, 0.6, 0.5, 1.3, 0.25, 0.12, cap_bottom=False, cap_top=True)
    ball = Sphere([2.6, 0.0, 1.6], 0.2)
    room = _single_object_room([box, cone, ball], name="lamp")
    cam = default_camera(160, 120)
    view = room.render(_camera_pose([0, 0, 1.1], [1, 0, -0.05]), cam)
    pts = view["points"]
    for i, prim in enumerate((box, cone, ball)):
        mask = view["prim"] == i
        assert mask.sum() > 50, type(prim).__name__
        p = pts[mask]
        if prim is box:
            local = np.abs((p - box.center) @ box.R)
            np.testing.assert_allclose(np.max(local / box.half, axis=1), 1.0, atol=1e-9)
        elif prim is cone:
            rho = np.hypot(p[:, 0] - cone.x, p[:, 1] - cone.y)
            on_side = np.abs(rho - (cone.r0 + cone.k * (p[:, 2] - cone.z0))) < 1e-9
            on_top = np.abs(p[:, 2] - cone.z1) < 1e-9
            assert np.all(on_side | on_top) and on_side.any()
            assert np.all((p[:, 2] >= cone.z0 - 1e-9) & (p[:, 2] <= cone.z1 + 1e-9))
        else:
            np.testing.assert_allclose(np.linalg.norm(p - ball.center, axis=1), ball.radius, atol=1e-9)
    # The depth is the z of the hit point in the camera frame.
    T = _camera_pose([0, 0, 1.1], [1, 0, -0.05])
    hit = view["prim"] >= 0
    z_cam = (pts[hit] - T[:3, 3]) @ T[:3, 2]
    np.testing.assert_allclose(view["depth"][hit], z_cam, atol=1e-9)


def test_depth_noise_grows_with_distance_and_drops_some_pixels(clean_frames, noisy_frames):
    clean, noisy = clean_frames, noisy_frames
    near_err, far_err, invalid = [], [], []
    for c, n in zip(clean, noisy):
        dc, dn = c.frame.depth.astype(np.float64), n.frame.depth.astype(np.float64)
        both = (dc > 0) & (dn > 0)
        z, err = dc[both], (dn - dc)[both]
        sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2  # the documented model: grows with z^2
        near_err.append(np.stack([err, sigma])[:, (z > 0.8) & (z < 2.0)])
        far_err.append(np.stack([err, sigma])[:, (z > 3.0) & (z < 5.0)])
        invalid.append(np.mean((dn == 0) & (dc > 0)))
        np.testing.assert_array_equal(c.class_map, n.class_map)
    near_e, far_e = np.concatenate(near_err, axis=1), np.concatenate(far_err, axis=1)
    assert near_e.shape[1] > 500 and far_e.shape[1] > 500
    for e in (near_e, far_e):
        assert 0.9 < np.std(e[0] / e[1]) < 1.1  # standardised residuals: unit variance
        assert abs(np.mean(e[0] / e[1])) < 0.1  # unbiased
    assert np.std(far_e[0]) > 2.5 * np.std(near_e[0])
    assert 0.005 < np.mean(invalid) < 0.15


def test_ground_truth_cloud_labels_instances_and_hidden_surfaces(room, gt_cloud):
    assert gt_cloud.label is not None and gt_cloud.instance is not None
    assert set(np.unique(gt_cloud.label)) <= set(range(len(CLASS_NAMES)))
    assert set(np.unique(gt_cloud.instance)) == {o.instance_id for o in room.objects}
    for obj in room.objects:
        labels = gt_cloud.label[gt_cloud.instance == obj.instance_id]
        assert np.all(labels == CLASS_NAMES.index(obj.class_name))
    np.testing.assert_allclose(gt_cloud.xyz[gt_cloud.label == FLOOR][:, 2], 0.0, atol=1e-6)
    # No point is buried inside a solid primitive (by more than 1 mm).
    xyz = gt_cloud.xyz.astype(np.float64)
    for obj in room.furniture:
        for prim in obj.primitives:
            if prim.solid:
                assert not prim.contains(xyz, -0.001).any()
    # The floor under a cabinet is hidden, the floor in the open is not.
    cab = next((o for o in room.furniture if o.class_name == "cabinet"), None)
    if cab is not None:
        box = cab.primitives[0]
        floor = xyz[gt_cloud.label == FLOOR]
        assert not box.contains(floor, -0.01).any()
    assert (gt_cloud.label == FLOOR).sum() > 0.5 * room.size[0] * room.size[1] / 0.02 ** 2 * 0.5


def test_ground_truth_spacing_controls_density(room):
    coarse, fine = room.ground_truth_cloud(0.05), room.ground_truth_cloud(0.025)
    assert 3.0 < len(fine) / len(coarse) < 5.0  # ~ (0.05 / 0.025)^2 for surfaces


def test_bad_arguments_raise(room):
    with pytest.raises(ValueError, match="n_frames"):
        render_sequence(room, n_frames=0)
    with pytest.raises(TypeError, match="SyntheticRoom"):
        render_sequence("room")
    with pytest.raises(ValueError, match="spacing"):
        room.ground_truth_cloud(0.0)
    with pytest.raises(ValueError, match="half extents"):
        Box([0, 0, 0], [1, -1, 1])
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticRoom.generate(0, min_objects=5, max_objects=2)


def test_render_frame_matches_the_sequence(room, noisy_frames):
    from ov3d_ros.data.synthetic import render_frame

    sf = noisy_frames[4]
    single = render_frame(room, sf.frame.T_world_cam, sf.frame.camera, noise=True, seed=3, index=4)
    np.testing.assert_array_equal(single.frame.depth, sf.frame.depth)
    np.testing.assert_array_equal(single.frame.color, sf.frame.color)
    np.testing.assert_array_equal(single.instance_map, sf.instance_map)
    with pytest.raises(ValueError, match="T_world_cam"):
        render_frame(room, np.eye(3), sf.frame.camera)


def test_rendered_sequence_cache_is_named_by_the_renderer_version_and_round_trips(tmp_path):
    from ov3d_ros.data.synthetic import RENDER_VERSION
    from ov3d_ros.data.synthetic.cache import cache_name, load_or_render

    assert cache_name(3, 4, 32, 24, True).startswith(f"v{RENDER_VERSION}_seed3_4f_32x24_noise")
    rendered, cached = load_or_render(3, 4, 32, 24, True, str(tmp_path))
    assert not cached and (tmp_path / cache_name(3, 4, 32, 24, True)).is_file()
    loaded, cached = load_or_render(3, 4, 32, 24, True, str(tmp_path))
    assert cached and len(loaded) == 4
    for a, b in zip(rendered, loaded):
        np.testing.assert_array_equal(a.color, b.color)
        np.testing.assert_array_equal(np.asarray(a.depth, np.float32), b.depth)
        np.testing.assert_allclose(a.T_world_cam, b.T_world_cam)
        assert a.camera == b.camera
