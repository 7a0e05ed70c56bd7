"""synthetic_camera_node: a synthetic RGB-D camera (``ov3d_ros.data.synthetic``) looping over a trajectory.

Publishes Image (rgb8), depth Image (16UC1 millimetres or 32FC1 metres), CameraInfo and the camera's
PoseStamped (optical frame in world_frame) with one shared stamp per frame, and the same pose on TF where tf2_ros
is installed. With it the whole pipeline runs without hardware.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from ov3d_ros.data.synthetic.cache import load_or_render
from ov3d_ros.messages import CAMERA_TOPICS
from ov3d_ros.nodes.conversions import info_from_camera, make_header, matrix_to_pose, matrix_to_transform, \
    numpy_to_image
from ov3d_ros.nodes.params import Param, declare_all, node_help
from ov3d_ros.nodes.runner import spin_nodes

DEPTH_ENCODINGS = ("16UC1", "32FC1")

CAMERA_PARAMS = [
    Param("seed", 1000, "Seed of the synthetic room (same seed = same room and ground truth). The default is a "
          "held-out room: the demo checkpoint was trained on seeds 0-11.", minimum=0),
    Param("n_frames", 60, "Frames in one loop of the trajectory.", minimum=1, maximum=100000),
    Param("width", 320, "Image width [px].", minimum=8, maximum=8192),
    Param("height", 240, "Image height [px].", minimum=8, maximum=8192),
    Param("rate", 10.0, "Publishing rate [Hz].", minimum=0.01, maximum=1000.0),
    Param("noise", True, "Add depth/colour noise like a real sensor."),
    Param("depth_encoding", "16UC1", "Depth encoding: 16UC1 (millimetres) or 32FC1 (metres).",
          choices=DEPTH_ENCODINGS),
    Param("remove_objects", "", "Comma-separated classes (e.g. 'table' or 'table,chair') whose objects leave the "
          "room after change_after_loops loops, so the map can be seen forgetting them; empty = the room never "
          "changes."),
    Param("change_after_loops", 1, "Loops of the unchanged room before remove_objects takes effect.", minimum=0,
          maximum=1000000),
    Param("max_loops", 0, "Stop after this many loops of the trajectory (0 = loop forever).", minimum=0),
    Param("color_topic", CAMERA_TOPICS["color"], "Colour image topic."),
    Param("depth_topic", CAMERA_TOPICS["depth"], "Depth image topic (registered to colour)."),
    Param("camera_info_topic", CAMERA_TOPICS["info"], "CameraInfo topic."),
    Param("pose_topic", "/camera/pose", "PoseStamped of the camera optical frame in world_frame."),
    Param("frame_id", "camera_color_optical_frame", "Optical frame of the images (REP 103)."),
    Param("world_frame", "map", "Fixed frame of the poses (REP 105)."),
    Param("publish_tf", True, "Also broadcast world_frame -> frame_id on TF (only where tf2_ros is installed)."),
    Param("wait_for_subscribers", False, "Hold the first frame until color, depth, camera_info and pose each "
          "have a subscriber (so a pipeline started together loses no frame to discovery)."),
    Param("wait_for_service", "", "Hold the first frame until this service is offered (e.g. /query_objects: the "
          "segmenter then sees the room come in); empty = do not wait."),
    Param("cache_dir", "~/.cache/ov3d_ros/synthetic", "Rendered sequences are cached here (keyed by the settings "
          "and the renderer's source); empty = always render."),
]


class SyntheticCameraNode(Node):
    def __init__(self, name: str = "synthetic_camera_node", **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.p = declare_all(self, CAMERA_PARAMS)
        p = self.p
        self.sequence: list = []  # filled by the render thread; the timer publishes once it is ready
        self._depth_images: list = []
        self.changed: tuple = ()  # (frames, depth images) of the room without remove_objects, when set
        self.removed = [n.strip() for n in self.p["remove_objects"].split(",") if n.strip()]
        self.ready = threading.Event()
        self.render_error: BaseException | None = None
        # Rendering takes ~0.3-0.5 s per 320x240 frame on a small CPU: do it off the executor so the other nodes
        # of the process start at once, and cache it so the next run starts publishing immediately.
        self._render_thread = threading.Thread(target=self._render, name="synthetic-render", daemon=True)
        self._render_thread.start()
        self.color_pub = self.create_publisher(Image, p["color_topic"], 5)
        self.depth_pub = self.create_publisher(Image, p["depth_topic"], 5)
        self.info_pub = self.create_publisher(CameraInfo, p["camera_info_topic"], 5)
        self.pose_pub = self.create_publisher(PoseStamped, p["pose_topic"], 20)
        self.tf_broadcaster = None
        if p["publish_tf"]:
            try:
                import tf2_ros

                self.tf_broadcaster = tf2_ros.TransformBroadcaster(self)
            except ImportError:
                self.get_logger().info("tf2_ros is not installed: poses go to "
                                       f"{p['pose_topic']} only (set the fusion node's pose_source to 'pose')")
        self.frames_published = 0
        self.loops_done = 0
        self.finished = threading.Event()
        self._timer = self.create_timer(1.0 / p["rate"], self.publish_next)

    def _render(self) -> None:
        p = self.p
        started = time.perf_counter()
        try:
            sequence, cached = load_or_render(p["seed"], p["n_frames"], p["width"], p["height"], p["noise"],
                                              p["cache_dir"])
            if self.removed:
                changed, _ = load_or_render(p["seed"], p["n_frames"], p["width"], p["height"], p["noise"],
                                            p["cache_dir"], removed=self.removed)
                self.changed = (changed, [self._depth_for_encoding(frame) for frame in changed])
            self._depth_images = [self._depth_for_encoding(frame) for frame in sequence]
            self.sequence = sequence
        except Exception as exc:  # noqa: BLE001 - reported in the log; the node keeps running without frames
            self.render_error = exc
            self.get_logger().error(f"rendering the synthetic sequence failed: {exc}")
            return
        self.ready.set()
        self.get_logger().info(f"{'loaded' if cached else 'rendered'} {len(sequence)} synthetic frames "
                               f"{p['width']}x{p['height']} in {time.perf_counter() - started:.1f} s; "
                               f"publishing at {p['rate']} Hz")

    def destroy_node(self) -> None:
        self._render_thread.join(timeout=120.0)
        super().destroy_node()

    def _depth_for_encoding(self, frame) -> np.ndarray:
        depth = np.asarray(frame.depth)
        if depth.dtype == np.uint16:
            metres = depth.astype(np.float32) / float(frame.depth_scale)
        else:
            metres = depth.astype(np.float32)
        metres = np.where(np.isfinite(metres) & (metres > 0), metres, 0.0).astype(np.float32)
        if self.p["depth_encoding"] == "32FC1":
            return metres
        return np.clip(np.rint(metres * 1000.0), 0, 65535).astype(np.uint16)

    def publish_next(self) -> None:
        if self.finished.is_set() or not self.ready.is_set():
            return
        if self.frames_published == 0 and self.p["wait_for_subscribers"] and any(
                pub.get_subscription_count() == 0
                for pub in (self.color_pub, self.depth_pub, self.info_pub, self.pose_pub)):
            return
        if self.frames_published == 0 and self.p["wait_for_service"] and self.p["wait_for_service"] not in \
                {name for name, _ in self.get_service_names_and_types()}:
            self.get_logger().info(f"holding the first frame until {self.p['wait_for_service']} is offered",
                                   once=True)
            return
        index = self.frames_published % len(self.sequence)
        if self.changed and index == 0 and self.loops_done == self.p["change_after_loops"]:
            self.sequence, self._depth_images = self.changed
            self.changed = ()
            self.get_logger().info(f"after {self.loops_done} loops: the room changes, "
                                   f"{', '.join(self.removed)} taken away")
        frame = self.sequence[index]
        stamp = self.get_clock().now().to_msg()
        optical = make_header(self.p["frame_id"], stamp)
        self.color_pub.publish(numpy_to_image(frame.color, "rgb8", optical))
        self.depth_pub.publish(numpy_to_image(self._depth_images[index], self.p["depth_encoding"], optical))
        self.info_pub.publish(info_from_camera(frame.camera, optical))
        T = np.asarray(frame.T_world_cam, dtype=np.float64)
        self.pose_pub.publish(PoseStamped(header=make_header(self.p["world_frame"], stamp), pose=matrix_to_pose(T)))
        if self.tf_broadcaster is not None:
            self.tf_broadcaster.sendTransform(TransformStamped(
                header=make_header(self.p["world_frame"], stamp), child_frame_id=self.p["frame_id"],
                transform=matrix_to_transform(T)))
        self.frames_published += 1
        if self.frames_published % len(self.sequence) == 0:
            self.loops_done += 1
            if self.p["max_loops"] and self.loops_done >= self.p["max_loops"]:
                self.finished.set()
                self._timer.cancel()
                self.get_logger().info(f"published {self.frames_published} frames ({self.loops_done} loops): done")


def main(args=None) -> None:
    spin_nodes([SyntheticCameraNode], args=args, help_text=node_help("synthetic_camera_node", __doc__.split("\n\n")[0], CAMERA_PARAMS))


if __name__ == "__main__":
    main()
