"""fusion_node on a real ROS graph: clouds against the core fusion code, services, and bad inputs."""
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from ov3d_interfaces.srv import SaveMap
from ov3d_ros.fusion import RGBDFrame, VoxelMap, make_partial_cloud
from ov3d_ros.geometry import CameraModel
from ov3d_ros.messages import CAMERA_TOPICS
from ov3d_ros.nodes.conversions import (info_from_camera, make_header, matrix_to_pose, numpy_to_image,
                                        pointcloud2_to_cloud)
from ov3d_ros.nodes.fusion_node import FusionNode
from ov3d_ros.nodes.query_client import call_service
from ov3d_ros.nodes.synthetic_camera_node import SyntheticCameraNode

P = Parameter
FUSION_TEST_PARAMS = [P("pose_source", value="pose"), P("qos", value="reliable"), P("stride", value=2),
                      P("keyframe_min_translation", value=0.0), P("keyframe_min_rotation_deg", value=0.0),
                      P("global_rate", value=5.0), P("stats_period", value=0.0)]


def test_partial_and_global_clouds_match_the_core_fusion(run_nodes, wait_until, tmp_path):
    n_frames = 4
    camera_params = [P("n_frames", value=n_frames), P("width", value=160), P("height", value=120),
                     P("rate", value=20.0), P("max_loops", value=1), P("cache_dir", value=""),
                     P("wait_for_subscribers", value=True)]
    listener = Node("fusion_test_listener")
    partials, globals_ = [], []
    listener.create_subscription(PointCloud2, "/fusion_node/partial_cloud", partials.append, 10)
    listener.create_subscription(PointCloud2, "/fusion_node/global_cloud", globals_.append, 10)
    runner = run_nodes(lambda: FusionNode(parameter_overrides=FUSION_TEST_PARAMS), lambda: listener)
    wait_until(lambda: runner.nodes[0].count_subscribers("/camera/pose") > 0, what="fusion subscriptions")
    # The camera starts after the listener is in the graph, so no frame is published before anyone listens.
    camera_runner = run_nodes(lambda: SyntheticCameraNode(parameter_overrides=camera_params))
    camera = camera_runner.nodes[0]
    fusion = runner.nodes[0]
    wait_until(lambda: len(partials) == n_frames, what=f"{n_frames} partial clouds")

    # Reference: the core pipeline on exactly what the camera published (16UC1 millimetre depth).
    reference_map = VoxelMap(voxel_size=0.02)
    for i, (msg, frame) in enumerate(zip(partials, camera.sequence)):
        assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"] and msg.header.frame_id == "map"
        ref = make_partial_cloud(RGBDFrame(color=frame.color, depth=camera._depth_images[i], camera=frame.camera,
                                           T_world_cam=frame.T_world_cam, depth_scale=1000.0), stride=2,
                                 min_depth=0.1, max_depth=6.0)
        got = pointcloud2_to_cloud(msg)
        assert len(got) == len(ref) > 1000
        np.testing.assert_allclose(got.xyz, ref.xyz, atol=1e-4)  # the pose passes through a quaternion
        np.testing.assert_array_equal(got.rgb, ref.rgb)
        reference_map.integrate(ref)
    wait_until(fusion.idle, what="fusion idle")
    assert len(fusion.map) == pytest.approx(len(reference_map), rel=0.002)
    wait_until(lambda: globals_ and globals_[-1].width == len(fusion.map.to_cloud()), what="the global cloud")
    # The global cloud is the map's surface points: the reference's, to the pose's float rounding.
    expected = reference_map.to_cloud()
    assert globals_[-1].width == pytest.approx(len(expected), rel=0.002)

    client = Node("fusion_test_client")
    try:
        path = tmp_path / "maps" / "map.npz"
        saved = call_service(client, SaveMap, "/fusion_node/save_map", SaveMap.Request(path=str(path)), 20.0)
        assert saved.success and saved.point_count == len(fusion.map)
        assert len(VoxelMap.load(path)) == saved.point_count
        bad = call_service(client, SaveMap, "/fusion_node/save_map", SaveMap.Request(path="map.txt"), 20.0)
        assert not bad.success and ".npz or .ply" in bad.message
        reset = call_service(client, Trigger, "/fusion_node/reset_map", Trigger.Request(), 20.0)
        assert reset.success and len(fusion.map) == 0
    finally:
        client.destroy_node()


