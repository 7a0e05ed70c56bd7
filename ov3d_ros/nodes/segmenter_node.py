"""segmenter_node: partial / global clouds -> labelled clouds, markers and the /query_objects service.

A thin adapter over ``ov3d_ros.segmenter.Segmenter``. The network runs once per cloud: the per-point (per-voxel,
since the fusion node publishes one point per map voxel) features of the latest partial cloud and of the latest
global map are cached, so a query with new text only embeds the text and takes a matrix product.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from geometry_msgs.msg import Point
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from ov3d_interfaces.srv import QueryObjects
from ov3d_ros.cloud import PointCloud
from ov3d_ros.messages import stamp_seconds
from ov3d_ros.nodes.conversions import cloud_to_pointcloud2, make_header, pointcloud2_to_cloud
from ov3d_ros.nodes.objects import ObjectSummary, summarise_queries
from ov3d_ros.nodes.params import Param, declare_all
from ov3d_ros.nodes.runner import spin_nodes
from ov3d_ros.nodes.sync import BoundedQueue
from ov3d_ros.resources import default_checkpoint
from ov3d_ros.segmenter import CloudFeatures, PointLabels, Segmenter
from ov3d_ros.superpoints import SuperpointConfig
from ov3d_ros.viz import label_palette

DEVICE_CHOICES = ("auto", "cpu", "cuda")

SEGMENTER_PARAMS = [
    Param("checkpoint", "", "Model checkpoint (.pt, ov3d format); empty = the demo checkpoint shipped with "
          "the package (ov3d_ros/assets/ov3d_demo.pt)."),
    Param("device", "auto", "Torch device: auto (cuda if available), cpu, cuda or cuda:N."),
    Param("num_threads", 0, "Torch CPU threads (0 = torch's default).", minimum=0, maximum=256),
    Param("test_time_passes", 1, "Network passes averaged per voxel, each on one random point per voxel of the "
          "cloud turned about gravity (Segmenter passes); 1 = one plain pass. Costs one network run per pass.",
          minimum=1, maximum=64),
    Param("superpoints", True, "Average the features of the global map over superpoints (surface patches of one "
          "orientation and colour, ov3d_ros.superpoints), so each patch gets one label: fewer scattered mistakes, "
          "label borders on colour and shape edges. Costs ~1 s per 200k points on a CPU."),
    Param("superpoints_partial", False, "The same for every partial cloud (adds to the frame -> labels latency)."),
    Param("superpoint_voxel", 0.02, "Cell size [m] of the superpoint graph: about the spacing of the clouds' points "
          "(the fusion node's voxel_size).", minimum=1e-3, maximum=1.0),
    Param("superpoint_k", 1.0, "Superpoint scale: larger values give larger patches.", minimum=1e-3, maximum=100.0),
    Param("partial_topic", "/fusion_node/partial_cloud", "Partial clouds to segment as they arrive."),
    Param("global_topic", "/fusion_node/global_cloud", "Global map clouds, segmented at global_rate."),
    Param("queries", ["chair", "table", "sofa", "bed", "lamp", "cabinet"],
          "Default text queries for the published labelled clouds and markers (changeable at runtime).",
          read_only=False),
    Param("min_score", 0.0, "Points scoring below this for every query stay unlabelled (label 0xFFFFFFFF).",
          minimum=-1.0, maximum=1.0, read_only=False),
    Param("query_service", "/query_objects", "Name of the QueryObjects service."),
    Param("segment_partial", True, "Segment every partial cloud and publish it on ~/labelled_cloud."),
    Param("global_rate", 0.5, "Rate [Hz] at which a new global map is segmented (features cached) and published "
          "on ~/labelled_map with ~/markers (0 = only on request).", minimum=0.0, maximum=100.0),
    Param("partial_queue_size", 2, "Partial clouds waiting for the network (oldest dropped).", minimum=1,
          maximum=100),
    Param("cluster_voxel", 0.05, "Voxel [m] of the connected-component clustering behind each query's centroid.",
          minimum=1e-3, read_only=False),
    Param("max_queries", 256, "Requests with more queries than this are refused.", minimum=1, maximum=100000),
    Param("max_points", 3_000_000, "Clouds with more points are refused (memory guard).", minimum=1),
    Param("marker_frame", "", "Frame of the markers; empty = the cloud's frame."),
    Param("marker_text_size", 0.15, "Height [m] of the marker text.", minimum=0.001, read_only=False),
    Param("stats_period", 10.0, "Period [s] of the counters log line (0 = never).", minimum=0.0),
]


@dataclass
class _Cached:
    cloud: PointCloud
    stamp: float
    features: CloudFeatures | None = None  # per-voxel features on the segmenter's device, None until computed
    superpoints: bool = False  # whether those features are averaged over superpoints


class SegmenterNode(Node):
    def __init__(self, name: str = "segmenter_node", **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.p = declare_all(self, SEGMENTER_PARAMS)
        p = self.p
        if p["num_threads"] > 0:
            torch.set_num_threads(int(p["num_threads"]))
        checkpoint = p["checkpoint"] or str(default_checkpoint())
        superpoints = SuperpointConfig(voxel_size=p["superpoint_voxel"], k=p["superpoint_k"])
        self.segmenter = Segmenter.load(checkpoint, device=p["device"], passes=p["test_time_passes"],
                                        superpoints=superpoints, max_queries=p["max_queries"])
        self.checkpoint = checkpoint
        self.segmenter.check_queries(list(p["queries"]))
        self._lock = threading.Lock()  # guards the caches (service and timers may run on different threads)
        self.partial_queue = BoundedQueue(p["partial_queue_size"], name="partial")
        self.latest_global: _Cached | None = None     # newest map received
        self.segmented_global: _Cached | None = None  # newest map whose features are computed (cached)
        self.latest_partial: _Cached | None = None
        self.counters = {"bad_cloud": 0, "partials_segmented": 0, "globals_segmented": 0, "queries": 0,
                         "queries_failed": 0, "feature_passes": 0}
        self.last_partial_latency = float("nan")

        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Decoding callbacks run beside the network passes (own group), so clouds are queued -- and counted when
        # dropped -- instead of overflowing the DDS history while the network is busy.
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(PointCloud2, p["partial_topic"], self._on_partial, 5, callback_group=inputs)
        self.create_subscription(PointCloud2, p["global_topic"], self._on_global, 2, callback_group=inputs)
        self.labelled_pub = self.create_publisher(PointCloud2, "~/labelled_cloud", 5)
        self.labelled_map_pub = self.create_publisher(PointCloud2, "~/labelled_map", 2)
        self.markers_pub = self.create_publisher(MarkerArray, "~/markers", 2)
        # The partial-cloud timer is always ready while clouds stream in (a pass outlasts its 10 ms period), and
        # rclpy's executor serves ready timers before services: in one callback group it would starve the
        # service and the global pass. So each gets its own group, and the network passes share one lock.
        self._network_lock = threading.Lock()
        self.create_service(QueryObjects, p["query_service"], self._on_query,
                            callback_group=MutuallyExclusiveCallbackGroup())
        if p["segment_partial"]:
            self.create_timer(0.01, self._segment_partials, callback_group=MutuallyExclusiveCallbackGroup())
        if p["global_rate"] > 0:
            self.create_timer(1.0 / p["global_rate"], self._segment_global,
                              callback_group=MutuallyExclusiveCallbackGroup())
        if p["stats_period"] > 0:
            self.create_timer(p["stats_period"], self._log_stats, callback_group=inputs)
        self.get_logger().info(f"loaded {checkpoint} on {getattr(self.segmenter, 'device', p['device'])}; "
                               f"serving {p['query_service']}; default queries {list(p['queries'])}")

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "queries":
                try:
                    self.segmenter.check_queries(list(param.value))
                except (ValueError, TypeError) as exc:
                    return SetParametersResult(successful=False, reason=f"queries: {exc}")
            if param.name == "min_score" and not -1.0 <= float(param.value) <= 1.0:
                return SetParametersResult(successful=False, reason="min_score must be in [-1, 1]")
        for param in params:
            if param.name in self.p:
                self.p[param.name] = param.value
        return SetParametersResult(successful=True)

    @property
    def queries(self) -> list[str]:
        return self.segmenter.check_queries(list(self.p["queries"]))

    # ------------------------------------------------------------------ callbacks: decode + enqueue only
    def _decode(self, msg: PointCloud2, what: str) -> PointCloud | None:
        try:
            n = int(msg.width) * int(msg.height)
            if n > self.p["max_points"]:
                raise ValueError(f"{n} points exceed max_points={self.p['max_points']}")
            cloud = pointcloud2_to_cloud(msg)
            finite = np.all(np.isfinite(cloud.xyz), axis=1)
            if not finite.all():
                cloud = cloud.select(finite)
            return cloud
        except ValueError as exc:
            self.counters["bad_cloud"] += 1
            self.get_logger().error(f"dropping {what} cloud: {exc}", throttle_duration_sec=5.0)
            return None

    def _on_partial(self, msg: PointCloud2) -> None:
        cloud = self._decode(msg, "partial")
        if cloud is not None:
            self.partial_queue.push(_Cached(cloud=cloud, stamp=stamp_seconds(msg.header.stamp),
                                            superpoints=self.p["superpoints_partial"]))

    def _on_global(self, msg: PointCloud2) -> None:
        cloud = self._decode(msg, "global")
        if cloud is not None:
            with self._lock:
                self.latest_global = _Cached(cloud=cloud, stamp=stamp_seconds(msg.header.stamp),
                                             superpoints=self.p["superpoints"])

    # ------------------------------------------------------------------ network passes
    def _features(self, entry: _Cached) -> CloudFeatures:
        """Per-voxel features of ``entry``: computed once, then kept on the entry (a new query costs no network
        pass). With superpoints they are one feature per superpoint instead."""
        with self._network_lock:  # one pass at a time; a second caller for the same entry finds it cached
            if entry.features is None:
                entry.features = self.segmenter.cloud_features(entry.cloud.xyz, entry.cloud.rgb, stamp=entry.stamp,
                                                               superpoints=entry.superpoints)
                self.counters["feature_passes"] += 1
            return entry.features

    def _classify(self, entry: _Cached, queries: list[str], min_score: float) -> PointLabels:
        features = self._features(entry)
        with self._network_lock:  # the text encoder's embedding cache is not thread-safe
            return self.segmenter.label_features(features, queries, min_score)

    def _segment_partials(self) -> None:
        entry = self.partial_queue.pop_latest()
        if entry is None or len(entry.cloud) == 0:
            return
        try:
            queries = self.queries
            labels = self._classify(entry, queries, self.p["min_score"])
        except (ValueError, TypeError, RuntimeError) as exc:
            self.counters["bad_cloud"] += 1
            self.get_logger().error(f"segmenting a partial cloud failed: {exc}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self.latest_partial = entry
        labelled = entry.cloud.with_labels(labels.label.astype(np.int32), labels.score)
        header = make_header(entry.cloud.frame_id, entry.stamp)
        self.labelled_pub.publish(cloud_to_pointcloud2(labelled, header, with_labels=True))
        self.counters["partials_segmented"] += 1
        self.last_partial_latency = self.get_clock().now().nanoseconds * 1e-9 - entry.stamp

    def _segment_global(self) -> None:
        with self._lock:
            entry = self.latest_global
        if entry is None or len(entry.cloud) == 0 or entry is self.segmented_global:
            return
        try:
            queries = self.queries
            labels = self._classify(entry, queries, self.p["min_score"])
        except (ValueError, TypeError, RuntimeError) as exc:
            self.counters["bad_cloud"] += 1
            self.get_logger().error(f"segmenting the global map failed: {exc}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self.segmented_global = entry
        labelled = entry.cloud.with_labels(labels.label.astype(np.int32), labels.score)
        header = make_header(entry.cloud.frame_id, entry.stamp)
        self.labelled_map_pub.publish(cloud_to_pointcloud2(labelled, header, with_labels=True))
        summaries = summarise_queries(entry.cloud.xyz, labels.label, queries, labels.best, self.p["cluster_voxel"])
        self.markers_pub.publish(self.make_markers(summaries, header))
        self.counters["globals_segmented"] += 1

    # ------------------------------------------------------------------ service
    def _on_query(self, request: QueryObjects.Request, response: QueryObjects.Response) -> QueryObjects.Response:
        self.counters["queries"] += 1
        started = time.perf_counter()

        def fail(message: str) -> QueryObjects.Response:
            self.counters["queries_failed"] += 1
            response.success = False
            response.message = message
            self.get_logger().error(f"query_objects: {message}")
            return response

        try:
            queries = self.segmenter.check_queries(list(request.queries))
        except (ValueError, TypeError) as exc:
            return fail(str(exc))
        min_score = float(request.min_score)
        if not math.isfinite(min_score) or not -1.0 <= min_score <= 1.0:
            return fail(f"min_score must be a finite number in [-1, 1], got {request.min_score}")
        if request.cloud == QueryObjects.Request.CLOUD_GLOBAL:
            # With a global_rate the answer comes from the map of the last global pass (at most 1/global_rate old,
            # features cached: no network pass); on demand (global_rate 0) from the newest map received.
            with self._lock:
                entry = self.segmented_global if self.p["global_rate"] > 0 else None
                entry = entry or self.latest_global
            which = f"global map ({self.p['global_topic']})"
        elif request.cloud == QueryObjects.Request.CLOUD_PARTIAL:
            with self._lock:
                entry = self.latest_partial
                if entry is None:  # a partial cloud that arrived but was not segmented yet
                    entry = self.partial_queue.pop_latest()
            which = f"partial cloud ({self.p['partial_topic']})"
        else:
            return fail(f"cloud must be CLOUD_GLOBAL (0) or CLOUD_PARTIAL (1), got {request.cloud}")
        if entry is None or len(entry.cloud) == 0:
            return fail(f"no {which} received yet")
        try:
            labels = self._classify(entry, queries, min_score)
        except (ValueError, TypeError, RuntimeError) as exc:
            return fail(f"segmentation failed: {exc}")
        if request.cloud == QueryObjects.Request.CLOUD_GLOBAL:
            with self._lock:
                if self.segmented_global is None or entry.stamp >= self.segmented_global.stamp:
                    self.segmented_global = entry
        summaries = summarise_queries(entry.cloud.xyz, labels.label, queries, labels.best, self.p["cluster_voxel"])
        response.success = True
        response.queries = queries
        response.point_counts = [s.point_count for s in summaries]
        response.best_scores = [float(s.best_score) for s in summaries]
        response.centroids = [Point(x=float(s.centroid[0]), y=float(s.centroid[1]), z=float(s.centroid[2]))
                              for s in summaries]
        response.cluster_point_counts = [s.cluster_point_count for s in summaries]
        header = make_header(entry.cloud.frame_id, entry.stamp)
        if request.return_cloud:
            response.labelled_cloud = cloud_to_pointcloud2(entry.cloud.with_labels(labels.label.astype(np.int32), labels.score), header,
                                                           with_labels=True)
        self.markers_pub.publish(self.make_markers(summaries, header))
        labelled = int((labels.label >= 0).sum())
        age = self.get_clock().now().nanoseconds * 1e-9 - entry.stamp
        response.message = (f"{len(queries)} queries on the {which.split(' (')[0]} ({age:.1f} s old): "
                            f"{labelled}/{len(labels.label)} points labelled in "
                            f"{1e3 * (time.perf_counter() - started):.1f} ms")
        self.get_logger().info(f"query_objects {queries}: {response.message}")
        return response

    def make_markers(self, summaries: list[ObjectSummary], header) -> MarkerArray:
        markers = MarkerArray()
        frame = self.p["marker_frame"] or header.frame_id
        clear = Marker(action=Marker.DELETEALL)
        clear.header.frame_id = frame
        markers.markers.append(clear)
        palette = label_palette(max(1, len(summaries)))
        for i, s in enumerate(summaries):
            if s.point_count == 0 or not np.all(np.isfinite(s.centroid)):
                continue
            marker = Marker()
            marker.header.frame_id = frame
            marker.header.stamp = header.stamp
            marker.ns = "ov3d_queries"
            marker.id = i
            marker.type = Marker.TEXT_VIEW_FACING
            marker.action = Marker.ADD
            marker.pose.position = Point(x=float(s.centroid[0]), y=float(s.centroid[1]), z=float(s.centroid[2]))
            marker.pose.orientation.w = 1.0
            marker.scale.z = float(self.p["marker_text_size"])
            r, g, b = (float(v) for v in palette[i])
            marker.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
            marker.text = s.query
            markers.markers.append(marker)
        return markers

    def stats(self) -> dict:
        out = dict(self.counters)
        out.update({f"partial_{k}": v for k, v in self.partial_queue.counters().items()})
        return out

    def _log_stats(self) -> None:
        self.get_logger().info("counters: " + ", ".join(f"{k}={v}" for k, v in self.stats().items())
                               + f", last partial latency {1e3 * self.last_partial_latency:.0f} ms")


def main(args=None) -> None:
    spin_nodes([SegmenterNode], args=args)


if __name__ == "__main__":
    main()
