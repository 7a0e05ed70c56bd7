"""segmenter_node: partial / global clouds -> labelled clouds, markers and the /query_objects service.

A thin adapter over the core. The global map's features live in a ``FeatureMap`` that follows the fusion node's
~/global_cloud: each update re-runs the network only where the map changed, and a query is answered from the
current feature map without waiting for the network, with the stamp of the map it used (``map_stamp``). Partial
clouds are segmented only for the subscribers of ~/labelled_cloud (at ``partial_rate``) or for a CLOUD_PARTIAL
query, their per-voxel features kept so a query with new text only embeds the text and takes a matrix product.
The network passes run in a thread of the node's own; the executor's callbacks only decode, answer and publish.
~/save_map and ~/load_map keep the map, its features and object ids in one file across restarts, the voxels through
the fusion node's services of the same names (``ov3d_ros.map_file``).
"""
from __future__ import annotations

import math
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from geometry_msgs.msg import Point
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import MarkerArray

from ov3d_interfaces.srv import LoadMap, QueryObjects, SaveMap
from ov3d_ros.cloud import PointCloud
from ov3d_ros.feature_map import FeatureMap, FeatureMapConfig
from ov3d_ros.data.npz import staged
from ov3d_ros.map_file import read_features, write_features
from ov3d_ros.messages import stamp_seconds
from ov3d_ros.instances import InstanceTracker, cluster_grid, extract_instances
from ov3d_ros.nodes.conversions import cloud_to_pointcloud2, instance_markers, instance_message, make_header, \
    pointcloud2_to_cloud, sec_to_stamp
from ov3d_ros.nodes.objects import select_instances, summaries as object_summaries
from ov3d_ros.nodes.params import Param, declare_all, node_help
from ov3d_ros.nodes.runner import spin_nodes
from ov3d_ros.nodes.sync import BoundedQueue
from ov3d_ros.resources import default_checkpoint
from ov3d_ros.segmenter import CloudFeatures, Segmenter
from ov3d_ros.superpoints import SuperpointConfig

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PARTIAL_DEMAND_S = 60.0  # a CLOUD_PARTIAL query keeps the partial clouds coming for this long

