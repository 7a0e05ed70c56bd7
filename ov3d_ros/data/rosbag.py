"""RGB-D frames from rosbag2 recordings (sqlite3 or mcap), read with ``rosbags`` (no ROS installation needed).

Topics (found in the bag when not given):
- colour: sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) or sensor_msgs/CompressedImage (jpeg/png);
- depth: sensor_msgs/Image 16UC1 / mono16 (``depth_scale`` units per metre, default mm) or 32FC1 (metres), or a
  CompressedImage from compressed_depth_image_transport (png or rvl; 16UC1, or 32FC1 as quantised inverse depth); the
  depth must be registered to the camera of ``info_topic``;
- camera info: sensor_msgs/CameraInfo of the depth image;
- pose, one of:
  * ``pose_topic``: nav_msgs/Odometry or geometry_msgs/PoseStamped (or PoseWithCovarianceStamped) giving the pose
    of a body frame (Odometry's child_frame_id, or ``pose_frame``) in a fixed frame; the body -> camera transform
    comes from ``T_body_cam``, else from /tf_static (+ /tf), else identity when the body is the camera frame;
  * otherwise /tf and /tf_static: the chain ``fixed_frame`` -> camera optical frame (``camera_frame``, by default
    the depth image's header frame_id), composed edge by edge, each dynamic edge interpolated at the image stamp.
    The fixed frame is ``map`` when the tree has it, else the root of the camera's tree.

A topic left out is found by its type: the image topics whose names hold "depth" are depth, the others colour; the
camera info is the one beside the depth image (same namespace), or the only one. The realsense2_camera names
(``messages.CAMERA_TOPICS``) win when several match; otherwise several matches are an error that lists them.

Colour, depth and pose are paired by header stamp: for each colour image the nearest depth image within ``slop``
seconds, and the pose interpolated at the colour stamp (nearest within ``slop`` where it cannot be bracketed).
Frames without a partner are skipped and counted (``skipped``, logged).

``CameraStream`` does this in one pass over the bag, in recording order, holding only the frames whose partners may
still come (about ``max_pose_gap`` seconds of them): the live bag player streams it. ``RosbagScene`` indexes a bag
with the same stream and reads frame i again on demand (training, ``ov3d-fuse``), so both pair and pose alike.
"""
from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ov3d_ros.data.errors import FrameError, SceneError
from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel, check_rigid
from ov3d_ros.messages import (CAMERA_TOPICS, camera_from_info, decode_color, decode_depth, pose_matrix,
                               stamp_seconds, transform_matrix)
from ov3d_ros.poses import PoseTrack, TransformTree, strip_frame

__all__ = ["RosbagScene", "CameraStream", "BagFrame", "BagMessage", "find_camera_topics", "bag_folder",
           "add_stream_arguments", "stream_options"]

_log = logging.getLogger(__name__)

_IMAGE = "sensor_msgs/msg/Image"
_COMPRESSED = "sensor_msgs/msg/CompressedImage"
_INFO = "sensor_msgs/msg/CameraInfo"
_ODOM = "nav_msgs/msg/Odometry"
_POSE = "geometry_msgs/msg/PoseStamped"
_POSE_COV = "geometry_msgs/msg/PoseWithCovarianceStamped"
_TF = "tf2_msgs/msg/TFMessage"
_IMAGES = (_IMAGE, _COMPRESSED)
_POSES = (_ODOM, _POSE, _POSE_COV)
_TRANSPORTS = ("compressed", "compressedDepth", "theora", "zstd", "ffmpeg")


def _import_rosbags():
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:
        raise ImportError("reading rosbag2 recordings needs the 'rosbags' package: pip install rosbags") from exc
    return AnyReader, get_typestore(Stores.ROS2_KILTED)


def bag_folder(path) -> Path:
    """The rosbag2 folder of ``path`` (the folder itself, or the folder of one of its .db3 / .mcap files);
    SceneError when it is not one."""
    path = Path(path)
    if path.is_file() and path.suffix in (".db3", ".mcap"):
        path = path.parent
    if not path.exists():
        raise SceneError(f"no such bag: {path}")
    if not (path / "metadata.yaml").is_file():
        raise SceneError(f"{path} is not a rosbag2 folder (no metadata.yaml)")
    return path


