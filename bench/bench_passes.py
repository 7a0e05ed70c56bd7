#!/usr/bin/env python3
"""Test-time refinement: held-out mIoU and time of the Segmenter at 1, 2, 4 and 8 passes, with and without
superpoints, side by side.

    .venv/bin/python bench/bench_passes.py                                   # demo checkpoint, demo's held-out rooms
    .venv/bin/python bench/bench_passes.py --checkpoint runs/demo/stage1/model.pt --passes 1 4
    .venv/bin/python bench/bench_passes.py --passes 1 --superpoints both     # superpoints' gain and cost alone
    .venv/bin/python bench/bench_passes.py --scenes data/scannet/scene0011_00 ... --checkpoint model.pt

Runs the evaluation protocol (`ov3d-train eval`: every class name a query, every point its best query) through the
deployed path (Segmenter.label_points) once per pass count (and per superpoint setting), and prints mIoU, overall
accuracy and the seconds the Segmenter took, as ratios against the first row. Without --scenes it uses the held-out
rooms of --config (synthetic rooms are generated under its data.root on first use).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped demo checkpoint)")
    parser.add_argument("--config", default="training/demo.yaml", help="recipe giving the held-out rooms")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--scenes", nargs="+", default=None, help="labelled scenes instead of the recipe's val set")
    parser.add_argument("--passes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--superpoints", choices=("off", "on", "both"), default="both",
                        help="average the features over superpoints (the recipe's superpoints section)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from ov3d_ros.training import pipeline
    from ov3d_ros.training.config import load_config
    from ov3d_ros.training.datasets import load_labelled_scene
    from ov3d_ros.superpoints import SuperpointConfig
    from ov3d_ros.training.evaluate import evaluate_scenes, segmenter_predictor

    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(Path(pipeline.__file__).resolve().parents[1] / "assets" / "ov3d_demo.pt")
    cfg = load_config(args.config, args.overrides)
    paths = args.scenes or pipeline.resolve_scenes(cfg, progress=False)[1]
    scenes = [load_labelled_scene(p) for p in paths]
    print(f"{checkpoint} on {len(scenes)} scenes ({sum(len(s.cloud) for s in scenes)} points), "
          f"{args.threads} threads, {args.device}")
    print(f"{'passes':>6} {'superpoints':>11} {'mIoU':>6} {'allAcc':>7} {'seconds':>8} {'x time':>7}")
    base = None
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.superpoints]
    for passes, refine in [(p, r) for p in args.passes for r in settings]:
        superpoints = SuperpointConfig(**cfg["superpoints"]) if refine else None
        predict = segmenter_predictor(checkpoint, device=args.device, prompt=cfg["eval"]["prompt"], passes=passes,
                                      superpoints=superpoints)
        seconds = 0.0

        def timed(xyz, rgb, queries):
            nonlocal seconds
            start = time.perf_counter()
            out = predict(xyz, rgb, queries)
            seconds += time.perf_counter() - start
            return out

        report = evaluate_scenes(timed, scenes, cfg["eval"])
        base = base or seconds
        print(f"{passes:>6} {'on' if refine else 'off':>11} {100 * report.miou:6.1f} {100 * report.overall_acc:7.1f} "
              f"{seconds:8.1f} {seconds / base:6.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
