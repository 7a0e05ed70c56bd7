"""A room that changes: the held-out synthetic room's camera loop flown twice, its tables taken away after the first
pass, fused by VoxelMap three ways: the default SurfaceConfig (free-space carving on every 4th frame, running
means), carving and surface points on every frame (the fusion node's surface_refine:=true observe_every:=1), and
plain running means.

    .venv/bin/python bench/bench_changing_room.py                      # seed 1000, 320x240, 60 frames a loop
    .venv/bin/python bench/bench_changing_room.py --size 640x480 --remove chair

Printed per map:
  * points inside the removed objects' old boxes (their bottom 3 cm left out: the floor), and of those the ones
    farther than 3 cm from every surface of the changed room (what is left of the objects and noise: ghosts);
  * coverage: the share of the changed room's surface seen in the second pass (true points within 3 cm of one of
    its back-projected pixels) that has a map point within 3 cm;
  * voxels kept, voxels removed as free space, and the fusion rate.
Goals (issue "A map that stays true"): at most 50 points left in the old box, coverage >= 90%.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from ov3d_ros.data.synthetic import SyntheticRoom, render_sequence
from ov3d_ros.fusion import SurfaceConfig, VoxelMap, make_partial_cloud


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1000, help="room seed (default 1000, held out)")
    p.add_argument("--size", default="320x240", help="camera image size WxH (default 320x240)")
    p.add_argument("--frames", type=int, default=60, help="frames per loop (default 60)")
    p.add_argument("--stride", type=int, default=2, help="pixel stride, as the fusion node's (default 2)")
    p.add_argument("--remove", default="table", help="comma-separated classes taken away (default table)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    removed = [n.strip() for n in args.remove.split(",") if n.strip()]
    room = SyntheticRoom.generate(args.seed)
    after = room.without(removed)
    first = [f.frame for f in render_sequence(room, n_frames=args.frames, width=width, height=height,
                                              noise=True, seed=args.seed)]
    second = [f.frame for f in render_sequence(after, n_frames=args.frames, width=width, height=height,
                                               noise=True, seed=args.seed)]
    boxes = [o.aabb() for o in room.furniture if o.class_name in removed]
    truth = after.ground_truth_cloud(spacing=0.01).xyz
    seen_points = np.concatenate([make_partial_cloud(f, max_depth=6.0, stride=args.stride).xyz for f in second])
    observed = truth[cKDTree(seen_points).query(truth, distance_upper_bound=0.03)[0] < 0.03]
    surfaces = cKDTree(truth)
    print(f"room seed {args.seed}: {len(first)} frames {width}x{height} (stride {args.stride}), then the same loop "
          f"without {', '.join(removed)} ({len(boxes)} objects)")
    print(f"{'map':22s} {'in old boxes':>12s} {'ghosts':>7s} {'coverage':>9s} {'voxels':>9s} {'carved':>7s} "
          f"{'fps':>6s}")
    for name, surface in (("carving (default)", SurfaceConfig()),
                          ("carving + surface points", SurfaceConfig(surface=True, every=1)),
                          ("running means", None)):
        vmap = VoxelMap(voxel_size=0.02, capacity=10_000_000, surface=surface)
        started = time.perf_counter()
        for frame in first + second:
            vmap.integrate(make_partial_cloud(frame, max_depth=6.0, stride=args.stride))
        fps = (len(first) + len(second)) / (time.perf_counter() - started)
        xyz = vmap.to_cloud().xyz
        inside = np.zeros(len(xyz), bool)
        for lo, hi in boxes:
            inside |= np.all((xyz >= lo + [0.0, 0.0, 0.03]) & (xyz <= hi), axis=1)
        ghosts = int((surfaces.query(xyz[inside])[0] > 0.03).sum()) if inside.any() else 0
        coverage = float(np.mean(cKDTree(xyz).query(observed, distance_upper_bound=0.03)[0] < 0.03))
        print(f"{name:22s} {int(inside.sum()):12d} {ghosts:7d} {100 * coverage:8.1f}% {len(vmap):9d} "
              f"{vmap.carved:7d} {fps:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
