"""ov3d-run: start the fusion and segmenter nodes (and the synthetic camera) with the YAML parameters the launch
file uses, for machines without `ros2 launch`.

The segmenter node runs in a process of its own at a lower CPU priority (nice +5), as `ros2 launch` would run it:
its network passes then never take the fusion node's frames, which must keep up with the camera. The camera and the
fusion node share this process.

    ov3d-run --demo                 # synthetic camera -> fusion -> segmenter, one query, PLY + PNG, exit
    ov3d-run --bag RECORDING        # a rosbag2 recording replayed through the same nodes, then the same outputs
    ov3d-run --sim-camera           # the same pipeline, running until Ctrl-C
    ov3d-run                        # fusion + segmenter on a real camera's topics (config/ov3d.yaml)
    ov3d-run --map room.npz         # the same, starting from a map saved by /segmenter_node/save_map
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from rclpy.node import Node
from rclpy.parameter import Parameter
from tqdm import tqdm

from ov3d_interfaces.srv import QueryObjects
from ov3d_ros.data.errors import SceneError
from ov3d_ros.data.ply import write_ply
from ov3d_ros.data.rosbag import CameraStream, add_stream_arguments, stream_options
from ov3d_ros.messages import stamp_seconds
from ov3d_ros.nodes.conversions import pointcloud2_to_cloud
from ov3d_ros.nodes.bag_player import POSE_TOPIC, BagPlayer
from ov3d_ros.nodes.fusion_node import FUSION_PARAMS, FusionNode
from ov3d_ros.nodes.objects import format_table
from ov3d_ros.nodes.query_client import ServiceCaller, format_instances, make_request, summaries_from_response
from ov3d_ros.nodes.runner import NodeRunner, spin_until_stopped, stop_on_signals
from ov3d_ros.nodes.segmenter_node import SEGMENTER_PARAMS
from ov3d_ros.nodes.synthetic_camera_node import SyntheticCameraNode
from ov3d_ros.resources import ament_environment, default_checkpoint, default_config_files
from ov3d_ros.viz import render_labelled_cloud
from ov3d_ros.cores import cores_for_fusion

log = logging.getLogger("ov3d-run")


def params_file_args(files: list[Path]) -> list[str]:
    args = ["--ros-args"]
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"parameter file not found: {path}")
        args += ["--params-file", str(path)]
    return args


def yaml_parameter(files: list[Path], node: str, name: str, default):
    """The value of ``node``'s parameter ``name`` in ROS parameter files (the last file that sets it wins)."""
    value = default
    for path in files:
        section = (yaml.safe_load(Path(path).read_text()) or {}).get(node, {}).get("ros__parameters", {})
        value = section.get(name, value)
    return value


def make_factories(*, sim_camera: bool, demo_frames: int | None = None, camera_rate: float | None = None):
    """Constructors of the nodes of this process (camera, fusion), with command-line overrides (overrides win over
    the YAML, as in the launch file)."""
    cam_overrides = []
    if demo_frames:
        cam_overrides += [Parameter("n_frames", value=int(demo_frames)), Parameter("max_loops", value=1)]
    if camera_rate:
        cam_overrides.append(Parameter("rate", value=float(camera_rate)))
    factories = []
    if sim_camera:
        factories.append(lambda: SyntheticCameraNode(parameter_overrides=cam_overrides))
    factories.append(lambda: FusionNode())
    return factories


SEGMENTER_NICE = 5


def start_segmenter(ros_args: list[str], *, checkpoint: str | None, device: str | None,
                    num_threads: int | None) -> subprocess.Popen:
    """segmenter_node in its own process with the same parameter files and ROS arguments, at nice +5."""
    overrides = []
    if checkpoint:
        overrides += ["-p", f"segmenter_node:checkpoint:={checkpoint}"]
    if device:
        overrides += ["-p", f"segmenter_node:device:={device}"]
    if num_threads:
        overrides += ["-p", f"segmenter_node:num_threads:={int(num_threads)}"]
    process = subprocess.Popen([sys.executable, "-m", "ov3d_ros.nodes.segmenter_node", *ros_args, *overrides],
                               env=ament_environment())
    try:
        os.setpriority(os.PRIO_PROCESS, process.pid, SEGMENTER_NICE)
    except (AttributeError, OSError) as exc:  # not on Linux/macOS, or not allowed: same priority then
        log.warning("could not lower the segmenter's CPU priority: %s", exc)
    return process