def _namespace(topic: str) -> str:
    """The camera namespace of an image topic: /ns/image_raw/compressed -> /ns."""
    parts = topic.rstrip("/").split("/")
    if len(parts) > 2 and parts[-1] in _TRANSPORTS:
        parts = parts[:-1]
    return "/".join(parts[:-1])


def _pick(what: str, option: str, candidates: list[str], preferred: str) -> str:
    if preferred in candidates:
        return preferred
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise SceneError(f"no {what} topic in the bag; name it with {option}")
    raise SceneError(f"several {what} topics in the bag ({', '.join(sorted(candidates))}); choose one with {option}")


def find_camera_topics(types: dict[str, str], color: str | None = None, depth: str | None = None,
                       info: str | None = None) -> tuple[str, str, str]:
    """(colour, depth, camera info) topics of a bag whose topics have the message ``types`` ({topic: msgtype});
    given topics are kept, the others found as the module docstring says (SceneError when ambiguous)."""
    images = [t for t, m in types.items() if m in _IMAGES]
    if depth is None:
        depth = _pick("depth image", "--depth-topic", [t for t in images if "depth" in t.lower()],
                      CAMERA_TOPICS["depth"])
    if color is None:
        color = _pick("colour image", "--color-topic", [t for t in images if "depth" not in t.lower()],
                      CAMERA_TOPICS["color"])
    if info is None:
        infos = [t for t, m in types.items() if m == _INFO]
        beside = [t for t in infos if _namespace(t) == _namespace(depth)]
        info = beside[0] if len(beside) == 1 else _pick("camera info", "--info-topic", infos, CAMERA_TOPICS["info"])
    return color, depth, info


def add_stream_arguments(group) -> None:
    """The command-line options of a CameraStream (ov3d-fuse, ov3d-run --bag), on an argparse group."""
    group.add_argument("--color-topic", help="colour image topic (default: found in the bag, realsense2_camera "
                                             "names first)")
    group.add_argument("--depth-topic", help="depth image topic (default: found in the bag)")
    group.add_argument("--info-topic", help="camera info topic (default: the one beside the depth topic)")
    group.add_argument("--pose-topic", help="Odometry/PoseStamped topic (default: /tf + /tf_static)")
    group.add_argument("--fixed-frame", help="map frame of the tf tree (default: map if present, else the root)")
    group.add_argument("--camera-frame", help="camera optical frame (default: the depth images' frame_id)")
    group.add_argument("--strict", action="store_true",
                       help="stop at the first unreadable frame or message instead of skipping it")


def stream_options(args) -> dict:
    """The CameraStream keywords of arguments parsed with ``add_stream_arguments``."""
    return dict(color_topic=args.color_topic, depth_topic=args.depth_topic, info_topic=args.info_topic,
                pose_topic=args.pose_topic, fixed_frame=args.fixed_frame, camera_frame=args.camera_frame,
                strict=args.strict)


# ----------------------------------------------------------------------------------------------------------------------
# One pass over a bag: frames with poses, in recording order
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class BagMessage:
    """One recorded message: its serialised bytes (CDR, what a publisher sends), the decoded message and times."""
    topic: str
    msgtype: str
    raw: bytes
    msg: object
    stamp: float  # header stamp, s (the recording time when the header has none)
    bag_time: int  # recording time, ns


@dataclass
class BagFrame:
    """A colour image with its depth image, camera info and camera pose (T_world_cam in the fixed frame)."""
    stamp: float  # the colour image's stamp
    color: BagMessage
    depth: BagMessage
    info: BagMessage
    T_world_cam: np.ndarray


