#!/usr/bin/env python
"""Fusion throughput at 640x480: our back-projection + VoxelMap integration against Open3D on the same frames.

    python bench/bench_fusion.py                          # 30 synthetic 640x480 frames, 2 cm voxels, every core
    python bench/bench_fusion.py --frames 60 --voxel-size 0.05 --threads 1
    python bench/bench_fusion.py --surface --stride 1,2,3      # frame rate against accuracy, stride by stride

Pipelines, each fed every frame in order (fresh map per repeat):
  ours       make_partial_cloud (p = T [d K^-1 (u, v, 1)]) + VoxelMap.integrate (free-space carving; --surface:
             surface points too)
  open3d     PointCloud.create_from_rgbd_image + transform, and t.geometry.VoxelBlockGrid integration (TSDF + colour;
             the legacy ScalableTSDFVolume extracts nothing in Open3D 0.20)
With --stride N both are fed the same pixels: ours back-projects every N-th pixel in u and v (the fusion node's
``stride``, 2 by default), Open3D gets the images subsampled the same way, with the intrinsics to match. With a
list of strides the run ends with one table of every pipeline and stride: frame rate, accuracy, coverage. Each
stage is also timed alone. Frames come from ov3d_ros.data.synthetic (noisy depth) when it is importable, else
from an analytic box room made here. On a synthetic room both maps are also scored against the room's true surfaces
(sampled every 5 mm): the median and 90th percentile distance of the map's points to them, and coverage, the
share of the observed surface (true points within 3 cm of a back-projected pixel) that has a map point within 3 cm;
the plain running-mean map (no surface step) is printed beside them. Prints frames per second from wall-clock time
and from this process's CPU time (on a shared machine the CPU-time figure is the one to compare), the ratio
Open3D time / our time (> 1: ours is faster), points per frame and map sizes. Best of --repeats (by wall-clock
time); ours and Open3D alternate so they share the machine's load.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return w, h


def parse_strides(text: str) -> tuple[int, ...]:
    try:
        strides = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"stride must be integers like 1 or 1,2,3, got {text!r}") from None
    if not strides or min(strides) < 1:
        raise argparse.ArgumentTypeError(f"strides must be >= 1, got {text!r}")
    return strides


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="frames per run (default 30)")
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--voxel-size", type=float, default=0.02, help="voxel edge in metres (default 0.02)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads: our map's compiled loops (VoxelMap.threads; torch's own operations run on "
                        "one thread, as in the fusion node) and Open3D's OMP_NUM_THREADS (default: this machine's "
                        "cores)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline; the best is printed (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic room seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device of our VoxelMap (default cpu)")
    parser.add_argument("--surface", action="store_true", help="ours with surface points on every frame (the "
                        "TSDF-like mode, SurfaceConfig(surface=True, every=1)); default: the map's defaults (free-"
                        "space carving on every 4th frame, running means)")
    parser.add_argument("--stride", type=parse_strides, default=(1,), help="use every N-th pixel in u and v, in "
                        "both pipelines; a list (1,2,3) runs each and ends with a table of frame rate against "
                        "accuracy (default 1: every pixel; the fusion node's default is 2)")
    parser.add_argument("--analytic", action="store_true", help="use the analytic box room even if "
                        "ov3d_ros.data.synthetic is available")
    args = parser.parse_args()
    if args.frames < 1 or args.repeats < 1 or args.threads < 1 or args.voxel_size <= 0:
        parser.error("--frames, --repeats, --threads and --voxel-size must be positive")
    return args


def analytic_frames(n_frames: int, width: int, height: int):
    """A 6 x 5 x 3 m box room with a table-sized box, seen from a camera circling inside it (exact depth)."""
    import numpy as np

    from ov3d_ros.fusion import RGBDFrame
    from ov3d_ros.geometry import CameraModel

    camera = CameraModel(width, height, 0.8 * width, 0.8 * width, (width - 1) / 2, (height - 1) / 2)
    room_lo, room_hi = np.array([0.0, 0.0, 0.0]), np.array([6.0, 5.0, 3.0])
    box_lo, box_hi = np.array([2.4, 2.0, 0.0]), np.array([3.6, 2.8, 0.75])
    v, u = np.mgrid[0:height, 0:width]
    rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones(u.shape)], -1).reshape(-1, 3)
    frames = []
    for i in range(n_frames):
        angle = 2 * np.pi * i / n_frames
        eye = np.array([3.0 + 1.5 * np.cos(angle), 2.5 + 1.2 * np.sin(angle), 1.4])
        forward = np.array([3.0, 2.5, 0.6]) - eye + [np.sin(angle), -np.cos(angle), 0.0]
        z = forward / np.linalg.norm(forward)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        T = np.eye(4)
        T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        T[:3, 3] = eye
        dirs = rays @ T[:3, :3].T
        with np.errstate(divide="ignore", invalid="ignore"):
            t_room = np.min(np.where(dirs > 0, (room_hi - eye) / dirs,
                                     np.where(dirs < 0, (room_lo - eye) / dirs, np.inf)), axis=1)
            b1, b2 = (box_lo - eye) / dirs, (box_hi - eye) / dirs
            near, far = np.max(np.minimum(b1, b2), axis=1), np.min(np.maximum(b1, b2), axis=1)
        t = np.where((near <= far) & (near > 0), np.minimum(near, t_room), t_room)
        p = eye + t[:, None] * dirs
        checker = (np.floor(p / 0.3).astype(np.int64).sum(axis=1) % 2)[:, None]
        color = np.clip(np.where(checker, [200, 180, 150], [90, 110, 140]) + 20 * p[:, 2:3], 0, 255)
        frames.append(RGBDFrame(color.reshape(height, width, 3).astype(np.uint8),
                                t.reshape(height, width).astype(np.float32), camera, T, index=i))
    return frames, "analytic box room (exact depth)"


def load_frames(args):
    width, height = args.size
    if not args.analytic:
        try:
            from ov3d_ros.data.synthetic import SyntheticRoom, render_sequence
        except ImportError:
            pass
        else:
            room = SyntheticRoom.generate(args.seed)
            rendered = render_sequence(room, n_frames=args.frames, width=width, height=height, noise=True,
                                       seed=args.seed)
            return [f.frame for f in rendered], f"ov3d_ros.data.synthetic room seed {args.seed} (noisy depth)", room
    return analytic_frames(args.frames, width, height) + (None,)


class Clock:
    """Accumulates wall-clock and process CPU time."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def run_ours(frames, voxel_size, device, surface, threads, stride):
    from ov3d_ros.fusion import VoxelMap, make_partial_cloud

    vmap = VoxelMap(voxel_size=voxel_size, capacity=20_000_000, device=device, surface=surface)
    vmap.threads = threads
    back, fuse = Clock(), Clock()
    points = 0
    for frame in frames:
        with back:
            partial = make_partial_cloud(frame, min_depth=0.1, max_depth=10.0, stride=stride)
        with fuse:
            vmap.integrate(partial)
        points += len(partial)
    if vmap.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return back, fuse, points, {"voxels": len(vmap), "cloud": vmap.to_cloud().xyz}