def stop_segmenter(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """Ask the segmenter process to stop as Ctrl-C would, then wait for it; returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("segmenter_node did not stop within %.0f s: killing it", timeout)
            process.kill()
    return process.wait()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``predicate`` until true; raise TimeoutError naming ``what`` (no fixed sleeps in callers)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def demo_checkpoint(args) -> Path:
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint} (train one with `ov3d-train`, or pass "
                                "--checkpoint)")
    return checkpoint


def frames_received(fusion: FusionNode) -> int:
    """Colour frames the fusion node has taken in: synchronised, or counted as unmatched, dropped or bad."""
    c = fusion.sync.counters()
    return c["matched"] + c["unmatched"] + c["dropped_color"] + fusion.counters["bad_color"]


def settle_fusion(fusion: FusionNode, sent: int, timeout: float) -> None:
    """Wait until the fusion node took every frame sent and fused what it queued."""
    try:
        wait_for(lambda: frames_received(fusion) >= sent, 10.0, "the last frames to reach the fusion node")
    except TimeoutError as exc:
        log.warning("%s; continuing with the frames received", exc)
    wait_for(fusion.idle, timeout, "the fusion node to fuse its queued frames")


def query_and_write(args, files: list[Path], segmenter: subprocess.Popen, fusion: FusionNode, title: str,
                    recorded: bool = False) -> int:
    """Wait until the segmenter's feature map covers the fusion node's final map, query it, print the table and
    write labelled_map.ply and labelled_map.png to ``args.output``."""
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    final_stamp = fusion.mapper.last_keyframe_stamp
    # The segmenter may start after a short replay has ended: send the final map once it listens.
    wait_for(lambda: fusion.global_pub.get_subscription_count() > 0, args.timeout, "the segmenter to subscribe")
    fusion.publish_global()
    client = Node("ov3d_run_client")
    try:
        defaults = {p.name: p.default for p in SEGMENTER_PARAMS}
        service = yaml_parameter(files, "segmenter_node", "query_service", defaults["query_service"])
        with ServiceCaller(client, QueryObjects, service) as caller:
            # Queries answer from the segmenter's feature map: let it catch up with the final map first.
            def caught_up() -> bool:
                if segmenter.poll() is not None:
                    raise RuntimeError(f"segmenter_node exited with code {segmenter.returncode}")
                answer = caller.call(make_request(["wall"]), args.timeout)
                return answer.success and abs(stamp_seconds(answer.map_stamp) - final_stamp) < 1e-6
            wait_for(caught_up, args.timeout, "the segmenter's feature map to cover the final map", poll=0.5)
            queries = args.queries or list(yaml_parameter(files, "segmenter_node", "queries", defaults["queries"]))
            request = make_request(queries, min_score=args.min_score, cloud="global", return_cloud=True)
            response = caller.call(request, args.timeout)
        age = client.get_clock().now().nanoseconds * 1e-9 - stamp_seconds(response.map_stamp)
    finally:
        client.destroy_node()
    if not response.success:
        log.error("query failed: %s", response.message)
        return 1
    print(f"\n/query_objects {queries}: {response.message}")
    # A replayed recording keeps its recorded stamps: its map's age on this clock says nothing.
    freshness = f"t={final_stamp:.3f} s, recorded" if recorded else f"{age:.1f} s old"
    print(f"answered in {1e3 * caller.last_latency:.0f} ms from the map of the newest fused frame ({freshness})")
    print(format_table(summaries_from_response(response)))
    print()
    print(format_instances(response))
    cloud = pointcloud2_to_cloud(response.labelled_cloud)
    ply = write_ply(output / "labelled_map.ply", cloud)
    png = render_labelled_cloud(cloud, list(response.queries), output / "labelled_map.png",
                                title=f"{title}: {len(cloud)} voxels")
    print(f"\nlabelled cloud: {ply}\nrendering:      {png}")
    return 0


def start_demo_segmenter(args, ros_args: list[str], checkpoint: Path) -> subprocess.Popen:
    # The one answer should carry every superpoint: each map update refines all of its tiles.
    return start_segmenter(ros_args + ["-p", "segmenter_node:superpoint_refine_points:=0"],
                           checkpoint=str(checkpoint), device=args.device, num_threads=args.threads)


def run_demo(args) -> int:
    checkpoint = demo_checkpoint(args)
    files = args.config or default_config_files(sim_camera=True)
    log.info("parameters from %s", ", ".join(map(str, files)))
    started = time.perf_counter()
    ros_args = params_file_args(files) + args.ros_args
    segmenter = start_demo_segmenter(args, ros_args, checkpoint)
    try:
        runner = NodeRunner(make_factories(sim_camera=True, demo_frames=args.frames, camera_rate=args.rate),
                            ros_args=ros_args)
    except BaseException:
        stop_segmenter(segmenter)
        raise
    camera, fusion = runner.nodes
    try:
        runner.start()
        n_frames = camera.p["n_frames"]
        with tqdm(total=n_frames, desc="frames", unit="frame", disable=args.quiet) as bar:
            def progress() -> bool:
                new_frames = camera.frames_published - bar.n
                if new_frames:  # tqdm redraws on every update call, even of 0: keep logs to one line a frame
                    bar.update(new_frames)
                return camera.finished.is_set()
            wait_for(progress, args.timeout, "the synthetic camera to publish its frames")
        settle_fusion(fusion, camera.frames_published, args.timeout)
        stats = fusion.stats()
        log.info("fused %d of %d frames (%d not keyframes, %d dropped without pose) into %d voxels",
                 stats["integrated"], camera.frames_published, stats["not_keyframe"], stats["no_pose"],
                 len(fusion.map))
        code = query_and_write(args, files, segmenter, fusion, f"ov3d_ros demo, {checkpoint.name}")
    finally:
        runner.close()
        stop_segmenter(segmenter)
    log.info("demo finished in %.1f s", time.perf_counter() - started)
    return code


def run_bag(args) -> int:
    checkpoint = demo_checkpoint(args)
    files = args.config or default_config_files(sim_camera=False)
    log.info("parameters from %s", ", ".join(map(str, files)))
    fusion_default = {p.name: p.default for p in FUSION_PARAMS}

    def fusion_param(name):
        return yaml_parameter(files, "fusion_node", name, fusion_default[name])

    stream = CameraStream(args.bag, **stream_options(args), slop=fusion_param("sync_slop"))
    started = time.perf_counter()
    with stream:
        log.info("replaying %s at %s", stream, "full speed" if args.bag_rate == 0 else f"{args.bag_rate:g}x real time")
        frames = stream.frames()
        first = next(frames, None)  # the first frame settles the fixed frame, which the fusion node needs
        if first is None:
            raise SceneError(f"{stream.path}: no colour image has a depth image and a pose ({stream.skipped})")
        ros_args = params_file_args(files) + args.ros_args
        # Every replayed frame is fused (no keyframe gate), lossless in-process, posed by the player.
        fusion_overrides = [Parameter("pose_source", value="pose"), Parameter("pose_topic", value=POSE_TOPIC),
                            Parameter("world_frame", value=stream.fixed_frame), Parameter("qos", value="reliable"),
                            Parameter("keyframe_min_translation", value=0.0),
                            Parameter("keyframe_min_rotation_deg", value=0.0)]
        topics = {key: fusion_param(key) for key in ("color_topic", "depth_topic", "camera_info_topic")}
        segmenter = start_demo_segmenter(args, ros_args, checkpoint)
        try:
            runner = NodeRunner([lambda: FusionNode(parameter_overrides=fusion_overrides),
                                 lambda: BagPlayer(color_topic=topics["color_topic"],
                                                   depth_topic=topics["depth_topic"],
                                                   info_topic=topics["camera_info_topic"])], ros_args=ros_args)
        except BaseException:
            stop_segmenter(segmenter)
            raise
        fusion, player = runner.nodes
        try:
            runner.start()
            wait_for(player.subscribed, args.timeout, "the fusion node to subscribe to the player")
            with tqdm(total=stream.color_messages, desc="bag", unit="frame", disable=args.quiet) as bar:
                def ready() -> bool:  # the fusion node took the last frame and has at most one queued
                    return frames_received(fusion) >= player.published and \
                        fusion.frames.pushed - fusion.frames_finished - fusion.frames.dropped <= 1
                def on_frame(frame) -> None:
                    if bar.n == 0:
                        log.info("first frame published (t=%.3f s)", frame.stamp)
                    bar.update(1)

                # The first Ctrl-C ends the replay and keeps what was fused; a second one quits.
                interrupted = threading.Event()
                previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
                try:
                    player.play(itertools.chain([first], frames), lambda: stream.fixed_frame, rate=args.bag_rate,
                                ready=ready, on_frame=on_frame, timeout=args.timeout,
                                should_stop=interrupted.is_set)
                finally:
                    signal.signal(signal.SIGINT, previous)
            if interrupted.is_set():
                log.warning("Ctrl-C: replay stopped after %d frames; querying the map fused so far (Ctrl-C again "
                            "to quit)", player.published)
            settle_fusion(fusion, player.published, args.timeout)
            stats = fusion.stats()
            skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in stream.skipped.items() if v) or "none"
            log.info("%d colour images in the bag%s; %d frames replayed (skipped: %s, %d undecodable); the fusion "
                     "node fused %d (%d without pose, %d dropped) into %d voxels in '%s'", stream.color_messages,
                     " (damaged: read up to the damage)" if stream.truncated else "", player.published, skipped,
                     player.bad_frames, stats["integrated"], stats["no_pose"], stats["frames_dropped"],
                     len(fusion.map), stream.fixed_frame)
            code = query_and_write(args, files, segmenter, fusion, f"{stream.path.name}, {checkpoint.name}",
                                   recorded=True)
        finally:
            runner.close()
            stop_segmenter(segmenter)
    log.info("replay finished in %.1f s", time.perf_counter() - started)
    return code


def map_file_args(path: Path | None) -> list[str]:
    """ROS arguments that start both nodes from a map file (``--map``): the fusion node's voxels, the segmenter
    node's features."""
    if path is None:
        return []
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"map file not found: {path}")
    return ["-p", f"fusion_node:map_file:={path}", "-p", f"segmenter_node:map_file:={path}"]


