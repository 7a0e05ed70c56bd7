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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel, check_rigid
from ov3d_ros.messages import camera_from_info, decode_color, decode_depth, stamp_seconds, transform_matrix
from ov3d_ros.poses import PoseTrack, TransformTree, strip_frame

__all__ = ["RosbagScene"]

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


def _stamp(header) -> float:
    return stamp_seconds(header.stamp)


def _add_tf(tree: TransformTree, transform_stamped, static: bool) -> None:
    tree.add(transform_stamped.header.frame_id, transform_stamped.child_frame_id, _stamp(transform_stamped.header),
             transform_matrix(transform_stamped.transform), static=static)


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
        self.pose_topic, self.fixed_frame = pose_topic, strip_frame(fixed_frame)
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
            self._single_type(by_topic[color_topic], (_IMAGE, _COMPRESSED), "colour")
            self._single_type(by_topic[depth_topic], (_IMAGE, _COMPRESSED), "depth")
            self._single_type(by_topic[info_topic], (_INFO,), "camera info")
            pose_type = None
            if pose_topic is not None:
                pose_type = self._single_type(by_topic[pose_topic], (_ODOM, _POSE, _POSE_COV), "pose")

            color_idx, depth_idx = [], []
            info = None
            tf = TransformTree(max_gap=self.max_pose_gap, tolerance=self.slop)
            track = PoseTrack(pose_topic or "")
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
                    depth_frame_id = depth_frame_id or strip_frame(msg.header.frame_id)
                elif topic == info_topic:
                    if info is None:
                        info = msg
                elif topic == pose_topic:
                    pose = msg.pose.pose if pose_type in (_ODOM, _POSE_COV) else msg.pose
                    p, q = pose.position, pose.orientation
                    track.add(self._msg_stamp(msg, bag_time), translation=(p.x, p.y, p.z),
                              quaternion=(q.x, q.y, q.z, q.w))
                    if pose_type == _ODOM and msg.child_frame_id:
                        pose_frames.add(strip_frame(msg.child_frame_id))
                elif topic in (tf_topic, tf_static_topic):
                    for ts in msg.transforms:
                        _add_tf(tf, ts, static=(topic == tf_static_topic))

        self.camera_model = self._camera_from_info(info)
        self.camera_frame = strip_frame(camera_frame) if camera_frame else depth_frame_id
        depth_idx.sort()
        depth_stamps = np.array([s for s, _ in depth_idx])

        # Pose source: a pose topic (+ body -> camera) or the tf chain fixed_frame -> camera_frame.
        if pose_topic is not None:
            body = strip_frame(pose_frame) if pose_frame else (sorted(pose_frames)[0] if pose_frames else None)
            if T_body_cam is not None:
                T_body_cam = check_rigid(T_body_cam, "RosbagScene: T_body_cam")
            elif body is None or body == self.camera_frame:
                T_body_cam = np.eye(4)
            elif tf and body in tf.frames() and tf.has_chain(body, self.camera_frame):
                T_body_cam = None  # looked up per frame (usually static)
            else:
                raise ValueError(f"RosbagScene: pose topic '{pose_topic}' gives frame '{body}' but there is no tf "
                                 f"chain from it to the camera frame '{self.camera_frame}'; pass T_body_cam")

            def pose_at(stamp):
                T = track.at(stamp, max_gap=self.max_pose_gap, tolerance=self.slop)
                if T is None:
                    return None
                B = T_body_cam if T_body_cam is not None else tf.lookup(body, self.camera_frame, stamp)
                return None if B is None else T @ B
        else:
            if not self.camera_frame:
                raise ValueError("RosbagScene: camera_frame is unknown (the depth images have no frame_id)")
            known = tf.frames()
            for frame in (self.fixed_frame, self.camera_frame):
                if frame not in known:
                    raise ValueError(f"RosbagScene: frame '{frame}' is not in the bag's tf tree "
                                     f"(frames: {sorted(known)})")

            def pose_at(stamp):
                return tf.lookup(self.fixed_frame, self.camera_frame, stamp)

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
    def _msg_stamp(msg, bag_time: int) -> float:
        stamp = _stamp(msg.header)
        return stamp if stamp > 0 else bag_time * 1e-9  # unstamped messages: fall back to the recording time

    @staticmethod
    def _camera_from_info(info) -> CameraModel:
        if info is None:
            raise ValueError("RosbagScene: the camera info topic has no messages")
        if np.any(np.asarray(info.d, dtype=np.float64) != 0):
            _log.warning("RosbagScene: camera info has distortion %s; images are used as if rectified",
                         list(info.d))
        return camera_from_info(info)

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
        depth = decode_depth(self._read_at(self.depth_topic, pair.depth_time))
        if depth.shape != (cam.height, cam.width):
            raise ValueError(f"RosbagScene: depth image is {depth.shape[1]}x{depth.shape[0]} but camera info says "
                             f"{cam.width}x{cam.height}")
        color = decode_color(self._read_at(self.color_topic, pair.color_time))
        if color.shape[:2] != depth.shape:
            from PIL import Image

            if not self._warned_resize:
                _log.warning("RosbagScene: colour %dx%d resized to the depth size %dx%d (register depth to colour "
                             "for exact alignment)", color.shape[1], color.shape[0], cam.width, cam.height)
                self._warned_resize = True
            color = np.asarray(Image.fromarray(color).resize((cam.width, cam.height), Image.BILINEAR))
        return RGBDFrame(color=color, depth=depth, camera=cam, T_world_cam=pair.T_world_cam.copy(), index=i,
                         stamp=pair.stamp, depth_scale=self.depth_scale)
