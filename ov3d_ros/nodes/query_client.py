"""ov3d-query: call /query_objects and print the result as a table (``ros2 service call`` without ros2cli).

    ov3d-query chair "office chair" lamp
    ov3d-query --cloud partial --min-score 0.3 --save-ply out/labelled.ply chair
    ov3d-query --save-map ~/maps/room.npz      # /segmenter_node/save_map: voxels, features and object ids
    ov3d-query --load-map ~/maps/room.npz      # /segmenter_node/load_map
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from ov3d_interfaces.srv import LoadMap, QueryObjects, SaveMap
from ov3d_ros.data.ply import write_ply
from ov3d_ros.messages import stamp_seconds
from ov3d_ros.nodes.conversions import pointcloud2_to_cloud
from ov3d_ros.nodes.objects import ObjectSummary, format_table

log = logging.getLogger("ov3d-query")


class ServiceTimeout(RuntimeError):
    pass


class ServiceCaller:
    """A client of one service on ``node`` (which must not be spinning in another executor), re-used across calls
    so that repeated calls pay no discovery."""

    def __init__(self, node: Node, srv_type, name: str) -> None:
        self.node, self.name = node, name
        self.last_latency = float("nan")
        self.client = node.create_client(srv_type, name)
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)

    def call(self, request, timeout: float = 30.0):
        """The response; raises ServiceTimeout naming what did not happen within ``timeout`` seconds."""
        if not self.client.wait_for_service(timeout_sec=timeout):
            raise ServiceTimeout(f"service {self.name} is not available after {timeout:.0f} s "
                                 "(is the segmenter node running, with the same ROS_DOMAIN_ID?)")
        started = time.perf_counter()
        future = self.client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout)
        if not future.done():
            self.client.remove_pending_request(future)
            raise ServiceTimeout(f"service {self.name} did not answer within {timeout:.0f} s")
        self.last_latency = time.perf_counter() - started  # request sent -> answer received, seconds
        return future.result()

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.executor.shutdown()
        self.node.destroy_client(self.client)

    def __enter__(self) -> "ServiceCaller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call_service(node: Node, srv_type, name: str, request, timeout: float = 30.0):
    """One call of ``name`` from ``node``: waits up to ``timeout`` s for the service and as long for the answer."""
    with ServiceCaller(node, srv_type, name) as caller:
        return caller.call(request, timeout)


def make_request(queries: list[str], *, min_score: float = 0.0, cloud: str = "global",
                 return_cloud: bool = False, max_instances: int = 0, min_points: int = 0) -> QueryObjects.Request:
    clouds = {"global": QueryObjects.Request.CLOUD_GLOBAL, "partial": QueryObjects.Request.CLOUD_PARTIAL}
    if cloud not in clouds:
        raise ValueError(f"cloud must be 'global' or 'partial', got {cloud!r}")
    if max_instances < 0 or min_points < 0:
        raise ValueError(f"max_instances and min_points must be >= 0, got {max_instances}, {min_points}")
    return QueryObjects.Request(queries=list(queries), min_score=float(min_score), cloud=clouds[cloud],
                                return_cloud=bool(return_cloud), max_instances=int(max_instances),
                                min_points=int(min_points))


def summaries_from_response(response: QueryObjects.Response) -> list[ObjectSummary]:
    return [ObjectSummary(query=q, point_count=int(n), best_score=float(b),
                          centroid=np.array([c.x, c.y, c.z], dtype=np.float64), cluster_point_count=int(k))
            for q, n, b, c, k in zip(response.queries, response.point_counts, response.best_scores,
                                     response.centroids, response.cluster_point_counts)]


def format_instances(response: QueryObjects.Response) -> str:
    """Plain-text table of the answer's object instances: query, id, score, points, box centre and size."""
    header = ("query", "id", "score", "points", "centre x y z [m]", "size x y z [m]", "yaw [deg]")
    rows = [(i.query, str(i.id), f"{i.score_mean:.3f}", str(i.point_count),
             " ".join(f"{v:+.2f}" for v in (i.box_center.x, i.box_center.y, i.box_center.z)),
             " ".join(f"{v:.2f}" for v in (i.box_size.x, i.box_size.y, i.box_size.z)),
             f"{np.degrees(i.box_yaw):+.0f}") for i in response.instances]
    if not rows:
        return "no object instances"
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ov3d-query",
        description="Query the segmenter node's cloud with open-vocabulary text and print, per query, the number "
                    "of points, the best score and the centroid of the largest object, then every object instance "
                    "(id, score, points, box).",
        epilog='example: ov3d-query chair "office chair" lamp --min-score 0.2')
    parser.add_argument("queries", nargs="*", help="text queries (quote multi-word ones)")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="points scoring below this for every query stay unlabelled (default 0.0)")
    parser.add_argument("--cloud", choices=("global", "partial"), default="global",
                        help="segment the accumulated map (global, default) or the latest partial cloud")
    parser.add_argument("--max-instances", type=int, default=0,
                        help="object instances per query, largest first (default 0 = all)")
    parser.add_argument("--min-points", type=int, default=0,
                        help="smallest instance in points (default 0 = the node's instance_min_points)")
    parser.add_argument("--service", default="/query_objects", help="service name (default /query_objects)")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds to wait for the service and again for its answer (default 15)")
    parser.add_argument("--save-ply", metavar="PATH",
                        help="also request the labelled cloud and write it as PLY (label, score fields)")
    parser.add_argument("--raw", action="store_true",
                        help="print the response message as `ros2 service call` does, instead of a table")
    maps = parser.add_argument_group("map files (instead of queries)")
    maps.add_argument("--save-map", metavar="FILE",
                      help="ask the segmenter node to save the map (the fusion node's voxels, the features, object "
                           "ids) to FILE (.npz, a path on the node's machine)")
    maps.add_argument("--load-map", metavar="FILE",
                      help="ask the segmenter node to load a map file saved with --save-map (and the fusion node "
                           "its voxels); refused when another checkpoint or voxel size made it")
    maps.add_argument("--node", default="/segmenter_node",
                      help="the node whose ~/save_map or ~/load_map is called (default /segmenter_node)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ros_args = []
    if "--ros-args" in argv:  # let users pass remappings/domain settings like any ROS tool
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.queries) + bool(args.save_map) + bool(args.load_map) != 1:
        parser.error("give text queries, or one of --save-map and --load-map")
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if not args.queries:
        return call_map_service(args, ros_args)
    try:
        request = make_request(args.queries, min_score=args.min_score, cloud=args.cloud,
                               return_cloud=bool(args.save_ply), max_instances=args.max_instances,
                               min_points=args.min_points)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    print(f"requester: making request: queries={request.queries} min_score={request.min_score} "
          f"cloud={args.cloud}")
    try:
        response, latency, now = call_once(QueryObjects, args.service, request, ros_args, args.timeout)
    except ServiceTimeout as exc:
        log.error("%s", exc)
        return 2
    age = now - stamp_seconds(response.map_stamp)
    if args.raw:
        print("response:")
        print(response)
    else:
        print(f"response: success={response.success} message='{response.message}'")
        if response.success:
            print(f"answered in {1e3 * latency:.0f} ms from the map of "
                  f"t={stamp_seconds(response.map_stamp):.2f} s ({age:.1f} s old)")
            print(format_table(summaries_from_response(response)))
            print()
            print(format_instances(response))
    if response.success and args.save_ply:
        path = write_ply(args.save_ply, pointcloud2_to_cloud(response.labelled_cloud))
        print(f"labelled cloud written to {path}")
    return 0 if response.success else 1


