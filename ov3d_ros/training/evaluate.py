"""Open-vocabulary evaluation: labelled global clouds, a class list used as text queries, mIoU / mAcc / per-class IoU,
base/novel hIoU, IoU by object size, and instance AP25/AP50 where the scenes carry instance ground truth (the
predicted labels split into instances as the segmenter node splits them).

The model never sees ground-truth class ids: every class is a text query ("{prompt}".format(name)); a point's
prediction is the query with the highest cosine similarity. Ground-truth classes are matched to queries by name;
ground-truth classes outside the query list (or in ``eval.ignore_classes``) are not evaluated.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..instances import cluster_grid, extract_instances
from ..segmenter import Segmenter
from . import distributed
from .datasets import LabelledScene
from .metrics import InstanceAP, SegmentationMetrics, SegmentationReport

log = logging.getLogger("ov3d.train")

# predict(xyz (N,3) float32, rgb (N,3) uint8, queries list[str]) -> (N,) int index into queries, or that and (N,)
# scores (what ranks the predicted instances; without them every instance scores 1)
Predictor = Callable[[np.ndarray, np.ndarray, list[str]], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def map_ground_truth(label: np.ndarray, scene_classes: list[str], classes: list[str],
                     ignore: list[str] | tuple = ()) -> np.ndarray:
    """Scene GT indices (into scene_classes) -> indices into ``classes``; -1 where not evaluated."""
    if len(label) and label.max() >= len(scene_classes):
        raise ValueError(f"ground truth holds class {label.max()} but the scene lists {len(scene_classes)} classes")
    index = {name: i for i, name in enumerate(classes)}
    lut = np.array([(-1 if (n in ignore or n not in index) else index[n]) for n in scene_classes] + [-1],
                   dtype=np.int32)
    return lut[np.where(label >= 0, label, len(scene_classes))]


def segmenter_predictor(checkpoint: str, device: str = "auto", prompt: str = "{}", text_encoder=None,
                        passes: int = 1, superpoints=None) -> Predictor:
    """The deployed path: Segmenter.load(checkpoint) and .label_points - what the nodes run.

    ``text_encoder``: an already built encoder to reuse (it must match the checkpoint's; Segmenter checks the dim).
    ``passes``: the Segmenter's test-time passes (the segmenter node's ``test_time_passes``).
    ``superpoints``: a ``SuperpointConfig`` to average the features over superpoints (the node's ``superpoints``).
    """

    seg = Segmenter.load(checkpoint, device=device, text_encoder=text_encoder, passes=passes,
                         superpoints=superpoints)

    def predict(xyz: np.ndarray, rgb: np.ndarray, queries: list[str]) -> np.ndarray:
        # min_score below any cosine: the protocol assigns every point its best query (no "unknown").
        label, score = seg.label_points(xyz, rgb, [prompt.format(q) for q in queries], min_score=-2.0)
        return np.asarray(label, dtype=np.int32), np.asarray(score, dtype=np.float32)

    return predict


def predicted_instances(xyz: np.ndarray, label: np.ndarray, score: np.ndarray, n_classes: int, *, voxel: float,
                        min_points: int) -> list[tuple[int, float, np.ndarray]]:
    """The object instances of a labelled cloud (``ov3d_ros.instances``) as (class, mean score, point indices)."""
    grid = cluster_grid(xyz, voxel)  # every point a unit of its own
    found = extract_instances(grid, label, score, n_classes, min_points=min_points)
    per_point = np.empty(len(xyz), dtype=np.int64)
    per_point[grid.group_unit] = found.group_instance
    order = np.argsort(per_point, kind="stable")
    bounds = np.searchsorted(per_point[order], np.arange(len(found.instances) + 1))
    return [(inst.query, inst.score_mean, order[bounds[k]:bounds[k + 1]]) for k, inst in enumerate(found.instances)]


def evaluate_scenes(predict: Predictor, scenes: list[LabelledScene], eval_cfg: dict, *,
                    progress: bool = False, scene_classes: list[list[str]] | None = None) -> SegmentationReport:
    """Run ``predict`` on every labelled scene and accumulate the metrics over all of them.

    With several workers, each passes its share of the scenes, plus ``scene_classes`` (the class names of every
    scene of the evaluation, in order, for the default query list); the metrics of all shares are summed.
    """
    if not scenes and scene_classes is None:
        raise ValueError("no labelled scenes to evaluate (data.val is empty)")
    classes = list(eval_cfg.get("classes") or [])
    if not classes:
        # Default query list: the union of the scenes' class names, in first-seen order.
        for names in scene_classes if scene_classes is not None else [s.class_names for s in scenes]:
            classes += [c for c in names if c not in classes]
    ignore = list(eval_cfg.get("ignore_classes") or [])
    classes = [c for c in classes if c not in ignore]
    if not classes:
        raise ValueError("no classes to query: set eval.classes or give scenes with class names")
    metrics = SegmentationMetrics(classes, small_instance_points=int(eval_cfg.get("small_instance_points", 2000)))
    if eval_cfg.get("instances", True):
        metrics.instances = InstanceAP(classes)
    objects = list(eval_cfg.get("instance_classes") or classes)
    unknown = [c for c in objects if c not in classes]
    if unknown:
        raise ValueError(f"eval.instance_classes names classes that are not queried: {unknown}")
    not_objects = [i for i, c in enumerate(classes) if c not in objects or c in eval_cfg.get("instance_ignore", ())]
    items = scenes
    if progress:
        from tqdm import tqdm
        items = tqdm(scenes, desc="eval", leave=False, dynamic_ncols=True)
    for scene in items:
        cloud = scene.cloud
        gt = map_ground_truth(np.asarray(cloud.label), scene.class_names, classes, ignore)
        out = predict(cloud.xyz, cloud.rgb, classes)
        pred, score = (np.asarray(out[0]), np.asarray(out[1])) if isinstance(out, tuple) else (np.asarray(out), None)
        if pred.shape != gt.shape:
            raise ValueError(f"predictor returned {pred.shape} labels for {gt.shape} points")
        metrics.update(gt, pred.astype(np.int64), cloud.instance)
        if metrics.instances is not None and cloud.instance is not None:
            objects = ~np.isin(pred, not_objects)
            metrics.instances.update(np.where(np.isin(gt, not_objects), -1, gt), cloud.instance, predicted_instances(
                cloud.xyz, np.where(objects, pred, -1), np.ones(len(pred)) if score is None else score, len(classes),
                voxel=float(eval_cfg.get("instance_voxel", 0.05)),
                min_points=int(eval_cfg.get("instance_min_points", 30))))
    if scene_classes is not None:  # every worker ends with the sum of all shares

        metrics, *others = distributed.all_gather_objects(metrics)
        for other in others:
            metrics.merge(other)
    return metrics.report(list(eval_cfg.get("base_classes") or []) or None,
                          list(eval_cfg.get("novel_classes") or []) or None)
