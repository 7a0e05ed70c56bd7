"""Benchmark of the live pipeline: synthetic camera -> fusion_node -> segmenter_node in one process.

Prints:
  * end-to-end latency from a frame's stamp (when the camera published it) to its labelled partial cloud arriving
    on ~/labelled_cloud (median / p90 / max);
  * frames dropped on the way (camera published vs. fused vs. segmented; the segmenter keeps only the newest
    partial cloud when it falls behind, by design);
  * service latency of /query_objects on a map of --map-points points: the first (cold) call runs the network,
    warm calls with new text re-use the cached voxel features;
  * resident memory (RSS) sampled every --rss-every frames over --frames frames, with its slope, which must be ~0.

    .venv/bin/python bench/bench_nodes.py                     # 5000 frames at 30 Hz (~3 min + set-up)
    .venv/bin/python bench/bench_nodes.py --frames 600 --device cuda
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 101)))

import numpy as np  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentiles(values) -> str:
    if not values:
        return "n/a"
    v = np.asarray(values) * 1e3
    return f"median {np.median(v):.0f} ms, p90 {np.percentile(v, 90):.0f} ms, max {v.max():.0f} ms (n={len(v)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5000, help="frames to stream (default 5000)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz (default 30)")
    parser.add_argument("--loop", type=int, default=60, help="frames in one synthetic loop (default 60)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped demo checkpoint")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--map-points", type=int, default=200_000, help="points of the map queried (200k)")
    parser.add_argument("--warm-queries", type=int, default=20, help="warm service calls to time")
    parser.add_argument("--rss-every", type=int, default=250, help="RSS sample period in frames")
    args = parser.parse_args()

    import rclpy
    import torch
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2
    from tqdm import tqdm

    from ov3d_interfaces.srv import QueryObjects
    from ov3d_ros.cloud import PointCloud
    from ov3d_ros.data.synthetic import CLASS_NAMES
    from ov3d_ros.messages import stamp_seconds
    from ov3d_ros.nodes.conversions import cloud_to_pointcloud2, make_header
    from ov3d_ros.nodes.fusion_node import FusionNode
    from ov3d_ros.nodes.query_client import ServiceCaller, make_request
    from ov3d_ros.nodes.run_cli import wait_for
    from ov3d_ros.nodes.runner import NodeRunner
    from ov3d_ros.nodes.segmenter_node import SegmenterNode
    from ov3d_ros.nodes.synthetic_camera_node import SyntheticCameraNode
    from ov3d_ros.resources import default_checkpoint

    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(default_checkpoint())
    P = Parameter
    camera_params = [P("n_frames", value=args.loop), P("width", value=args.width), P("height", value=args.height),
                     P("rate", value=args.rate), P("wait_for_subscribers", value=True)]
    # fusion publishes no global map here: the service is timed on a fixed map of --map-points points.
    fusion_params = [P("pose_source", value="pose"), P("qos", value="reliable"), P("stats_period", value=0.0),
                     P("global_rate", value=0.0)]
    seg_params = [P("checkpoint", value=checkpoint), P("device", value=args.device),
                  P("num_threads", value=args.threads), P("global_rate", value=0.0),
                  P("queries", value=list(CLASS_NAMES)), P("stats_period", value=0.0)]

    rclpy.init()
    latencies: list[float] = []
    probe = Node("bench_probe")

    def on_labelled(msg: PointCloud2) -> None:
        latencies.append(probe.get_clock().now().nanoseconds * 1e-9 - stamp_seconds(msg.header.stamp))

    probe.create_subscription(PointCloud2, "/segmenter_node/labelled_cloud", on_labelled, 10)
    print(f"device: {args.device} ({torch.cuda.get_device_name(0) if args.device.startswith('cuda') else 'CPU'}), "
          f"torch threads {args.threads}, camera {args.width}x{args.height} at {args.rate} Hz, "
          f"checkpoint {checkpoint}")
    runner = NodeRunner([lambda: FusionNode(parameter_overrides=fusion_params),
                         lambda: SegmenterNode(parameter_overrides=seg_params), lambda: probe])
    runner.start()
    fusion, segmenter = runner.nodes[0], runner.nodes[1]
    camera_runner = NodeRunner([lambda: SyntheticCameraNode(parameter_overrides=camera_params)], threads=1)
    camera = camera_runner.nodes[0]
    camera_runner.start()
    rss = []
    try:
        wait_for(camera.ready.is_set, 600, "the synthetic sequence")
        started = time.perf_counter()
        with tqdm(total=args.frames, unit="frame", desc="streaming") as bar:
            next_sample = 0
            while camera.frames_published < args.frames:
                n = camera.frames_published
                bar.update(n - bar.n)
                if n >= next_sample:
                    rss.append((n, rss_mib()))
                    next_sample += args.rss_every
                time.sleep(0.05)
        camera.finished.set()  # stop publishing
        elapsed = time.perf_counter() - started
        rss.append((camera.frames_published, rss_mib()))
        wait_for(fusion.idle, 60, "fusion to drain")
        published = camera.frames_published
        fstats, sstats = fusion.stats(), segmenter.stats()
        print(f"\nstreamed {published} frames in {elapsed:.1f} s ({published / elapsed:.1f} Hz achieved)")
        print(f"end-to-end latency frame -> labelled partial cloud: {percentiles(latencies[2:])}")
        not_synced = published - fstats["matched"]
        overflow = fstats["frames_dropped"] - fstats["no_pose"]
        print(f"frames: published {published}, synchronised {fstats['matched']} (not synchronised {not_synced}), "
              f"dropped from the full frame queue {overflow}, without pose {fstats['no_pose']}, "
              f"not keyframes {fstats['not_keyframe']}, "
              f"fused {fstats['integrated']}; segmented {sstats['partials_segmented']} partial clouds "
              f"(skipped {sstats['partial_dropped']} older ones while the network was busy: "
              f"{sstats['partial_dropped'] / max(1, fstats['integrated']):.0%})")
        frames_axis = np.array([r[0] for r in rss], dtype=float)
        mem = np.array([r[1] for r in rss])
        half = len(mem) // 2
        slope = np.polyfit(frames_axis[half:], mem[half:], 1)[0] * 1000 if len(mem) > 3 else float("nan")
        print(f"RSS: start {mem[0]:.0f} MiB, after warm-up {mem[half]:.0f} MiB, end {mem[-1]:.0f} MiB, max "
              f"{mem.max():.0f} MiB; slope over the second half {slope:+.2f} MiB per 1000 frames "
              f"(map {len(fusion.map)} voxels)")

        # Service latency on a map of --map-points points (the fused room, densified by jittered copies).
        base = fusion.map.to_cloud()
        reps = int(np.ceil(args.map_points / len(base)))
        rng = np.random.default_rng(0)
        xyz = np.concatenate([base.xyz + rng.normal(0, 0.004, base.xyz.shape).astype(np.float32)
                              for _ in range(reps)])[: args.map_points]
        rgb = np.concatenate([base.rgb] * reps)[: args.map_points]
        big = PointCloud(xyz=xyz, rgb=rgb)
        pub = probe.create_publisher(PointCloud2, "/fusion_node/global_cloud", 2)
        wait_for(lambda: pub.get_subscription_count() > 0, 20, "segmenter subscription")
        pub.publish(cloud_to_pointcloud2(big, make_header("map", 1e6)))
        t = time.perf_counter()
        wait_for(lambda: len(segmenter.map_snapshot) == len(big), 600, "the feature map of the big map")
        print(f"feature map of the {len(big)}-point map: {time.perf_counter() - t:.1f} s "
              f"({segmenter.feature_map.last_update})")
        client = Node("bench_client")
        caller = ServiceCaller(client, QueryObjects, "/query_objects")
        try:
            caller.call(make_request(["warm-up"], cloud="partial"), 60)  # discovery, not part of the figures
            t = time.perf_counter()
            r = caller.call(make_request(list(CLASS_NAMES)), 300)
            cold = time.perf_counter() - t
            assert r.success, r.message
            warm = []
            for i in range(args.warm_queries):
                queries = [f"{name} {i}" for name in ("chair", "table", "lamp")]  # new text: no embedding cache
                t = time.perf_counter()
                r = caller.call(make_request(queries), 60)
                warm.append(time.perf_counter() - t)
                assert r.success, r.message
            repeated = []
            for _ in range(args.warm_queries):  # same text again: embeddings cached too
                t = time.perf_counter()
                r = caller.call(make_request(queries), 60)
                repeated.append(time.perf_counter() - t)
        finally:
            caller.close()
            client.destroy_node()
        print(f"/query_objects on a {len(big)}-point map: cold (network pass) {cold * 1e3:.0f} ms; warm, new text "
              f"(cached features, text encoded): {percentiles(warm)}; repeated text: {percentiles(repeated)}")
    finally:
        camera_runner.close()
        runner.close()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