SEGMENTER_PARAMS = [
    Param("checkpoint", "", "Model checkpoint (.pt, ov3d format); empty = the demo checkpoint shipped with "
          "the package (ov3d_ros/assets/ov3d_demo.pt)."),
    Param("device", "auto", "Torch device: auto (cuda if available), cpu, cuda or cuda:N."),
    Param("num_threads", 0, "Torch CPU threads (0 = torch's default).", minimum=0, maximum=256),
    Param("test_time_passes", 1, "Network passes averaged per voxel, each on one random point per voxel of the "
          "cloud turned about gravity (Segmenter passes); 1 = one plain pass. Costs one network run per pass.",
          minimum=1, maximum=64),
    Param("superpoints", True, "Average the features of the global map over superpoints (surface patches of one "
          "orientation and colour, ov3d_ros.superpoints, computed over the tiles each update runs), so each patch "
          "gets one label: fewer scattered mistakes, label borders on colour and shape edges."),
    Param("superpoints_partial", False, "The same for every partial cloud (adds to the frame -> labels latency)."),
    Param("superpoint_voxel", 0.02, "Cell size [m] of the superpoint graph: about the spacing of the clouds' points "
          "(the fusion node's voxel_size).", minimum=1e-3, maximum=1.0),
    Param("superpoint_k", 1.0, "Superpoint scale: larger values give larger patches.", minimum=1e-3, maximum=100.0),
    Param("partial_topic", "/fusion_node/partial_cloud", "Partial clouds to segment: subscribed to only while "
          "~/labelled_cloud has subscribers or a CLOUD_PARTIAL query came in the last minute."),
    Param("global_topic", "/fusion_node/global_cloud", "Global map clouds, segmented at global_rate."),
    Param("queries", ["chair", "table", "sofa", "bed", "lamp", "cabinet"],
          "Default text queries for the published labelled clouds and markers (changeable at runtime).",
          read_only=False),
    Param("min_score", 0.0, "Points scoring below this for every query stay unlabelled (label 0xFFFFFFFF).",
          minimum=-1.0, maximum=1.0, read_only=False),
    Param("query_service", "/query_objects", "Name of the QueryObjects service."),
    Param("segment_partial", True, "Segment partial clouds for ~/labelled_cloud while someone subscribes to it, "
          "at most partial_rate a second (a CLOUD_PARTIAL query segments the latest one in any case)."),
    Param("partial_rate", 2.0, "Max rate [Hz] of labelled partial clouds.", minimum=0.01, maximum=100.0),
    Param("global_rate", 0.0, "Max rate [Hz] at which the feature map follows ~/global_cloud: each update re-runs "
          "the network only where the map changed, then ~/labelled_map and ~/markers go to their subscribers "
          "(0 = as soon as each map arrives). Queries never wait for an update.", minimum=0.0, maximum=100.0),
    Param("map_voxel", 0.02, "Voxel size [m] of the incoming global map (the fusion node's voxel_size): it tells "
          "which voxels are the same from one map to the next.", minimum=1e-3, maximum=1.0),
    Param("feature_tile", 2.0, "Tile edge [m] of the feature map: an update re-runs the tiles that hold a changed "
          "voxel, with the model's context around them.", minimum=0.1, maximum=100.0),
    Param("superpoint_refine_points", 100_000, "With superpoints, a map update gives superpoints to the tiles "
          "waiting for them when they hold at most this many points; past that they answer on network voxels "
          "first and get superpoints this many points at a time while the network thread has no map to update "
          "(0 = always in the update: a room that comes in at once then waits for all its superpoints).",
          minimum=0),
    Param("feature_rerun_fraction", 0.1, "A tile of the feature map runs again once this fraction of its points "
          "changed (new, gone, moved or recoloured) since it last ran; below it, new points take their nearest "
          "point's features (0 = every change runs the tile).", minimum=0.0, maximum=1.0),
    Param("objects_refresh_fraction", 0.01, "The map's objects (instances, counts, centroids) are found again "
          "when a map update changed the feature map's units (a tile ran or got its superpoints) or once the points "
          "each update since found changed add up to this fraction of the map; a smaller change keeps them, at "
          "the new map's stamp (0 = after every change).", minimum=0.0, maximum=1.0),
    Param("partial_queue_size", 2, "Partial clouds waiting for the network (oldest dropped).", minimum=1,
          maximum=100),
    Param("cluster_voxel", 0.05, "Voxel [m] of the connected-component clustering behind each query's centroid.",
          minimum=1e-3, read_only=False),
    Param("instance_min_points", 30, "Smallest object instance in map points (a request's min_points overrides it).",
          minimum=1, read_only=False),
    Param("instance_core_neighbours", 6, "A (voxel, query) node with this many neighbours of its query lies inside a "
          "surface; objects joined only through nodes with fewer are split.", minimum=1, maximum=26,
          read_only=False),
    Param("instance_track_radius", 0.3, "An instance keeps the id of the earlier instance of its query whose box "
          "centre lies within this distance [m].", minimum=0.0, read_only=False),
    Param("max_queries", 256, "Requests with more queries than this are refused.", minimum=1, maximum=100000),
    Param("max_points", 3_000_000, "Clouds with more points are refused (memory guard).", minimum=1),
    Param("marker_frame", "", "Frame of the markers; empty = the cloud's frame."),
    Param("marker_text_size", 0.15, "Height [m] of the marker text.", minimum=0.001, read_only=False),
    Param("map_file", "", "Map file (.npz from ~/save_map) whose features to start from, so queries are answered "
          "before the first new map arrives; it must come from this checkpoint, map_voxel and feature_tile (the "
          "fusion node loads the voxels beside them with its own map_file). Empty = start with no map."),
    Param("fusion_node", "/fusion_node", "The fusion node whose ~/save_map and ~/load_map this node's ~/save_map "
          "and ~/load_map call, so that one file holds the voxel map and its features (empty = features only)."),
    Param("stats_period", 10.0, "Period [s] of the counters log line (0 = never).", minimum=0.0),
]
MAP_CALL_TIMEOUT_S = 120.0  # how long ~/save_map and ~/load_map wait for the fusion node's part


@dataclass
class _Cached:
    cloud: PointCloud
    stamp: float
    features: CloudFeatures | None = None  # per-voxel features on the segmenter's device, None until computed
    superpoints: bool = False  # whether those features are averaged over superpoints