def run_open3d(frames, voxel_size, o3d, stride):
    import numpy as np

    # Pixel (u, v) of the images subsampled by `stride` is pixel (stride u, stride v) of the frame.
    cam = frames[0].camera
    width, height = -(-cam.width // stride), -(-cam.height // stride)
    fx, fy, cx, cy = cam.fx / stride, cam.fy / stride, cam.cx / stride, cam.cy / stride
    intrinsic = o3d.camera.PinholeCameraIntrinsic(width, height, fx, fy, cx, cy)
    intrinsic_t = o3d.core.Tensor(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), o3d.core.Dtype.Float64)
    device = o3d.core.Device("CPU:0")
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3d.core.float32, o3d.core.float32, o3d.core.float32),
        attr_channels=((1), (1), (3)), voxel_size=voxel_size, block_resolution=8, block_count=100_000,
        device=device)
    back, fuse = Clock(), Clock()
    points = 0
    for frame in frames:
        depth = np.ascontiguousarray(frame.depth_metres()[::stride, ::stride])
        color = np.ascontiguousarray(frame.color[::stride, ::stride])
        with back:
            rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
                o3d.geometry.Image(color), o3d.geometry.Image(depth), depth_scale=1.0, depth_trunc=10.0,
                convert_rgb_to_intensity=False)
            cloud = o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intrinsic)
            cloud.transform(frame.T_world_cam)
        points += len(cloud.points)
        with fuse:
            extrinsic = o3d.core.Tensor(np.linalg.inv(frame.T_world_cam), o3d.core.Dtype.Float64)  # world-to-camera
            depth_t = o3d.t.geometry.Image(o3d.core.Tensor(depth)).to(device)
            color_t = o3d.t.geometry.Image(o3d.core.Tensor(color.astype(np.float32) / 255.0)).to(device)
            blocks = vbg.compute_unique_block_coordinates(depth_t, intrinsic_t, extrinsic, 1.0, 10.0)
            vbg.integrate(blocks, depth_t, color_t, intrinsic_t, extrinsic, 1.0, 10.0)
    surface = vbg.extract_point_cloud(weight_threshold=1.0)  # every observed surface, like our map
    return back, fuse, points, {"blocks": int(vbg.hashmap().size()), "surface points": len(surface.point.positions),
                                "cloud": surface.point.positions.numpy()}


