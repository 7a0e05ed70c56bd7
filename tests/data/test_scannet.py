"""ScanNet exported-frames layout: write a synthetic scene, read it back, and read ScanNet's own quirks."""
from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest
from PIL import Image

from ov3d_ros.data.ply import read_ply
from ov3d_ros.data.scannet import NYU40_CLASS_NAMES, ScanNetScene, write_scannet_scene
from ov3d_ros.data.synthetic import CLASS_NAMES
from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel


def test_layout_on_disk(exported_scene, clean_frames):
    n = len(clean_frames)
    assert sorted(p.name for p in (exported_scene / "color").iterdir()) == sorted(f"{i}.jpg" for i in range(n))
    assert len(list((exported_scene / "depth").glob("*.png"))) == n
    assert len(list((exported_scene / "pose").glob("*.txt"))) == n
    K = np.loadtxt(exported_scene / "intrinsic" / "intrinsic_depth.txt")
    assert K.shape == (4, 4)
    np.testing.assert_array_equal(K[:3, :3], clean_frames[0].frame.camera.K)
    with Image.open(exported_scene / "depth" / "0.png") as img:
        assert img.mode in ("I;16", "I") and np.asarray(img).dtype == np.uint16
    meta = json.loads((exported_scene / "classes.json").read_text())
    assert meta["class_names"] == list(CLASS_NAMES)
    assert (exported_scene / "scene0007_00_vh_clean_2.labels.ply").is_file()


def test_round_trip_poses_exact_depth_within_a_millimetre(exported_scene, clean_frames):
    scene = ScanNetScene(exported_scene)
    assert len(scene) == len(clean_frames)
    assert scene.frame_ids == [str(i) for i in range(len(clean_frames))]
    assert scene.camera() == clean_frames[0].frame.camera
    for i, sf in enumerate(clean_frames):
        frame = scene.frame(i)
        assert isinstance(frame, RGBDFrame)
        frame.validate()
        assert frame.index == sf.frame.index
        np.testing.assert_array_equal(frame.T_world_cam, sf.frame.T_world_cam)  # bit-exact
        assert frame.depth.dtype == np.uint16 and frame.depth_scale == 1000.0
        metres = frame.depth_metres()
        valid = sf.frame.depth > 0
        np.testing.assert_array_equal(metres > 0, valid)
        assert np.abs(metres[valid] - sf.frame.depth[valid]).max() <= 0.0005 + 1e-6
        # JPEG is lossy; quality 95 keeps the image close.
        assert np.abs(frame.color.astype(int) - sf.frame.color.astype(int)).mean() < 4.0
    assert [f.index for f in scene] == [sf.frame.index for sf in clean_frames]


def test_ground_truth_cloud_and_maps_round_trip(exported_scene, room, clean_frames):
    scene = ScanNetScene(exported_scene)
    gt = scene.ground_truth()
    ref = room.ground_truth_cloud(spacing=0.03)
    np.testing.assert_array_equal(gt.xyz, ref.xyz)
    np.testing.assert_array_equal(gt.label, ref.label)
    np.testing.assert_array_equal(gt.instance, ref.instance)
    assert scene.class_names == CLASS_NAMES
    for i in (0, 5):
        class_map, instance_map = scene.ground_truth_maps(i)
        np.testing.assert_array_equal(class_map, clean_frames[i].class_map)
        np.testing.assert_array_equal(instance_map, clean_frames[i].instance_map)


