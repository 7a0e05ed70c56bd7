"""rosbag2 reading: bags written here with rosbags' own writer (sqlite3 and mcap) from a synthetic scene."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image


from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from ov3d_ros.data.errors import SceneError  # noqa: E402
from ov3d_ros.data.rosbag import RosbagScene  # noqa: E402
from ov3d_ros.messages import decode_rvl  # noqa: E402
from ov3d_ros.geometry import invert_rigid, matrix_to_quaternion  # noqa: E402
from ov3d_ros.geometry import rigid_from_quaternion as pose_to_matrix  # noqa: E402

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
STAMP0, PERIOD = 100.0, 0.1
CAMERA_FRAME = "camera_color_optical_frame"

# base_link -> camera_link -> optical frame, as a robot description would publish them on /tf_static.
T_BASE_LINK = pose_to_matrix([0.12, -0.03, 0.35], matrix_to_quaternion(
    np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])))
T_LINK_OPTICAL = np.eye(4)
T_LINK_OPTICAL[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # z fwd, x right, y down
T_BASE_OPTICAL = T_BASE_LINK @ T_LINK_OPTICAL
T_MAP_ODOM = pose_to_matrix([1.0, -2.0, 0.0], [0, 0, np.sin(0.15), np.cos(0.15)])


def _time(t):
    sec = int(np.floor(t))
    return T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)))


def _header(t, frame_id):
    return T["std_msgs/msg/Header"](stamp=_time(t), frame_id=frame_id)


def _transform(t, parent, child, M):
    q = matrix_to_quaternion(M[:3, :3])
    return T["geometry_msgs/msg/TransformStamped"](
        header=_header(t, parent), child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=M[0, 3], y=M[1, 3], z=M[2, 3]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def _image(t, array, encoding, pad=0):
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8)
    if pad:
        row = np.concatenate([row, np.full((h, pad), 7, np.uint8)], axis=1)  # row padding must be skipped
    return T["sensor_msgs/msg/Image"](header=_header(t, CAMERA_FRAME), height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=row.shape[1], data=np.ascontiguousarray(row).ravel())


def _camera_info(t, cam):
    K = cam.K
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T["sensor_msgs/msg/CameraInfo"](header=_header(t, CAMERA_FRAME), height=cam.height, width=cam.width,
                                           distortion_model="plumb_bob", d=np.zeros(5), k=K.ravel(),
                                           r=np.eye(3).ravel(), p=P.ravel(), binning_x=0, binning_y=0, roi=roi)


class _BagWriter:
    def __init__(self, path, storage):
        self.writer = Writer(path, version=9, storage_plugin=storage)
        self.conns = {}

    def __enter__(self):
        self.writer.open()
        return self

    def __exit__(self, *exc):
        self.writer.close()

    def write(self, topic, t, msg):
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msg.__msgtype__, typestore=TS)
        self.writer.write(self.conns[topic], int(round(t * 1e9)), TS.serialize_cdr(msg, msg.__msgtype__))


def _rvl_encode(values) -> bytes:
    """RVL as compressed_depth_image_transport writes it, written out plainly (the reference for decode_rvl)."""
    values = [int(v) for v in np.asarray(values).ravel()]
    nibbles = []

    def number(v):
        while True:
            nibble, v = v & 0x7, v >> 3
            nibbles.append(nibble | (0x8 if v else 0))
            if not v:
                return

    i, previous = 0, 0
    while i < len(values):
        start = i
        while i < len(values) and values[i] == 0:
            i += 1
        number(i - start)
        start = i
        while i < len(values) and values[i] != 0:
            i += 1
        number(i - start)
        for v in values[start:i]:
            delta = v - previous
            number(2 * delta if delta >= 0 else -2 * delta - 1)  # zig-zag
            previous = v
    nibbles += [0] * (-len(nibbles) % 8)
    words = [sum(n << (28 - 4 * k) for k, n in enumerate(nibbles[j:j + 8])) for j in range(0, len(nibbles), 8)]
    return np.asarray(words, dtype="<u4").tobytes()


QUANT_Z0, QUANT_MAX = 100.0, 10.0  # compressed_depth_image_transport's depth_quantization and depth_max defaults


def _compressed_depth(t, depth_m, encoding, codec):
    """A compressedDepth CompressedImage: 12-byte header (format, quantisation A, B) + png or rvl image."""
    quant_a = np.float32(QUANT_Z0 * (QUANT_Z0 + 1.0))
    quant_b = np.float32(1.0 - quant_a / QUANT_MAX)
    if encoding == "32FC1":
        raw = np.zeros(depth_m.shape, np.uint16)
        ok = (depth_m > 0) & (depth_m < QUANT_MAX)
        raw[ok] = (quant_a / depth_m[ok].astype(np.float32) + quant_b).astype(np.uint16)  # C's truncation
    else:
        raw = np.rint(depth_m * 1000).astype(np.uint16)
    if codec == "png":
        buf = io.BytesIO()
        Image.fromarray(raw).save(buf, format="PNG")
        body = buf.getvalue()
    else:
        body = np.asarray(raw.shape[::-1], "<u4").tobytes() + _rvl_encode(raw)
    header = np.asarray([0], "<i4").tobytes() + np.asarray([quant_a, quant_b], "<f4").tobytes()
    return T["sensor_msgs/msg/CompressedImage"](header=_header(t, CAMERA_FRAME),
                                                format=f"{encoding}; compressedDepth {codec}",
                                                data=np.frombuffer(header + body, np.uint8))


def _stamps(n):
    return [STAMP0 + i * PERIOD for i in range(n)]


@pytest.fixture(scope="module")
def frames(clean_frames):
    return [sf.frame for sf in clean_frames[:6]]


@pytest.fixture(scope="module")
def tf_bag(tmp_path_factory, frames):
    """sqlite3 bag: bgr8 colour with padded rows, 32FC1 depth 4 ms after the colour, poses only through /tf."""
    path = tmp_path_factory.mktemp("bags") / "tf_bag"
    with _BagWriter(path, StoragePlugin.SQLITE3) as bag:
        bag.write("/tf_static", STAMP0 - 1, T["tf2_msgs/msg/TFMessage"](transforms=[
            _transform(0, "base_link", "camera_link", T_BASE_LINK),
            _transform(0, "camera_link", CAMERA_FRAME, T_LINK_OPTICAL)]))
        for i, (t, f) in enumerate(zip(_stamps(len(frames)), frames)):
            T_odom_base = invert_rigid(T_MAP_ODOM) @ f.T_world_cam @ invert_rigid(T_BASE_OPTICAL)
            bag.write("/tf", t, T["tf2_msgs/msg/TFMessage"](transforms=[
                _transform(t, "map", "odom", T_MAP_ODOM), _transform(t, "odom", "base_link", T_odom_base)]))
            bag.write("/camera/color/image_raw", t, _image(t, f.color[..., ::-1].copy(), "bgr8", pad=4))
            if i != 3:  # frame 3 has no depth image: it must be skipped
                bag.write("/camera/depth/image_raw", t + 0.004, _image(t + 0.004, f.depth, "32FC1"))
            bag.write("/camera/depth/camera_info", t, _camera_info(t, f.camera))
            # The same camera poses as PoseStamped of the optical frame itself (no body frame, no tf needed).
            q = matrix_to_quaternion(f.T_world_cam[:3, :3])
            p = f.T_world_cam[:3, 3]
            bag.write("/camera_pose", t, T["geometry_msgs/msg/PoseStamped"](
                header=_header(t, "map"), pose=T["geometry_msgs/msg/Pose"](
                    position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
                    orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))))
        # A last colour + depth pair long after the last transform: no pose, skipped.
        t_late = STAMP0 + 10.0
        bag.write("/camera/color/image_raw", t_late, _image(t_late, frames[0].color, "rgb8"))
        bag.write("/camera/depth/image_raw", t_late, _image(t_late, frames[0].depth, "32FC1"))
    return path


@pytest.fixture(scope="module")
def odom_bag(tmp_path_factory, frames):
    """mcap bag: JPEG colour, 16UC1 depth in mm, poses from nav_msgs/Odometry + the /tf_static chain."""
    path = tmp_path_factory.mktemp("bags") / "odom_bag"
    with _BagWriter(path, StoragePlugin.MCAP) as bag:
        bag.write("/tf_static", STAMP0 - 1, T["tf2_msgs/msg/TFMessage"](transforms=[
            _transform(0, "base_link", "camera_link", T_BASE_LINK),
            _transform(0, "camera_link", CAMERA_FRAME, T_LINK_OPTICAL)]))
        for t, f in zip(_stamps(len(frames)), frames):
            T_map_base = f.T_world_cam @ invert_rigid(T_BASE_OPTICAL)
            q = matrix_to_quaternion(T_map_base[:3, :3])
            pose = T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=T_map_base[0, 3], y=T_map_base[1, 3], z=T_map_base[2, 3]),
                orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
            zero = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
            bag.write("/odom", t, T["nav_msgs/msg/Odometry"](
                header=_header(t, "map"), child_frame_id="base_link",
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36))))
            buf = io.BytesIO()
            Image.fromarray(f.color).save(buf, format="JPEG", quality=95)
            bag.write("/cam/rgb/compressed", t, T["sensor_msgs/msg/CompressedImage"](
                header=_header(t, CAMERA_FRAME), format="rgb8; jpeg compressed bgr8",
                data=np.frombuffer(buf.getvalue(), np.uint8)))
            depth_mm = np.rint(f.depth * 1000).astype(np.uint16)
            bag.write("/cam/depth", t - 0.01, _image(t - 0.01, depth_mm, "16UC1"))
            for encoding in ("16UC1", "32FC1"):
                for codec in ("png", "rvl"):
                    bag.write(f"/cam/depth/{encoding}_{codec}", t - 0.01,
                              _compressed_depth(t - 0.01, f.depth, encoding, codec))
            bag.write("/cam/info", t, _camera_info(t, f.camera))
    return path


def test_tf_chain_bag_round_trip(tf_bag, frames, caplog):
    with caplog.at_level(logging.WARNING, logger="ov3d_ros.data.rosbag"):
        scene = RosbagScene(tf_bag, fixed_frame="map")
    assert "skipped 1 without depth" in caplog.text
    assert scene.skipped == {"no_depth": 1, "no_pose": 1, "no_info": 0, "bad_message": 0}
    kept = [0, 1, 2, 4, 5]
    assert len(scene) == len(kept) and scene.frame_ids == [str(i) for i in range(len(kept))]
    assert scene.camera_frame == CAMERA_FRAME
    assert scene.camera() == frames[0].camera
    with scene:
        for i, k in enumerate(kept):
            f = scene.frame(i)
            f.validate()
            np.testing.assert_allclose(f.T_world_cam, frames[k].T_world_cam, atol=1e-9)
            np.testing.assert_array_equal(f.color, frames[k].color)  # bgr8 with padded rows -> RGB, exact
            np.testing.assert_array_equal(f.depth, frames[k].depth)  # 32FC1 metres, exact
            assert f.depth.dtype == np.float32
            assert f.stamp == pytest.approx(STAMP0 + k * PERIOD, abs=1e-9)


def test_pose_stamped_topic(tf_bag, frames):
    with RosbagScene(tf_bag, pose_topic="/camera_pose") as scene:
        assert len(scene) == 5 and scene.skipped == {"no_depth": 1, "no_pose": 1, "no_info": 0, "bad_message": 0}
        for i, k in enumerate([0, 1, 2, 4, 5]):
            np.testing.assert_allclose(scene.pose(i), frames[k].T_world_cam, atol=1e-9)


def test_odometry_bag_round_trip(odom_bag, frames):
    scene = RosbagScene(odom_bag, color_topic="/cam/rgb/compressed", depth_topic="/cam/depth",
                        info_topic="/cam/info", pose_topic="/odom")
    assert len(scene) == len(frames) and not any(scene.skipped.values())
    for i, f in enumerate(scene):
        np.testing.assert_allclose(f.T_world_cam, frames[i].T_world_cam, atol=1e-9)
        assert f.depth.dtype == np.uint16 and f.depth_scale == 1000.0
        np.testing.assert_array_equal(f.depth, np.rint(frames[i].depth * 1000).astype(np.uint16))
        assert np.abs(f.color.astype(int) - frames[i].color.astype(int)).mean() < 4.0
    scene.close()


def test_rvl_decodes_a_hand_built_stream():
    # [0, 0, 5, 7, 0]: numbers 2 zeros, 2 non-zeros, zig-zag(+5) = 10, zig-zag(+2) = 4, 1 zero, 0 non-zeros;
    # nibbles 2 2 A 1 4 1 0 (10 = 0b1010: low group 2 with "more", then 1), padded: one word 0x22A14100.
    np.testing.assert_array_equal(decode_rvl(bytes([0x00, 0x41, 0xA1, 0x22]), 5), [0, 0, 5, 7, 0])
    rng = np.random.default_rng(3)
    values = rng.integers(0, 65536, 500).astype(np.uint16)
    values[rng.uniform(size=500) < 0.3] = 0  # runs of holes, and deltas of both signs over the whole range
    np.testing.assert_array_equal(decode_rvl(_rvl_encode(values), 500), values)
    with pytest.raises(ValueError, match="ends after"):
        decode_rvl(_rvl_encode(values)[:40], 500)


@pytest.mark.parametrize("codec", ["png", "rvl"])
def test_compressed_depth_topics(odom_bag, frames, codec):
    for encoding in ("16UC1", "32FC1"):
        scene = RosbagScene(odom_bag, color_topic="/cam/rgb/compressed", depth_topic=f"/cam/depth/{encoding}_{codec}",
                            info_topic="/cam/info", pose_topic="/odom")
        assert len(scene) == len(frames)
        with scene:
            for i in (0, len(frames) - 1):
                depth, truth = scene.frame(i).depth, frames[i].depth
                valid = truth > 0
                if encoding == "16UC1":
                    np.testing.assert_array_equal(depth, np.rint(truth * 1000).astype(np.uint16))
                    continue
                # Quantised inverse depth: a step of d^2 / (z0 (z0 + 1)) metres, ~0.4 mm at 2 m.
                assert depth.dtype == np.float32 and np.isnan(depth[~valid]).all()
                step = truth[valid] ** 2 / (QUANT_Z0 * (QUANT_Z0 + 1))
                assert np.all(np.abs(depth[valid] - truth[valid]) <= 1.01 * step + 1e-6)


def test_pairing_respects_the_slop(odom_bag):
    # Depth is 10 ms before colour: a 5 ms slop pairs nothing.
    scene = RosbagScene(odom_bag, color_topic="/cam/rgb/compressed", depth_topic="/cam/depth",
                        info_topic="/cam/info", pose_topic="/odom", slop=0.005)
    assert len(scene) == 0 and scene.skipped["no_depth"] == 6


def test_explicit_body_to_camera_transform(odom_bag, frames):
    # Claiming the odometry body *is* the camera gives T_map_base as the camera pose.
    scene = RosbagScene(odom_bag, color_topic="/cam/rgb/compressed", depth_topic="/cam/depth",
                        info_topic="/cam/info", pose_topic="/odom", T_body_cam=np.eye(4))
    np.testing.assert_allclose(scene.pose(0), frames[0].T_world_cam @ invert_rigid(T_BASE_OPTICAL), atol=1e-9)


def test_bad_configuration_raises(tf_bag, tmp_path):
    with pytest.raises(SceneError, match="no such bag"):
        RosbagScene(tmp_path / "nothing")
    with pytest.raises(ValueError, match="colour topic '/nope' is not in"):
        RosbagScene(tf_bag, color_topic="/nope")
    with pytest.raises(ValueError, match="frame 'world' is not in the bag's tf tree"):
        RosbagScene(tf_bag, fixed_frame="world")
    with pytest.raises(ValueError, match="type"):
        RosbagScene(tf_bag, color_topic="/tf")


def test_missing_rosbags_gives_an_install_hint(tf_bag, monkeypatch):
    import importlib
    import sys

    # The module itself imports without rosbags; only opening a bag needs it.
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)
    module = importlib.reload(importlib.import_module("ov3d_ros.data.rosbag"))
    with pytest.raises(ImportError, match="pip install rosbags"):
        module.RosbagScene(tf_bag)