class CameraStream:
    """The RGB-D frames of a rosbag2 recording in one streamed pass; see the module docstring.

    Construction opens the bag and settles the topics and the pose source (SceneError or ValueError naming what is
    wrong). ``frames()`` yields BagFrame in stamp order; afterwards ``skipped`` counts the colour images without
    depth, pose or camera info and the unreadable messages, and ``truncated`` says whether the bag ended early (a
    damaged file: the frames before the damage are still yielded). Frames are released once their partners can no
    longer change, so memory holds about ``max_pose_gap`` seconds of frames.
    """

    def __init__(self, path, *, color_topic: str | None = None, depth_topic: str | None = None,
                 info_topic: str | None = None, pose_topic: str | None = None, fixed_frame: str | None = None,
                 camera_frame: str | None = None, pose_frame: str | None = None, T_body_cam=None,
                 tf_topic: str = "/tf", tf_static_topic: str = "/tf_static", slop: float = 0.02,
                 max_pose_gap: float = 0.5, strict: bool = False):
        AnyReader, self._typestore = _import_rosbags()
        self.path = bag_folder(path)
        self.slop, self.max_pose_gap, self.strict = float(slop), float(max_pose_gap), bool(strict)
        if not (self.slop >= 0 and self.max_pose_gap >= 0):
            raise ValueError("CameraStream: slop and max_pose_gap must be >= 0")
        self._reader = AnyReader([self.path], default_typestore=self._typestore)
        self._scan = None
        self.recovered = False  # read record by record: the file's end (its index) is missing
        try:
            self._reader.open()
        except Exception as exc:  # rosbags raises its own error types for every kind of damage
            self._reader = None
            self._scan = self._recover(exc)
        try:
            self._settle(color_topic, depth_topic, info_topic, pose_topic, fixed_frame, camera_frame, pose_frame,
                         T_body_cam, tf_topic, tf_static_topic)
        except BaseException:
            self.close()
            raise
        self.skipped = {"no_depth": 0, "no_pose": 0, "no_info": 0, "bad_message": 0}
        self.truncated = False

    def _recover(self, exc: Exception):
        """A McapScan of the bag's one .mcap file when rosbags cannot open it; SceneError otherwise."""
        from ov3d_ros.data.mcap_scan import McapScan

        files = sorted(self.path.glob("*.mcap"))
        reason = (f"cannot read the bag {self.path}, it is damaged or not a rosbag2 recording: "
                  f"{' '.join(str(exc).split())}")  # one line
        if len(files) != 1 or self.strict:
            raise SceneError(reason)
        try:
            scan = McapScan(files[0])
        except (OSError, ValueError) as scan_exc:
            raise SceneError(f"{reason} ({scan_exc})") from None
        _log.warning("%s; reading %s record by record, up to where it ends", reason, files[0].name)
        self.recovered = True
        return scan

    def _settle(self, color_topic, depth_topic, info_topic, pose_topic, fixed_frame, camera_frame, pose_frame,
                T_body_cam, tf_topic, tf_static_topic) -> None:
        by_topic: dict[str, list] = {}
        for c in (self._reader.connections if self._reader is not None else self._scan.channels.values()):
            by_topic.setdefault(c.topic, []).append(c)
        types = {t: sorted({c.msgtype for c in conns})[0] for t, conns in by_topic.items()}
        listing = f"(topics: {sorted(by_topic)})"
        for topic, what in ((color_topic, "colour"), (depth_topic, "depth"), (info_topic, "camera info"),
                            (pose_topic, "pose")):
            if topic is not None and topic not in by_topic:
                raise SceneError(f"{what} topic '{topic}' is not in {self.path} {listing}")
        try:
            color_topic, depth_topic, info_topic = find_camera_topics(types, color_topic, depth_topic, info_topic)
        except SceneError as exc:
            raise SceneError(f"{self.path}: {exc} {listing}") from None
        self._single_type(by_topic[color_topic], _IMAGES, "colour")
        self._single_type(by_topic[depth_topic], _IMAGES, "depth")
        self._single_type(by_topic[info_topic], (_INFO,), "camera info")
        self.color_topic, self.depth_topic, self.info_topic = color_topic, depth_topic, info_topic
        self.tf_topics = {t: t == tf_static_topic for t in (tf_topic, tf_static_topic) if t in by_topic}
        if pose_topic is None and not self.tf_topics:
            poses = [t for t, m in types.items() if m in _POSES]
            if len(poses) != 1:
                raise SceneError(f"no pose source in {self.path}: record {tf_topic} / {tf_static_topic}, or give "
                                 f"the Odometry/PoseStamped topic with --pose-topic {listing}")
            pose_topic = poses[0]
        self.pose_topic = pose_topic
        self._pose_type = self._single_type(by_topic[pose_topic], _POSES, "pose") if pose_topic else None
        self.fixed_frame = strip_frame(fixed_frame) if fixed_frame else None
        self.camera_frame = strip_frame(camera_frame) if camera_frame else None
        self._pose_frame = strip_frame(pose_frame) if pose_frame else None
        self._T_body_cam = check_rigid(T_body_cam, "CameraStream: T_body_cam") if T_body_cam is not None else None
        self._connections = [c for t in (color_topic, depth_topic, info_topic, pose_topic, *self.tf_topics)
                             if t is not None for c in by_topic[t]]
        self.color_messages = sum(c.msgcount for c in by_topic[color_topic])

    @staticmethod
    def _single_type(conns, allowed, what) -> str:
        types = {c.msgtype for c in conns}
        if len(types) != 1 or next(iter(types)) not in allowed:
            raise SceneError(f"{what} topic '{conns[0].topic}' has type(s) {sorted(types)}, expected one of "
                             f"{list(allowed)}")
        return next(iter(types))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"CameraStream({str(self.path)!r}, color={self.color_topic}, depth={self.depth_topic}, "
                f"info={self.info_topic}, poses={self.pose_topic or 'tf'})")

    # ------------------------------------------------------------------------------------------------ the pass
    def _messages(self):
        """(topic, msgtype, raw, bag_time) in recording order; a damaged container ends the pass with a warning."""
        try:
            if self._scan is not None:
                for channel, bag_time, raw in self._scan.messages({c.topic for c in self._connections}):
                    yield channel.topic, channel.msgtype, raw, bag_time
                if self._scan.damage:
                    raise ValueError(self._scan.damage)
                return
            for conn, bag_time, raw in self._reader.messages(connections=self._connections):
                yield conn.topic, conn.msgtype, raw, bag_time
        except Exception as exc:  # rosbags' errors for damaged chunks, truncated files, bad sqlite pages
            if self.strict:
                raise SceneError(f"{self.path}: the bag is damaged: {exc}") from None
            self.truncated = True
            _log.warning("%s: the bag is damaged (%s); it is read up to the damage", self.path, exc)

    def frames(self):
        """Yield every BagFrame of the recording (see the class docstring)."""
        tree = TransformTree(max_gap=self.max_pose_gap, tolerance=self.slop)
        track = PoseTrack(self.pose_topic or "")
        self._tree, self._track, self._body_frames = tree, track, set()
        pending: deque[BagMessage] = deque()  # colour images waiting for their partners
        depths: list[BagMessage] = []  # depth images by stamp, those that may still pair
        self.latest_info: BagMessage | None = None  # the newest camera info read: what each frame is paired with
        self._pose_newest = -np.inf
        clock = -np.inf
        for topic, msgtype, raw, bag_time in self._messages():
            try:
                msg = self._typestore.deserialize_cdr(raw, msgtype)
            except Exception as exc:
                self._bad_message(topic, bag_time, exc)
                continue
            if topic in self.tf_topics:
                for ts in msg.transforms:
                    try:
                        T = transform_matrix(ts.transform)
                    except ValueError as exc:
                        self._bad_message(topic, bag_time, exc)
                        continue
                    tree.add(ts.header.frame_id, ts.child_frame_id, stamp_seconds(ts.header.stamp), T,
                             static=self.tf_topics[topic])
                continue
            stamp = stamp_seconds(msg.header.stamp) or bag_time * 1e-9  # unstamped: the recording time
            message = BagMessage(topic, msgtype, raw, msg, stamp, bag_time)
            clock = max(clock, stamp)
            if topic == self.pose_topic:
                pose = msg.pose.pose if self._pose_type in (_ODOM, _POSE_COV) else msg.pose
                try:
                    track.add(stamp, pose_matrix(pose))
                except ValueError as exc:
                    self._bad_message(topic, bag_time, exc)
                    continue
                self._pose_newest = max(self._pose_newest, stamp)
                self._world = strip_frame(msg.header.frame_id) or self.fixed_frame or "map"
                if self._pose_type == _ODOM and msg.child_frame_id:
                    self._body_frames.add(strip_frame(msg.child_frame_id))
            elif topic == self.color_topic:
                pending.append(message)
            elif topic == self.depth_topic:
                bisect.insort(depths, message, key=lambda m: m.stamp)
                if self.camera_frame is None and msg.header.frame_id:
                    self.camera_frame = strip_frame(msg.header.frame_id)
            elif topic == self.info_topic:
                self.latest_info = message
            while pending and self._settled(pending[0].stamp, depths, clock):
                frame = self._release(pending.popleft(), depths)
                if frame is not None:
                    yield frame
        while pending:
            frame = self._release(pending.popleft(), depths)
            if frame is not None:
                yield frame
        if any(self.skipped.values()):
            _log.warning("%s: %d colour images; skipped %d without depth within %.3f s, %d without a pose, %d "
                         "before any camera info, %d unreadable messages", self.path.name, self.color_messages,
                         self.skipped["no_depth"], self.slop, self.skipped["no_pose"], self.skipped["no_info"],
                         self.skipped["bad_message"])
            if self.skipped["no_pose"] and self.pose_topic is None:
                _log.warning("%s: poses are looked up from '%s' to '%s' in the tf tree with roots %s", self.path.name,
                             self.fixed_frame, self.camera_frame, self._tree.roots() if self._tree else "(empty)")

    def rgbd_frames(self, depth_scale: float = 1000.0):
        """The frames of ``frames()`` decoded into RGBDFrame; one that does not decode is skipped with a warning
        and counted in ``skipped["bad_frame"]`` (``strict``: FrameError)."""
        self.skipped.setdefault("bad_frame", 0)
        for i, frame in enumerate(self.frames()):
            try:
                camera = camera_from_info(frame.info.msg)
                yield decode_frame(frame.color.msg, frame.depth.msg, camera, frame.T_world_cam, frame.stamp, i,
                                   depth_scale, where=f"{self.path.name} at {frame.stamp:.3f} s")
            except (FrameError, ValueError) as exc:
                if self.strict:
                    raise FrameError(str(exc)) from None
                self.skipped["bad_frame"] += 1
                _log.warning("skipping an unreadable frame: %s", exc)

    def _bad_message(self, topic: str, bag_time: int, exc: Exception) -> None:
        """Count (and name, the first few times) a message that does not decode; ``strict``: FrameError."""
        self.skipped["bad_message"] += 1
        where = f"{topic} message at {bag_time * 1e-9:.3f} s"
        if self.strict:
            raise FrameError(f"{self.path}: unreadable {where}: {exc}") from None
        if self.skipped["bad_message"] <= 5:
            _log.warning("%s: skipping an unreadable %s: %s%s", self.path.name, where, exc,
                         " (further ones are only counted)" if self.skipped["bad_message"] == 5 else "")

    def _settled(self, stamp: float, depths: list[BagMessage], clock: float) -> bool:
        """True when no later message can change the colour image's depth partner or pose."""
        depth_done = (depths and depths[-1].stamp >= stamp + self.slop) or clock > stamp + self.slop
        pose_done = self._pose_newest >= stamp or clock > stamp + self.max_pose_gap
        if not pose_done and self.pose_topic is None and self.fixed_frame and self.camera_frame:
            # tf: the edges between the fixed frame and the camera, not just any transform, must have reached it
            known = self._tree.frames()
            pose_done = self.fixed_frame in known and self.camera_frame in known and \
                self._tree.newest_on_chain(self.fixed_frame, self.camera_frame) >= stamp
        return bool(depth_done and pose_done)

    def _release(self, color: BagMessage, depths: list[BagMessage]) -> BagFrame | None:
        stamp = color.stamp
        keys = [m.stamp for m in depths]
        k = bisect.bisect_left(keys, stamp)
        near = [j for j in (k - 1, k) if 0 <= j < len(depths)]
        j = min(near, key=lambda j: abs(keys[j] - stamp)) if near else None
        depth = depths[j] if j is not None and abs(keys[j] - stamp) <= self.slop else None
        # Depth images older than this colour image (minus the slop) cannot pair with a later one.
        del depths[:bisect.bisect_left(keys, stamp - self.slop)]
        if depth is None:
            self.skipped["no_depth"] += 1
            return None
        if self.latest_info is None:
            self.skipped["no_info"] += 1
            return None
        T = self._pose(stamp)
        if T is None:
            self.skipped["no_pose"] += 1
            return None
        return BagFrame(stamp, color, depth, self.latest_info, T)

    def _pose(self, stamp: float) -> np.ndarray | None:
        if self.camera_frame is None:
            self.camera_frame = strip_frame(self.latest_info.msg.header.frame_id) if self.latest_info else None
        if self.pose_topic is not None:
            T = self._track.at(stamp, max_gap=self.max_pose_gap, tolerance=self.slop)
            if T is None:
                return None
            self.fixed_frame = self._world
            B = self._body_to_camera(stamp)
            return None if B is None else T @ B
        if not self.camera_frame:
            raise SceneError(f"{self.path}: the camera frame is unknown (the depth images have no frame_id); "
                             "name it with --camera-frame")
        known = self._tree.frames()
        if self.camera_frame not in known:
            return None  # its transforms may not have come yet; counted as a frame without a pose
        if self.fixed_frame is None:
            self.fixed_frame = "map" if "map" in known and self._tree.has_chain("map", self.camera_frame) \
                else self._tree.root(self.camera_frame)
            _log.info("%s: poses of '%s' in the fixed frame '%s'", self.path.name, self.camera_frame,
                      self.fixed_frame)
        if self.fixed_frame not in known:
            raise SceneError(f"{self.path}: frame '{self.fixed_frame}' is not in the bag's tf tree (frames: "
                             f"{sorted(known)})")
        if not self._tree.has_chain(self.fixed_frame, self.camera_frame):
            return None  # not joined (yet): counted as a frame without a pose
        return self._tree.lookup(self.fixed_frame, self.camera_frame, stamp)

    def _body_to_camera(self, stamp: float) -> np.ndarray | None:
        if self._T_body_cam is not None:
            return self._T_body_cam
        body = self._pose_frame or (sorted(self._body_frames)[0] if self._body_frames else None)
        if body is None or body == self.camera_frame:
            return np.eye(4)
        if body in self._tree.frames() and self.camera_frame in self._tree.frames() \
                and self._tree.has_chain(body, self.camera_frame):
            return self._tree.lookup(body, self.camera_frame, stamp)
        raise SceneError(f"{self.path}: pose topic '{self.pose_topic}' gives frame '{body}' but there is no tf chain "
                         f"from it to the camera frame '{self.camera_frame}'; pass T_body_cam")