def test_frames_with_invalid_poses_are_skipped_and_logged(tmp_path, clean_frames, caplog):
    path = write_scannet_scene(tmp_path / "s", [sf.frame for sf in clean_frames[:4]])
    # ScanNet marks lost tracking with -inf matrices.
    (path / "pose" / "1.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4) + "\n")
    (path / "pose" / "2.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 nan\n")
    with caplog.at_level(logging.WARNING, logger="ov3d_ros.data.scannet"):
        scene = ScanNetScene(path)
    assert scene.frame_ids == ["0", "3"]
    assert scene.skipped_frame_ids == ["1", "2"]
    assert "skipped 2 of 4 frames" in caplog.text
    assert scene.frame(1).index == 3
    assert scene.ground_truth() is None and scene.ground_truth_maps(0) is None
    assert scene.class_names == NYU40_CLASS_NAMES


def test_frame_ids_sort_numerically(tmp_path, clean_frames):
    frames = []
    for new_index, sf in zip((0, 2, 10), clean_frames[:3]):
        f = sf.frame
        frames.append(RGBDFrame(f.color, f.depth, f.camera, f.T_world_cam, index=new_index))
    scene = ScanNetScene(write_scannet_scene(tmp_path / "s", frames))
    assert scene.frame_ids == ["0", "2", "10"]
    np.testing.assert_array_equal(scene.frame(2).T_world_cam, clean_frames[2].frame.T_world_cam)


def test_colour_of_another_size_is_warped_with_both_intrinsics(tmp_path, clean_frames):
    path = write_scannet_scene(tmp_path / "s", [clean_frames[0].frame])
    depth_cam = clean_frames[0].frame.camera
    # A colour camera at twice the resolution whose principal point is 12 px off: its pixel x holds x itself, so
    # the value each depth pixel receives says which colour pixel it was mapped to.
    color_cam = CameraModel(2 * depth_cam.width, 2 * depth_cam.height, 2 * depth_cam.fx, 2 * depth_cam.fy,
                            2 * depth_cam.cx + 0.5 + 12, 2 * depth_cam.cy + 0.5)
    xs = np.arange(color_cam.width)
    ramp = np.zeros((color_cam.height, color_cam.width, 3), np.uint8)
    ramp[..., 0] = np.clip(xs // 2, 0, 255)[None, :]
    ramp[..., 1] = 128
    Image.fromarray(ramp).save(path / "color" / "0.jpg", quality=100)
    K4 = np.eye(4)
    K4[:3, :3] = color_cam.K
    np.savetxt(path / "intrinsic" / "intrinsic_color.txt", K4)
    frame = ScanNetScene(path).frame(0)
    assert frame.color.shape == (depth_cam.height, depth_cam.width, 3)
    # depth pixel u sees colour x = 2 (u - cx_d) + cx_c = 2u + 12.5, whose value is floor(x / 2) ~ u + 6.
    u = np.arange(depth_cam.width)
    centre = frame.color[depth_cam.height // 2, :, 0].astype(float)
    inner = (u > 2) & (u < depth_cam.width - 10)
    np.testing.assert_allclose(centre[inner], u[inner] + 6.25, atol=1.5)
    # Without intrinsic_color.txt the colour is plainly resized (and a warning logged): no 6 px shift.
    (path / "intrinsic" / "intrinsic_color.txt").unlink()
    plain = ScanNetScene(path).frame(0).color[depth_cam.height // 2, :, 0].astype(float)
    np.testing.assert_allclose(plain[inner], u[inner], atol=1.5)


def _nyu_labels_ply(path, labels):
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(labels)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
              "property ushort label\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n")
    body = b"".join(struct.pack("<fffBBBBH", i, 0, 0, 1, 2, 3, 255, lab) for i, lab in enumerate(labels))
    body += struct.pack("<B3i", 3, 0, 1, 2)
    path.write_bytes(header.encode() + body)


def test_real_scannet_ground_truth_maps_nyu40_ids_to_class_indices(tmp_path, clean_frames):
    path = write_scannet_scene(tmp_path / "scene0123_00", [clean_frames[0].frame])
    _nyu_labels_ply(path / "scene0123_00_vh_clean_2.labels.ply", [0, 1, 5, 40, 41])
    scene = ScanNetScene(path)
    gt = scene.ground_truth()
    np.testing.assert_array_equal(gt.label, [-1, 0, 4, 39, -1])
    assert scene.class_names[gt.label[2]] == "chair" and scene.class_names[gt.label[1]] == "wall"


def test_ground_truth_written_with_the_class_names(tmp_path, room, clean_frames):
    gt = room.ground_truth_cloud(spacing=0.1)
    path = write_scannet_scene(tmp_path / "x", clean_frames[:1], ground_truth=gt, class_names=CLASS_NAMES)
    cloud, _ = read_ply(path / "x_vh_clean_2.labels.ply")
    np.testing.assert_array_equal(cloud.label, gt.label)


def test_bad_input_raises(tmp_path, clean_frames):
    with pytest.raises(FileNotFoundError, match="no such scene"):
        ScanNetScene(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="color"):
        ScanNetScene(tmp_path / "empty")
    with pytest.raises(ValueError, match="no frames"):
        write_scannet_scene(tmp_path / "w", [])
    with pytest.raises(TypeError, match="RGBDFrame"):
        write_scannet_scene(tmp_path / "w", [np.zeros((2, 2))])
    dup = [clean_frames[0].frame, clean_frames[0].frame]
    with pytest.raises(ValueError, match="unique"):
        write_scannet_scene(tmp_path / "w", dup)
    path = write_scannet_scene(tmp_path / "ok", [clean_frames[0].frame])
    scene = ScanNetScene(path)
    with pytest.raises(IndexError):
        scene.frame(1)
    with pytest.raises(TypeError):
        scene.frame("0")
    (path / "pose" / "0.txt").write_text("1 0 0\n0 1 0\n")  # the only pose is damaged: nothing to read
    with pytest.raises(ValueError, match="none of the 1 poses"):
        ScanNetScene(path)


def test_scannet_instance_files_give_each_vertex_its_object(tmp_path, clean_frames):
    from ov3d_ros.cloud import PointCloud
    from ov3d_ros.data.ply import write_ply

    path = write_scannet_scene(tmp_path / "scene0042_00", [clean_frames[0].frame])
    (path / "classes.json").unlink(missing_ok=True)  # a real ScanNet scene: NYU40 ids, no class file
    xyz = np.random.default_rng(0).uniform(0, 1, (8, 3)).astype(np.float32)
    nyu = np.array([5, 5, 5, 7, 7, 1, 0, 5], dtype=np.int32)  # chair x3, table x2, wall, unannotated, chair
    write_ply(path / "scene0042_00_vh_clean_2.labels.ply", PointCloud(xyz, np.zeros((8, 3), np.uint8), label=nyu))
    (path / "scene0042_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps(
        {"sceneId": "scene0042_00", "segIndices": [10, 10, 11, 20, 20, 30, 40, 12]}))
    (path / "scene0042_00.aggregation.json").write_text(json.dumps({"sceneId": "scene0042_00", "segGroups": [
        {"id": 0, "objectId": 0, "segments": [10, 11], "label": "chair"},
        {"id": 1, "objectId": 1, "segments": [20], "label": "table"},
        {"id": 2, "objectId": 2, "segments": [12], "label": "chair"}]}))
    gt = ScanNetScene(path).ground_truth()
    np.testing.assert_array_equal(gt.instance, [0, 0, 0, 1, 1, -1, -1, 2])
    np.testing.assert_array_equal(gt.label, nyu - 1)  # NYU40 ids 1..40 -> 0..39, 0 -> -1
    (path / "scene0042_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [1, 2]}))
    with pytest.raises(ValueError, match="2 vertices, the labels PLY 8"):
        ScanNetScene(path).ground_truth()