class SegmenterNode(Node):
    """Constructor in order: parameters, segmenter and feature map, subscriptions, publishers, service, timers, and
    the network thread (``_work``), stopped by ``destroy_node``."""

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
        self.feature_map = FeatureMap(
            self.segmenter, FeatureMapConfig(map_voxel=p["map_voxel"], tile=p["feature_tile"],
                                             rerun_fraction=p["feature_rerun_fraction"],
                                             refine_points=p["superpoint_refine_points"]),
            superpoints=bool(p["superpoints"]))
        self.map_frame = "map"
        # What queries answer from: a feature-map snapshot, its cluster grid and the snapshot the grid was built on
        # (an earlier one while its objects still stand, _same_objects), swapped in together by the network thread
        # once the grid is made, so a query never builds one (the empty snapshot until the first map).
        self._served: tuple = (self.feature_map.snapshot, None, None)
        self._trackers: dict[str, InstanceTracker] = {}  # instance ids of global-map and partial-cloud answers
        self._tracker_lock = threading.Lock()
        self._prepared = None  # (snapshot, question, unit labels, instances) of the node's own queries
        self._asked = None  # the same for the last other question
        self._refine_failed = -1  # the feature-map version whose refinement failed (not tried again)
        self._lock = threading.Lock()  # guards the pending map and the latest partial cloud
        self._pending_map: tuple[PointCloud, float] | None = None  # newest global cloud not yet in the feature map
        self.partial_queue = BoundedQueue(p["partial_queue_size"], name="partial")
        self.latest_partial: _Cached | None = None
        self.counters = {"bad_cloud": 0, "partials_segmented": 0, "map_updates": 0, "maps_superseded": 0,
                         "queries": 0, "queries_failed": 0, "feature_passes": 0}
        self.last_partial_latency = float("nan")

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._partial_sub = None  # created while partial clouds are wanted (_follow_partial_demand)
        self._partial_asked = -math.inf  # monotonic time of the last CLOUD_PARTIAL query
        self.create_subscription(PointCloud2, p["global_topic"], self._on_global, 2)
        self.labelled_pub = self.create_publisher(PointCloud2, "~/labelled_cloud", 5)
        self.labelled_map_pub = self.create_publisher(PointCloud2, "~/labelled_map", 2)
        self.markers_pub = self.create_publisher(MarkerArray, "~/markers", 2)
        self.create_service(QueryObjects, p["query_service"], self._on_query)
        # Saving and loading wait for the fusion node's answer: their services and clients are in callback groups of
        # their own, so that meanwhile the executor keeps answering queries and taking maps.
        files, calls = MutuallyExclusiveCallbackGroup(), ReentrantCallbackGroup()
        self.create_service(SaveMap, "~/save_map", self._on_save_map, callback_group=files)
        self.create_service(LoadMap, "~/load_map", self._on_load_map, callback_group=files)
        self._fusion_calls = calls
        self._fusion_save = self._fusion_load = None
        if p["fusion_node"]:
            fusion = p["fusion_node"].rstrip("/")
            self._fusion_save = self.create_client(SaveMap, f"{fusion}/save_map", callback_group=calls)
            self._fusion_load = self.create_client(LoadMap, f"{fusion}/load_map", callback_group=calls)
        self.create_timer(1.0, self._follow_partial_demand)
        self._follow_partial_demand()
        if p["stats_period"] > 0:
            self.create_timer(p["stats_period"], self._log_stats)
        # The network passes (feature-map updates, labelled partial clouds) run in a thread of the node's own, so
        # the executor's callbacks -- decoding clouds, answering queries -- stay short and are never held up by a
        # pass; the executor needs no second thread. A CLOUD_PARTIAL query shares the lock of the network passes.
        self._network_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="segmenter-network", daemon=True)
        if p["map_file"]:
            try:
                saved = self._read_map_file(p["map_file"])
            except ValueError:
                super().destroy_node()  # a refused map file leaves nothing of the node on the graph
                raise
            self._install(saved)
            self.get_logger().info(f"feature map of {len(saved.snapshot)} points at t={saved.snapshot.stamp:.2f} s "
                                   f"loaded from {p['map_file']}")
        self._worker.start()
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
    def map_snapshot(self):
        """The feature-map snapshot that queries answer from (an empty one before the first map)."""
        return self._served[0]

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

    def _follow_partial_demand(self) -> None:
        """Subscribe to partial clouds only while they are wanted, so that nobody builds, sends or decodes them
        otherwise (the fusion node publishes a partial cloud only to subscribers)."""
        wanted = (self.p["segment_partial"] and self.labelled_pub.get_subscription_count() > 0) \
            or time.monotonic() - self._partial_asked < PARTIAL_DEMAND_S
        if wanted and self._partial_sub is None:
            self._partial_sub = self.create_subscription(PointCloud2, self.p["partial_topic"], self._on_partial, 5)
        elif not wanted and self._partial_sub is not None:
            self.destroy_subscription(self._partial_sub)
            self._partial_sub = None

    def _on_partial(self, msg: PointCloud2) -> None:
        cloud = self._decode(msg, "partial")
        if cloud is not None:
            self.partial_queue.push(_Cached(cloud=cloud, stamp=stamp_seconds(msg.header.stamp),
                                            superpoints=self.p["superpoints_partial"]))
            self._wake.set()

    def _on_global(self, msg: PointCloud2) -> None:
        cloud = self._decode(msg, "global")
        if cloud is not None:
            with self._lock:
                if self._pending_map is not None:
                    self.counters["maps_superseded"] += 1  # only the newest map is brought in
                self._pending_map = (cloud, stamp_seconds(msg.header.stamp))
            self._wake.set()

    # ------------------------------------------------------------------ network passes (the worker thread)
    def _work(self) -> None:
        """Feature-map updates at most ``global_rate`` a second and labelled partial clouds at most
        ``partial_rate`` a second, each as soon as its input is there and its time has come."""
        self._warm_up()
        due = {"map": 0.0, "partial": 0.0}  # monotonic times before which no map update / partial cloud starts
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self._step(due)
            except Exception:  # noqa: BLE001 - a bug in one pass must not end the node's network thread
                if not self.context.ok():
                    return  # rclpy was shut down under the thread: nothing left to publish to
                self.get_logger().error(f"network thread: {traceback.format_exc()}", throttle_duration_sec=5.0)
                wait = 1.0
            if wait:
                self._wake.wait(wait)

    def _step(self, due: dict) -> float:
        """One piece of work, if any is due; returns how long to wait for the next (0: look again at once)."""
        waits = [1.0]
        with self._lock:
            pending, now = self._pending_map, time.monotonic()
            if pending is not None and now >= due["map"]:
                self._pending_map = None
        busy = False
        if pending is not None and now >= due["map"]:
            self._update_map(*pending)
            due["map"] = now + 1.0 / self.p["global_rate"] if self.p["global_rate"] > 0 else 0.0
            busy = True
        elif pending is not None:
            waits.append(due["map"] - now)
        if self.p["segment_partial"] and len(self.partial_queue) and \
                self.labelled_pub.get_subscription_count() > 0:
            now = time.monotonic()
            if now >= due["partial"]:
                self._segment_partial()
                due["partial"] = now + 1.0 / self.p["partial_rate"]
                busy = True
            else:
                waits.append(due["partial"] - now)
        if not busy and self.feature_map.unrefined_points() and \
                self.feature_map.snapshot.version != self._refine_failed:
            self._refine_map()
            busy = True
        elif not busy and self.feature_map.snapshot is not self._served[0]:
            with self._network_lock:  # the refined map, once every tile is refined or the thread is idle
                if self.feature_map.snapshot is not self._served[0]:
                    self._serve(self.feature_map.snapshot)
            busy = True
        return 0.0 if busy else min(waits)

    def _refine_map(self) -> None:
        """Superpoints for some more of the map's tiles (idle time of the network thread). The refined map is
        served by the next update or once nothing else is left to do: serving (a new cluster grid and objects)
        after every step would hold the next update back."""
        with self._network_lock:  # held while serving, so a map loaded meanwhile is not served over (_install)
            try:
                self.feature_map.refine(self.p["superpoint_refine_points"])
            except (ValueError, TypeError, RuntimeError) as exc:
                self._refine_failed = self.feature_map.snapshot.version  # not again on this map version
                self.get_logger().error(f"refining the feature map failed: {exc}", throttle_duration_sec=5.0)

    def _serve(self, snapshot):
        """Prepare a new snapshot's cluster grid and its answer to the node's own ``queries`` (labels and instances,
        ids assigned), then serve it: that question, the one a robot asks again and again, always finds its answer
        ready, and until then queries answer from the previous snapshot. Returns the (units, instances), or None
        when labelling failed (logged; the snapshot is served all the same)."""
        _, grid, base = self._served
        if base is None or not self._same_objects(base, snapshot) or grid.cluster_voxel != self.p["cluster_voxel"]:
            grid, base = self._map_grid(snapshot), snapshot
        try:
            answer = self._map_answer(snapshot, grid, self.queries, self.p["min_score"], prepare=True, base=base)
        except (ValueError, TypeError, RuntimeError) as exc:
            self.get_logger().error(f"labelling the map failed: {exc}", throttle_duration_sec=5.0)
            answer = None
        self._served = (snapshot, grid, base)
        return answer

    def _same_objects(self, base, snapshot) -> bool:
        """Whether objects found on snapshot ``base`` still stand for ``snapshot``: its units are labelled alike
        and at most ``objects_refresh_fraction`` of its points changed since."""
        return base.units == snapshot.units and \
            snapshot.drift - base.drift <= self.p["objects_refresh_fraction"] * len(snapshot)

    def _map_answer(self, snapshot, grid, queries: list[str], min_score: float, min_points: int = 0,
                    prepare: bool = False, base=None):
        """(unit labels, InstanceSet) of a map snapshot for ``queries``: the prepared answer (``prepare``: the one
        the network thread makes with each map) or the last asked one when it is the same question on the same
        map (or on one whose objects still stand, ``_same_objects``: then at the newer stamp), else computed now
        on ``grid``, the cluster grid of snapshot ``base`` (None: of ``snapshot``). A request's ``min_points``
        below the node's ``instance_min_points`` needs an extraction of its own; above it, ``select_instances``
        filters. Two answers are kept, so at most two snapshots besides the served one stay in memory."""
        floor = self.p["instance_min_points"]
        floor = min_points if 0 < min_points < floor else floor
        settings = (floor, self.p["instance_core_neighbours"], self.p["cluster_voxel"])
        key = (tuple(queries), float(min_score), settings)
        for cached in (self._prepared, self._asked):
            if cached is not None and cached[1] == key and self._same_objects(cached[0], snapshot):
                if snapshot.stamp > cached[0].stamp:  # its objects are still there at the newer stamp
                    self._track(cached[3], queries, snapshot.stamp, "global")
                return cached[2], cached[3]
        units = snapshot.label_units(self.segmenter, queries, min_score)
        if grid is None or grid.cluster_voxel != self.p["cluster_voxel"]:
            grid, base = self._map_grid(snapshot), snapshot
        found = self._instances(grid, units.label, units.score, queries, snapshot.stamp, "global", floor)
        entry = (base or snapshot, key, units, found)
        if prepare:
            self._prepared = entry
        else:
            self._asked = entry
        return units, found

    def _warm_up(self) -> None:
        """One small pass (with superpoints when the map has them) before the first map, so the first update does
        not also pay for loading the compiled kernels and the network's first-call setup (~0.5 s on a CPU)."""
        xyz = np.random.default_rng(0).uniform(0.0, 1.0, (2000, 3)).astype(np.float32)
        try:
            with self._network_lock:
                self.segmenter.cloud_features(xyz, np.full(xyz.shape, 128, np.uint8),
                                              superpoints=bool(self.p["superpoints"]))
        except (ValueError, TypeError, RuntimeError) as exc:
            self.get_logger().warning(f"warm-up pass failed: {exc}")

    def destroy_node(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._worker.ident is not None:
            self._worker.join(timeout=30.0)
        super().destroy_node()

    def _update_map(self, cloud: PointCloud, stamp: float) -> None:
        """Bring a global cloud into the feature map (re-running only what changed), then publish the labelled map
        and markers to whoever subscribes."""
        with self._network_lock:  # held while serving, so a map loaded meanwhile is not served over (_install)
            try:
                snapshot = self.feature_map.update(cloud.xyz, cloud.rgb, stamp)
            except (ValueError, TypeError, RuntimeError) as exc:
                self.counters["bad_cloud"] += 1
                self.get_logger().error(f"updating the feature map failed: {exc}", throttle_duration_sec=5.0)
                return
            self.map_frame = cloud.frame_id
            self.counters["map_updates"] += 1
            if self.feature_map.last_update.get("tiles_run"):
                self.counters["feature_passes"] += 1
            self.get_logger().debug(f"feature map: {self.feature_map.last_update}")
            answer = self._serve(snapshot)
        if answer is None:
            return
        units, found = answer
        queries = self.queries
        wants_map = self.labelled_map_pub.get_subscription_count() > 0
        header = make_header(self.map_frame, stamp)
        if wants_map:
            unit = snapshot.unit_of_point
            labelled = PointCloud(xyz=snapshot.xyz, rgb=snapshot.rgb, frame_id=self.map_frame).with_labels(
                units.label[unit].astype(np.int32), units.score[unit])
            self.labelled_map_pub.publish(cloud_to_pointcloud2(labelled, header, with_labels=True))
        if self.markers_pub.get_subscription_count() > 0:
            self.markers_pub.publish(self._markers(found.instances, queries, header))

    def _map_grid(self, snapshot):
        """The cluster grid of a feature-map snapshot's units at the current ``cluster_voxel``."""
        return cluster_grid(snapshot.xyz, self.p["cluster_voxel"], snapshot.unit_of_point)

    def _features(self, entry: _Cached) -> CloudFeatures:
        """Per-voxel features of a partial cloud: computed once, then kept on the entry."""
        with self._network_lock:
            if entry.features is None:
                entry.features = self.segmenter.cloud_features(entry.cloud.xyz, entry.cloud.rgb, stamp=entry.stamp,
                                                               superpoints=entry.superpoints)
                self.counters["feature_passes"] += 1
            return entry.features

    def _segment_partial(self) -> None:
        """The newest partial cloud, labelled, for the subscribers of ~/labelled_cloud."""
        entry = self.partial_queue.pop_latest()
        if entry is None or len(entry.cloud) == 0:
            return
        try:
            labels = self.segmenter.label_features(self._features(entry), self.queries, self.p["min_score"])
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

    # ------------------------------------------------------------------ service
    def _on_query(self, request: QueryObjects.Request, response: QueryObjects.Response) -> QueryObjects.Response:
        self.counters["queries"] += 1
        started = time.perf_counter()

        def fail(message: str) -> QueryObjects.Response:
            self.counters["queries_failed"] += 1
            response.success = False
            response.message = message
            self.get_logger().warning(f"query_objects: {message}")
            return response

        try:
            queries = self.segmenter.check_queries(list(request.queries))
        except (ValueError, TypeError) as exc:
            return fail(str(exc))
        min_score = float(request.min_score)
        if not math.isfinite(min_score) or not -1.0 <= min_score <= 1.0:
            return fail(f"min_score must be a finite number in [-1, 1], got {request.min_score}")
        try:
            if request.cloud == QueryObjects.Request.CLOUD_GLOBAL:
                # The current feature map: no network pass, whatever update is running.
                snapshot, grid, base = self._served
                if len(snapshot) == 0:
                    return fail(f"no map yet: no global map from {self.p['global_topic']} has features")
                cloud = PointCloud(xyz=snapshot.xyz, rgb=snapshot.rgb, frame_id=self.map_frame)
                stamp, which = snapshot.stamp, "global map"
                # Units are classified, instances found on (voxel, label) nodes; points only for a returned cloud.
                units, found = self._map_answer(snapshot, grid, queries, min_score, int(request.min_points),
                                                base=base)
                summaries = object_summaries(found, queries, units.best)

                def point_labels(units=units, unit=snapshot.unit_of_point):
                    return units.label[unit], units.score[unit]
            elif request.cloud == QueryObjects.Request.CLOUD_PARTIAL:
                self._partial_asked = time.monotonic()  # the demand timer subscribes within a second
                with self._lock:
                    entry = self.latest_partial
                newest = self.partial_queue.pop_latest()  # a partial cloud that arrived but was not segmented yet
                entry = newest or entry
                if entry is None or len(entry.cloud) == 0:
                    return fail(f"no partial cloud from {self.p['partial_topic']} received yet (subscribing now: ask "
                                "again after the next frame)")
                with self._lock:
                    self.latest_partial = entry
                cloud, stamp, which = entry.cloud, entry.stamp, "partial cloud"
                labels = self.segmenter.label_features(self._features(entry), queries, min_score)
                grid = cluster_grid(cloud.xyz, self.p["cluster_voxel"])
                found = self._instances(grid, labels.label, labels.score, queries, entry.stamp, "partial",
                                        request.min_points)
                summaries = object_summaries(found, queries, labels.best)

                def point_labels(labels=labels):
                    return labels.label, labels.score
            else:
                return fail(f"cloud must be CLOUD_GLOBAL (0) or CLOUD_PARTIAL (1), got {request.cloud}")
        except (ValueError, TypeError, RuntimeError) as exc:
            return fail(f"segmentation failed: {exc}")
        response.success = True
        response.queries = queries
        response.map_stamp = sec_to_stamp(stamp)
        response.point_counts = [s.point_count for s in summaries]
        response.best_scores = [float(s.best_score) for s in summaries]
        response.centroids = [Point(x=float(s.centroid[0]), y=float(s.centroid[1]), z=float(s.centroid[2]))
                              for s in summaries]
        response.cluster_point_counts = [s.cluster_point_count for s in summaries]
        chosen = select_instances(found.instances, int(request.min_points), int(request.max_instances))
        response.instances = [instance_message(i, queries) for i in chosen]
        header = make_header(cloud.frame_id, stamp)
        if request.return_cloud:
            label, score = point_labels()
            response.labelled_cloud = cloud_to_pointcloud2(cloud.with_labels(label.astype(np.int32), score), header,
                                                           with_labels=True)
        self.markers_pub.publish(self._markers(chosen, queries, header))
        labelled = sum(s.point_count for s in summaries)
        age = self.get_clock().now().nanoseconds * 1e-9 - stamp
        missing = [s.query for s in summaries if s.point_count == 0]
        response.message = (f"{len(queries)} queries on the {which} of t={stamp:.2f} s ({age:.1f} s old): "
                            f"{labelled}/{len(cloud)} points labelled in "
                            f"{1e3 * (time.perf_counter() - started):.1f} ms, {len(chosen)} instances"
                            + (f"; not found: {', '.join(missing)}" if missing else ""))
        self.get_logger().info(f"query_objects {queries}: {response.message}")
        return response

    # ------------------------------------------------------------------ map files
    def _read_map_file(self, path: str):
        """The features saved in a map file, checked against this node's model, map_voxel and feature_tile."""
        return read_features(Path(os.path.expanduser(path.strip())), fingerprint=self.segmenter.fingerprint,
                             map_voxel=self.p["map_voxel"], tile=self.p["feature_tile"], device=self.segmenter.device)

    def _install(self, saved) -> None:
        """Answer from a feature map read from a map file, with its object ids, in place of the current one."""
        with self._network_lock:
            self.feature_map.restore(saved.snapshot)
            with self._lock:
                self._pending_map = None  # a map from before the load
            tracker = InstanceTracker(self.p["instance_track_radius"])
            if saved.tracks:
                tracker.restore(saved.tracks)
            with self._tracker_lock:
                self._trackers = {"global": tracker}
            self.map_frame = saved.frame_id
            self._prepared = self._asked = None
            self._served = (saved.snapshot, None, None)
            self._serve(saved.snapshot)

    async def _call_fusion(self, client, request, what: str):
        """The fusion node's answer to ``request`` on ``client``; RuntimeError when it is not there or is silent
        for MAP_CALL_TIMEOUT_S (the caller's answer says so)."""
        if not client.service_is_ready():
            raise RuntimeError(f"{client.srv_name} is not available: is the fusion node running? (set fusion_node "
                               f"to '' to {what} the features alone)")
        future = client.call_async(request)
        timer = self.create_timer(MAP_CALL_TIMEOUT_S, future.cancel, callback_group=self._fusion_calls)
        try:
            answer = await future
        finally:
            self.destroy_timer(timer)
        if answer is None:
            raise RuntimeError(f"{client.srv_name} did not answer within {MAP_CALL_TIMEOUT_S:.0f} s")
        if not answer.success:
            raise RuntimeError(f"{client.srv_name}: {answer.message}")
        return answer

    async def _on_save_map(self, request: SaveMap.Request, response: SaveMap.Response) -> SaveMap.Response:
        path = Path(os.path.expanduser(request.path.strip())).absolute()  # the fusion node writes the same file
        snapshot = self.map_snapshot
        try:
            if path.suffix != ".npz":
                raise ValueError(f"path must end in .npz, got '{request.path}' (the fusion node's ~/save_map "
                                 "writes .ply clouds)")
            if len(snapshot) == 0:
                raise ValueError(f"no map yet: no global map from {self.p['global_topic']} has features")
            path.parent.mkdir(parents=True, exist_ok=True)
            voxels = ""
            with staged(path) as staging:  # the voxels, then the features beside them; renamed to path at once
                if self._fusion_save is not None:
                    answer = await self._call_fusion(self._fusion_save, SaveMap.Request(path=str(staging)), "save")
                    voxels = f"{answer.point_count} voxels and "
                with self._tracker_lock:
                    tracks = self._trackers.get("global", InstanceTracker()).state()
                write_features(staging, snapshot, fingerprint=self.segmenter.fingerprint,
                               map_voxel=self.p["map_voxel"], tile=self.p["feature_tile"], frame_id=self.map_frame,
                               tracks=tracks)
        except (OSError, ValueError, RuntimeError) as exc:
            response.success, response.message = False, f"save_map: {exc}"
            self.get_logger().error(response.message)
            return response
        response.success, response.point_count = True, len(snapshot)
        response.message = (f"saved {voxels}the features of {len(snapshot)} map points (t={snapshot.stamp:.2f} s, "
                            f"{len(tracks['id'])} objects) to {path}")
        self.get_logger().info(response.message)
        return response

    async def _on_load_map(self, request: LoadMap.Request, response: LoadMap.Response) -> LoadMap.Response:
        path = str(Path(os.path.expanduser(request.path.strip())).absolute())  # the fusion node reads the same file
        try:
            saved = self._read_map_file(path)  # checked before the fusion node replaces its map
            voxels = ""
            if self._fusion_load is not None:
                answer = await self._call_fusion(self._fusion_load, LoadMap.Request(path=path), "load")
                voxels = f"{answer.point_count} voxels and "
            self._install(saved)
        except (OSError, ValueError, RuntimeError) as exc:
            response.success, response.message = False, f"load_map: {exc}"
            self.get_logger().error(response.message)
            return response
        response.success, response.point_count = True, len(saved.snapshot)
        response.message = (f"loaded {voxels}the features of {len(saved.snapshot)} map points "
                            f"(t={saved.snapshot.stamp:.2f} s) from {path}")
        self.get_logger().info(response.message)
        return response

    def _instances(self, grid, unit_label, unit_score, queries, stamp: float, which: str, min_points: int = 0):
        """The InstanceSet of every query (``min_points`` 0: the node's), with ids kept across answers on the same
        kind of cloud ("global" or "partial"). Called from the service and the network thread alike."""
        found = extract_instances(grid, unit_label, unit_score, len(queries),
                                  min_points=int(min_points) or self.p["instance_min_points"],
                                  core_neighbours=self.p["instance_core_neighbours"])
        return self._track(found, queries, stamp, which)

    def _track(self, found, queries, stamp: float, which: str):
        """Ids (and ``last_seen`` = ``stamp``) for the instances of ``found`` from the tracker of ``which``."""
        with self._tracker_lock:
            tracker = self._trackers.setdefault(which, InstanceTracker())
            tracker.radius = self.p["instance_track_radius"]
            for q, query in enumerate(queries):
                tracker.assign(query, [i for i in found.instances if i.query == q], stamp)
        return found

    def _markers(self, instances: list, queries: list[str], header) -> MarkerArray:
        return instance_markers(instances, queries, header, self.p["marker_frame"] or header.frame_id,
                                self.p["marker_text_size"])

    def stats(self) -> dict:
        out = dict(self.counters)
        out.update({f"partial_{k}": v for k, v in self.partial_queue.counters().items()})
        snapshot = self.map_snapshot
        out.update(map_points=len(snapshot), feature_rows=snapshot.feature_rows(),
                   feature_mb=round(snapshot.memory_bytes() / 2 ** 20, 1))
        return out

    def _log_stats(self) -> None:
        self.get_logger().info("counters: " + ", ".join(f"{k}={v}" for k, v in self.stats().items())
                               + f", last partial latency {1e3 * self.last_partial_latency:.0f} ms")


def main(args=None) -> None:
    spin_nodes([SegmenterNode], args=args, help_text=node_help("segmenter_node", __doc__.split("\n\n")[0], SEGMENTER_PARAMS))


if __name__ == "__main__":
    main()
