"""Object instances live: with the synthetic camera looping the held-out demo room, /query_objects answers one
instance per chair of the room, each box centred within 0.15 m of the chair's true box, and the chairs keep their
ids across consecutive answers while the camera keeps mapping. A separate rclpy client asks, as a robot would."""
import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter

from ov3d_interfaces.srv import QueryObjects
from ov3d_ros.data.synthetic import CLASS_NAMES, SyntheticRoom
from ov3d_ros.instances import fit_box
from ov3d_ros.messages import stamp_seconds
from ov3d_ros.nodes.fusion_node import FusionNode
from ov3d_ros.nodes.query_client import call_service, make_request
from ov3d_ros.nodes.segmenter_node import SegmenterNode
from ov3d_ros.nodes.synthetic_camera_node import SyntheticCameraNode
from ov3d_ros.resources import default_checkpoint

SEED, N_FRAMES = 1000, 16
MIN_POINTS = 250  # a chair seen on one loop of 16 frames holds 600-800 map voxels; label slivers reach ~160
P = Parameter


def looping_fusion_params(n_frames: int) -> list:
    """Fusion node parameters for a synthetic camera looping ``n_frames``: every frame fused (no keyframe gate, room
    to queue a loop), the camera's poses, maps sent 4 times a second."""
    return [P("pose_source", value="pose"), P("qos", value="reliable"), P("global_rate", value=4.0),
            P("keyframe_min_translation", value=0.0), P("keyframe_min_rotation_deg", value=0.0),
            P("stats_period", value=0.0), P("frame_queue_size", value=4 * n_frames), P("pose_timeout", value=60.0)]


def test_chairs_are_instances_with_true_boxes_and_lasting_ids(run_nodes, wait_until, tmp_path):
    camera_params = [P("seed", value=SEED), P("n_frames", value=N_FRAMES), P("rate", value=8.0),
                     P("max_loops", value=0), P("wait_for_subscribers", value=True),
                     P("cache_dir", value=str(tmp_path))]
    fusion_params = looping_fusion_params(N_FRAMES)
    segmenter_params = [P("checkpoint", value=str(default_checkpoint())), P("device", value="cpu"),
                        P("queries", value=list(CLASS_NAMES)), P("stats_period", value=0.0),
                        P("superpoint_refine_points", value=0)]
    runner = run_nodes(lambda: FusionNode(parameter_overrides=fusion_params),
                       lambda: SegmenterNode(parameter_overrides=segmenter_params))
    fusion, segmenter = runner.nodes
    camera = run_nodes(lambda: SyntheticCameraNode(parameter_overrides=camera_params)).nodes[0]
    client = Node("instances_client")
    answers = []
    try:
        # Answers on maps of the whole loop: features of a map whose newest frame is at least the loop's last one
        # (a map update that started before the loop ended does not count).
        wait_until(lambda: fusion.stats()["integrated"] >= N_FRAMES, timeout=180, what="the camera's first loop")
        whole = fusion.mapper.last_keyframe_stamp
        wait_until(lambda: segmenter.map_snapshot.stamp >= whole - 1e-6, timeout=120, what="a map of the whole loop")
        request = make_request(list(CLASS_NAMES), min_points=MIN_POINTS)
        while len(answers) < 3:  # three answers on three successive maps, the camera still flying
            answer = call_service(client, QueryObjects, "/query_objects", request, timeout=60.0)
            assert answer.success, answer.message
            answers.append(answer)
            version = segmenter.map_snapshot.version
            wait_until(lambda: segmenter.map_snapshot.version > version, timeout=120, what="the next map")
    finally:
        client.destroy_node()
    stamps = [stamp_seconds(a.map_stamp) for a in answers]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3, stamps

    room = SyntheticRoom.generate(SEED)
    gt = room.ground_truth_cloud(spacing=0.02)
    chair = CLASS_NAMES.index("chair")
    truth = [fit_box(gt.xyz[gt.instance == k]).center for k in np.unique(gt.instance[gt.label == chair])]
    assert len(truth) >= 2
    ids = []
    for answer in answers:
        chairs = [i for i in answer.instances if i.query == "chair"]
        centres = np.array([[i.box_center.x, i.box_center.y, i.box_center.z] for i in chairs])
        assert len(chairs) == len(truth), [(i.point_count, i.box_center) for i in chairs]
        for c in truth:  # each chair found once, its box centred on the true one
            distance = np.linalg.norm(centres - c, axis=1)
            assert np.sum(distance < 0.15) == 1, (c, centres)
        ids.append(sorted((tuple(np.round(t, 1)), chairs[int(np.argmin(np.linalg.norm(centres - t, axis=1)))].id)
                          for t in truth))
    assert ids[0] == ids[1] == ids[2], ids