def decode_frame(color_msg, depth_msg, camera: CameraModel, T_world_cam: np.ndarray, stamp: float, index: int,
                 depth_scale: float, *, where: str) -> RGBDFrame:
    """An RGBDFrame from a colour and a depth message (Image or CompressedImage) and the camera of the depth image.
    Colour of another size is resized to the depth size (with a warning once). FrameError, prefixed with ``where``,
    when an image does not decode or the depth size is not the camera's."""
    try:
        depth = decode_depth(depth_msg)
        color = decode_color(color_msg)
    except ValueError as exc:
        raise FrameError(f"{where}: {exc}") from None
    if depth.shape != (camera.height, camera.width):
        raise FrameError(f"{where}: depth image is {depth.shape[1]}x{depth.shape[0]} but camera info says "
                         f"{camera.width}x{camera.height}")
    if color.shape[:2] != depth.shape:
        from PIL import Image

        global _warned_resize
        if not _warned_resize:
            _log.warning("colour %dx%d resized to the depth size %dx%d (register depth to colour for exact "
                         "alignment)", color.shape[1], color.shape[0], camera.width, camera.height)
            _warned_resize = True
        color = np.asarray(Image.fromarray(color).resize((camera.width, camera.height), Image.BILINEAR))
    return RGBDFrame(color=color, depth=depth, camera=camera, T_world_cam=T_world_cam, index=index, stamp=stamp,
                     depth_scale=depth_scale)


