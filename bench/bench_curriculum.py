"""The curriculum's figures: held-out mIoU of stage 1 vs stage 1+2, with inter-frame consistency on vs off.

    python bench/bench_curriculum.py --config training/demo.yaml --out runs/figures        # trains both (~2 x demo)
    python bench/bench_curriculum.py --config training/demo.yaml --out runs/figures --parallel   # both at once
    python bench/bench_curriculum.py --out runs/figures --report-only                       # re-print the table

Runs ``ov3d-train all`` twice on the same synthetic data (consistency_weight = the recipe's value, then 0), each in
its own folder under --out, and prints mIoU / mAcc / small-object mIoU / stage-2 labelled share and the wall and CPU
seconds of each run. Extra ``--set`` overrides apply to both runs. ``--parallel`` prepares the data once, then runs
the two curricula side by side, one torch thread each (a 2-core machine: about the time of one run).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def _row(name: str, result: dict, stage: str) -> str:
    r = result.get(stage)
    if not r:
        return f"{name:<28} {'n/a':>6}"
    size = r.get("size_miou", {})
    return (f"{name:<28} {100 * r['miou']:6.1f} {100 * r['macc']:6.1f} "
            f"{100 * size.get('small', float('nan')):7.1f} {100 * size.get('large', float('nan')):7.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="training/demo.yaml", help="curriculum recipe (default: the demo)")
    parser.add_argument("--out", default="runs/figures", help="folder for the two runs and the shared data")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--report-only", action="store_true", help="print the table from existing results.json")
    parser.add_argument("--parallel", action="store_true", help="run both curricula at once, 1 torch thread each")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    runs = {"consistency on": out / "cons_on", "consistency off": out / "cons_off"}
    if not args.report_only:
        from ov3d_ros.training import pipeline
        from ov3d_ros.training.config import load_config

        extras = {}
        for name, folder in runs.items():
            extras[name] = [f"output_dir={folder}", f"data.root={out / 'data'}"]
            if name == "consistency off":
                extras[name].append("stage1.consistency_weight=0")
        if args.parallel:
            import subprocess
            import sys

            pipeline.resolve_scenes(load_config(args.config, args.overrides + extras["consistency on"]))
            procs = []
            for name, extra in extras.items():
                Path(runs[name]).mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "-m", "ov3d_ros.training.cli", "all", "--no-progress", "--config", args.config,
                       "--set", *args.overrides, *extra, "threads=1"]
                log_file = open(Path(runs[name]) / "all.log", "w")
                print(f"{name}: {' '.join(cmd)} > {log_file.name}", flush=True)
                procs.append((name, subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)))
            failed = [name for name, proc in procs if proc.wait() != 0]
            if failed:
                print(f"failed: {failed}; see all.log in their folders")
                return 1
        else:
            for name, extra in extras.items():
                pipeline.run_all(load_config(args.config, args.overrides + extra), progress=False)
    results = {name: json.loads((folder / "results.json").read_text()) for name, folder in runs.items()
               if (folder / "results.json").exists()}
    print(f"\n{'held-out synthetic rooms':<28} {'mIoU':>6} {'mAcc':>6} {'small':>7} {'large':>7}")
    for name, result in results.items():
        print(_row(f"stage 1, {name}", result, "stage1"))
        print(_row(f"stage 1+2, {name}", result, "stage1+2"))
    for name, result in results.items():
        t = result["timing_seconds"]
        s1, s12 = result.get("stage1", {}).get("miou"), result.get("stage1+2", {}).get("miou")
        gain = f"{100 * (s12 - s1):+.1f}" if s1 is not None and s12 is not None else "n/a"
        print(f"{name}: stage 2 gain {gain} mIoU points, stage-2 labelled share "
              f"{100 * (result.get('stage2_labelled_share') or 0):.1f}%, wall {t['total']:.0f} s, "
              f"CPU {t.get('total_cpu', float('nan')):.0f} s ({t.get('torch_threads', '?')} torch threads)")
    if len(results) == 2:
        on, off = (results[n].get("stage1+2", {}).get("miou") for n in runs)
        if on is not None and off is not None:
            print(f"consistency on - off (stage 1+2): {100 * (on - off):+.1f} mIoU points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