class _Camera:
    """Hand-made camera messages with chosen stamps, for the bad-input cases."""

    def __init__(self, node):
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.color = node.create_publisher(Image, CAMERA_TOPICS["color"], qos)
        self.depth = node.create_publisher(Image, CAMERA_TOPICS["depth"], qos)
        self.info = node.create_publisher(CameraInfo, CAMERA_TOPICS["info"], qos)
        self.pose = node.create_publisher(PoseStamped, "/camera/pose", qos)
        self.camera = CameraModel(width=64, height=48, fx=50.0, fy=50.0, cx=32.0, cy=24.0)

    def send(self, t, *, color=None, depth=None, color_encoding="rgb8", info=True, pose=True, pose_t=None):
        header = make_header("camera_color_optical_frame", t)
        color = np.full((48, 64, 3), 100, np.uint8) if color is None else color
        depth = np.full((48, 64), 1500, np.uint16) if depth is None else depth
        if pose:
            self.pose.publish(PoseStamped(header=make_header("map", t if pose_t is None else pose_t),
                                          pose=matrix_to_pose(np.eye(4))))
        if info:
            self.info.publish(info_from_camera(self.camera, header))
        if color_encoding == "yuv422":
            self.color.publish(Image(header=header, height=48, width=64, encoding="yuv422", step=128,
                                     data=bytes(128 * 48)))
        else:
            self.color.publish(numpy_to_image(color, color_encoding, header))
        self.depth.publish(numpy_to_image(depth, "16UC1", header))


def test_bad_inputs_are_logged_counted_and_survived(run_nodes, wait_until, log_catcher):
    params = FUSION_TEST_PARAMS + [P("pose_timeout", value=0.3), P("sync_queue_size", value=3),
                                   P("pose_tolerance", value=0.01)]
    source = Node("fusion_bad_input_source")
    logs = log_catcher(source)
    camera = _Camera(source)
    runner = run_nodes(lambda: FusionNode(parameter_overrides=params), lambda: source)
    fusion = runner.nodes[0]
    for pub in (camera.color, camera.depth, camera.info, camera.pose):
        wait_until(lambda: pub.get_subscription_count() > 0, what=f"subscriber of {pub.topic_name}")
    c = fusion.counters

    camera.send(1.0, color_encoding="yuv422")
    wait_until(lambda: c["bad_color"] == 1, what="wrong encoding counted")
    wait_until(lambda: logs.find("fusion_node", "encoding 'yuv422' is not supported"), what="encoding log")

    camera.send(2.0, color=np.zeros((24, 32, 3), np.uint8))  # colour half the size of depth and camera_info
    wait_until(lambda: c["bad_frame"] == 1, what="mismatched sizes counted")
    wait_until(lambda: logs.find("fusion_node", "dropping frame at t=2.000"), what="size mismatch log")

    camera.send(3.0, depth=np.zeros((48, 64), np.uint16))
    wait_until(lambda: c["empty_depth"] == 1, what="all-zero depth counted")
    wait_until(lambda: logs.find("fusion_node", "no valid depth"), what="zero depth log")

    for i in range(5):
        camera.send(4.0 + 0.1 * i, info=False)
    wait_until(lambda: logs.find("fusion_node", "no messages on " + CAMERA_TOPICS["info"]),
               what="missing camera_info log")
    assert fusion.sync.counters()["matched"] == 2  # frames 2 and 3 (frame 1 had no valid colour); none since

    camera.send(5.0, pose_t=9.0)  # a pose exists, but not at this frame's time
    wait_until(lambda: c["no_pose"] == 1, what="missing pose counted")
    wait_until(lambda: logs.find("fusion_node", "no pose from '/camera/pose'"), what="missing pose log")

    assert c["integrated"] == 0
    camera.send(10.0)  # and a good frame is still fused afterwards
    wait_until(lambda: c["integrated"] == 1, what="a good frame fused after the bad ones")
    assert len(fusion.map) > 0