def run_nodes(args) -> int:
    stop = stop_on_signals()
    files = args.config or default_config_files(sim_camera=args.sim_camera)
    log.info("parameters from %s; Ctrl-C to stop", ", ".join(map(str, files)))
    ros_args = params_file_args(files) + args.ros_args + map_file_args(args.map)
    segmenter = start_segmenter(ros_args, checkpoint=args.checkpoint, device=args.device, num_threads=args.threads)
    # The segmenter exits on its own only when it cannot start (a missing checkpoint, a refused map file): stop too.
    threading.Thread(target=lambda: (segmenter.wait(), stop.set()), name="segmenter-watch", daemon=True).start()
    runner = None
    try:
        runner = NodeRunner(make_factories(sim_camera=args.sim_camera, camera_rate=args.rate), ros_args=ros_args)
        spin_until_stopped(runner.executor, stop)
        log.info("stopping")
    finally:
        if runner is not None:
            runner.close()
        code = stop_segmenter(segmenter)
    if code not in (0, -signal.SIGINT):
        log.error("segmenter_node exited with code %s", code)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ov3d-run",
        description="Run the ov3d_ros nodes (fusion, segmenter, optionally the synthetic camera) in one process "
                    "with the same YAML parameters as launch/segment.launch.py. --demo runs the synthetic "
                    "pipeline once, queries it and writes a labelled PLY and a PNG.",
        epilog="Anything after --ros-args is passed to ROS (e.g. -p fusion_node:stride:=1 or remappings).")
    parser.add_argument("--demo", action="store_true",
                        help="synthetic camera, one loop of frames, one query, write PLY + PNG, then exit")
    parser.add_argument("--bag", type=Path, metavar="RECORDING",
                        help="replay a rosbag2 recording (folder, .mcap or .db3) through the nodes, then query it "
                             "and write PLY + PNG like --demo")
    parser.add_argument("--sim-camera", action="store_true", help="also run the synthetic camera node")
    parser.add_argument("--config", type=Path, action="append",
                        help="ROS parameter YAML (repeatable; default config/ov3d.yaml, plus config/sim_camera.yaml "
                             "with --sim-camera/--demo)")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped demo checkpoint, "
                                             f"{default_checkpoint()})")
    parser.add_argument("--device", help="torch device: auto, cpu, cuda (default from the YAML: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the segmenter")
    parser.add_argument("--map", type=Path, metavar="FILE",
                        help="start from a map file saved by /segmenter_node/save_map (.npz): the nodes answer "
                             "queries from it before the first new frame and keep mapping on top of it; refused "
                             "when another checkpoint or voxel size made it")
    parser.add_argument("--camera-rate", dest="rate", type=float, default=None,
                        help="synthetic camera rate in Hz (default from YAML)")
    bag = parser.add_argument_group("bag replay (--bag)")
    bag.add_argument("--rate", dest="bag_rate", type=float, default=1.0,
                     help="replay speed: 1.0 = the recorded rate, 2.0 = twice as fast, 0 = as fast as the fusion node "
                          "takes the frames (nothing dropped) (default 1.0)")
    add_stream_arguments(bag)
    demo = parser.add_argument_group("demo and bag replay")
    demo.add_argument("--frames", type=int, default=60, help="frames in the synthetic loop (default 60)")
    demo.add_argument("--queries", nargs="+", help="queries to run (default: the segmenter's `queries` parameter)")
    demo.add_argument("--min-score", type=float, default=0.0, help="minimum score of a labelled point")
    demo.add_argument("--output", default="ov3d_demo_output",
                      help="folder for labelled_map.ply and labelled_map.png (default ./ov3d_demo_output)")
    demo.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds per stage")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    args.ros_args = ros_args
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if args.map is not None and (args.demo or args.bag is not None):
        build_parser().error("--map continues a live map: use it without --demo and --bag")
    try:
        with cores_for_fusion():  # this process fuses: the map's compiled loops use the cores
            if args.bag is not None:
                return run_bag(args)
            return run_demo(args) if args.demo else run_nodes(args)
    except (FileNotFoundError, TimeoutError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:  # the nodes and the segmenter process were closed on the way out
        log.warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
