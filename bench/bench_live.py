"""Live answers while the robot maps: `ov3d-run --sim-camera` as a robot user runs it, and a separate rclpy client
asking /query_objects once a second.

For each image size, ov3d-run starts in its own process (the segmenter node in another, as ov3d-run starts it).
Once the segmenter answers (and its warm-up pass is done), this process releases the synthetic camera, which then
loops its room at --rate Hz for --duration seconds: its first loop brings the whole room in at once. From the
camera's start this process calls the service with the 12 class names every second and prints:
  * answer latency (request sent -> answer received) p50 / p95 / max, and the map size the answers covered;
  * map freshness (answer time - the answer's map_stamp) p50 / p95; both again for the answers once the map is
    whole (the camera's first loop, which brings the whole room in at once, left out);
  * frames the fusion node received vs. fused (keyframes integrated + frames the keyframe gate passed over) and
    dropped, from its counters;
  * the feature map's points, unit rows and memory, the segmenter's map updates, and the CPU time of both processes.
Every answer (seconds since the camera's start, latency, map age, map points) goes to a CSV file beside ov3d-run's log.

    .venv/bin/python bench/bench_live.py                          # 320x240 and 640x480, 180 s each at 30 Hz
    .venv/bin/python bench/bench_live.py --size 320x240 --duration 60
    .venv/bin/python bench/bench_live.py --device cuda --checkpoint FULL.pt   # a full-preset checkpoint on a GPU

Goals (2-core CPU, small preset): answer p95 <= 250 ms on a >= 500k-voxel map while mapping, freshness p95 <= 3 s,
>= 99% of the frames fused.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 101)))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GO = "/bench_live/go"  # the camera starts once this service is offered
WARM_UP = 3.0  # seconds between the segmenter's first answer and the camera's start (its warm-up pass)
QUERIES = ["wall", "floor", "table", "chair", "cabinet", "sofa", "bed", "lamp", "monitor", "bin", "book", "picture"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def last_counters(log: str, node: str) -> dict[str, float]:
    """The last 'counters: a=1, b=2' line a node logged."""
    lines = [line for line in log.splitlines() if f"[{node}]" in line and "counters:" in line]
    if not lines:
        return {}
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-0-9.]+)", lines[-1].split("counters:", 1)[1])}


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run_size(width: int, height: int, args) -> dict:
    import rclpy
    from rclpy.node import Node

    from std_srvs.srv import Trigger

    from ov3d_interfaces.srv import QueryObjects
    from ov3d_ros.messages import stamp_seconds
    from ov3d_ros.nodes.query_client import ServiceCaller, ServiceTimeout, make_request

    cmd = [sys.executable, "-m", "ov3d_ros.nodes.run_cli", "--sim-camera", "--camera-rate", str(args.rate)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.device:
        cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--ros-args", "-p", f"synthetic_camera_node:width:={width}", "-p",
            f"synthetic_camera_node:height:={height}", "-p", f"synthetic_camera_node:wait_for_service:={GO}",
            "-p", "fusion_node:stats_period:=5.0", "-p", "segmenter_node:stats_period:=5.0"]
    for param in args.param or []:
        cmd += ["-p", param]
    log_path = Path(args.log_dir) / f"bench_live_{width}x{height}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    context = rclpy.Context()
    rclpy.init(args=[], context=context)  # not this script's argv: its --param values are not ROS arguments
    node = Node("bench_live_client", context=context)
    latency, freshness, points, times, failures = [], [], [], [], 0
    try:
        caller = ServiceCaller(node, QueryObjects, "/query_objects")
        request = make_request(QUERIES)
        # Wait until the segmenter answers ("no map yet"), and a little for its warm-up pass; then release the
        # camera (it holds its first frame until GO is offered): the room comes in while the nodes are ready.
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ov3d-run exited with {proc.returncode}; see {log_path}")
            try:
                caller.call(request, 30.0)
                break
            except ServiceTimeout:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from /query_objects after {args.startup_timeout:.0f} s; see {log_path}")
            time.sleep(1.0)
        time.sleep(WARM_UP)
        node.create_service(Trigger, GO, lambda request, response: response)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        next_call = t0
        while time.monotonic() - t0 < args.duration:
            time.sleep(max(0.0, next_call - time.monotonic()))
            next_call += 1.0
            response = caller.call(request, 30.0)
            now = node.get_clock().now().nanoseconds * 1e-9
            if not response.success:  # "no map yet" before the first map has features
                failures += 1
                continue
            times.append(time.monotonic() - t0)
            latency.append(caller.last_latency)
            freshness.append(now - stamp_seconds(response.map_stamp))
            match = re.search(r"(\d+)/(\d+) points labelled", response.message)
            points.append(int(match.group(2)) if match else 0)
        cpu = cpu_seconds(proc.pid) - cpu0
        wall = time.monotonic() - t0
        caller.close()
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    log = log_path.read_text()
    table = np.column_stack([times, latency, freshness, points]) if times else np.zeros((0, 4))
    np.savetxt(log_path.with_suffix(".csv"), table, fmt=["%.3f", "%.4f", "%.3f", "%d"], delimiter=",",
               header="seconds,latency_s,map_age_s,map_points", comments="")
    return {"size": f"{width}x{height}", "latency": latency, "freshness": freshness, "points": points,
            "failures": failures, "first_map": times[0] if times else float("nan"),
            "fusion": last_counters(log, "fusion_node"), "segmenter": last_counters(log, "segmenter_node"),
            "cpu": cpu, "wall": wall, "log": log_path}


def report(r: dict) -> None:
    lat, fresh = np.asarray(r["latency"]) * 1e3, np.asarray(r["freshness"])
    f, s = r["fusion"], r["segmenter"]
    received = f.get("matched", float("nan"))
    fused = f.get("integrated", 0) + f.get("not_keyframe", 0)
    print(f"\n== {r['size']}: {len(lat)} answers over {r['wall']:.0f} s ({r['failures']} without a map), first "
          f"map {r['first_map']:.1f} s after the camera's start, map {min(r['points'], default=0)} -> "
          f"{max(r['points'], default=0)} points")
    print(f"answer latency   p50 {pct(lat, 50):7.1f} ms   p95 {pct(lat, 95):7.1f} ms   max "
          f"{lat.max() if len(lat) else float('nan'):7.1f} ms")
    print(f"map freshness    p50 {pct(fresh, 50):7.2f} s    p95 {pct(fresh, 95):7.2f} s")
    # The camera's first loop brings the whole room in at once; after it the map only changes where noise moves it.
    points = np.asarray(r["points"])
    if len(points):
        full = int(np.argmax(points == points.max()))
        print(f"  once the map is whole ({points.max()} points, answers {full + 1}-{len(points)}): latency p50 "
              f"{pct(lat[full:], 50):.1f} / p95 {pct(lat[full:], 95):.1f} ms, freshness p50 "
              f"{pct(fresh[full:], 50):.2f} / p95 {pct(fresh[full:], 95):.2f} s")
    print(f"frames           received {received:.0f}, fused {fused:.0f} ({100 * fused / received:.1f}%), "
          f"dropped {f.get('frames_dropped', float('nan')):.0f}; keyframes integrated "
          f"{f.get('integrated', float('nan')):.0f}; map {f.get('map_voxels', float('nan')):.0f} voxels")
    print(f"feature map      {s.get('map_points', float('nan')):.0f} points, {s.get('feature_rows', float('nan')):.0f}"
          f" unit rows, {s.get('feature_mb', float('nan')):.0f} MB; {s.get('map_updates', float('nan')):.0f} updates"
          f" ({s.get('maps_superseded', float('nan')):.0f} maps superseded)")
    print(f"CPU              {r['cpu']:.0f} s in {r['wall']:.0f} s ({r['cpu'] / r['wall']:.2f} cores); log "
          f"{r['log']}, every answer in {r['log'].with_suffix('.csv')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="append", help="WIDTHxHEIGHT (repeatable; default 320x240 and 640x480)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of queries per size (default 180)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz (default 30)")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped demo checkpoint")
    parser.add_argument("--device", default=None, help="torch device of the segmenter (default from the YAML)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the segmenter")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for a first map")
    parser.add_argument("--log-dir", default="runs/bench_live", help="where the nodes' logs go")
    parser.add_argument("--param", action="append", metavar="NODE:NAME:=VALUE",
                        help="a node parameter for ov3d-run, e.g. segmenter_node:superpoints:=false (repeatable)")
    args = parser.parse_args()
    sizes = args.size or ["320x240", "640x480"]
    print(f"bench_live: {args.duration:.0f} s per size at {args.rate:g} Hz, {len(QUERIES)} queries a second; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; parameters {args.param or 'from the YAML'}")
    for size in sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        report(run_size(width, height, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
