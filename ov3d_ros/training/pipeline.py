"""The curriculum as callable steps (what `ov3d-train` runs): prepare data, stage 1, stage 2, eval, all.

Output layout under ``output_dir``::

    data/train/<scene>/, data/val/<scene>/   synthetic scenes in the ScanNet layout (+ pseudo_labels/ for train)
    stage1/  config.yaml state.pt model.pt tb/
    stage2/  config.yaml state.pt model.pt tb/ pseudo_labels.json
    eval/    <checkpoint-name>.json           metrics
    results.json                               `all`: stage 1 vs stage 1+2 figures
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data.class_tables import class_table, read_category_ids
from ..data.pseudo_labels import write_synthetic_pseudo_labels
from ..labelling.vocabulary import resolve_names
from ..data.scannet import write_scannet_scene
from ..data.synthetic import CLASS_NAMES, SyntheticRoom, ViewVariation, labelled_reconstruction, render_sequence
from ..superpoints import SuperpointConfig
from . import distributed
from .common import TrainingContext
from .config import save_resolved_config
from .datasets import load_labelled_scene, load_training_scenes
from .evaluate import evaluate_scenes, segmenter_predictor
from .stage1 import train_stage1
from .stage2 import train_stage2

log = logging.getLogger("ov3d.train")


def _setup(cfg: dict) -> distributed.World:
    """Join the other workers (when the environment names some) and set this process's torch threads: the
    ``threads`` of the run shared out over the workers on this machine (0 = all cores)."""
    world = distributed.init_from_env(cfg["device"])
    threads = int(cfg.get("threads", 0))
    local_workers = distributed.local_workers()
    if threads > 0 or local_workers > 1:
        total = threads if threads > 0 else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, total // max(1, local_workers)))
    return world


def output_dir(cfg: dict) -> Path:
    return Path(cfg["output_dir"])


# -- data -----------------------------------------------------------------------------------------------------------
def _synthetic_root(cfg: dict) -> Path:
    return Path(cfg["data"]["root"]) if cfg["data"]["root"] else output_dir(cfg) / "data"


def prepare_synthetic(cfg: dict, *, progress: bool = True) -> tuple[list[str], list[str]]:
    """Generate the synthetic train scenes (with noisy pseudo labels) and held-out val scenes (GT only).

    Scenes are written once per setting: a scene folder whose stamp matches the settings is reused.
    """

    syn = cfg["data"]["synthetic"]
    root = _synthetic_root(cfg)
    train_seeds, val_seeds = list(syn["train_seeds"]), list(syn["val_seeds"])
    if set(train_seeds) & set(val_seeds):
        raise ValueError(f"synthetic train and val seeds overlap: {sorted(set(train_seeds) & set(val_seeds))}; "
                         "held-out scenes must never be trained on")
    variation = ViewVariation(**{k: float(v) for k, v in syn["view_variation"].items()})
    jobs = [("train", s) for s in train_seeds] + [("val", s) for s in val_seeds]
    world = _setup(cfg)
    out = {split: [str(root / split / f"synthetic_{seed:05d}") for s2, seed in jobs if s2 == split]
           for split in ("train", "val")}
    items = [jobs[i] for i in world.share(len(jobs))]  # several workers render different rooms
    if progress and world.main:
        from tqdm import tqdm
        items = tqdm(items, desc="prepare synthetic scenes", dynamic_ncols=True)
    for split, seed in items:
        scene_dir = root / split / f"synthetic_{seed:05d}"
        spec = {k: syn[k] for k in ("n_frames", "width", "height", "noise", "gt_spacing", "appearance", "ground_truth",
                                    "view_variation")}
        spec.update(seed=seed, split=split, label_noise=syn["label_noise"] if split == "train" else None)
        stamp = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        stamp_file = scene_dir / ".ov3d_prepared"
        if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
            continue
        room = SyntheticRoom.generate(seed, appearance=syn["appearance"])
        frames = render_sequence(room, n_frames=int(syn["n_frames"]), width=int(syn["width"]),
                                 height=int(syn["height"]), noise=bool(syn["noise"]), seed=seed,
                                 variation=variation)
        gt = synthetic_ground_truth(room, syn)
        write_scannet_scene(str(scene_dir), [f.frame for f in frames], ground_truth=gt,
                            class_names=list(CLASS_NAMES))
        if split == "train":
            write_synthetic_pseudo_labels(str(scene_dir), frames, list(CLASS_NAMES), seed=seed,
                                          **syn["label_noise"])
        stamp_file.write_text(stamp)
    distributed.barrier()  # every worker's rooms are written before anyone reads them
    log.info("synthetic data under %s: %d train, %d val scenes", root, len(out["train"]), len(out["val"]))
    return out["train"], out["val"]


def synthetic_ground_truth(room, syn: dict):
    """The labelled cloud a synthetic scene is scored on (``data.synthetic.ground_truth``).

    "reconstruction" (default): the camera loop re-rendered without sensor noise and fused with its per-pixel
    ground truth, like a benchmark's labelled scan: observed surfaces, shaded colours. "surfaces": every exposed
    surface of the room sampled on a grid, with unshaded colours, including faces the camera never sees.
    """

    spacing = float(syn["gt_spacing"])
    if syn["ground_truth"] == "surfaces":
        return room.ground_truth_cloud(spacing=spacing)
    if syn["ground_truth"] != "reconstruction":
        raise ValueError(f"data.synthetic.ground_truth must be 'reconstruction' or 'surfaces', "
                         f"got {syn['ground_truth']!r}")
    clean = render_sequence(room, n_frames=int(syn["n_frames"]), width=int(syn["width"]), height=int(syn["height"]),
                            noise=False, seed=room.seed)
    return labelled_reconstruction(clean, spacing, stride=2)


def resolve_scenes(cfg: dict, *, progress: bool = True) -> tuple[list[str], list[str]]:
    """(train, val) scene paths: from the recipe, from ScanNet's split files (data.scannet), or generated for
    data.kind=synthetic."""
    kind = cfg["data"]["kind"]
    if kind == "synthetic":
        if cfg["data"]["train"] or cfg["data"]["val"]:
            return list(cfg["data"]["train"]), list(cfg["data"]["val"])
        return prepare_synthetic(cfg, progress=progress)
    if kind not in ("scannet", "rosbag"):
        raise ValueError(f"data.kind must be 'synthetic', 'scannet' or 'rosbag', got {kind!r}")
    split = cfg["data"]["scannet"]
    train, val = list(cfg["data"]["train"]), list(cfg["data"]["val"])
    if kind == "scannet":
        train = train or split_scenes(split["root"], split["train_split"], "train")
        val = val or split_scenes(split["root"], split["val_split"], "val")
    return train, val


def split_scenes(root, split_file, which: str) -> list[str]:
    """The scene folders that a ScanNet split file (scannetv2_train.txt: one scene name a line) names under
    ``root``; [] when no split file is set. A named scene missing under root is an error naming it."""
    if not split_file:
        return []
    if not root:
        raise ValueError(f"data.scannet.{which}_split is set but data.scannet.root (the folder of the scenes) is not")
    split_file, root = Path(split_file).expanduser(), Path(root).expanduser()
    try:
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise FileNotFoundError(f"ScanNet split file {split_file}: {exc.strerror}") from None
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(names)} scenes of {split_file} are not under {root}: "
                                + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return [str(root / n) for n in names]


def load_train_data(cfg: dict, train_paths: list[str], *, progress: bool = True, vocabulary=None):
    """The training scenes; ``vocabulary`` (texts) is given to scenes without pseudo labels (stage 2 only)."""
    s1 = cfg["stage1"]
    return load_training_scenes(train_paths, cfg["data"], pair_max_gap=int(s1["pair_max_gap"]),
                                min_pair_matches=int(s1["min_pair_matches"]), match_voxel=float(s1["match_voxel"]),
                                progress=progress, vocabulary=vocabulary)


def stage2_vocabulary(cfg: dict) -> list[str] | None:
    """``stage2.vocabulary`` as texts: a list, a names file, or a built-in class table's names; None when unset."""
    spec = cfg["stage2"]["vocabulary"]
    if spec is None or spec == []:
        return None
    try:
        return resolve_names(spec)
    except (FileNotFoundError, TypeError) as exc:
        raise ValueError(f"stage2.vocabulary: {exc}") from None