_warned_resize = False


# ----------------------------------------------------------------------------------------------------------------------
# Random access (training, labelling)
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class _Pairing:
    color_time: int  # bag (receive) timestamps, ns: how frame() finds the messages again
    depth_time: int
    stamp: float  # header stamp of the colour image, s
    T_world_cam: np.ndarray


class RosbagScene:
    """RGB-D frames of a rosbag2 recording; ``len``, ``frame(i)``, ``frame_ids``, iteration like ScanNetScene.

    ``path``: the bag folder (with metadata.yaml) or a single .db3 / .mcap file inside one. Options are those of
    ``CameraStream`` (topics, pose source, frames, ``slop``, ``max_pose_gap``, ``strict``) and ``depth_scale``. The
    bag is indexed on construction with one CameraStream pass; ``frame(i)`` reads the two images of frame i again
    (FrameError naming the message time when they do not decode). Use as a context manager, or ``close()``.
    """

    def __init__(self, path, *, depth_scale: float = 1000.0, **options):
        self.depth_scale = float(depth_scale)
        if not self.depth_scale > 0:
            raise ValueError("RosbagScene: depth_scale must be > 0")
        with CameraStream(path, **options) as stream:
            if stream.recovered:
                raise SceneError(f"{stream.path} is damaged (the end of its .mcap file is missing), so its frames "
                                 "cannot be read in any order: ov3d-fuse and ov3d-run --bag read it up to the "
                                 "damage, or repair it with `mcap recover`")
            self._pairs = [_Pairing(f.color.bag_time, f.depth.bag_time, f.stamp, f.T_world_cam)
                           for f in stream.frames()]
            info = stream.latest_info
            self.skipped, self.truncated = dict(stream.skipped), stream.truncated
            for name in ("path", "color_topic", "depth_topic", "info_topic", "pose_topic", "fixed_frame",
                         "camera_frame", "slop", "max_pose_gap"):
                setattr(self, name, getattr(stream, name))
        if info is None:
            raise SceneError(f"{self.path}: the camera info topic '{self.info_topic}' has no messages")
        self.camera_model = self._camera_from_info(info.msg)
        self._AnyReader, self._typestore = _import_rosbags()
        self._reader = None
        self.frame_ids = [str(i) for i in range(len(self._pairs))]

    @staticmethod
    def _camera_from_info(info) -> CameraModel:
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
        raise FrameError(f"{self.path}: the {topic} message at {bag_time * 1e-9:.3f} s vanished")

    def frame(self, i: int) -> RGBDFrame:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"RosbagScene.frame: index must be an int, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"RosbagScene.frame: index {i} out of range for {len(self)} frames")
        i = int(i) % len(self)
        pair = self._pairs[i]
        try:
            color = self._read_at(self.color_topic, pair.color_time)
            depth = self._read_at(self.depth_topic, pair.depth_time)
        except FrameError:
            raise
        except Exception as exc:
            raise FrameError(f"{self.path}: frame {i} at {pair.stamp:.3f} s: {exc}") from None
        return decode_frame(color, depth, self.camera_model, pair.T_world_cam.copy(), pair.stamp, i,
                            self.depth_scale, where=f"{self.path}: frame {i} at {pair.stamp:.3f} s")
