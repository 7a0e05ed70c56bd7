"""Object-instance extraction on a fused room, as /query_objects pays it per answer.

    python bench/bench_instances.py [--size 640x480] [--frames 60] [--repeats 5]

The held-out synthetic room (seed 1000) is fused from the camera loop (2 cm voxels), labelled with the shipped demo
checkpoint for the 12 class names (superpoints on), and split into instances (``ov3d_ros.instances``). Printed: the
map's points, the cluster-grid build (done once per map version by the segmenter node's network thread, not by a
query) and the extraction itself (what each answer pays), median of the repeats, with the map's superpoints as the
units (as the segmenter node has them) and with every point its own unit (``ov3d-segment``, the most groups a
cloud can have). Also the instances per class
and, for each ground-truth object of the furniture classes, the distance from its box centre to the nearest
instance's of its class.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ov3d_ros.data.synthetic import CLASS_NAMES, SyntheticRoom, render_sequence
from ov3d_ros.instances import cluster_grid, extract_instances, fit_box
from ov3d_ros.mapping import Mapper, MapperConfig
from ov3d_ros.resources import default_checkpoint
from ov3d_ros.segmenter import Segmenter
from ov3d_ros.superpoints import superpoints

FURNITURE = ("table", "chair", "cabinet", "sofa", "bed", "lamp", "monitor")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x480", help="camera image size WxH (default 640x480)")
    p.add_argument("--frames", type=int, default=60, help="frames of the camera loop (default 60)")
    p.add_argument("--seed", type=int, default=1000, help="room seed (default 1000, held out)")
    p.add_argument("--rooms", type=int, default=1,
                   help="fuse this many rooms (seeds from --seed on) side by side, 10 m apart, into one map")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    room = SyntheticRoom.generate(args.seed)
    mapper = Mapper(MapperConfig(voxel_size=0.02, stride=2, capacity=10_000_000))
    for k in range(args.rooms):
        shift = np.eye(4)
        shift[0, 3] = 10.0 * k
        for f in render_sequence(SyntheticRoom.generate(args.seed + k), n_frames=args.frames, width=width,
                                 height=height, noise=True):
            frame = f.frame
            frame.T_world_cam = shift @ frame.T_world_cam
            mapper.add_frame(frame)
    cloud = mapper.cloud()[0]
    segmenter = Segmenter.load(default_checkpoint(), device="cpu", superpoints=True)
    queries = list(CLASS_NAMES)
    labels = segmenter.segment(cloud, queries)

    segment = superpoints(cloud.xyz, cloud.rgb, segmenter.superpoint_config(True))
    # A superpoint's label and score: its points' (superpoint averaging gives them one label).
    unit_label = np.full(segment.max() + 1, -1, dtype=np.int64)
    unit_label[segment] = labels.label
    unit_score = np.zeros(segment.max() + 1)
    unit_score[segment] = labels.score
    print(f"map: {len(cloud)} points ({args.rooms} room(s), {args.size}, {args.frames} frames each), "
          f"{segment.max() + 1} superpoints; "
          f"{len(queries)} queries")
    for name, unit, label, score in (("superpoint units", segment, unit_label, unit_score),
                                     ("point units", None, labels.label, labels.score)):
        build, extract = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            grid = cluster_grid(cloud.xyz, 0.05, unit)
            t1 = time.perf_counter()
            found = extract_instances(grid, label, score, len(queries))
            t2 = time.perf_counter()
            build.append(t1 - t0)
            extract.append(t2 - t1)
        print(f"{name}: {len(grid.group_unit)} (voxel, unit) groups, {len(found.instances)} instances; cluster grid "
              f"(once per map version) {1e3 * np.median(build):.0f} ms; extraction (per answer) "
              f"{1e3 * np.median(extract):.0f} ms (median of {args.repeats})")
    gt = room.ground_truth_cloud(spacing=0.02)
    for name in FURNITURE:
        q = queries.index(name)
        mine = [i for i in found.instances if i.query == q]
        truth = [fit_box(gt.xyz[gt.instance == k]).center for k in np.unique(gt.instance[gt.label == q])]
        errors = [min(np.linalg.norm(i.box.center - c) for i in mine) if mine else float("inf") for c in truth]
        print(f"  {name:8s} ground truth {len(truth)}, instances {len(mine):2d} "
              f"(points {[i.points for i in mine][:6]}), box-centre error of each object [m]: "
              f"{[round(float(e), 2) for e in errors]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