# -- stages ---------------------------------------------------------------------------------------------------------
def run_stage1(cfg: dict, *, scenes=None, vocabulary=None, resume: bool = True, progress: bool = True,
               stop_after_step: int | None = None, text_encoder=None) -> dict:

    world = _setup(cfg)
    torch.manual_seed(int(cfg["seed"]))
    np.random.seed(int(cfg["seed"]) % 2 ** 32)
    if scenes is None:
        train_paths, _ = resolve_scenes(cfg, progress=progress)
        scenes, vocabulary = load_train_data(cfg, train_paths, progress=progress)
    out = output_dir(cfg) / "stage1"
    if world.main:
        save_resolved_config(cfg, out)
    ctx = TrainingContext(cfg, text_encoder=text_encoder)  # after seeding: the initial weights are reproducible
    t0 = time.monotonic()
    result = train_stage1(ctx, scenes, vocabulary, cfg, out, stop_after_step=stop_after_step, resume=resume,
                          show_progress=progress)
    result["wall_seconds"] = time.monotonic() - t0
    result["checkpoint"] = str(out / "model.pt")
    log.info("stage 1 done: %s", _fmt(result))
    return result


def run_stage2(cfg: dict, *, scenes=None, vocabulary=None, resume: bool = True, progress: bool = True,
               stop_after_step: int | None = None, text_encoder=None) -> dict:

    world = _setup(cfg)
    torch.manual_seed(int(cfg["seed"]) + 1)
    init = cfg["stage2"]["init"] or str(output_dir(cfg) / "stage1" / "model.pt")
    if not Path(init).exists():
        raise FileNotFoundError(f"stage 2 starts from a stage-1 checkpoint, but {init} does not exist; run "
                                "`ov3d-train stage1` first or set stage2.init")
    if scenes is None:
        train_paths, _ = resolve_scenes(cfg, progress=progress)
        scenes, vocabulary = load_train_data(cfg, train_paths, progress=progress,
                                             vocabulary=stage2_vocabulary(cfg))
    out = output_dir(cfg) / "stage2"
    if world.main:
        save_resolved_config(cfg, out)
    ctx = TrainingContext.from_checkpoint(cfg, init, text_encoder=text_encoder)
    t0 = time.monotonic()
    result = train_stage2(ctx, scenes, vocabulary, cfg, out, stop_after_step=stop_after_step, resume=resume,
                          show_progress=progress)
    result["wall_seconds"] = time.monotonic() - t0
    result["checkpoint"] = str(out / "model.pt")
    log.info("stage 2 done: %s", _fmt(result))
    return result


