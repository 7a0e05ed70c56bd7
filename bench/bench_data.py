#!/usr/bin/env python
"""Time the data tools on a synthetic room: generation, ray-cast rendering, ground-truth sampling, ScanNet export
and reading, noisy pseudo labels, and fusion with ov3d-fuse's code path.

    python bench/bench_data.py                      # 60 frames at 320x240 (the synthetic demo's size)
    python bench/bench_data.py --frames 20 --size 640x480 --seed 3

Prints seconds per stage (wall clock, and this process's CPU time: on a shared machine the CPU time is the figure to
compare), per-frame milliseconds and frames per second. One thread (the numbers are for one core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames to render (default 60)")
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT (default 320x240)")
    parser.add_argument("--seed", type=int, default=0, help="room seed (default 0)")
    parser.add_argument("--repeats", type=int, default=3, help="render repeats; the median is printed (default 3)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from ov3d_ros.data.fuse_cli import fuse_scene
    from ov3d_ros.data.pseudo_labels import synthetic_pseudo_labels
    from ov3d_ros.data.scannet import ScanNetScene, write_scannet_scene
    from ov3d_ros.data.synthetic import CLASS_NAMES, SyntheticRoom, render_sequence

    width, height = args.size
    t = time.perf_counter()
    room = SyntheticRoom.generate(args.seed)
    t_generate = time.perf_counter() - t
    print(f"{room}")
    print(f"generate room:                {t_generate * 1e3:8.1f} ms")

    for noise in (False, True):
        times, cpu_times = [], []
        for _ in range(max(1, args.repeats)):
            t, c = time.perf_counter(), time.process_time()
            frames = render_sequence(room, n_frames=args.frames, width=width, height=height, noise=noise)
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
        s, cpu = statistics.median(times), statistics.median(cpu_times)
        print(f"render {args.frames} frames {width}x{height} noise={str(noise):5s}: {s:6.2f} s wall, {cpu:6.2f} s CPU "
              f"({cpu / args.frames * 1e3:.1f} CPU ms/frame, {args.frames / cpu:.1f} frames per CPU second)")

    c = time.process_time()
    gt = room.ground_truth_cloud(spacing=0.02)
    print(f"ground_truth_cloud(0.02):     {time.process_time() - c:8.2f} s CPU ({len(gt)} points)")

    c = time.process_time()
    labels = synthetic_pseudo_labels(frames, CLASS_NAMES, seed=0)
    cpu = time.process_time() - c
    print(f"synthetic_pseudo_labels:      {cpu:8.2f} s CPU ({cpu / len(labels) * 1e3:.1f} ms/frame)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene0000_00"
        t, c = time.perf_counter(), time.process_time()
        write_scannet_scene(path, frames, ground_truth=gt, class_names=CLASS_NAMES)
        s, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"write_scannet_scene:          {s:8.2f} s wall, {cpu:.2f} s CPU ({len(frames) / cpu:.1f} frames/CPU s)")
        scene = ScanNetScene(path)
        t, c = time.perf_counter(), time.process_time()
        for frame in scene:
            pass
        s, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"ScanNetScene read all frames: {s:8.2f} s wall, {cpu:.2f} s CPU ({len(scene) / cpu:.1f} frames/CPU s)")
        c = time.process_time()
        vmap, n, s = fuse_scene(scene, 0.02, progress=False)
        cpu = time.process_time() - c
        print(f"fuse (ov3d-fuse path, 2 cm):  {s:8.2f} s wall, {cpu:.2f} s CPU ({n / cpu:.1f} frames/CPU s, "
              f"{len(vmap)} voxels)")


if __name__ == "__main__":
    main()
