"""The curriculum's figures: held-out mIoU of stage 1 vs stage 1+2, with inter-frame consistency on vs off.

    python bench/bench_curriculum.py --config training/demo.yaml --out runs/figures        # trains both (~2 x demo)
    python bench/bench_curriculum.py --config training/demo.yaml --out runs/figures --parallel   # both at once
    python bench/bench_curriculum.py --out runs/figures --seeds 0 1 2                      # three training seeds
    python bench/bench_curriculum.py --out runs/figures --report-only                       # re-print the table

Runs ``ov3d-train all`` twice on the same synthetic data (consistency_weight = the recipe's value, then 0), each in
its own folder under --out, and prints mIoU / mAcc / small-object mIoU / stage-2 labelled share and the wall and CPU
seconds of each run. Each checkpoint is also scored without the superpoint refinement (the "plain" rows). Extra
``--set`` overrides apply to both runs. ``--parallel`` prepares the data once, then runs the two curricula side by
side, one torch thread per process (with the demo's 2 workers each, four processes share the cores).

``--seeds`` repeats the pair for each training seed (model initialisation, frame sampling, augmentation; the rooms
stay the same) in ``--out/seed<N>/`` and adds the mean and the range over seeds: single runs differ by a few
points, as much as the effects being measured.

``--stage1-only`` runs ``ov3d-train stage1`` instead of ``all`` and scores the stage-1 checkpoints: the inter-frame
term lives in stage 1, and this costs about half of a whole curriculum, so more seeds fit in the same time.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

ARMS = {"consistency on": "cons_on", "consistency off": "cons_off"}
CELLS = [(arm, stage) for arm in ARMS for stage in ("stage1", "stage1+2")]


def _row(name: str, result: dict, stage: str) -> str:
    r = result.get(stage)
    if not r:
        return f"{name:<34} {'n/a':>6}"
    size = r.get("size_miou", {})
    return (f"{name:<34} {100 * r['miou']:6.1f} {100 * r['macc']:6.1f} "
            f"{100 * size.get('small', float('nan')):7.1f} {100 * size.get('large', float('nan')):7.1f}")


def _run_pair(config: str, overrides: list[str], folder: Path, data: Path, parallel: bool,
              stage1_only: bool = False) -> bool:
    """Both arms of one seed into folder/cons_on and folder/cons_off; False if a run failed.

    Each arm is an ``ov3d-train all`` process (``stage1`` with ``stage1_only``), so the recipe's workers are started
    as they are for users; without ``parallel`` one after the other, so each run's wall time is that of a run alone
    on the machine.
    """
    import subprocess
    import sys

    extras = {}
    for name, sub in ARMS.items():
        extras[name] = [f"output_dir={folder / sub}", f"data.root={data}"]
        if name == "consistency off":
            extras[name].append("stage1.consistency_weight=0")
    procs, walls = [], {}
    for name, extra in extras.items():
        run_dir = folder / ARMS[name]
        run_dir.mkdir(parents=True, exist_ok=True)
        command = "stage1" if stage1_only else "all"
        cmd = [sys.executable, "-m", "ov3d_ros.training.cli", command, "--no-progress", "--config", config,
               "--set", *overrides, *extra] + (["threads=1"] if parallel else [])
        log_file = open(run_dir / "all.log", "w")
        print(f"{name}: {' '.join(cmd)} > {log_file.name}", flush=True)
        started = time.monotonic()
        procs.append((name, started, subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)))
        if not parallel:
            procs[-1][2].wait()
            walls[name] = time.monotonic() - started
    failed = [name for name, _, proc in procs if proc.wait() != 0]
    if failed:
        print(f"failed: {failed}; see all.log in their folders")
        return False
    for name, started, _ in procs:
        if stage1_only:  # side by side, the wall time runs until both have ended
            wall = walls.get(name, time.monotonic() - started)
            _write_stage1_results(config, overrides + extras[name], folder / ARMS[name], wall)
        _add_plain_scores(config, overrides + extras[name], folder / ARMS[name])
    return True


def _write_stage1_results(config: str, overrides: list[str], run_dir: Path, wall: float) -> None:
    """results.json of a stage-1-only run, in the layout ``ov3d-train all`` writes (no stage-2 cells)."""
    from ov3d_ros.training import pipeline
    from ov3d_ros.training.config import load_config

    cfg = load_config(config, overrides + ["workers=1"])
    _, val = pipeline.resolve_scenes(cfg, progress=False)
    result = pipeline.run_eval(cfg, checkpoint=str(run_dir / "stage1" / "model.pt"), scenes=val, progress=False)
    results = {"timing_seconds": {"total": wall}, "stage1": pipeline.summarise_eval(result),
               "config": {"consistency_weight": cfg["stage1"]["consistency_weight"],
                          "stage1_steps": cfg["stage1"]["steps"]}}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))


def _add_plain_scores(config: str, overrides: list[str], run_dir: Path) -> None:
    """Score both checkpoints of a run again without the superpoint refinement ("plain" rows), into results.json."""
    from ov3d_ros.training import pipeline
    from ov3d_ros.training.config import load_config

    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text())
    cfg = load_config(config, overrides + [f"output_dir={run_dir / 'plain'}", "eval.superpoints=false", "workers=1"])
    _, val = pipeline.resolve_scenes(cfg, progress=False)
    for stage, sub in (("stage1", "stage1"), ("stage1+2", "stage2")):
        if stage not in results:  # a --stage1-only run has no stage-2 checkpoint
            continue
        result = pipeline.run_eval(cfg, checkpoint=str(run_dir / sub / "model.pt"), scenes=val, progress=False)
        results[f"{stage} plain"] = {"miou": result["miou"], "macc": result["macc"],
                                     "size_miou": result.get("size_miou", {})}
    results_file.write_text(json.dumps(results, indent=2))


def _report(folder: Path) -> dict:
    """Print one seed's table; returns {arm: results.json}."""
    results = {name: json.loads((folder / sub / "results.json").read_text()) for name, sub in ARMS.items()
               if (folder / sub / "results.json").exists()}
    print(f"\n{'held-out synthetic rooms':<34} {'mIoU':>6} {'mAcc':>6} {'small':>7} {'large':>7}")
    for name, result in results.items():
        print(_row(f"stage 1, {name}", result, "stage1"))
        print(_row(f"stage 1+2, {name}", result, "stage1+2"))
        for stage in ("stage1 plain", "stage1+2 plain"):  # without the superpoint refinement
            if stage in result:
                print(_row(f"{stage.replace('stage1', 'stage 1')}, {name}", result, stage))
    for name, result in results.items():
        t = result["timing_seconds"]
        s1, s12 = result.get("stage1", {}).get("miou"), result.get("stage1+2", {}).get("miou")
        if s12 is None:  # a --stage1-only run
            print(f"{name}: stage 1 only, wall {t['total']:.0f} s")
            continue
        print(f"{name}: stage 2 gain {100 * (s12 - s1):+.1f} mIoU points, stage-2 labelled share "
              f"{100 * (result.get('stage2_labelled_share') or 0):.1f}%, wall {t['total']:.0f} s, "
              f"CPU {t.get('total_cpu', float('nan')):.0f} s ({t.get('torch_threads', '?')} torch threads)")
    if len(results) == 2:
        for stage in ("stage1", "stage1+2"):
            on, off = (results[n].get(stage, {}).get("miou") for n in ARMS)
            if on is not None and off is not None:
                label = stage.replace("stage1", "stage 1")
                print(f"consistency on - off ({label}): {100 * (on - off):+.1f} mIoU points")
    return results


