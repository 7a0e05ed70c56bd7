"""RGB-D frames from rosbag2 recordings (sqlite3 or mcap), read with ``rosbags`` (no ROS installation needed).

Topics (all configurable):
- colour: sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) or sensor_msgs/CompressedImage (jpeg/png);
- depth: sensor_msgs/Image 16UC1 / mono16 (``depth_scale`` units per metre, default mm) or 32FC1 (metres), or a
  CompressedImage from compressed_depth_image_transport (png or rvl; 16UC1, or 32FC1 as quantised inverse depth); the
  depth must be registered to the camera of ``info_topic``;
- camera info: sensor_msgs/CameraInfo of the depth image (K of the first message is used);
- pose, one of:
  * ``pose_topic``: nav_msgs/Odometry or geometry_msgs/PoseStamped (or PoseWithCovarianceStamped) giving the pose
    of a body frame (Odometry's child_frame_id, or ``pose_frame``) in a fixed frame; the body -> camera transform
    comes from ``T_body_cam``, else from /tf_static (+ /tf), else identity when the body is the camera frame;
  * otherwise /tf and /tf_static: the chain ``fixed_frame`` -> camera optical frame (``camera_frame``, by default
    the depth image's header frame_id), composed edge by edge, each dynamic edge interpolated at the image stamp.

Colour, depth and pose are paired by header stamp: for each colour image the nearest depth image within ``slop``
seconds, and the pose interpolated at the colour stamp (nearest within ``slop`` where it cannot be bracketed).
Frames without a partner are skipped and counted (``skipped`` dict, logged).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel, check_rigid, invert_rigid

__all__ = ["RosbagScene", "decode_rvl", "quaternion_to_matrix", "matrix_to_quaternion", "pose_to_matrix"]

_log = logging.getLogger(__name__)

_IMAGE = "sensor_msgs/msg/Image"
_COMPRESSED = "sensor_msgs/msg/CompressedImage"
_INFO = "sensor_msgs/msg/CameraInfo"
_ODOM = "nav_msgs/msg/Odometry"
_POSE = "geometry_msgs/msg/PoseStamped"
_POSE_COV = "geometry_msgs/msg/PoseWithCovarianceStamped"
_TF = "tf2_msgs/msg/TFMessage"


def _import_rosbags():
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise ImportError("reading rosbag2 recordings needs the 'rosbags' package: pip install rosbags") from exc
    return AnyReader, get_typestore(Stores.ROS2_KILTED)


# ----------------------------------------------------------------------------------------------------------------------
# Small rigid-transform helpers (quaternions in ROS order x, y, z, w)
# ----------------------------------------------------------------------------------------------------------------------
def quaternion_to_matrix(q) -> np.ndarray:
    """3x3 rotation of a unit quaternion (x, y, z, w); normalised first (messages carry float rounding)."""
    x, y, z, w = np.asarray(q, dtype=np.float64)
    n = x * x + y * y + z * z + w * w
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q} is not a rotation (zero or non-finite norm)")
    s = 2.0 / n
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ])


def matrix_to_quaternion(R) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 of a 3x3 rotation (branch on the largest diagonal term)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def pose_to_matrix(translation, quaternion) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(quaternion)
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    dot = float(q0 @ q1)
    if dot < 0:  # take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)


class _PoseTrack:
    """Time-stamped rigid transforms of one thing; ``at(t)`` interpolates (lerp + slerp) or takes the nearest."""

    def __init__(self, name: str):
        self.name = name
        self._stamps: list[float] = []
        self._t: list[np.ndarray] = []
        self._q: list[np.ndarray] = []
        self._sorted = True

    def add(self, stamp: float, translation, quaternion) -> None:
        if self._stamps and stamp < self._stamps[-1]:
            self._sorted = False
        self._stamps.append(float(stamp))
        self._t.append(np.asarray(translation, dtype=np.float64))
        self._q.append(np.asarray(quaternion, dtype=np.float64))

    def __len__(self) -> int:
        return len(self._stamps)

    def _finish(self) -> None:
        if not self._sorted:
            order = np.argsort(self._stamps, kind="stable")
            self._stamps = [self._stamps[i] for i in order]
            self._t = [self._t[i] for i in order]
            self._q = [self._q[i] for i in order]
            self._sorted = True

    def at(self, stamp: float, max_gap: float, slop: float) -> np.ndarray | None:
        """Pose at ``stamp``: interpolated between the samples around it when they are at most ``max_gap`` apart,
        else the nearest sample if within ``slop``; None otherwise."""
        self._finish()
        if not self._stamps:
            return None
        stamps = np.asarray(self._stamps)
        k = int(np.searchsorted(stamps, stamp))
        if k < len(stamps) and stamps[k] == stamp:
            return pose_to_matrix(self._t[k], self._q[k])
        if 0 < k < len(stamps) and stamps[k] - stamps[k - 1] <= max_gap:
            a = (stamp - stamps[k - 1]) / (stamps[k] - stamps[k - 1])
            t = (1 - a) * self._t[k - 1] + a * self._t[k]
            return pose_to_matrix(t, _slerp(self._q[k - 1], self._q[k], a))
        candidates = [j for j in (k - 1, k) if 0 <= j < len(stamps)]
        j = min(candidates, key=lambda j: abs(stamps[j] - stamp))
        if abs(stamps[j] - stamp) <= slop:
            return pose_to_matrix(self._t[j], self._q[j])
        return None


def _strip(frame_id: str) -> str:
    return frame_id[1:] if frame_id.startswith("/") else frame_id


class _TfTree:
    """Edges parent -> child from /tf (time-varying) and /tf_static (constant); chains looked up at a stamp."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.static: dict[str, np.ndarray] = {}  # child -> T_parent_child
        self.dynamic: dict[str, _PoseTrack] = {}

    def add(self, transform_stamped, is_static: bool) -> None:
        child = _strip(transform_stamped.child_frame_id)
        parent = _strip(transform_stamped.header.frame_id)
        tr = transform_stamped.transform
        t = (tr.translation.x, tr.translation.y, tr.translation.z)
        q = (tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w)
        if self.parent.get(child, parent) != parent:
            _log.warning("tf: frame '%s' has two parents ('%s' and '%s'); keeping the first", child,
                         self.parent[child], parent)
            return
        self.parent[child] = parent
        if is_static:
            self.static[child] = pose_to_matrix(t, q)
        else:
            self.dynamic.setdefault(child, _PoseTrack(child)).add(_stamp(transform_stamped.header), t, q)

    def __bool__(self) -> bool:
        return bool(self.parent)

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while path[-1] in self.parent:
            path.append(self.parent[path[-1]])
            if len(path) > 1000:
                raise ValueError(f"tf: cycle in the transform tree above '{frame}'")
        return path

    def has_chain(self, target: str, source: str) -> bool:
        return self._path_to_root(target)[-1] == self._path_to_root(source)[-1]

    def lookup(self, target: str, source: str, stamp: float, max_gap: float, slop: float) -> np.ndarray | None:
        """T_target_source at ``stamp`` (maps points in ``source`` to ``target``), None when not available."""
        up_t, up_s = self._path_to_root(target), self._path_to_root(source)
        if up_t[-1] != up_s[-1]:
            raise ValueError(f"tf: no chain between '{target}' and '{source}' (roots '{up_t[-1]}' and "
                             f"'{up_s[-1]}'); frames known: {sorted(set(self.parent) | set(self.parent.values()))}")
        common = next(f for f in up_s if f in set(up_t))

        def to_ancestor(path):  # T_common_frame for path[0]
            T = np.eye(4)
            for child in path[: path.index(common)]:
                if child in self.static:
                    edge = self.static[child]
                else:
                    edge = self.dynamic[child].at(stamp, max_gap, slop)
                    if edge is None:
                        return None
                T = edge @ T
            return T

        T_common_source, T_common_target = to_ancestor(up_s), to_ancestor(up_t)
        if T_common_source is None or T_common_target is None:
            return None
        return invert_rigid(T_common_target) @ T_common_source