def accuracy(frames, room, voxel_size, stride, clouds: dict) -> dict:
    """Distances of each map's points to the room's true surfaces, and coverage of the observed surface (what every
    pixel saw, whatever the stride); printed, and returned as {name: (median m, p90 m, coverage)}."""
    import numpy as np
    from scipy.spatial import cKDTree

    from ov3d_ros.fusion import VoxelMap, make_partial_cloud

    plain = VoxelMap(voxel_size=voxel_size, capacity=20_000_000, surface=None)
    raw = []
    for frame in frames:
        partial = make_partial_cloud(frame, min_depth=0.1, max_depth=10.0)
        raw.append(partial.xyz[::7])
        plain.integrate(partial if stride == 1 else make_partial_cloud(frame, min_depth=0.1, max_depth=10.0,
                                                                       stride=stride))
    truth = room.ground_truth_cloud(spacing=0.005).xyz
    observed = truth[cKDTree(np.concatenate(raw)).query(truth, distance_upper_bound=0.03)[0] < 0.03]
    clouds = dict(clouds, **{"ours, running means": plain.to_cloud().xyz})
    tree = cKDTree(truth)
    scores = {}
    print(f"\n{'map (same frames)':26s} {'points':>10s} {'median':>9s} {'p90':>9s} {'coverage':>9s}")
    for name, xyz in clouds.items():
        dist = tree.query(xyz)[0]
        covered = cKDTree(xyz).query(observed, distance_upper_bound=0.03)[0] < 0.03
        scores[name] = (float(np.median(dist)), float(np.quantile(dist, 0.9)), float(covered.mean()))
        print(f"{name:26s} {len(xyz):10,d} {1e3 * scores[name][0]:6.2f} mm {1e3 * scores[name][1]:6.1f} mm "
              f"{100 * scores[name][2]:8.1f}%")
    return scores


def main() -> None:
    args = parse_args()
    # Both libraries read the thread count when they start: set it before importing either.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from ov3d_ros.cores import cores_for_fusion

    with cores_for_fusion():  # as the fusion node does
        compare(args)


def compare(args) -> None:
    try:
        import open3d as o3d
    except ImportError as exc:
        sys.exit(f"bench_fusion needs open3d for the reference pipeline (pip install open3d==0.20.0): {exc}")

    from ov3d_ros.fusion import SurfaceConfig

    surface = SurfaceConfig(surface=True, every=1) if args.surface else SurfaceConfig()
    frames, source, room = load_frames(args)
    width, height = args.size
    print(f"frames: {len(frames)} x {width}x{height} from {source}; voxel {args.voxel_size * 100:g} cm; "
          f"{args.threads} thread(s); device {args.device}; load average {os.getloadavg()[0]:.1f}; ours: {surface}")
    summary = []
    for stride in args.stride:
        summary += compare_at(args, o3d, frames, room, surface, stride)
    if len(args.stride) > 1:
        print(f"\n{'pipeline':12s} {'stride':>6s} {'fusion FPS wall':>16s} {'median':>9s} {'p90':>9s} "
              f"{'coverage':>9s}")
        for name, stride, rate, score in summary:
            accurate = f"{1e3 * score[0]:6.2f} mm {1e3 * score[1]:6.1f} mm {100 * score[2]:8.1f}%" if score else ""
            print(f"{name:12s} {stride:6d} {rate:16.1f} {accurate}")


