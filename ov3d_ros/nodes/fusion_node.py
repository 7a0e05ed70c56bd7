"""fusion_node: color + depth + camera_info + pose -> ~/partial_cloud (every keyframe) and ~/global_cloud (a rate).

A thin adapter over ``ov3d_ros.fusion``. Callbacks only decode and enqueue; a timer drains the frame queue when a
frame's pose is available (from TF, an Odometry topic or a PoseStamped topic), applies keyframe gating, builds the
partial cloud and integrates it into the VoxelMap, which free space carves (``SurfaceConfig``: carve_*,
observe_every, surface_refine). ~/save_map, ~/load_map and ``map_file`` keep the map across restarts. Every bad
message is logged (rate-limited) and counted; the node never stops because of one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, DurabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from ov3d_interfaces.srv import LoadMap, SaveMap
from ov3d_ros.fusion import RGBDFrame, SurfaceConfig
from ov3d_ros.geometry import rigid_from_quaternion
from ov3d_ros.mapping import Mapper, MapperConfig
from ov3d_ros.messages import CAMERA_TOPICS, camera_from_info, decode_color, decode_depth, pose_matrix, stamp_seconds, \
    transform_matrix
from ov3d_ros.nodes.conversions import cloud_to_pointcloud2, make_header
from ov3d_ros.nodes.params import Param, declare_all, node_help
from ov3d_ros.nodes.runner import spin_nodes
from ov3d_ros.nodes.sync import ApproximateTimeSync, BoundedQueue
from ov3d_ros.poses import PoseTrack
from ov3d_ros.cores import cores_for_fusion

POSE_SOURCES = ("tf", "odometry", "pose")
QOS_CHOICES = ("sensor_data", "reliable")

FUSION_PARAMS = [
    Param("color_topic", CAMERA_TOPICS["color"], "Colour image topic (rgb8, bgr8, rgba8, bgra8, mono8)."),
    Param("depth_topic", CAMERA_TOPICS["depth"], "Depth image topic registered to colour (16UC1 or 32FC1)."),
    Param("camera_info_topic", CAMERA_TOPICS["info"], "CameraInfo of the colour image (K is used)."),
    Param("qos", "sensor_data", "QoS of the camera subscriptions: sensor_data (best effort) or reliable.",
          choices=QOS_CHOICES),
    Param("qos_depth", 5, "History depth of the camera subscriptions.", minimum=1, maximum=1000),
    Param("sync_slop", 0.02, "Max stamp spread [s] of a color/depth/camera_info triple.", minimum=0.0, maximum=10.0),
    Param("sync_queue_size", 10, "Messages kept per stream while waiting for a match (oldest dropped).",
          minimum=1, maximum=1000),
    Param("frame_queue_size", 8, "Synchronised frames waiting for a pose (oldest dropped).", minimum=1, maximum=1000),
    Param("depth_scale", 1000.0, "Units per metre of 16UC1 depth (1000 = millimetres).", minimum=1e-6),
    Param("min_depth", 0.1, "Depth below this [m] is invalid.", minimum=0.0),
    Param("max_depth", 6.0, "Depth beyond this [m] is ignored.", minimum=0.0),
    Param("stride", 2, "Use every stride-th pixel in u and v (2 = a quarter of the points).", minimum=1, maximum=64),
    Param("pose_source", "tf", "Where camera poses come from: tf (tf2_ros lookup world_frame <- camera frame), "
          "odometry (nav_msgs/Odometry on pose_topic, composed with base_to_camera) or pose "
          "(geometry_msgs/PoseStamped of the camera optical frame on pose_topic).", choices=POSE_SOURCES),
    Param("pose_topic", "/camera/pose", "Odometry or PoseStamped topic when pose_source is odometry or pose."),
    Param("world_frame", "map", "Fixed frame of the map and the published clouds (REP 105: map or odom)."),
    Param("camera_frame", "", "Camera optical frame for TF lookups; empty = the image header's frame_id."),
    Param("base_to_camera", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
          "Pose of the camera optical frame in the odometry child frame, x y z qx qy qz qw (pose_source odometry)."),
    Param("pose_tolerance", 0.05, "Max |pose stamp - frame stamp| [s] for the nearest pose-topic pose to be used "
          "when no two poses bracket the frame.", minimum=0.0),
    Param("pose_max_gap", 0.5, "Pose-topic poses at most this far apart [s] are interpolated at the frame stamp "
          "(lerp + slerp, as the bag reader does).", minimum=0.0),
    Param("pose_timeout", 1.0, "A frame waits at most this long [s] for its pose, then is dropped.", minimum=0.0),
    Param("keyframe_min_translation", 0.05, "A frame is fused into the map only if the camera moved this far [m] "
          "since the last keyframe ... (every valid frame is published on ~/partial_cloud)", minimum=0.0),
    Param("keyframe_min_rotation_deg", 5.0, "... or turned this much [deg].", minimum=0.0),
    Param("voxel_size", 0.02, "Voxel edge of the global map [m].", minimum=1e-4),
    Param("map_capacity", 2_000_000, "Max voxels in the global map (stalest evicted first).", minimum=1),
    Param("clear_radius", 0.0, "If > 0, keep only voxels within this distance [m] of the camera (0 = keep all).",
          minimum=0.0),
    Param("carve_evidence", 3, "Free-space votes that remove a voxel: each observed frame whose depth lies beyond it "
          "(by the margin, at all four pixels around its projection) votes, each frame that sees it occupied takes "
          "a vote back; what views see through leaves the map after this many (0 = never remove).", minimum=0,
          maximum=1000),
    Param("carve_margin", 0.01, "Depth noise margin [m] at 1 m: a voxel must lie voxel_size + carve_margin * d^2 in "
          "front of the measured depth d to get a free-space vote, and within it to count as surface.",
          minimum=0.0, maximum=1.0),
    Param("carve_max_range", 5.0, "Frames vote on and measure surfaces only up to this depth [m].", minimum=0.01),
    Param("surface_refine", False, "Put each voxel's point on the surface the frames measured along their lines "
          "of sight (weighted by depth noise) and leave out the noise shell around surfaces: TSDF-like accuracy "
          "with observe_every 1, at 1.2-1.4 times the fusion time; false = running means of the fused points."),
    Param("observe_every", 4, "The free-space (and surface) step runs on every N-th fused frame: it projects every "
          "voxel in view.", minimum=1, maximum=1000),
    Param("process_rate", 30.0, "Rate [Hz] of the timer that fuses queued frames.", minimum=0.1, maximum=1000.0),
    Param("global_rate", 1.0, "Max rate [Hz] of ~/global_cloud; it is sent when the map changed (0 = never).",
          minimum=0.0, maximum=100.0),
    Param("map_file", "", "Map file (.npz, from ~/save_map of this node or the segmenter node) to start from; its "
          "voxel_size must be this node's. Empty = start with an empty map."),
    Param("num_threads", 0, "Threads of the map's compiled loops at once (0 = the cores this process may use, at "
          "most 4, in the fusion_node and ov3d-run processes, which run torch and BLAS on one thread; 1 in other "
          "processes).", minimum=0, maximum=64),
    Param("stats_period", 10.0, "Period [s] of the counters log line (0 = never).", minimum=0.0),
]


def make_qos(kind: str, depth: int) -> QoSProfile:
    """sensor_data: best effort, like camera drivers publish (a reliable publisher matches it too);
    reliable: lose nothing (in-process pipelines, rosbag replay)."""
    reliability = (qos_profile_sensor_data.reliability if kind == "sensor_data" else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass
class _Frame:
    """A synchronised, decoded frame waiting for its pose."""

    color: np.ndarray
    depth: np.ndarray
    camera: object
    stamp: float
    frame_id: str
    arrived: float  # monotonic seconds, for pose_timeout


class FusionNode(Node):
    def __init__(self, name: str = "fusion_node", **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.p = declare_all(self, FUSION_PARAMS)
        p = self.p
        self.mapper = Mapper(MapperConfig(
            voxel_size=p["voxel_size"], capacity=p["map_capacity"], clear_radius=p["clear_radius"] or None,
            min_depth=p["min_depth"], max_depth=p["max_depth"], stride=p["stride"],
            keyframe_min_translation=p["keyframe_min_translation"],
            keyframe_min_rotation_deg=p["keyframe_min_rotation_deg"],
            surface=SurfaceConfig(carve_margin=p["carve_margin"], carve_evidence=p["carve_evidence"],
                                  max_range=p["carve_max_range"], surface=p["surface_refine"],
                                  every=p["observe_every"]), threads=p["num_threads"]))
        if p["map_file"]:
            n = self.mapper.load(Path(os.path.expanduser(p["map_file"])))
            self.get_logger().info(f"map of {n} voxels loaded from {p['map_file']}")
        self.sync = ApproximateTimeSync(("color", "depth", "info"), slop=p["sync_slop"],
                                        queue_size=p["sync_queue_size"])
        self.frames = BoundedQueue(p["frame_queue_size"], name="frames")
        self.counters = {"bad_color": 0, "bad_depth": 0, "bad_info": 0, "bad_frame": 0, "no_pose": 0,
                         "empty_depth": 0, "not_keyframe": 0, "integrated": 0, "bad_pose": 0}
        self.frame_index = 0
        self.frames_finished = 0  # frames taken off the queue and fully handled (fused, gated or rejected)
        self.last_partial_stamp = None

        # The callbacks run one at a time (the node's one callback group): inputs decode and enqueue, a timer fuses
        # what is queued. A fused frame takes milliseconds, and meanwhile DDS holds up to qos_depth messages per
        # input. A second executor thread would not help: rclpy's multi-threaded executor spins on ready entities
        # of a busy group and takes the interpreter lock from the work.
        qos = make_qos(p["qos"], p["qos_depth"])
        self.create_subscription(Image, p["color_topic"], self._on_color, qos)
        self.create_subscription(Image, p["depth_topic"], self._on_depth, qos)
        self.create_subscription(CameraInfo, p["camera_info_topic"], self._on_info, qos)

        self.poses = PoseTrack(p["pose_topic"], maxlen=400)
        self.tf_buffer = None
        if p["pose_source"] == "tf":
            try:
                import tf2_ros  # noqa: F401  (absent on pip-only ROS installs)
            except ImportError as exc:
                raise RuntimeError(
                    "fusion_node: pose_source 'tf' needs tf2_ros (apt install ros-$ROS_DISTRO-tf2-ros); on a "
                    "machine without it set pose_source to 'odometry' or 'pose' with pose_topic") from exc
            self.tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self.tf_buffer, self)
        elif p["pose_source"] == "odometry":
            values = list(p["base_to_camera"])
            if len(values) != 7:
                raise ValueError(f"fusion_node: base_to_camera needs 7 numbers x y z qx qy qz qw, got {values}")
            self._T_base_cam = rigid_from_quaternion(values[:3], values[3:])
            self.create_subscription(Odometry, p["pose_topic"], self._on_odometry, 50)
        else:
            self.create_subscription(PoseStamped, p["pose_topic"], self._on_pose, 50)

        self.partial_pub = self.create_publisher(PointCloud2, "~/partial_cloud", 5)
        self.global_pub = self.create_publisher(
            PointCloud2, "~/global_cloud", QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                                      reliability=ReliabilityPolicy.RELIABLE,
                                                      durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._published_version = -1  # the mapper's version last sent on ~/global_cloud
        self.create_service(SaveMap, "~/save_map", self._on_save_map)
        self.create_service(LoadMap, "~/load_map", self._on_load_map)
        self.create_service(Trigger, "~/reset_map", self._on_reset_map)
        self.create_timer(1.0 / p["process_rate"], self._process_frames)
        if p["global_rate"] > 0:
            self.create_timer(1.0 / p["global_rate"], lambda: self.publish_global(force=False))
        if p["stats_period"] > 0:
            self.create_timer(p["stats_period"], self._log_stats)
        self._started = time.monotonic()
        self.get_logger().info(
            f"fusing {p['color_topic']} + {p['depth_topic']} + {p['camera_info_topic']} "
            f"(qos {p['qos']}), poses from {p['pose_source']}"
            f"{'' if p['pose_source'] == 'tf' else ' on ' + p['pose_topic']}, map in '{p['world_frame']}'")

    @property
    def map(self):
        """The Mapper's VoxelMap (another object after ~/load_map)."""
        return self.mapper.map

    # ------------------------------------------------------------------ callbacks: decode + enqueue only
    def _on_color(self, msg: Image) -> None:
        try:
            color = decode_color(msg)
        except ValueError as exc:
            self.counters["bad_color"] += 1
            self.get_logger().error(f"dropping colour image: {exc}", throttle_duration_sec=5.0)
            return
        self._add("color", msg.header, color)

    def _on_depth(self, msg: Image) -> None:
        try:
            depth = decode_depth(msg)
        except ValueError as exc:
            self.counters["bad_depth"] += 1
            self.get_logger().error(f"dropping depth image: {exc}", throttle_duration_sec=5.0)
            return
        self._add("depth", msg.header, depth)

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            camera = camera_from_info(msg)
        except (ValueError, TypeError) as exc:
            self.counters["bad_info"] += 1
            self.get_logger().error(f"dropping camera_info: {exc}", throttle_duration_sec=5.0)
            return
        self._add("info", msg.header, camera)

    def _add(self, key: str, header, item) -> None:
        stamp = stamp_seconds(header.stamp)
        matched = self.sync.add(key, stamp, (header.frame_id, stamp, item))
        if matched is None:
            self._warn_if_stream_missing()
            return
        frame_id, color_stamp, color = matched["color"]
        _, _, depth = matched["depth"]
        _, _, camera = matched["info"]
        self.frames.push(_Frame(color=color, depth=depth, camera=camera, stamp=color_stamp,
                                frame_id=frame_id, arrived=time.monotonic()))

    def _warn_if_stream_missing(self) -> None:
        """Name the silent stream as soon as the others start overflowing (e.g. camera_info never published)."""
        missing = self.sync.starved_streams()
        if missing:
            topics = {"color": self.p["color_topic"], "depth": self.p["depth_topic"],
                      "info": self.p["camera_info_topic"]}
            self.get_logger().warning("no messages on " + ", ".join(topics[m] for m in missing)
                                   + ": frames cannot be synchronised and are being dropped",
                                   throttle_duration_sec=5.0)

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            T = pose_matrix(msg.pose)
        except ValueError as exc:
            self.counters["bad_pose"] += 1
            self.get_logger().error(f"dropping pose: {exc}", throttle_duration_sec=5.0)
            return
        self._check_pose_frame(msg.header.frame_id)
        self.poses.add(stamp_seconds(msg.header.stamp), T)

    def _on_odometry(self, msg: Odometry) -> None:
        try:
            T = pose_matrix(msg.pose.pose) @ self._T_base_cam
        except ValueError as exc:
            self.counters["bad_pose"] += 1
            self.get_logger().error(f"dropping odometry: {exc}", throttle_duration_sec=5.0)
            return
        self._check_pose_frame(msg.header.frame_id)
        self.poses.add(stamp_seconds(msg.header.stamp), T)

    def _check_pose_frame(self, frame_id: str) -> None:
        if frame_id and frame_id != self.p["world_frame"]:
            self.get_logger().warning(f"pose is in frame '{frame_id}' but world_frame is '{self.p['world_frame']}'; "
                                   "using it as the world frame", throttle_duration_sec=10.0)

    # ------------------------------------------------------------------ timer: poses, gating, fusion
    def _lookup_pose(self, frame: _Frame, final: bool = False) -> tuple[np.ndarray | None, bool]:
        if self.tf_buffer is not None:
            import tf2_ros
            from rclpy.time import Time

            source = self.p["camera_frame"] or frame.frame_id
            try:
                stamp_ns = int(round(frame.stamp * 1e9))
                tf = self.tf_buffer.lookup_transform(self.p["world_frame"], source, Time(nanoseconds=stamp_ns))
                return transform_matrix(tf.transform), False
            except (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException):
                return None, True
        return self.poses.lookup(frame.stamp, max_gap=self.p["pose_max_gap"], tolerance=self.p["pose_tolerance"],
                                 final=final)

    def _process_frames(self) -> None:
        while True:
            frame = self.frames.peek()
            if frame is None:
                return
            waited = time.monotonic() - frame.arrived
            T, may_arrive = self._lookup_pose(frame, final=waited >= self.p["pose_timeout"])
            if T is None:
                if may_arrive and waited < self.p["pose_timeout"]:
                    return  # keep order: later frames wait behind this one
                self.frames.drop_oldest()
                self.counters["no_pose"] += 1
                source = "TF" if self.tf_buffer is not None else f"'{self.p['pose_topic']}'"
                self.get_logger().warning(
                    f"dropping frame at t={frame.stamp:.3f}: no pose from {source} within "
                    f"{self.p['pose_tolerance']} s of its stamp after waiting {waited:.2f} s "
                    f"(poses buffered: {len(self.poses)})", throttle_duration_sec=5.0)
                continue
            self.frames.pop()
            try:
                self.fuse(frame, T)
            finally:
                self.frames_finished += 1

    def fuse(self, frame: _Frame, T: np.ndarray) -> None:
        """Publish the frame's partial cloud (every valid frame, so the labelled view stays live while the camera
        stands still) and integrate it into the map if it is a keyframe."""
        rgbd = RGBDFrame(color=frame.color, depth=frame.depth, camera=frame.camera, T_world_cam=T,
                         index=self.frame_index, stamp=frame.stamp, depth_scale=self.p["depth_scale"])
        try:
            partial = self.mapper.partial_cloud(rgbd)
        except (ValueError, TypeError) as exc:
            self.counters["bad_frame"] += 1
            self.get_logger().error(f"dropping frame at t={frame.stamp:.3f}: {exc}", throttle_duration_sec=5.0)
            return
        if len(partial) == 0:
            self.counters["empty_depth"] += 1
            self.get_logger().warning(
                f"dropping frame at t={frame.stamp:.3f}: no valid depth in [{self.p['min_depth']}, "
                f"{self.p['max_depth']}] m (all zero, NaN or out of range)", throttle_duration_sec=5.0)
            return
        self.frame_index += 1
        header = make_header(self.p["world_frame"], frame.stamp)
        if self.partial_pub.get_subscription_count() > 0:  # nobody listening: no message to build
            self.partial_pub.publish(cloud_to_pointcloud2(partial.to_cloud(self.p["world_frame"]), header))
        self.last_partial_stamp = frame.stamp
        if self.mapper.integrate(partial, stamp=frame.stamp).keyframe:
            self.counters["integrated"] += 1
        else:
            self.counters["not_keyframe"] += 1

    def publish_global(self, force: bool = True) -> None:
        """Publish the map, stamped with its newest keyframe's time (how fresh it is). The timer passes
        force=False: an unchanged map is not sent again; late subscribers still get the last one (transient-local
        publisher)."""
        with self.mapper.lock:
            if len(self.map) == 0 or (not force and self.mapper.version == self._published_version):
                return
            cloud, self._published_version = self.mapper.cloud(self.p["world_frame"])
            stamp = self.mapper.last_keyframe_stamp
        header = make_header(self.p["world_frame"], stamp if stamp is not None else
                             self.get_clock().now().nanoseconds * 1e-9)
        self.global_pub.publish(cloud_to_pointcloud2(cloud, header))

    # ------------------------------------------------------------------ services
    def _on_save_map(self, request: SaveMap.Request, response: SaveMap.Response) -> SaveMap.Response:
        path = Path(os.path.expanduser(request.path.strip())) if request.path.strip() else None
        if path is None or path.suffix.lower() not in (".npz", ".ply"):
            response.success = False
            response.message = f"save_map: path must end in .npz or .ply, got '{request.path}'"
            self.get_logger().error(response.message)
            return response
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path, n = self.mapper.save(path, frame_id=self.p["world_frame"])
        except (OSError, ValueError) as exc:
            response.success = False
            response.message = f"save_map: could not write '{path}': {exc}"
            self.get_logger().error(response.message)
            return response
        response.success = True
        response.point_count = int(n)
        response.message = f"saved {n} voxels to {path}"
        self.get_logger().info(response.message)
        return response

    def _on_load_map(self, request: LoadMap.Request, response: LoadMap.Response) -> LoadMap.Response:
        path = Path(os.path.expanduser(request.path.strip()))
        try:
            response.point_count = self.mapper.load(path)
        except ValueError as exc:
            response.success, response.message = False, f"load_map: {exc}"
            self.get_logger().error(response.message)
            return response
        self.sync.reset()
        self.frames.clear()
        self.publish_global()
        response.success = True
        response.message = f"loaded {response.point_count} voxels from {path}"
        self.get_logger().info(response.message)
        return response

    def _on_reset_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        n = self.mapper.reset()
        self.sync.reset()
        self.frames.clear()
        response.success = True
        response.message = f"map reset ({n} voxels removed)"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ diagnostics
    def idle(self) -> bool:
        """True when every synchronised frame has been fused, gated out or dropped."""
        return self.frames_finished + self.frames.dropped >= self.frames.pushed

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update(self.sync.counters())
        out.update({f"frames_{k}": v for k, v in self.frames.counters().items()})
        out["map_voxels"] = len(self.map)
        out["map_carved"] = self.map.carved
        return out

    def _log_stats(self) -> None:
        s = self.stats()
        self.get_logger().info("counters: " + ", ".join(f"{k}={v}" for k, v in s.items()))
        missing = self.sync.missing_streams()
        if missing and len(missing) < 3:
            topics = {"color": self.p["color_topic"], "depth": self.p["depth_topic"],
                      "info": self.p["camera_info_topic"]}
            self.get_logger().warning("no messages yet on " + ", ".join(topics[m] for m in missing)
                                   + ": frames cannot be synchronised without them")


def main(args=None) -> None:
    with cores_for_fusion():  # the map's compiled loops use the cores; torch and BLAS one thread
        spin_nodes([FusionNode], args=args,
                   help_text=node_help("fusion_node", __doc__.split("\n\n")[0], FUSION_PARAMS))


if __name__ == "__main__":
    main()
