"""Damaged inputs: a bad frame is skipped with a warning that names it and the good frames are still fused; a
container that cannot be read gets one line naming it and a non-zero exit. The CLIs run as subprocesses, as a user
runs them, so a traceback would show on stderr."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ov3d_ros.data.errors import FrameError, SceneError
from ov3d_ros.data.fuse_cli import fuse_scene
from ov3d_ros.data.ply import read_ply
from ov3d_ros.data.rosbag import CameraStream
from ov3d_ros.data.scannet import ScanNetScene


def _fuse(*args):
    return subprocess.run([sys.executable, "-m", "ov3d_ros.data.fuse_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def damaged_scene(tmp_path, exported_scene):
    """The exported 12-frame scene with frame 0's depth the wrong size, frame 3's JPEG truncated, frame 5's JPEG
    empty and frame 7's PNG not an image."""
    scene = tmp_path / "scene_damaged"
    shutil.copytree(exported_scene, scene)
    depth0 = scene / "depth" / "0.png"
    Image.fromarray(np.asarray(Image.open(depth0))[:60, :80]).save(depth0)
    jpeg = (scene / "color" / "3.jpg").read_bytes()
    (scene / "color" / "3.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (scene / "color" / "5.jpg").write_bytes(b"")
    (scene / "depth" / "7.png").write_bytes(b"not a png at all")
    return scene


def test_scannet_frames_name_the_damaged_file(damaged_scene, exported_scene):
    scene = ScanNetScene(damaged_scene)
    # The size comes from most depth images, not from frame 0.
    assert (scene.camera().width, scene.camera().height) == (160, 120)
    ids = scene.frame_ids
    for stem, path in (("0", "depth/0.png"), ("3", "color/3.jpg"), ("5", "color/5.jpg"), ("7", "depth/7.png")):
        with pytest.raises(FrameError, match=str(damaged_scene / path)):
            scene.frame(ids.index(stem))
    good = ScanNetScene(exported_scene)
    np.testing.assert_array_equal(scene.frame(1).depth, good.frame(1).depth)


def test_ov3d_fuse_skips_bad_frames_and_keeps_the_good_ones(damaged_scene, exported_scene, tmp_path):
    out = tmp_path / "fused.ply"
    result = _fuse(damaged_scene, "--out", out, "--quiet", "--voxel-size", "0.03")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("depth/0.png", "color/3.jpg", "color/5.jpg", "depth/7.png"):
        assert str(damaged_scene / name) in result.stderr
    assert "4 of 12 frames could not be read" in result.stderr and "fused 8 frames" in result.stdout
    # The same map as the 8 good frames of the intact scene.
    good = ScanNetScene(exported_scene)
    kept = [i for i, stem in enumerate(good.frame_ids) if stem not in {"0", "3", "5", "7"}]

    class Subset:
        def __len__(self):
            return len(kept)

        def frame(self, i):
            return good.frame(kept[i])

    reference, n, _ = fuse_scene(Subset(), 0.03, progress=False)
    cloud, _ = read_ply(out)
    expected = reference.to_cloud()
    assert n == 8 and len(cloud) == len(expected)
    np.testing.assert_allclose(cloud.xyz, expected.xyz, atol=1e-6)  # the same map as the good frames alone

    strict = _fuse(damaged_scene, "--out", tmp_path / "strict.ply", "--quiet", "--strict")
    assert strict.returncode != 0 and "Traceback" not in strict.stderr
    assert str(damaged_scene / "depth" / "0.png") in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1


def write_bag(path, frames, *, zstd: bool = False, garbage_color=()):
    """An mcap with realsense2_camera topics (rgb8 colour, 32FC1 aligned depth, colour camera info) and camera poses
    on a PoseStamped topic, 10 Hz; ``zstd``: zstd chunks of 1 MiB, as ros2 bag records them; the colour messages of
    the frames in ``garbage_color`` are bytes that do not deserialise."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from ov3d_ros.geometry import matrix_to_quaternion

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if zstd:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.open()
    conns = {}

    def write(topic, t, msg=None, raw=None, msgtype=None):
        msgtype = msgtype or msg.__msgtype__
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        writer.write(conns[topic], int(t * 1e9), raw if raw is not None else ts.serialize_cdr(msg, msgtype))

    for i, f in enumerate(frames):
        t = 10.0 + 0.1 * i
        header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=10 + i // 10,
                                                                                nanosec=(i % 10) * 100_000_000),
                                          frame_id="camera_color_optical_frame")
        q, p = matrix_to_quaternion(f.T_world_cam[:3, :3]), f.T_world_cam[:3, 3]
        write("/camera_pose", t, T["geometry_msgs/msg/PoseStamped"](header=header, pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))))
        P = np.zeros((3, 4))
        P[:, :3] = f.camera.K
        write("/camera/camera/color/camera_info", t, T["sensor_msgs/msg/CameraInfo"](
            header=header, height=f.camera.height, width=f.camera.width, distortion_model="plumb_bob",
            d=np.zeros(5), k=f.camera.K.ravel(), r=np.eye(3).ravel(), p=P.ravel(), binning_x=0, binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)))
        for topic, array, encoding in (("/camera/camera/color/image_raw", f.color, "rgb8"),
                                       ("/camera/camera/aligned_depth_to_color/image_raw", f.depth, "32FC1")):
            if encoding == "rgb8" and i in garbage_color:
                write(topic, t, raw=b"\x00\x01\x00\x00" + b"\xff" * 20, msgtype="sensor_msgs/msg/Image")
                continue
            h, w = array.shape[:2]
            data = np.ascontiguousarray(array).view(np.uint8).ravel()
            write(topic, t, T["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=encoding,
                                                       is_bigendian=0, step=data.size // h, data=data))
    writer.close()
    return path


@pytest.fixture
def bag(tmp_path, clean_frames):
    """24 frames in zstd chunks: a truncation leaves some whole chunks."""
    return write_bag(tmp_path / "bag", [sf.frame for sf in clean_frames + clean_frames], zstd=True)


def test_truncated_bag_keeps_the_frames_before_the_damage(bag, tmp_path):
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    with CameraStream(bag, max_pose_gap=0.2) as stream:
        frames = list(stream.frames())
    assert stream.recovered and stream.truncated and 3 <= len(frames) < 24
    out = tmp_path / "fused.ply"
    result = _fuse(bag, "--out", out, "--quiet")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"{mcap.parent}" in result.stderr and "damaged" in result.stderr
    assert f"fused {len(frames)} frames" in result.stdout

    strict = _fuse(bag, "--out", tmp_path / "strict.ply", "--quiet", "--strict")
    assert strict.returncode != 0 and "Traceback" not in strict.stderr and "damaged" in strict.stderr


def test_unreadable_containers_get_one_line(bag, tmp_path):
    (bag / "metadata.yaml").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, bag")
    for target, reason in ((bag, "not a scene"), (empty, "not a scene"), (garbage, "garbage")):
        result = _fuse(target, "--out", tmp_path / "x.ply", "--quiet")
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(target) in lines[0], lines
    with pytest.raises(SceneError, match="cannot read the bag .* damaged"):
        CameraStream(garbage)


def test_training_reads_the_good_frames_of_a_damaged_scene(damaged_scene):
    from ov3d_ros.training.config import DEFAULTS
    from ov3d_ros.training.datasets import load_scene_frames

    data_cfg = {**DEFAULTS["data"], "pixel_stride": 4}
    partials, _ = load_scene_frames(damaged_scene, data_cfg)
    assert [frame_id for frame_id, _ in partials] == [str(i) for i in (1, 2, 4, 6, 8, 9, 10, 11)]
    assert all(len(p) > 100 for _, p in partials)
    with pytest.raises(FrameError, match="depth/0.png"):
        load_scene_frames(damaged_scene, {**data_cfg, "strict": True})


def test_unreadable_messages_are_counted_and_the_rest_is_fused(tmp_path, clean_frames):
    """A bag whose colour topic carries a few messages that do not deserialise: those are skipped and counted,
    the others fused; --strict stops at the first."""
    path = write_bag(tmp_path / "bag", [sf.frame for sf in clean_frames], garbage_color=(2, 5))
    with CameraStream(path) as stream:
        frames = list(stream.frames())
    assert len(frames) == len(clean_frames) - 2 and stream.skipped["bad_message"] == 2
    result = _fuse(path, "--out", tmp_path / "fused.ply", "--quiet")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "unreadable /camera/camera/color/image_raw message at" in result.stderr
    assert f"fused {len(clean_frames) - 2} frames" in result.stdout
    strict = _fuse(path, "--out", tmp_path / "strict.ply", "--quiet", "--strict")
    assert strict.returncode != 0 and "Traceback" not in strict.stderr and "unreadable" in strict.stderr