def test_keyframe_gating_fuses_only_moved_frames_but_publishes_all(run_nodes, wait_until):
    params = FUSION_TEST_PARAMS[:3] + [P("keyframe_min_translation", value=0.10),
                                       P("keyframe_min_rotation_deg", value=10.0), P("stats_period", value=0.0)]
    source = Node("fusion_keyframe_source")
    partials = []
    source.create_subscription(PointCloud2, "/fusion_node/partial_cloud", partials.append, 20)
    camera = _Camera(source)
    runner = run_nodes(lambda: FusionNode(parameter_overrides=params), lambda: source)
    fusion = runner.nodes[0]
    for pub in (camera.color, camera.depth, camera.info, camera.pose):
        wait_until(lambda: pub.get_subscription_count() > 0, what=f"subscriber of {pub.topic_name}")
    # Camera x positions: 0 (first: keyframe), 0.05 (too close), 0.12 (keyframe), 0.15 (too close),
    # then a 15 degree turn in place (keyframe).
    import math

    poses = [np.eye(4) for _ in range(5)]
    for T, x in zip(poses, (0.0, 0.05, 0.12, 0.15, 0.15)):
        T[0, 3] = x
    c, s = math.cos(math.radians(15)), math.sin(math.radians(15))
    poses[4][:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    for i, T in enumerate(poses):
        t = 20.0 + i
        camera.pose.publish(PoseStamped(header=make_header("map", t), pose=matrix_to_pose(T)))
        camera.send(t, pose=False)
        wait_until(lambda: fusion.frames_finished == i + 1, what=f"frame {i} handled")
    assert fusion.counters["integrated"] == 3 and fusion.counters["not_keyframe"] == 2
    wait_until(lambda: len(partials) == 5, what="a partial cloud for every frame")


def test_odometry_poses_are_composed_with_base_to_camera(run_nodes, wait_until):
    from nav_msgs.msg import Odometry

    from ov3d_ros.geometry import quaternion_to_matrix

    # Camera optical frame on the robot: 0.2 m forward, 0.5 m up, looking along the base's x axis.
    base_to_camera = [0.2, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5]
    params = [P("pose_source", value="odometry"), P("pose_topic", value="/odom"), P("world_frame", value="odom"),
              P("qos", value="reliable"), P("stride", value=4), P("base_to_camera", value=base_to_camera),
              P("stats_period", value=0.0)]
    source = Node("fusion_odometry_source")
    partials = []
    source.create_subscription(PointCloud2, "/fusion_node/partial_cloud", partials.append, 5)
    odom_pub = source.create_publisher(Odometry, "/odom", 10)
    camera = _Camera(source)
    runner = run_nodes(lambda: FusionNode(parameter_overrides=params), lambda: source)
    for pub in (camera.color, camera.depth, camera.info, odom_pub):
        wait_until(lambda: pub.get_subscription_count() > 0, what=f"subscriber of {pub.topic_name}")
    T_odom_base = np.eye(4)
    T_odom_base[:3, :3] = quaternion_to_matrix([0, 0, np.sin(0.3), np.cos(0.3)])  # yaw 0.6 rad
    T_odom_base[:3, 3] = [1.0, -2.0, 0.0]
    odom = Odometry()
    odom.header = make_header("odom", 30.0)
    odom.child_frame_id = "base_link"
    odom.pose.pose = matrix_to_pose(T_odom_base)
    odom_pub.publish(odom)
    camera.send(30.0, pose=False)
    wait_until(lambda: partials, what="a partial cloud")
    assert partials[0].header.frame_id == "odom"

    T_base_cam = np.eye(4)
    T_base_cam[:3, :3] = quaternion_to_matrix(base_to_camera[3:])
    T_base_cam[:3, 3] = base_to_camera[:3]
    np.testing.assert_allclose(T_base_cam[:3, 2], [1, 0, 0], atol=1e-12)  # optical z = base forward
    ref = make_partial_cloud(RGBDFrame(color=np.full((48, 64, 3), 100, np.uint8),
                                       depth=np.full((48, 64), 1500, np.uint16), camera=camera.camera,
                                       T_world_cam=T_odom_base @ T_base_cam), stride=4, max_depth=6.0)
    got = pointcloud2_to_cloud(partials[0])
    np.testing.assert_allclose(got.xyz, ref.xyz, atol=1e-5)
    # 1.5 m in front of a camera 0.5 m above the floor: every point at z = 0.5 +- the image half-height.
    assert np.all(np.abs(got.xyz[:, 2] - 0.5) <= 1.5 * 24 / 50 + 1e-4)
