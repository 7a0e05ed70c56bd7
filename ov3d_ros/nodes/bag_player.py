"""bag_player: the camera frames of a rosbag2 recording, published to the live fusion node as `ros2 bag play` would.

The recording is read by ``data.rosbag.CameraStream`` (one streamed pass, the pairing and poses of ``ov3d-fuse``). For
each frame with a pose the player publishes, with the recorded stamps:
- the camera pose as a geometry_msgs/PoseStamped of the optical frame in the fixed frame on ``~/camera_pose`` (the
  fusion node's ``pose_source: pose``: it needs no tf2_ros, and the pose is the one ``ov3d-fuse`` uses);
- the camera info, stamped with the colour image;
- the depth and colour images: a raw Image as its recorded bytes, a CompressedImage decoded (by ``messages``, as
  offline) into an Image, since the fusion node subscribes to raw images.

``play`` paces the frames: ``rate`` 1.0 is real time, 2.0 twice as fast, 0 as fast as the receiver takes them
(``ready()`` says when it can take the next frame, so nothing is dropped).
"""
from __future__ import annotations

import time

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from ov3d_ros.data.rosbag import BagFrame, BagMessage
from ov3d_ros.messages import camera_from_info, decode_color, decode_depth
from ov3d_ros.nodes.conversions import info_from_camera, make_header, matrix_to_pose, numpy_to_image

__all__ = ["BagPlayer", "POSE_TOPIC"]

POSE_TOPIC = "/bag_player/camera_pose"
_IMAGE = "sensor_msgs/msg/Image"


class BagPlayer(Node):
    """Publishes BagFrames on the fusion node's camera topics and ``~/camera_pose``; counts what it sent."""

    def __init__(self, *, color_topic: str, depth_topic: str, info_topic: str, name: str = "bag_player",
                 **kwargs) -> None:
        super().__init__(name, **kwargs)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        self.pose_pub = self.create_publisher(PoseStamped, "~/camera_pose", 50)
        self.info_pub = self.create_publisher(CameraInfo, info_topic, qos)
        self.depth_pub = self.create_publisher(Image, depth_topic, qos)
        self.color_pub = self.create_publisher(Image, color_topic, qos)
        self.published = 0
        self.bad_frames = 0

    def subscribed(self) -> bool:
        """True once every topic has a subscriber (frames sent before that would be lost)."""
        return all(p.get_subscription_count() > 0 for p in (self.pose_pub, self.info_pub, self.depth_pub,
                                                             self.color_pub))

    @staticmethod
    def _image(message: BagMessage, depth: bool) -> Image | bytes:
        if message.msgtype == _IMAGE:
            return bytes(message.raw)
        header = message.msg.header
        if depth:
            array = decode_depth(message.msg)
            encoding = "16UC1" if array.dtype == np.uint16 else "32FC1"
        else:
            array, encoding = decode_color(message.msg), "rgb8"
        return numpy_to_image(array, encoding, make_header(header.frame_id, message.stamp))

    def publish(self, frame: BagFrame, fixed_frame: str) -> bool:
        """Publish one frame (pose, info, depth, colour); False, counted and logged, when it does not decode."""
        try:
            camera = camera_from_info(frame.info.msg)
            depth = self._image(frame.depth, depth=True)
            color = self._image(frame.color, depth=False)
        except ValueError as exc:
            self.bad_frames += 1
            self.get_logger().warning(f"skipping the frame at t={frame.stamp:.3f}: {exc}")
            return False
        frame_id = frame.color.msg.header.frame_id
        pose = PoseStamped(header=make_header(fixed_frame, frame.stamp), pose=matrix_to_pose(frame.T_world_cam))
        self.pose_pub.publish(pose)
        self.info_pub.publish(info_from_camera(camera, make_header(frame_id, frame.stamp)))
        self.depth_pub.publish(depth)
        self.color_pub.publish(color)
        self.published += 1
        return True

    def play(self, frames, fixed_frame, *, rate: float = 1.0, ready=None, on_frame=None, timeout: float = 30.0,
             should_stop=None) -> None:
        """Publish ``frames`` (an iterable of BagFrame) paced by ``rate``; ``fixed_frame()`` gives the pose frame.

        rate > 0: frame stamps are followed at ``rate`` x real time. rate 0: each frame waits until ``ready()``
        (at most ``timeout`` seconds, then it goes anyway with a warning). ``on_frame(frame)`` after each frame;
        ``should_stop()`` ends the replay early (Ctrl-C).
        """
        start_wall = first_stamp = None
        for frame in frames:
            if should_stop is not None and should_stop():
                return
            if rate > 0:
                if first_stamp is None:
                    start_wall, first_stamp = time.monotonic(), frame.stamp
                delay = start_wall + (frame.stamp - first_stamp) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing a replay at the recorded rate is what the sleep is for
            elif ready is not None:
                deadline = time.monotonic() + timeout
                while not ready():
                    if time.monotonic() > deadline:
                        self.get_logger().warning(f"the receiver took no frame for {timeout:.0f} s; going on")
                        break
                    time.sleep(0.002)
            self.publish(frame, fixed_frame())
            if on_frame is not None:
                on_frame(frame)
