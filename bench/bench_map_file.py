"""Saving a map file: the segmenter node's ~/save_map path (the VoxelMap written to a ``data.npz.staged`` name, the
features added to that archive as new members, then the rename) against two references run side by side on the
same map and features: writing every array once with ``np.savez`` (the floor), and the VoxelMap written in place,
read back and rewritten with the features (how a second writer adds to a finished file).

    .venv/bin/python bench/bench_map_file.py                     # 2,000,000 voxels in a 10 m box, 3 repeats
    .venv/bin/python bench/bench_map_file.py --voxels 500000 --folder /data/maps

The map is random points (4 per voxel on average, one integrate); the features are shaped like a feature map's
(points, a unit per point, float16 unit features of 64 channels for a tenth of the points). Prints seconds per
save (best of --repeats), the file size, and each reference's time over ours (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ov3d_ros.data.npz import add_to_npz, read_npz, staged
from ov3d_ros.fusion import VoxelMap


class _Cloud:
    def __init__(self, xyz: np.ndarray):
        self.xyz, self.rgb = xyz, np.zeros((len(xyz), 3), np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voxels", type=int, default=2_000_000, help="about how many voxels the map holds (default 2e6)")
    p.add_argument("--repeats", type=int, default=3, help="saves per way; the best is printed (default 3)")
    p.add_argument("--folder", default=None, help="where to write (default: a temporary folder, removed after)")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    side = 0.02 * round((args.voxels / 0.98) ** (1 / 3))  # random points in a cube of about that many voxels
    vmap = VoxelMap(0.02, capacity=max(1, 2 * args.voxels))
    vmap.integrate(_Cloud(rng.uniform(0.0, side, size=(4 * args.voxels, 3)).astype(np.float32)))
    n = len(vmap)
    features = {"features.xyz": rng.normal(size=(n, 3)).astype(np.float32),
                "features.unit": rng.integers(0, n // 10, n),
                "features.unit_features": rng.normal(size=(n // 10, 64)).astype(np.float16)}

    def ours(path: Path) -> None:
        with staged(path) as staging:
            vmap.save(staging)
            add_to_npz(staging, features)

    def rewrite(path: Path) -> None:
        vmap.save(path)
        arrays = read_npz(path)
        arrays.update(features)
        with staged(path) as staging:
            np.savez(staging, **arrays)

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        voxels = read_npz(vmap.save(Path(folder) / "voxels.npz"))  # the floor's arrays, read before the clock

        def once(path: Path) -> None:
            np.savez(path, **voxels, **features)

        best = {}
        for _ in range(args.repeats):  # the ways alternate, so they share the machine's load
            for name, way in (("ours", ours), ("np.savez once", once), ("write, read, rewrite", rewrite)):
                path = Path(folder) / f"{name.split()[0].strip(',')}.npz"
                t = time.perf_counter()
                way(path)
                best[name] = min(best.get(name, np.inf), time.perf_counter() - t)
        size = os.path.getsize(Path(folder) / "ours.npz")
        print(f"map of {n:,} voxels, features of {n:,} points; file {size / 2 ** 20:.0f} MiB; best of {args.repeats}")
        for name, seconds in best.items():
            ratio = "" if name == "ours" else f"   {seconds / best['ours']:.2f}x ours"
            print(f"  {name:22s} {seconds:7.3f} s{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
