"""ros2 launch ov3d_ros segment.launch.py [use_sim_camera:=true] [checkpoint:=/path/model.pt] [device:=cuda]
    [config:=/path/params.yaml] [color_topic:=...] [depth_topic:=...] [camera_info_topic:=...] [rviz:=true]
    [map_file:=/path/room.npz]

Starts fusion_node and segmenter_node (and synthetic_camera_node with use_sim_camera:=true) with the parameters of
config/ov3d.yaml (plus config/sim_camera.yaml for the synthetic camera). Arguments given here override the YAML.
map_file:= starts both nodes from a map saved by /segmenter_node/save_map. rviz:=true also opens RViz2 with
rviz/ov3d.rviz. The files are found next to this one (share/ov3d_ros of an install,
or the source tree), so `ros2 launch launch/segment.launch.py` works by path too.
Without ros2 launch (pip-only ROS): `ov3d-run [--sim-camera]` starts the same nodes with the same YAML.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    default_config = os.path.join(share, "config", "ov3d.yaml")
    sim_config = os.path.join(share, "config", "sim_camera.yaml")

    rviz_config = os.path.join(share, "rviz", "ov3d.rviz")

    use_sim_camera = LaunchConfiguration("use_sim_camera")
    config = LaunchConfiguration("config")
    checkpoint = LaunchConfiguration("checkpoint")
    device = LaunchConfiguration("device")
    color_topic = LaunchConfiguration("color_topic")
    depth_topic = LaunchConfiguration("depth_topic")
    camera_info_topic = LaunchConfiguration("camera_info_topic")
    map_file = {"map_file": LaunchConfiguration("map_file")}

    topics = {"color_topic": color_topic, "depth_topic": depth_topic, "camera_info_topic": camera_info_topic}

    return LaunchDescription([
        DeclareLaunchArgument("use_sim_camera", default_value="false",
                              description="also start synthetic_camera_node (no hardware needed)"),
        DeclareLaunchArgument("config", default_value=default_config, description="ROS parameter YAML of the nodes"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="model checkpoint; empty = the demo checkpoint shipped with ov3d_ros"),
        DeclareLaunchArgument("device", default_value="auto", description="torch device: auto, cpu, cuda"),
        DeclareLaunchArgument("color_topic", default_value="/camera/camera/color/image_raw",
                              description="colour images (realsense2_camera 4.x name)"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/camera/aligned_depth_to_color/image_raw",
                              description="depth images registered to colour"),
        DeclareLaunchArgument("rviz", default_value="false", description="also open RViz2 with rviz/ov3d.rviz"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera/color/camera_info",
                              description="CameraInfo of the colour images"),
        DeclareLaunchArgument("map_file", default_value="",
                              description="start from a map file saved by /segmenter_node/save_map (.npz); empty = "
                                          "an empty map"),
        Node(
            package="ov3d_ros",
            executable="synthetic_camera_node",
            name="synthetic_camera_node",
            output="screen",
            parameters=[config, sim_config, topics],
            condition=IfCondition(use_sim_camera),
        ),
        # With the synthetic camera, config/sim_camera.yaml (poses from its PoseStamped topic) is layered on top.
        Node(
            package="ov3d_ros",
            executable="fusion_node",
            name="fusion_node",
            output="screen",
            parameters=[config, sim_config, topics, map_file],
            condition=IfCondition(use_sim_camera),
        ),
        Node(
            package="ov3d_ros",
            executable="fusion_node",
            name="fusion_node",
            output="screen",
            parameters=[config, topics, map_file],
            condition=UnlessCondition(use_sim_camera),
        ),
        Node(
            package="ov3d_ros",
            executable="segmenter_node",
            name="segmenter_node",
            output="screen",
            parameters=[config, {"checkpoint": checkpoint, "device": device}, map_file],
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", rviz_config],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
    ])