def compare_at(args, o3d, frames, room, surface, stride: int) -> list:
    """Both pipelines at one stride: the stage table and the accuracy; returns the summary rows
    (pipeline, stride, fusion frames/s wall, (median, p90, coverage) or None)."""
    n = len(frames)
    print(f"\n== every {stride} pixel(s) in u and v ==")
    best = {}
    for _ in range(args.repeats):
        for name, runner in (("ours", lambda: run_ours(frames, args.voxel_size, args.device, surface, args.threads,
                                                        stride)),
                             ("open3d", lambda: run_open3d(frames, args.voxel_size, o3d, stride))):
            back, fuse, points, sizes = runner()
            total = back.wall + fuse.wall
            if name not in best or total < best[name][0].wall + best[name][1].wall:
                best[name] = (back, fuse, points, sizes)

    def fps(seconds: float) -> float:
        return n / seconds if seconds > 0 else float("inf")

    rows = (("back-projection", lambda r: r[0]), ("map integration", lambda r: r[1]))
    print(f"{'stage':34s} {'ours FPS':>18s} {'Open3D FPS':>18s} {'ratio':>14s}")
    print(f"{'':34s} {'wall / cpu':>18s} {'wall / cpu':>18s} {'wall / cpu':>14s}")
    for label, pick in rows:
        o, r = pick(best["ours"]), pick(best["open3d"])
        print(f"{label:34s} {fps(o.wall):8.1f} / {fps(o.cpu):7.1f} {fps(r.wall):8.1f} / {fps(r.cpu):7.1f} "
              f"{r.wall / o.wall:6.2f} / {r.cpu / o.cpu:5.2f}")
    ours_wall = best["ours"][0].wall + best["ours"][1].wall
    ours_cpu = best["ours"][0].cpu + best["ours"][1].cpu
    ref_wall = best["open3d"][0].wall + best["open3d"][1].wall
    ref_cpu = best["open3d"][0].cpu + best["open3d"][1].cpu
    print(f"{'fusion (back-projection + map)':34s} {fps(ours_wall):8.1f} / {fps(ours_cpu):7.1f} "
          f"{fps(ref_wall):8.1f} / {fps(ref_cpu):7.1f} {ref_wall / ours_wall:6.2f} / {ref_cpu / ours_cpu:5.2f}")
    print(f"\nours:   {best['ours'][2] / n:,.0f} points per frame; map {best['ours'][3]['voxels']:,} voxels "
          f"(per-frame integration {1e3 * best['ours'][1].cpu / n:.1f} ms CPU)")
    sizes = best["open3d"][3]
    print(f"Open3D: {best['open3d'][2] / n:,.0f} points per frame; VoxelBlockGrid {sizes['blocks']:,} blocks of 8^3 "
          f"voxels, {sizes['surface points']:,} surface points (per-frame integration "
          f"{1e3 * best['open3d'][1].cpu / n:.1f} ms CPU)")
    print("ratio = Open3D time / our time: > 1 means ours is faster. Open3D's map is a TSDF; ours is running means "
          "carved by free space, or with --surface points on the measured surfaces (SurfaceConfig); Open3D's "
          "back-projection returns float64 points without pixel indices.")
    scores = {}
    if room is not None:
        scores = accuracy(frames, room, args.voxel_size, stride, {"ours": best["ours"][3]["cloud"],
                                                                  "Open3D TSDF": best["open3d"][3]["cloud"]})
    return [("ours", stride, fps(ours_wall), scores.get("ours")),
            ("Open3D TSDF", stride, fps(ref_wall), scores.get("Open3D TSDF"))]


if __name__ == "__main__":
    main()
