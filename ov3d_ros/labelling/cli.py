"""`ov3d-train label`: 2D pseudo labels (vocabulary, SAM masks, CLIP names) for ScanNet-layout scenes.

Mounted by the trainer's CLI as its ``label`` subcommand through :func:`add_label_parser`; also runs on its own as
``python -m ov3d_ros.labelling`` (:func:`label_main`).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from ..data.scenes import find_scenes
from .config import load_label_config
from .pipeline import PseudoLabeller, label_scene

log = logging.getLogger("ov3d_ros.labelling")

DESCRIPTION = """\
Pseudo-label the RGB frames of ScanNet-layout scenes, as stage 1 of the curriculum reads them:
per frame, a vocabulary (fixed list, a multimodal LLM, or both), SAM automatic masks, Segment3D part removal,
a minimum area, one mask per pixel, and a CLIP name per mask (masks with a low or ambiguous similarity stay
unlabelled). Writes SCENE/pseudo_labels/{labels/<frame_id>.png, entities.json, vocabulary.txt, summary.json}.
Resumable: frames already labelled are skipped (use --overwrite to relabel)."""

EPILOG = """\
Model weights are local files named in the recipe (see training/label.yaml) or on the command line:
  SAM:  sam.checkpoint = sam_vit_h_4b8939.pth (model_type vit_h; vit_l / vit_b checkpoints need their type)
  CLIP: naming.model = ViT-B-16, naming.pretrained = .../open_clip_pytorch_model.bin
examples:
  ov3d-train label --scene data/scannet/scene0000_00 --config training/label.yaml
  ov3d-train label --scene data/scannet --sam-checkpoint sam_vit_b_01ec64.pth --sam-model-type vit_b \\
      --clip-model ViT-B-32 --clip-pretrained clip_b32.bin --every 10
  ov3d-train label --scene data/scannet --set vocabulary.source=union --set vocabulary.mllm.model=/models/llava"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scene", required=True, metavar="DIR",
                        help="a ScanNet-layout scene folder (or a rosbag2 recording, topics from rosbag.*), or a "
                             "dataset root: every subfolder that is one")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="label recipe (e.g. training/label.yaml); built-in defaults when omitted")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override recipe keys, dotted, values parsed as YAML: --set masks.min_area=200 "
                             "'vocabulary.fixed.extra=[robot, charging dock]'")
    parser.add_argument("--sam-checkpoint", metavar="PTH", help="SAM checkpoint file (sam.checkpoint)")
    parser.add_argument("--sam-model-type", choices=["vit_h", "vit_l", "vit_b", "custom"],
                        help="SAM size the checkpoint holds (sam.model_type)")
    parser.add_argument("--clip-model", metavar="NAME", help="open_clip model name (naming.model)")
    parser.add_argument("--clip-pretrained", metavar="PATH", help="CLIP checkpoint file or tag (naming.pretrained)")
    parser.add_argument("--vocabulary", choices=["fixed", "mllm", "union"], help="vocabulary.source")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (device)")
    parser.add_argument("--every", type=int, metavar="N", help="label every N-th frame (frames.every)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="at most N frames per scene (frames.max_frames)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="frames per batch (frames.batch_size)")
    parser.add_argument("--overwrite", action="store_true", help="relabel frames that already have labels")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable frame instead of skipping it (frames.strict)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run without checkpoints (random SAM/CLIP): for timing and plumbing checks only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    # SUPPRESS: mounted under ov3d-train, an unset flag here must not reset the top-level `ov3d-train -v`.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and a traceback on errors")


def add_label_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``label`` subcommand to an argparse ``subparsers`` object; its ``func`` default runs it."""
    parser = subparsers.add_parser("label", help="2D pseudo labels: vocabulary, SAM masks, CLIP mask names",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=run_label)
    return parser


def build_parser(prog: str = "ov3d-train label") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> dict:
    """The resolved recipe: defaults, --config, --set, then the dedicated flags (most specific wins)."""

    overrides = list(args.overrides or [])
    flags = {"sam.checkpoint": args.sam_checkpoint, "sam.model_type": args.sam_model_type,
             "naming.model": args.clip_model, "naming.pretrained": args.clip_pretrained,
             "vocabulary.source": args.vocabulary, "device": args.device, "frames.every": args.every,
             "frames.max_frames": args.max_frames, "frames.batch_size": args.batch_size,
             "frames.strict": True if args.strict else None}
    config = load_label_config(args.config, overrides)
    for dotted, value in flags.items():
        if value is not None:
            node = config
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
    if args.allow_random_weights:
        config["allow_random_weights"] = True
    return config


def run_label(args: argparse.Namespace) -> int:
    """Run the subcommand from parsed arguments; returns the process exit code (2: bad input or configuration)."""
    verbose = getattr(args, "verbose", False)
    if verbose:
        logging.getLogger("ov3d_ros").setLevel(logging.DEBUG)
    try:
        return _run(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, ImportError) as exc:
        # Input and configuration errors: one clear line, no traceback (use -v for one).
        if verbose:
            raise
        log.error("%s", exc)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch


    config = config_from_args(args)
    if config["threads"] > 0:
        torch.set_num_threads(int(config["threads"]))
    scenes = find_scenes(args.scene)  # before loading models: a wrong path fails in a second
    log.info("%d scene(s) to label under %s", len(scenes), args.scene)
    labeller = PseudoLabeller.from_config(config)
    frames_cfg = config["frames"]
    started = time.perf_counter()
    frames = 0
    for scene_dir in scenes:
        summary = label_scene(scene_dir, labeller, every=frames_cfg["every"], max_frames=frames_cfg["max_frames"],
                              batch_size=frames_cfg["batch_size"], overwrite=args.overwrite,
                              progress=not args.no_progress, rosbag_topics=config["rosbag"], config=config,
                              strict=frames_cfg["strict"])
        t = summary["totals"]
        frames += t["frames"]
        log.info("%s: %d frames, %.1f masks/frame, %.1f named/frame, %.1f%% pixels labelled, vocabulary %d",
                 scene_dir.name, t["frames"], t["masks_per_frame"], t["named_per_frame"],
                 100 * t["labelled_fraction"], t["vocabulary_size"])
    if len(scenes) > 1:
        log.info("all %d scenes: %d labelled frames, %.0f s", len(scenes), frames, time.perf_counter() - started)
    return 0


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")


def label_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ov3d_ros.labelling`` (same options as ``ov3d-train label``)."""
    _setup_logging()
    return run_label(build_parser(prog="python -m ov3d_ros.labelling").parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(label_main())