def _stamp(header) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


# ----------------------------------------------------------------------------------------------------------------------
# Image decoding
# ----------------------------------------------------------------------------------------------------------------------
def _image_array(msg, what: str) -> np.ndarray:
    enc = msg.encoding.lower()
    channels, dtype = {
        "rgb8": (3, "u1"), "bgr8": (3, "u1"), "rgba8": (4, "u1"), "bgra8": (4, "u1"), "mono8": (1, "u1"),
        "8uc1": (1, "u1"), "8uc3": (3, "u1"), "16uc1": (1, "u2"), "mono16": (1, "u2"), "32fc1": (1, "f4"),
    }.get(enc, (None, None))
    if channels is None:
        raise ValueError(f"{what}: unsupported image encoding '{msg.encoding}'")
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * channels * dt.itemsize
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"{what}: image data too short for {msg.width}x{msg.height} '{msg.encoding}' "
                         f"(step {msg.step}, {len(msg.data)} bytes)")
    raw = np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=np.uint8)
    rows = raw[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row_bytes]  # drop row padding
    img = np.ascontiguousarray(rows).view(dt).reshape(msg.height, msg.width, channels)
    return img.astype(dt.newbyteorder("="), copy=False)


def _decode_color(msg, msgtype: str) -> np.ndarray:
    if msgtype == _COMPRESSED:
        from PIL import Image

        with Image.open(io.BytesIO(np.asarray(msg.data, dtype=np.uint8).tobytes())) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    img = _image_array(msg, "colour image")
    enc = msg.encoding.lower()
    if img.dtype != np.uint8:
        raise ValueError(f"colour image: encoding '{msg.encoding}' is not 8-bit")
    if enc in ("bgr8", "bgra8"):
        img = img[..., [2, 1, 0]]
    elif enc in ("mono8", "8uc1"):
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def decode_rvl(data: bytes, n_pixels: int) -> np.ndarray:
    """Decode an RVL stream (Wilson 2017, as compressed_depth_image_transport writes it) into ``n_pixels`` uint16.

    The stream is little-endian 32-bit words read four bits at a time from the top. Every number is a variable-length
    code: 3 payload bits per nibble, least significant group first, the nibble's high bit set while more follow.
    The numbers come as runs: a count of zeros, a count of non-zeros, then each non-zero as the zig-zag coded
    difference from the previous non-zero value.
    """
    words = np.frombuffer(data[: len(data) // 4 * 4], dtype="<u4")
    nibbles = ((words[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF).reshape(-1).astype(np.int64)
    last = (nibbles & 0x8) == 0  # the final nibble of a number
    ends = np.flatnonzero(last)
    if len(ends) == 0:
        raise ValueError("RVL depth: the stream holds no complete number")
    nibbles = nibbles[: ends[-1] + 1]
    number = np.concatenate([[0], np.cumsum(last[: len(nibbles) - 1])])  # which number each nibble belongs to
    starts = np.concatenate([[0], ends[:-1] + 1])
    shift = 3 * (np.arange(len(nibbles)) - starts[number])
    if shift.max(initial=0) > 30:  # 11 nibbles (33 bits) hold any count or delta; more means a corrupt stream
        raise ValueError("RVL depth: a number longer than 11 nibbles (corrupt stream)")
    values = np.bincount(number, weights=(nibbles & 0x7) << shift, minlength=len(ends)).astype(np.int64)

    run_lengths, deltas = [], []
    i = decoded = 0
    while decoded < n_pixels:
        if i + 2 > len(values) or i + 2 + int(values[i + 1]) > len(values):
            raise ValueError(f"RVL depth: the stream ends after {decoded} of {n_pixels} pixels")
        zeros, nonzeros = int(values[i]), int(values[i + 1])
        if decoded + zeros + nonzeros > n_pixels:
            raise ValueError(f"RVL depth: a run overflows the {n_pixels}-pixel image (corrupt stream)")
        run_lengths += [zeros, nonzeros]
        deltas.append(values[i + 2: i + 2 + nonzeros])
        i += 2 + nonzeros
        decoded += zeros + nonzeros
    zigzag = np.concatenate(deltas) if deltas else np.zeros(0, np.int64)
    delta = (zigzag >> 1) ^ -(zigzag & 1)
    out = np.zeros(n_pixels, dtype=np.uint16)
    nonzero = np.repeat(np.tile([False, True], len(run_lengths) // 2), run_lengths)
    out[nonzero] = (np.cumsum(delta) & 0xFFFF).astype(np.uint16)  # uint16 arithmetic, as the encoder wraps
    return out


def _decode_compressed_depth(msg) -> np.ndarray:
    """compressed_depth_image_transport messages: '<encoding>; compressedDepth [png|rvl]' (png when unnamed).

    The data is a 12-byte header (int32 format, float32 quantisation A and B) and the image. 16-bit encodings hold
    the raw depth; 32FC1 holds quantised inverse depth q, decoded as A / (q - B) metres (q = 0: no depth, NaN).
    """
    encoding, _, transport = msg.format.partition(";")
    transport = transport.strip().lower()
    if "compresseddepth" not in transport:
        raise ValueError(f"depth image: CompressedImage format '{msg.format}' is not compressedDepth")
    codec = transport.replace("compresseddepth", "", 1).strip() or "png"
    if codec not in ("png", "rvl"):
        raise ValueError(f"depth image: compressedDepth codec '{codec}' is not read (png and rvl are)")
    data = np.asarray(msg.data, dtype=np.uint8).tobytes()
    if len(data) <= 12:
        raise ValueError(f"depth image: compressedDepth message of {len(data)} bytes holds no image")
    quant_a, quant_b = np.frombuffer(data[4:12], dtype="<f4").astype(np.float64)
    payload = data[12:]
    if codec == "png":
        from PIL import Image

        with Image.open(io.BytesIO(payload)) as img:
            raw = np.asarray(img).astype(np.uint16)
    else:
        if len(payload) < 8:
            raise ValueError("depth image: RVL compressedDepth payload too short for its size field")
        cols, rows = (int(v) for v in np.frombuffer(payload[:8], dtype="<u4"))
        if cols == 0 or rows == 0 or rows * cols > 2 ** 26:  # a corrupt size field, not a 64-megapixel camera
            raise ValueError(f"depth image: RVL compressedDepth reports an implausible size {cols}x{rows}")
        raw = decode_rvl(payload[8:], rows * cols).reshape(rows, cols)
    if encoding.strip().lower() != "32fc1":
        return np.ascontiguousarray(raw)
    depth = np.full(raw.shape, np.nan, dtype=np.float32)
    valid = raw > 0
    depth[valid] = quant_a / (raw[valid].astype(np.float64) - quant_b)
    return depth


def _decode_depth(msg, msgtype: str) -> np.ndarray:
    if msgtype == _COMPRESSED:
        return _decode_compressed_depth(msg)
    img = _image_array(msg, "depth image")[..., 0]
    if img.dtype == np.uint16:
        return np.ascontiguousarray(img)
    if img.dtype == np.float32:
        return np.ascontiguousarray(img)
    raise ValueError(f"depth image: encoding '{msg.encoding}' is not 16UC1 (mm) or 32FC1 (m)")


# ----------------------------------------------------------------------------------------------------------------------
# The scene
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class _Pairing:
    color_time: int  # bag (receive) timestamps, ns: how frame() finds the messages again
    depth_time: int
    stamp: float  # header stamp of the colour image, s
    T_world_cam: np.ndarray


class RosbagScene:
    """RGB-D frames of a rosbag2 recording; ``len``, ``frame(i)``, ``frame_ids``, iteration like ScanNetScene.

    ``path``: the bag folder (with metadata.yaml) or a single .db3 / .mcap file inside one. See the module
    docstring for the topics and how poses are found. The bag is indexed on construction (one pass that decodes
    headers and poses); ``frame(i)`` reads the two images of frame i. Use as a context manager, or ``close()``.
    """

    def __init__(self, path, *, color_topic: str = "/camera/color/image_raw",
                 depth_topic: str = "/camera/depth/image_raw", info_topic: str = "/camera/depth/camera_info",
                 pose_topic: str | None = None, fixed_frame: str = "map", camera_frame: str | None = None,
                 pose_frame: str | None = None, T_body_cam=None, tf_topic: str = "/tf",
                 tf_static_topic: str = "/tf_static", slop: float = 0.02, max_pose_gap: float = 0.5,
                 depth_scale: float = 1000.0):
        AnyReader, self._typestore = _import_rosbags()
        path = Path(path)
        if path.is_file() and path.suffix in (".db3", ".mcap"):
            path = path.parent
        if not path.exists():
            raise FileNotFoundError(f"RosbagScene: no such bag: {path}")
        if not (path / "metadata.yaml").is_file():
            raise FileNotFoundError(f"RosbagScene: {path} is not a rosbag2 folder (no metadata.yaml)")
        self.path = path
        self.color_topic, self.depth_topic, self.info_topic = color_topic, depth_topic, info_topic
        self.pose_topic, self.fixed_frame = pose_topic, _strip(fixed_frame)
        self.slop, self.max_pose_gap = float(slop), float(max_pose_gap)
        self.depth_scale = float(depth_scale)
        if not (self.slop >= 0 and self.max_pose_gap >= 0 and self.depth_scale > 0):
            raise ValueError("RosbagScene: slop and max_pose_gap must be >= 0 and depth_scale > 0")
        self._AnyReader = AnyReader
        self._reader = None
        self.skipped: dict[str, int] = {"no_depth": 0, "no_pose": 0}
        self._warned_resize = False

        with AnyReader([path], default_typestore=self._typestore) as reader:
            by_topic = {}
            for c in reader.connections:
                by_topic.setdefault(c.topic, []).append(c)
            for topic, what in ((color_topic, "colour"), (depth_topic, "depth"), (info_topic, "camera info")):
                if topic not in by_topic:
                    raise ValueError(f"RosbagScene: {what} topic '{topic}' is not in {path} "
                                     f"(topics: {sorted(by_topic)})")
            if pose_topic is not None and pose_topic not in by_topic:
                raise ValueError(f"RosbagScene: pose topic '{pose_topic}' is not in {path} "
                                 f"(topics: {sorted(by_topic)})")
            if pose_topic is None and tf_topic not in by_topic and tf_static_topic not in by_topic:
                raise ValueError(f"RosbagScene: no pose source in {path}: give pose_topic (Odometry/PoseStamped) "
                                 f"or record {tf_topic} / {tf_static_topic} (topics: {sorted(by_topic)})")
            self._color_type = self._single_type(by_topic[color_topic], (_IMAGE, _COMPRESSED), "colour")
            self._depth_type = self._single_type(by_topic[depth_topic], (_IMAGE, _COMPRESSED), "depth")
            self._single_type(by_topic[info_topic], (_INFO,), "camera info")
            pose_type = None
            if pose_topic is not None:
                pose_type = self._single_type(by_topic[pose_topic], (_ODOM, _POSE, _POSE_COV), "pose")

            color_idx, depth_idx = [], []
            info = None
            tf = _TfTree()
            track = _PoseTrack(pose_topic or "")
            pose_frames: set[str] = set()
            depth_frame_id = None
            wanted = [c for t in (color_topic, depth_topic, info_topic, pose_topic, tf_topic, tf_static_topic)
                      if t in by_topic for c in by_topic[t]]
            for conn, bag_time, raw in reader.messages(connections=wanted):
                msg = reader.deserialize(raw, conn.msgtype)
                topic = conn.topic
                if topic == color_topic:
                    color_idx.append((self._msg_stamp(msg, bag_time), bag_time))
                elif topic == depth_topic:
                    depth_idx.append((self._msg_stamp(msg, bag_time), bag_time))
                    depth_frame_id = depth_frame_id or _strip(msg.header.frame_id)
                elif topic == info_topic:
                    if info is None:
                        info = msg
                elif topic == pose_topic:
                    pose = msg.pose.pose if pose_type in (_ODOM, _POSE_COV) else msg.pose
                    p, q = pose.position, pose.orientation
                    track.add(self._msg_stamp(msg, bag_time), (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
                    if pose_type == _ODOM and msg.child_frame_id:
                        pose_frames.add(_strip(msg.child_frame_id))
                elif topic in (tf_topic, tf_static_topic):
                    for ts in msg.transforms:
                        tf.add(ts, is_static=(topic == tf_static_topic))

        self.camera_model = self._camera_from_info(info)
        self.camera_frame = _strip(camera_frame) if camera_frame else depth_frame_id
        depth_idx.sort()
        depth_stamps = np.array([s for s, _ in depth_idx])

        # Pose source: a pose topic (+ body -> camera) or the tf chain fixed_frame -> camera_frame.
        if pose_topic is not None:
            body = _strip(pose_frame) if pose_frame else (sorted(pose_frames)[0] if pose_frames else None)
            if T_body_cam is not None:
                T_body_cam = check_rigid(T_body_cam, "RosbagScene: T_body_cam")
            elif body is None or body == self.camera_frame:
                T_body_cam = np.eye(4)
            elif tf and body in self._known_frames(tf) and tf.has_chain(body, self.camera_frame):
                T_body_cam = None  # looked up per frame (usually static)
            else:
                raise ValueError(f"RosbagScene: pose topic '{pose_topic}' gives frame '{body}' but there is no tf "
                                 f"chain from it to the camera frame '{self.camera_frame}'; pass T_body_cam")

            def pose_at(stamp):
                T = track.at(stamp, self.max_pose_gap, self.slop)
                if T is None:
                    return None
                B = T_body_cam if T_body_cam is not None else tf.lookup(body, self.camera_frame, stamp,
                                                                        self.max_pose_gap, self.slop)
                return None if B is None else T @ B
        else:
            if not self.camera_frame:
                raise ValueError("RosbagScene: camera_frame is unknown (the depth images have no frame_id)")
            known = self._known_frames(tf)
            for frame in (self.fixed_frame, self.camera_frame):
                if frame not in known:
                    raise ValueError(f"RosbagScene: frame '{frame}' is not in the bag's tf tree "
                                     f"(frames: {sorted(known)})")

            def pose_at(stamp):
                return tf.lookup(self.fixed_frame, self.camera_frame, stamp, self.max_pose_gap, self.slop)

        self._pairs: list[_Pairing] = []
        for stamp, bag_time in sorted(color_idx):
            if len(depth_stamps) == 0:
                self.skipped["no_depth"] += 1
                continue
            k = int(np.searchsorted(depth_stamps, stamp))
            j = min((j for j in (k - 1, k) if 0 <= j < len(depth_stamps)), key=lambda j: abs(depth_stamps[j] - stamp))
            if abs(depth_stamps[j] - stamp) > self.slop:
                self.skipped["no_depth"] += 1
                continue
            T = pose_at(stamp)
            if T is None:
                self.skipped["no_pose"] += 1
                continue
            self._pairs.append(_Pairing(bag_time, depth_idx[j][1], stamp, check_rigid(T, "RosbagScene: pose")))
        if any(self.skipped.values()):
            _log.warning("RosbagScene %s: %d colour images, %d frames paired; skipped %d without depth within "
                         "%.3f s and %d without a pose", path.name, len(color_idx), len(self._pairs),
                         self.skipped["no_depth"], self.slop, self.skipped["no_pose"])
        self.frame_ids = [str(i) for i in range(len(self._pairs))]

    # -------------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _single_type(conns, allowed, what) -> str:
        types = {c.msgtype for c in conns}
        if len(types) != 1 or next(iter(types)) not in allowed:
            raise ValueError(f"RosbagScene: {what} topic '{conns[0].topic}' has type(s) {sorted(types)}, expected "
                             f"one of {list(allowed)}")
        return next(iter(types))

    @staticmethod
    def _known_frames(tf: _TfTree) -> set[str]:
        return set(tf.parent) | set(tf.parent.values())

    @staticmethod
    def _msg_stamp(msg, bag_time: int) -> float:
        stamp = _stamp(msg.header)
        return stamp if stamp > 0 else bag_time * 1e-9  # unstamped messages: fall back to the recording time

    @staticmethod
    def _camera_from_info(info) -> CameraModel:
        if info is None:
            raise ValueError("RosbagScene: the camera info topic has no messages")
        K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        if np.any(np.asarray(info.d, dtype=np.float64) != 0):
            _log.warning("RosbagScene: camera info has distortion %s; images are used as if rectified",
                         list(info.d))
        return CameraModel.from_K(K, int(info.width), int(info.height))

    # -------------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self):
        for i in range(len(self)):
            yield self.frame(i)

    def __getitem__(self, i: int) -> RGBDFrame:
        return self.frame(i)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    def __repr__(self) -> str:
        return f"RosbagScene({str(self.path)!r}, frames={len(self)})"

    def pose(self, i: int) -> np.ndarray:
        return self._pairs[i].T_world_cam.copy()

    def camera(self) -> CameraModel:
        return self.camera_model

    def _read_at(self, topic: str, bag_time: int):
        if self._reader is None:
            self._reader = self._AnyReader([self.path], default_typestore=self._typestore)
            self._reader.open()
        conns = [c for c in self._reader.connections if c.topic == topic]
        for conn, _, raw in self._reader.messages(connections=conns, start=bag_time, stop=bag_time + 1):
            return self._reader.deserialize(raw, conn.msgtype)
        raise ValueError(f"RosbagScene: message of '{topic}' at {bag_time} ns vanished from {self.path}")

    def frame(self, i: int) -> RGBDFrame:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"RosbagScene.frame: index must be an int, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"RosbagScene.frame: index {i} out of range for {len(self)} frames")
        i = int(i) % len(self)
        pair = self._pairs[i]
        cam = self.camera_model
        depth = _decode_depth(self._read_at(self.depth_topic, pair.depth_time), self._depth_type)
        if depth.shape != (cam.height, cam.width):
            raise ValueError(f"RosbagScene: depth image is {depth.shape[1]}x{depth.shape[0]} but camera info says "
                             f"{cam.width}x{cam.height}")
        color = _decode_color(self._read_at(self.color_topic, pair.color_time), self._color_type)
        if color.shape[:2] != depth.shape:
            from PIL import Image

            if not self._warned_resize:
                _log.warning("RosbagScene: colour %dx%d resized to the depth size %dx%d (register depth to colour "
                             "for exact alignment)", color.shape[1], color.shape[0], cam.width, cam.height)
                self._warned_resize = True
            color = np.asarray(Image.fromarray(color).resize((cam.width, cam.height), Image.BILINEAR))
        return RGBDFrame(color=color, depth=depth, camera=cam, T_world_cam=pair.T_world_cam.copy(), index=i,
                         stamp=pair.stamp, depth_scale=self.depth_scale)