def call_once(srv_type, name: str, request, ros_args: list[str], timeout: float):
    """(response, latency in seconds, the client's clock at the answer) of one call, from a node in an rclpy
    context of its own, so this also works inside a process that already runs rclpy (tests, notebooks)."""
    context = rclpy.Context()
    rclpy.init(args=["ov3d-query", *ros_args], context=context)
    node = Node("ov3d_query_client", context=context)
    try:
        with ServiceCaller(node, srv_type, name) as caller:
            response = caller.call(request, timeout)
        return response, caller.last_latency, node.get_clock().now().nanoseconds * 1e-9
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def call_map_service(args, ros_args: list[str]) -> int:
    """``--save-map`` / ``--load-map``: one call of ``--node``'s ~/save_map or ~/load_map; prints its answer."""
    srv_type, name, path = (SaveMap, "save_map", args.save_map) if args.save_map else \
        (LoadMap, "load_map", args.load_map)
    try:
        response, _, _ = call_once(srv_type, f"{args.node.rstrip('/')}/{name}", srv_type.Request(path=path),
                                   ros_args, args.timeout)
    except ServiceTimeout as exc:
        log.error("%s", exc)
        return 2
    print(f"response: success={response.success} message='{response.message}'")
    return 0 if response.success else 1


if __name__ == "__main__":
    sys.exit(main())
