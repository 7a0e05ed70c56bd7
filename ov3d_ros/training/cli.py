"""`ov3d-train`: the PGOV3D curriculum from YAML recipes (training/*.yaml) with `--set key.sub=value` overrides.

    ov3d-train all    --config training/demo.yaml            # synthetic data + stage 1 + stage 2 + eval
    ov3d-train stage1 --config training/stage1.yaml --set stage1.steps=500
    ov3d-train stage2 --config training/stage2.yaml
    ov3d-train eval   --config training/eval.yaml --checkpoint runs/demo/stage2/model.pt
    ov3d-train eval   --checkpoint model.pt --scenes scans/* --classes labels.tsv   # your own class table
    ov3d-train prepare --config training/synthetic_data.yaml
    ov3d-train label  ...                                    # 2D pseudo labels (ov3d_ros.labelling)

Runs resume from their last checkpoint when the same command is run again (``--restart`` starts over).
``--set workers=N`` trains with N processes on this machine (data parallel; see training/distributed.py), and
``torchrun --nproc_per_node N -m ov3d_ros.training.cli ...`` works as well (N GPUs, say).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from ..labelling.cli import add_label_parser
from ..model.backend import resolve_device
from . import pipeline
from .config import ConfigError, load_config
from .distributed import INTERRUPTED_EXIT, env_world_size, run_workers, shutdown, workers_for_device, world
from .loop import TrainingInterrupted

log = logging.getLogger("ov3d.train")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="RECIPE.yaml",
                   help="YAML recipe (see training/); keys not in it keep their defaults")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override recipe keys, dotted, values parsed as YAML: --set stage1.steps=500 "
                        "stage1.consistency_weight=0 'eval.classes=[chair, table]'")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable frame instead of skipping it (data.strict=true)")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true",
                   help="ignore an existing state.pt in the output folder and train from scratch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ov3d-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help="generate synthetic scenes (ScanNet layout + noisy pseudo labels)")
    _add_common(p)
    p = sub.add_parser("stage1", help="stage 1: partial clouds + pixel pseudo labels, inter-frame consistency")
    _add_common(p)
    _add_train(p)
    p = sub.add_parser("stage2", help="stage 2: pseudo-label global clouds by repeated grid sampling, fine-tune")
    _add_common(p)
    _add_train(p)
    p = sub.add_parser("eval", help="open-vocabulary evaluation on labelled scenes (mIoU, mAcc, hIoU, by size)")
    _add_common(p)
    p.add_argument("--checkpoint", help="shared-format checkpoint (default: eval.checkpoint, else the run's "
                                        "stage2 then stage1 model.pt)")
    p.add_argument("--scenes", nargs="+", help="labelled scene folders or labels PLYs (default: data.val)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--classes", metavar="TABLE",
                   help="what the scenes' stored labels mean (eval.class_table): a built-in table (nyu40, scannet20, "
                        "scannet200), a labels.tsv (value<TAB>name a line) or a JSON list of names; labels it does not "
                        "list are refused. Default: each scene's classes.json, else ScanNet's NYU40 ids")
    p.add_argument("--label-map", metavar="TSV",
                   help="ScanNet's scannetv2-labels.combined.tsv: score the labels of the scenes' object annotations "
                        "through it (eval.label_map; ScanNet200 is scored this way)")
    p = sub.add_parser("all", help="prepare (synthetic) + stage1 + stage2 + eval of both; writes results.json")
    _add_common(p)
    _add_train(p)
    _mount_label_parser(sub)
    return parser


def _mount_label_parser(sub) -> None:
    """``ov3d-train label``: the 2D labeller's parser (its heavy imports wait until the command runs)."""

    add_label_parser(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    level = logging.WARNING if int(os.environ.get("RANK") or 0) > 0 else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "label":
        func = getattr(args, "func", None) or getattr(args, "handler", None)
        if func is None:
            parser.error("the labelling parser registered no handler (set_defaults(func=...))")
        return int(func(args) or 0)


    try:
        cfg = load_config(args.config, args.overrides + (["data.strict=true"] if args.strict else []))
    except (ConfigError, FileNotFoundError) as exc:
        parser.error(str(exc))
    for option, key in (("classes", "class_table"), ("label_map", "label_map")):
        if getattr(args, option, None):
            cfg["eval"][key] = getattr(args, option)
    progress = not args.no_progress
    resume = not getattr(args, "restart", False)
    if int(cfg["workers"]) > 1 and env_world_size() <= 1:
        n = _local_workers(cfg, parser)
        if n > 1:
            return run_workers(n, _worker_main, (argv,))
    code = 1
    try:
        code = _run(args, cfg, parser, progress, resume)
    finally:
        shutdown(finished=code == 0)
    return code


def _worker_main(rank: int, argv: list[str]) -> int:
    """One of the ``workers: N`` processes: the same command, progress bars on worker 0 only."""
    return main(argv if rank == 0 else argv + ["--no-progress"])


def _local_workers(cfg: dict, parser) -> int:
    try:
        device = resolve_device(cfg["device"])
    except ValueError as exc:
        parser.error(str(exc))
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    return workers_for_device(int(cfg["workers"]), device.type, gpus)


def _run(args, cfg: dict, parser, progress: bool, resume: bool) -> int:
    try:
        if args.command == "prepare":
            if cfg["data"]["kind"] != "synthetic":
                parser.error("prepare generates synthetic scenes: set data.kind=synthetic")
            train, val = pipeline.prepare_synthetic(cfg, progress=progress)
            if world().main:
                print(json.dumps({"train": train, "val": val}, indent=2))
        elif args.command == "stage1":
            pipeline.run_stage1(cfg, resume=resume, progress=progress)
        elif args.command == "stage2":
            pipeline.run_stage2(cfg, resume=resume, progress=progress)
        elif args.command == "eval":
            result = pipeline.run_eval(cfg, checkpoint=args.checkpoint, scenes=args.scenes, progress=progress)
            if args.json and world().main:
                print(json.dumps(result, indent=2))
        elif args.command == "all":
            result = pipeline.run_all(cfg, resume=resume, progress=progress)
            if world().main:
                print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    except TrainingInterrupted as exc:
        log.warning("%s", exc)
        return INTERRUPTED_EXIT
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