def default_checkpoint(cfg: dict) -> str:
    if cfg["eval"]["checkpoint"]:
        return cfg["eval"]["checkpoint"]
    for stage in ("stage2", "stage1"):
        path = output_dir(cfg) / stage / "model.pt"
        if path.exists():
            return str(path)
    raise FileNotFoundError(f"no checkpoint to evaluate under {output_dir(cfg)}; set eval.checkpoint")


def run_eval(cfg: dict, *, checkpoint: str | None = None, scenes: list[str] | None = None,
             progress: bool = True, text_encoder=None) -> dict:
    """Evaluate a shared-format checkpoint on labelled scenes; writes output_dir/eval/<name>.json."""

    world = _setup(cfg)
    checkpoint = checkpoint or default_checkpoint(cfg)
    if scenes is None:
        _, scenes = resolve_scenes(cfg, progress=progress)
    if not scenes:
        raise ValueError("no labelled scenes to evaluate (data.val is empty)")
    table, category_ids = eval_class_table(cfg["eval"])
    eval_cfg = dict(cfg["eval"], classes=cfg["eval"]["classes"] or (list(table.names) if table else []))
    labelled = [load_labelled_scene(scenes[i], table, category_ids) for i in world.share(len(scenes))]
    predict = _predictor_for(cfg, checkpoint, text_encoder)
    if world.size == 1:
        report = evaluate_scenes(predict, labelled, eval_cfg, progress=progress)
    else:  # each worker scores its share of the scenes; the metrics are summed
        names = distributed.all_gather_objects({i: s.class_names for i, s in zip(world.share(len(scenes)), labelled)})
        scene_classes = [n for _, n in sorted((i, n) for part in names for i, n in part.items())]
        report = evaluate_scenes(predict, labelled, eval_cfg, progress=progress and world.main,
                                 scene_classes=scene_classes)
    log.info("evaluation of %s on %d scenes:\n%s", checkpoint, len(scenes), report.format_table())
    result = report.as_dict()
    result["checkpoint"] = str(checkpoint)
    result["scenes"] = [str(s) for s in scenes]
    if world.main:
        out = output_dir(cfg) / "eval"
        out.mkdir(parents=True, exist_ok=True)
        name = Path(checkpoint).parent.name + "_" + Path(checkpoint).stem
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result


