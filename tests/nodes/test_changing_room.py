"""The map forgets what left the room: the synthetic camera takes the table away after its first loop, and after
two more loops neither the fusion node's map (free space and surface points on every frame) nor the answers to
"table" hold it."""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from scipy.spatial import cKDTree
from rclpy.parameter import Parameter

from ov3d_interfaces.srv import QueryObjects
from ov3d_ros.data.synthetic import CLASS_NAMES, SyntheticRoom
from ov3d_ros.nodes.fusion_node import FusionNode
from ov3d_ros.nodes.query_client import call_service, make_request
from ov3d_ros.nodes.segmenter_node import SegmenterNode
from ov3d_ros.nodes.synthetic_camera_node import SyntheticCameraNode
from ov3d_ros.resources import default_checkpoint
from test_instances_live import looping_fusion_params

SEED, N_FRAMES = 1000, 16
P = Parameter


def _in_footprint(xyz: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Points above the floor (3 cm) inside the box ``lo``-``hi``."""
    return np.all((xyz >= lo + [0.0, 0.0, 0.03]) & (xyz <= hi), axis=1)


def test_a_table_taken_away_leaves_the_map_and_the_answers(run_nodes, wait_until, tmp_path):
    room = SyntheticRoom.generate(SEED)
    tables = [o.aabb() for o in room.furniture if o.class_name == "table"]
    assert tables
    camera_params = [P("seed", value=SEED), P("n_frames", value=N_FRAMES), P("rate", value=8.0),
                     P("remove_objects", value="table"), P("change_after_loops", value=1),
                     P("max_loops", value=3), P("wait_for_subscribers", value=True),
                     P("cache_dir", value=str(tmp_path))]
    # The map that forgets: free-space votes and surface points on every frame.
    fusion_params = looping_fusion_params(N_FRAMES) + [P("surface_refine", value=True), P("observe_every", value=1)]
    segmenter_params = [P("checkpoint", value=str(default_checkpoint())), P("device", value="cpu"),
                        P("queries", value=list(CLASS_NAMES)), P("stats_period", value=0.0)]
    runner = run_nodes(lambda: FusionNode(parameter_overrides=fusion_params),
                       lambda: SegmenterNode(parameter_overrides=segmenter_params))
    fusion, segmenter = runner.nodes
    camera = run_nodes(lambda: SyntheticCameraNode(parameter_overrides=camera_params)).nodes[0]
    client = Node("changing_room_client")

    # What stands in the table's old box but on no surface of the room without it: the table, or its ghost.
    surfaces = cKDTree(room.without(["table"]).ground_truth_cloud(spacing=0.01).xyz)

    def table_in_map() -> int:
        with fusion.mapper.lock:
            xyz = fusion.map.to_cloud().xyz
        inside = np.any([_in_footprint(xyz, lo, hi) for lo, hi in tables], axis=0)
        return int((surfaces.query(xyz[inside])[0] > 0.03).sum())

    try:
        wait_until(lambda: camera.loops_done >= 1, timeout=180, what="the camera's first loop")
        before = table_in_map()
        wait_until(lambda: camera.finished.is_set(), timeout=180, what="two loops without the table")
        wait_until(lambda: fusion.sync.counters()["matched"] == 3 * N_FRAMES, what="every frame synchronised")
        wait_until(fusion.idle, what="fusion to finish")
        assert fusion.counters["integrated"] == 3 * N_FRAMES
        after = table_in_map()
        fusion.publish_global()
        final = fusion.mapper.last_keyframe_stamp
        # (stamps travel as sec + nanosec: equal to the microsecond, not always to the last bit)
        wait_until(lambda: abs(segmenter.map_snapshot.stamp - final) < 1e-6, timeout=120,
                   what="the feature map of the last map")
        answer = call_service(client, QueryObjects, "/query_objects", make_request(list(CLASS_NAMES)), 60.0)
    finally:
        client.destroy_node()
    assert before > 300, before  # the table was in the map
    # What stays is what the later loops never saw through: places other furniture hides, and the noise margin of
    # the surfaces behind the table (carve_margin).
    assert after <= 0.15 * before and fusion.map.carved > before // 2, (before, after, fusion.map.carved)
    assert answer.success, answer.message
    centres = [np.array([i.box_center.x, i.box_center.y, i.box_center.z]) for i in answer.instances
               if i.query == "table"]
    for lo, hi in tables:  # no table instance stands where the table was
        assert not any(np.all((c[:2] >= lo[:2]) & (c[:2] <= hi[:2])) for c in centres), (lo, hi, centres)
