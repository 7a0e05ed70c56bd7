"""Bag replay through the live nodes: a RealSense-style recording written with the third-party rosbags writer (jpeg
colour, compressedDepth, /tf rooted at odom, the camera mount on /tf_static, realsense2_camera 4.x names) is played
into a real fusion node; its map is checked against the room's ground truth and against ov3d-fuse on the same bag."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from rclpy.parameter import Parameter
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from scipy.spatial import cKDTree

from ov3d_ros.data.fuse_cli import fuse_scene
from ov3d_ros.data.rosbag import CameraStream, RosbagScene
from ov3d_ros.data.synthetic import SyntheticRoom, render_sequence
from ov3d_ros.geometry import invert_rigid, matrix_to_quaternion, rigid_from_quaternion
from ov3d_ros.nodes.bag_player import POSE_TOPIC, BagPlayer
from ov3d_ros.nodes.fusion_node import FusionNode

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
OPTICAL = "camera_color_optical_frame"
NS = "/camera/camera"
# The robot's odometry frame is the root of the tree (no map frame); the camera sits on base_link.
T_WORLD_ODOM = rigid_from_quaternion([0.5, -1.0, 0.0], [0, 0, np.sin(0.2), np.cos(0.2)])
T_BASE_LINK = rigid_from_quaternion([0.1, 0.0, 0.4], [0, 0, 0, 1])
T_LINK_OPTICAL = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float)


def _stamp(t):
    sec = int(np.floor(t))
    return T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)))


def _header(t, frame):
    return T["std_msgs/msg/Header"](stamp=_stamp(t), frame_id=frame)


def _tf(t, parent, child, M):
    q = matrix_to_quaternion(M[:3, :3])
    return T["geometry_msgs/msg/TransformStamped"](
        header=_header(t, parent), child_frame_id=child, transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=M[0, 3], y=M[1, 3], z=M[2, 3]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def _info(t, cam):
    P = np.zeros((3, 4))
    P[:, :3] = cam.K
    return T["sensor_msgs/msg/CameraInfo"](
        header=_header(t, OPTICAL), height=cam.height, width=cam.width, distortion_model="plumb_bob", d=np.zeros(5),
        k=cam.K.ravel(), r=np.eye(3).ravel(), p=P.ravel(), binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _jpeg(t, rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return T["sensor_msgs/msg/CompressedImage"](header=_header(t, OPTICAL), format="rgb8; jpeg compressed bgr8",
                                                data=np.frombuffer(buf.getvalue(), np.uint8))


def _compressed_depth(t, depth_m):
    buf = io.BytesIO()
    Image.fromarray(np.rint(depth_m * 1000).astype(np.uint16)).save(buf, format="PNG")
    head = np.asarray([0], "<i4").tobytes() + np.asarray([0.0, 0.0], "<f4").tobytes()
    return T["sensor_msgs/msg/CompressedImage"](header=_header(t, OPTICAL), format="16UC1; compressedDepth png",
                                                data=np.frombuffer(head + buf.getvalue(), np.uint8))


@pytest.fixture(scope="module")
def room():
    return SyntheticRoom.generate(7)


@pytest.fixture(scope="module")
def recording(tmp_path_factory, room):
    """An mcap recording of 12 frames at 10 Hz, laid out as realsense2_camera + a mobile base record it."""
    frames = [f.frame for f in render_sequence(room, n_frames=12, width=160, height=120, noise=False)]
    path = tmp_path_factory.mktemp("bags") / "realsense_bag"
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conns = {}

    def write(topic, t, msg):
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=TS)
        writer.write(conns[topic], int(round(t * 1e9)), TS.serialize_cdr(msg, msg.__msgtype__))

    t0 = 50.0
    write("/tf_static", t0, T["tf2_msgs/msg/TFMessage"](transforms=[
        _tf(t0, "base_link", "camera_link", T_BASE_LINK), _tf(t0, "camera_link", OPTICAL, T_LINK_OPTICAL)]))
    T_base_optical = T_BASE_LINK @ T_LINK_OPTICAL
    for i, f in enumerate(frames):
        t = t0 + 0.1 * i
        T_odom_base = invert_rigid(T_WORLD_ODOM) @ f.T_world_cam @ invert_rigid(T_base_optical)
        write("/tf", t, T["tf2_msgs/msg/TFMessage"](transforms=[_tf(t, "odom", "base_link", T_odom_base)]))
        write(f"{NS}/color/camera_info", t, _info(t, f.camera))
        write(f"{NS}/color/image_raw/compressed", t, _jpeg(t, f.color))
        write(f"{NS}/aligned_depth_to_color/camera_info", t + 0.003, _info(t + 0.003, f.camera))
        write(f"{NS}/aligned_depth_to_color/image_raw/compressedDepth", t + 0.003,
              _compressed_depth(t + 0.003, f.depth))
    write("/tf", t0 + 1.2, T["tf2_msgs/msg/TFMessage"](transforms=[_tf(t0 + 1.2, "odom", "base_link", np.eye(4))]))
    writer.close()
    return path, frames


FUSION = [Parameter("pose_source", value="pose"), Parameter("pose_topic", value=POSE_TOPIC),
          Parameter("world_frame", value="odom"), Parameter("qos", value="reliable"),
          Parameter("keyframe_min_translation", value=0.0), Parameter("keyframe_min_rotation_deg", value=0.0),
          Parameter("stride", value=2), Parameter("stats_period", value=0.0), Parameter("global_rate", value=0.0)]


def test_stream_finds_realsense_topics_and_the_odom_root(recording):
    path, frames = recording
    with CameraStream(next(path.glob("*.mcap"))) as stream:  # one file of the bag is enough
        replayed = list(stream.frames())
        assert (stream.color_topic, stream.depth_topic, stream.info_topic) == (
            f"{NS}/color/image_raw/compressed", f"{NS}/aligned_depth_to_color/image_raw/compressedDepth",
            f"{NS}/aligned_depth_to_color/camera_info")
        assert stream.fixed_frame == "odom" and stream.camera_frame == OPTICAL
    assert len(replayed) == len(frames) and not any(stream.skipped.values())
    for frame, truth in zip(replayed, frames):
        np.testing.assert_allclose(invert_rigid(T_WORLD_ODOM) @ truth.T_world_cam, frame.T_world_cam, atol=1e-9)


def test_replayed_map_equals_ov3d_fuse_and_the_ground_truth(recording, room, run_nodes, wait_until):
    path, frames = recording
    with CameraStream(path) as stream:
        runner = run_nodes(lambda: FusionNode(parameter_overrides=FUSION),
                           lambda: BagPlayer(color_topic="/camera/camera/color/image_raw",
                                             depth_topic="/camera/camera/aligned_depth_to_color/image_raw",
                                             info_topic="/camera/camera/color/camera_info"))
        fusion, player = runner.nodes
        wait_until(player.subscribed, what="the fusion node's subscriptions")
        player.play(stream.frames(), lambda: stream.fixed_frame, rate=0,
                    ready=lambda: fusion.frames_finished >= player.published)
    wait_until(lambda: fusion.frames_finished >= len(frames), what="every replayed frame fused")
    assert player.published == len(frames) and fusion.counters["integrated"] == len(frames)

    # Offline: the same bag through ov3d-fuse's path (RosbagScene + Mapper) at the node's settings.
    offline, n, _ = fuse_scene(RosbagScene(path), 0.02, pixel_stride=2, progress=False)
    assert n == len(frames)
    live, off = fusion.map.to_cloud(), offline.to_cloud()
    live_xyz, live_rgb, off_xyz, off_rgb = live.xyz, live.rgb, off.xyz, off.rgb
    assert abs(len(live_xyz) - len(off_xyz)) <= 0.001 * len(off_xyz)
    dist, idx = cKDTree(off_xyz).query(live_xyz)
    assert np.quantile(dist, 0.999) < 1e-6  # same points (poses agree to ~1e-15)
    assert np.abs(live_rgb.astype(int) - off_rgb[idx].astype(int)).max() <= 1

    # Against the room: the map lies in odom, the room in its world frame.
    gt = room.ground_truth_cloud(spacing=0.01).xyz
    world = live_xyz @ T_WORLD_ODOM[:3, :3].T + T_WORLD_ODOM[:3, 3]
    err, _ = cKDTree(gt).query(world)
    assert np.median(err) < 0.01 and np.mean(err < 0.03) > 0.97


def test_ov3d_run_bag_end_to_end(recording, tmp_path):
    path, frames = recording
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "ov3d_ros.nodes.run_cli", "--bag", str(path), "--rate", "0", "--quiet",
         "--queries", "wall", "floor", "chair", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{len(frames)} colour images in the bag; {len(frames)} frames replayed" in result.stderr
    assert f"fused {len(frames)} " in result.stderr
    assert "wall" in result.stdout and "floor" in result.stdout
    assert (tmp_path / "labelled_map.ply").stat().st_size > 0 and (tmp_path / "labelled_map.png").is_file()


def test_ctrl_c_ends_the_replay_and_keeps_what_was_fused(recording, tmp_path):
    path, frames = recording
    process = subprocess.Popen(
        [sys.executable, "-m", "ov3d_ros.nodes.run_cli", "--bag", str(path), "--rate", "0.1", "--quiet",
         "--queries", "wall", "--output", str(tmp_path)],
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = []
    try:
        for line in process.stderr:  # at a tenth of the recorded rate the 12 frames take 11 s after the first
            lines.append(line)
            if "first frame published" in line:
                process.send_signal(signal.SIGINT)
                break
        lines += process.stderr.readlines()
        assert process.wait(timeout=180) == 0, "".join(lines)[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    log = "".join(lines)
    assert "Traceback" not in log
    stopped = re.search(r"replay stopped after (\d+) frames", log)
    assert stopped and 1 <= int(stopped.group(1)) < len(frames), log[-3000:]
    assert (tmp_path / "labelled_map.ply").stat().st_size > 0