def _summary(per_seed: dict[int, dict]) -> None:
    """Mean and range over seeds of every cell, and of the two effects the issue asks about."""
    def values(fn):
        out = []
        for results in per_seed.values():
            try:
                out.append(100 * fn(results))
            except (KeyError, TypeError):
                pass
        return out

    def line(name, vals):
        if not vals:
            return f"{name:<40} {'n/a':>6}"
        mean = statistics.fmean(vals)
        return (f"{name:<40} {mean:6.1f}   [{min(vals):.1f}, {max(vals):.1f}]   "
                f"({', '.join(f'{v:.1f}' for v in vals)})")

    print(f"\nover {len(per_seed)} seeds {sorted(per_seed)}: mean mIoU   [min, max]   (per seed)")
    for arm, stage in CELLS + [(arm, f"{stage} plain") for arm, stage in CELLS]:
        print(line(f"{stage}, {arm}", values(lambda r, a=arm, s=stage: r[a][s]["miou"])))
    for arm in ARMS:
        print(line(f"stage 2 gain, {arm}",
                   values(lambda r, a=arm: r[a]["stage1+2"]["miou"] - r[a]["stage1"]["miou"])))
    for stage in ("stage1", "stage1+2"):
        diffs = values(lambda r, s=stage: r["consistency on"][s]["miou"] - r["consistency off"][s]["miou"])
        print(line(f"consistency on - off, {stage}", diffs))
        if len(diffs) > 2:  # a spread from two seeds says nothing
            print(_resolution(diffs))


# The paper's gain from inter-frame consistency (mIoU points on ScanNet): the effect the comparison should resolve.
PAPER_EFFECT = 2.3


def _resolution(diffs: list[float]) -> str:
    """How well the seeds pin down the on - off difference, and how many it would take to resolve the paper's gain.

    The arms of one seed share data and initialisation, but training is chaotic: their difference is a fresh draw
    per seed. n = (2.8 sd / effect)^2 paired seeds find an effect of that size with 95% confidence and 80% power.
    """
    n, mean, sd = len(diffs), statistics.fmean(diffs), statistics.stdev(diffs)
    # The normal approximation behind 2.8 is poor below a handful of seeds, and a tiny sd from few seeds is luck.
    needed = max(5, math.ceil((2.8 * sd / PAPER_EFFECT) ** 2))
    return (f"{'':<40} {mean:+.1f} ± {sd / n ** 0.5:.1f} (standard error; sd {sd:.1f} over {n} seeds); "
            f"a {PAPER_EFFECT}-point effect needs ~{needed} seeds")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="training/demo.yaml", help="curriculum recipe (default: the demo)")
    parser.add_argument("--out", default="runs/figures", help="folder for the runs and the shared data")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N",
                        help="training seeds to repeat the pair over (default: the recipe's seed, one pair)")
    parser.add_argument("--report-only", action="store_true", help="print the tables from existing results.json")
    parser.add_argument("--parallel", action="store_true", help="run both curricula at once, 1 torch thread each")
    parser.add_argument("--stage1-only", action="store_true",
                        help="train and score stage 1 only (ov3d-train stage1), about half the time of a curriculum")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    folders = {None: out} if args.seeds is None else {s: out / f"seed{s}" for s in args.seeds}
    if not args.report_only:
        for seed, folder in folders.items():
            overrides = list(args.overrides) + ([] if seed is None else [f"seed={seed}"])
            if not _run_pair(args.config, overrides, folder, out / "data", args.parallel, args.stage1_only):
                return 1
    per_seed = {}
    for seed, folder in folders.items():
        if seed is not None:
            print(f"\n== training seed {seed} ({folder})")
        results = _report(folder)
        if seed is not None and len(results) == 2:
            per_seed[seed] = results
    if len(per_seed) > 1:
        _summary(per_seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
