#!/usr/bin/env python3
"""Segmenter benchmark: network latency on a partial (~50k points) and a global (~500k points) cloud, query
latency (1M points x 10 queries, warm text cache), peak memory of each, and one training step (forward +
backward) on the partial cloud.

    .venv/bin/python bench/bench_segmenter.py                 # CPU (small preset), and the GPU if there is one
    .venv/bin/python bench/bench_segmenter.py --device cuda   # GPU only (full preset)

CPU memory is the peak resident-set growth during a case (sampled every 2 ms); GPU memory is
torch.cuda.max_memory_allocated during a case. Weights are random: latency does not depend on them.
GPU goals (H100, full preset): partial <= 15 ms, global <= 150 ms, query <= 10 ms; printed as ratios.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOALS_MS = {"partial": 15.0, "global": 150.0, "query": 10.0}


def surface_cloud(n: int, size=(8.0, 6.0, 3.0), seed: int = 0):
    """n points on the surfaces of a room (floor, ceiling, walls) and some boxes, with colours per surface."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = size
    boxes = [((1.0, 1.0, 0.0), (1.2, 0.8, 0.75)), ((4.0, 3.0, 0.0), (0.5, 0.5, 0.45)),
             ((6.0, 1.0, 0.0), (1.5, 0.6, 2.0)), ((2.5, 4.5, 0.0), (2.0, 1.0, 0.8))]
    faces = [((0, 0, 0), (sx, 0, 0), (0, sy, 0)), ((0, 0, sz), (sx, 0, 0), (0, sy, 0)),
             ((0, 0, 0), (sx, 0, 0), (0, 0, sz)), ((0, sy, 0), (sx, 0, 0), (0, 0, sz)),
             ((0, 0, 0), (0, sy, 0), (0, 0, sz)), ((sx, 0, 0), (0, sy, 0), (0, 0, sz))]
    for (ox, oy, oz), (bx, by, bz) in boxes:
        faces += [((ox, oy, oz + bz), (bx, 0, 0), (0, by, 0)), ((ox, oy, oz), (bx, 0, 0), (0, 0, bz)),
                  ((ox, oy + by, oz), (bx, 0, 0), (0, 0, bz)), ((ox, oy, oz), (0, by, 0), (0, 0, bz)),
                  ((ox + bx, oy, oz), (0, by, 0), (0, 0, bz))]
    o, a, b = (np.array(x, np.float64) for x in zip(*faces))
    area = np.linalg.norm(np.cross(a, b), axis=1)
    face = rng.choice(len(faces), n, p=area / area.sum())
    u, v = rng.uniform(0, 1, (2, n))
    xyz = (o[face] + u[:, None] * a[face] + v[:, None] * b[face]).astype(np.float32)
    palette = rng.integers(30, 230, (len(faces), 3))
    rgb = np.clip(palette[face] + rng.integers(-12, 13, (n, 3)), 0, 255).astype(np.uint8)
    return xyz, rgb


def partial_cloud(n: int, seed: int = 1):
    """What one camera sees: the part of a room inside a ~3 m x 2.5 m x 4 m view frustum-ish box."""
    xyz, rgb = surface_cloud(n * 6, seed=seed)
    inside = np.all((xyz >= [2.0, 0.0, 0.0]) & (xyz <= [6.0, 3.5, 3.0]), axis=1)
    idx = np.flatnonzero(inside)
    idx = np.random.default_rng(seed).choice(idx, n, replace=len(idx) < n)
    return xyz[idx], rgb[idx]