def eval_class_table(eval_cfg: dict):
    """(ClassTable or None, raw category -> label id or None) of ``eval.class_table`` and ``eval.label_map``."""
    if not eval_cfg["class_table"]:
        if eval_cfg["label_map"]:
            raise ValueError("eval.label_map needs eval.class_table: the table of the ids it maps to")
        return None, None
    table = class_table(eval_cfg["class_table"])
    if not eval_cfg["label_map"]:
        return table, None
    column = "nyu40id" if table.source in ("nyu40", "scannet20") else "id"
    return table, read_category_ids(eval_cfg["label_map"], column)


def _predictor_for(cfg: dict, checkpoint: str, text_encoder=None):
    """The deployed Segmenter path with the recipe's prompt, passes and superpoints."""


    superpoints = SuperpointConfig(**cfg["superpoints"]) if cfg["eval"]["superpoints"] else None
    return segmenter_predictor(checkpoint, device=cfg["device"], prompt=cfg["eval"]["prompt"],
                               text_encoder=text_encoder, passes=int(cfg["eval"]["passes"]),
                               superpoints=superpoints)


def run_all(cfg: dict, *, resume: bool = True, progress: bool = True) -> dict:
    """Data prep (synthetic) + stage 1 + stage 2 + eval of both checkpoints; writes output_dir/results.json."""
    t0 = time.monotonic()
    cpu0 = time.process_time()
    world = _setup(cfg)
    train_paths, val_paths = resolve_scenes(cfg, progress=progress)
    t_data = time.monotonic()
    scenes, vocabulary = load_train_data(cfg, train_paths, progress=progress)
    t_load = time.monotonic()
    s1 = run_stage1(cfg, scenes=scenes, vocabulary=vocabulary, resume=resume, progress=progress)
    s2 = run_stage2(cfg, scenes=scenes, vocabulary=vocabulary, resume=resume, progress=progress)
    results = {"timing_seconds": {"prepare": t_data - t0, "load": t_load - t_data,
                                  "stage1": s1["wall_seconds"], "stage2": s2["wall_seconds"]},
               "stage2_labelled_share": s2.get("labelled_share")}
    t_eval = time.monotonic()
    if val_paths:
        for key, run in (("stage1", s1), ("stage1+2", s2)):
            results[key] = summarise_eval(run_eval(cfg, checkpoint=run["checkpoint"], scenes=val_paths,
                                                   progress=progress))
    results["timing_seconds"]["eval"] = time.monotonic() - t_eval
    results["timing_seconds"]["total"] = time.monotonic() - t0
    # CPU seconds of this process (all threads): on a shared machine, a bound on the run's wall time alone.
    results["timing_seconds"]["total_cpu"] = time.process_time() - cpu0
    results["timing_seconds"]["torch_threads"] = torch.get_num_threads()
    results["timing_seconds"]["workers"] = world.size
    results["config"] = {"consistency_weight": cfg["stage1"]["consistency_weight"],
                         "contrastive_weight": [cfg["stage1"]["contrastive_weight"],
                                                cfg["stage2"]["contrastive_weight"]],
                         "stage1_steps": cfg["stage1"]["steps"], "stage2_steps": cfg["stage2"]["steps"]}
    if world.main:
        out = output_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        save_resolved_config(cfg, out)
    log.info("curriculum done in %.0f s: %s", results["timing_seconds"]["total"],
             {k: results[k]["miou"] for k in ("stage1", "stage1+2") if k in results})
    return results


def summarise_eval(result: dict) -> dict:
    """The figures of a run_eval result that results.json keeps (no confusion matrix)."""
    keys = ("miou", "macc", "overall_acc", "per_class_iou", "size_miou", "base_miou", "novel_miou", "hiou")
    return {k: result[k] for k in keys if k in result}


def _fmt(result: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
