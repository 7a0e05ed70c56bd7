#!/usr/bin/env python3
"""Stage-2 pseudo labels against the ground truth, per class, on the training scenes' fused global clouds.

    .venv/bin/python bench/bench_pseudo_labels.py --checkpoint runs/figures/seed1/cons_on/stage1/model.pt \
        --set data.root=runs/figures/data seed=1
    .venv/bin/python bench/bench_pseudo_labels.py --checkpoint STAGE1.pt --model STAGE2.pt --set ...   # side by side

Labels every training scene of --config with the stage-1 --checkpoint, exactly as `ov3d-train stage2` does (same
seed, so the same passes). Each fused point then takes the ground-truth class of the nearest labelled point within
--radius. It prints, per class, the share of the class's points that got a pseudo label, the IoU of the pseudo
labels over the labelled points only, and the share of labelled points that are right. With --model it also prints
the IoU of that model's plain argmax on every point (no superpoints), for a model trained on those labels. This
shows how far a model is from its own labels. The training scenes need ground truth: the synthetic rooms have it,
and so do ScanNet-layout scenes with a labelled mesh.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the stage-1 checkpoint that labels the scenes")
    parser.add_argument("--model", default=None, help="optional stage-2 checkpoint to score on the same points")
    parser.add_argument("--config", default="training/demo.yaml", help="recipe giving the scenes and stage2 settings")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--radius", type=float, default=0.05, help="metres to the nearest ground-truth point")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from scipy.spatial import cKDTree

    from ov3d_ros.training import pipeline
    from ov3d_ros.training.common import TrainingContext
    from ov3d_ros.training.config import load_config
    from ov3d_ros.training.datasets import load_labelled_scene
    from ov3d_ros.training.evaluate import map_ground_truth
    from ov3d_ros.training.metrics import confusion_matrix, iou_from_confusion
    from ov3d_ros.training.stage2 import build_global_scenes, scene_logits

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides + ["workers=1"])
    train, _ = pipeline.resolve_scenes(cfg, progress=False)
    scenes, vocabulary = pipeline.load_train_data(cfg, train, progress=False)
    ctx = TrainingContext.from_checkpoint(cfg, args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        labelled = build_global_scenes(ctx, scenes, vocabulary, cfg, Path(tmp))
    model = TrainingContext.from_checkpoint(cfg, args.model, text_encoder=ctx.text_encoder) if args.model else None
    if model is not None:
        model.model.eval()
    text = ctx.embed(vocabulary)
    n = len(vocabulary)
    labels = np.zeros((n, n + 1), dtype=np.int64)  # ground truth x pseudo label, labelled points only
    predicted = np.zeros((n, n + 1), dtype=np.int64)  # ground truth x the --model's argmax, every matched point
    points = np.zeros(n, dtype=np.int64)
    for scene, g in zip(scenes, labelled):
        try:
            truth = load_labelled_scene(scene.path)
        except (FileNotFoundError, ValueError) as err:
            print(f"{scene.name}: no ground truth ({err}); left out")
            continue
        gt = map_ground_truth(np.asarray(truth.cloud.label), truth.class_names, vocabulary)
        dist, nearest = cKDTree(truth.cloud.xyz).query(g.xyz)
        target = np.where(dist <= args.radius, gt[nearest], -1)
        matched = target >= 0
        np.add.at(points, target[matched], 1)
        both = matched & (g.label >= 0)
        labels += confusion_matrix(target[both], g.label[both].astype(np.int64), n)
        if model is not None:
            with torch.no_grad():
                pred = scene_logits(model, g.xyz, g.rgb, text, np.arange(len(g.xyz))).argmax(1).cpu().numpy()
            predicted += confusion_matrix(target[matched], pred[matched].astype(np.int64), n)
    label_iou = iou_from_confusion(labels)  # NaN for a class with no labelled point
    model_iou = iou_from_confusion(predicted) if model is not None else None
    head = f"{'class':<12} {'points':>9} {'labelled':>9} {'label IoU':>10} {'right':>7}"
    print(head + (f" {'model IoU':>10}" if model is not None else ""))
    present = points > 0
    for c in np.flatnonzero(present):
        row = (f"{vocabulary[c]:<12} {points[c]:9d} {100 * labels[c].sum() / points[c]:8.1f}% "
               f"{100 * label_iou[c]:10.1f} {100 * labels[c, c] / max(labels[c].sum(), 1):6.1f}%")
        print(row + (f" {100 * model_iou[c]:10.1f}" if model is not None else ""))
    total = labels.sum()
    summary = (f"{'mean':<12} {points.sum():9d} {100 * total / max(points.sum(), 1):8.1f}% "
               f"{100 * np.nanmean(label_iou[present]):10.1f} {100 * np.trace(labels) / max(total, 1):6.1f}%")
    print(summary + (f" {100 * np.nanmean(model_iou[present]):10.1f}" if model is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