class RSSPeak:
    """Peak resident-set growth (bytes) while the block runs, sampled from /proc/self/statm."""

    def __init__(self, interval=0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.growth = self.peak - self.base


def make_encoder(kind: str, dim: int):
    from ov3d_ros.text import DEFAULT_SPEC, TextEncoder, build_text_encoder

    if kind == "minilm":
        return build_text_encoder(DEFAULT_SPEC)

    class HashedEncoder(TextEncoder):
        """Fixed random unit vector per text (seeded by its hash): for machines without a text model."""

        def __init__(self):
            super().__init__({"kind": "hashed", "name": f"hashed-{dim}"}, ["{}"])
            self._dim = dim

        def _embed_texts(self, texts):
            import torch

            rows = [torch.randn(dim, generator=torch.Generator().manual_seed(
                int(hashlib.sha1(t.encode()).hexdigest()[:8], 16))) for t in texts]
            return torch.nn.functional.normalize(torch.stack(rows), dim=1)

    return HashedEncoder()


def timed(fn, device, repeats: int, warmup: int = 1):
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


def bench_device(device_name: str, args) -> list[dict]:
    import torch

    from ov3d_ros.model import build_model
    from ov3d_ros.segmenter import Segmenter

    device = torch.device(device_name)
    preset = args.preset or ("full" if device.type == "cuda" else "small")
    encoder = make_encoder(args.text, 384 if args.text == "minilm" else args.dim)
    model = build_model({"preset": preset, "embed_dim": encoder.dim}).to(device).eval()
    seg = Segmenter(model, encoder, chunk_points=args.chunk_points)
    queries = [f"object {i}" for i in range(args.queries)]
    seg.embed(queries)  # warm the text cache
    rows = []
    print(f"\n== {device} | preset {preset} ({model.num_parameters() / 1e6:.2f}M params, voxel "
          f"{model.voxel_size} m, embed {model.embed_dim}) | torch threads {torch.get_num_threads()}")

    # Query latency first (the heap has not yet grown for the big clouds, so its RSS growth is visible):
    # classify precomputed features of 1M points against 10 cached queries.
    g = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(args.query_points, model.embed_dim, generator=g), dim=1)
    feats = feats.to(device)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with RSSPeak() as rss:
            med, best = timed(lambda: seg.classify(feats, queries, 0.1), device, args.repeats)
        mem = (torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else rss.growth
    rows.append(dict(device=device.type, case="query", points=args.query_points, voxels=0, median_ms=med,
                     min_ms=best, mem_mb=mem / 2 ** 20))
    del feats
    cases = [("partial", partial_cloud(args.partial_points)), ("global", surface_cloud(args.global_points))]
    if args.map_points:
        cases.append(("map(segment)", surface_cloud(args.map_points, size=(20.0, 15.0, 3.0), seed=5)))
    for name, (xyz, rgb) in cases:
        n_vox = len(model.voxelize(xyz, rgb))
        if name.startswith("map"):
            fn = lambda: seg.label_points(xyz, rgb, queries)  # noqa: E731  chunked, never holds N x D
            repeats = 1
        else:
            fn = lambda: seg.features(xyz, rgb)  # noqa: E731
            repeats = args.repeats
        with torch.inference_mode():
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            with RSSPeak() as rss:
                med, best = timed(fn, device, repeats)
            mem = (torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else rss.growth
        rows.append(dict(device=device.type, case=name, points=len(xyz), voxels=n_vox, median_ms=med, min_ms=best,
                         mem_mb=mem / 2 ** 20))

    # One training step's network work (forward + backward through a text-classification loss) on the partial
    # cloud: the cost the curriculum pays per frame.
    xyz, rgb = cases[0][1]
    text = seg.embed(queries)
    target = torch.from_numpy(np.random.default_rng(0).integers(0, len(queries), len(xyz))).to(device)

    def train_step():
        model.zero_grad(set_to_none=True)
        feats = model(xyz, rgb)
        loss = torch.nn.functional.cross_entropy(model.logit_scale_value() * (feats @ text.T), target)
        loss.backward()

    model.train()
    med, best = timed(train_step, device, args.repeats)
    model.eval()
    rows.append(dict(device=device.type, case="train-step", points=len(xyz), voxels=rows[1]["voxels"],
                     median_ms=med, min_ms=best, mem_mb=float("nan")))

    for r in rows:
        goal = GOALS_MS.get(r["case"]) if r["device"] == "cuda" else None
        ratio = f"  goal {goal:.0f} ms -> x{r['median_ms'] / goal:.2f}" if goal else ""
        vox = f"{r['voxels']:>8d} vox" if r["voxels"] else " " * 12
        mem = f"  peak mem +{r['mem_mb']:8.1f} MB" if np.isfinite(r["mem_mb"]) else ""
        print(f"{r['case']:>13s} {r['points']:>8d} pts {vox}  median {r['median_ms']:9.1f} ms  "
              f"min {r['min_ms']:9.1f} ms{mem}{ratio}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", help="'all' (cpu, plus cuda if present), 'cpu' or 'cuda'")
    p.add_argument("--preset", default=None, help="model preset (default: small on CPU, full on GPU)")
    p.add_argument("--text", choices=("minilm", "hashed"), default="minilm",
                   help="text encoder: the offline MiniLM (384-d) or hashed random vectors (no model needed)")
    p.add_argument("--dim", type=int, default=512, help="embedding dim for --text hashed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--partial-points", type=int, default=50_000)
    p.add_argument("--global-points", type=int, default=500_000)
    p.add_argument("--query-points", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--map-points", type=int, default=0,
                   help="also segment a map of this many points chunk by chunk (e.g. 2000000)")
    p.add_argument("--chunk-points", type=int, default=400_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}.get(args.device)
    if devices is None:
        p.error(f"unknown --device {args.device!r}")
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    for dev in devices:
        bench_device(dev, args)
    if "cuda" not in devices:
        print("\n(no GPU here: GPU figures not measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
