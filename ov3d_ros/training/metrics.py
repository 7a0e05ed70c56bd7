"""Segmentation metrics: confusion matrix, mIoU, mAcc, per-class IoU, base/novel hIoU, IoU by object size, and
instance AP at point-IoU thresholds (``InstanceAP``).

Conventions: ground truth and predictions are int class indices into the same class list; -1 in the ground truth
means "not evaluated" (those points are dropped); -1 in a prediction means "no label" and counts as a miss for the
point's ground-truth class (it is never a correct prediction). Classes absent from the ground truth of every scene
get IoU NaN and are left out of the means (a class that cannot be found should not count as 0 or 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C+1) int64 counts: rows = ground truth, columns = prediction, last column = 'no label' (-1)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 1:
        raise ValueError(f"gt and pred must be 1-D of the same length, got {gt.shape} and {pred.shape}")
    if n_classes <= 0:
        raise ValueError(f"n_classes must be positive, got {n_classes}")
    if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise TypeError(f"gt and pred must be integer arrays, got {gt.dtype} and {pred.dtype}")
    if gt.size and (gt.max() >= n_classes or gt.min() < -1):
        raise ValueError(f"gt values must be in [-1, {n_classes - 1}], got [{gt.min()}, {gt.max()}]")
    if pred.size and (pred.max() >= n_classes or pred.min() < -1):
        raise ValueError(f"pred values must be in [-1, {n_classes - 1}], got [{pred.min()}, {pred.max()}]")
    keep = gt >= 0
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    p = np.where(p < 0, n_classes, p)
    flat = np.bincount(g * (n_classes + 1) + p, minlength=n_classes * (n_classes + 1))
    return flat.reshape(n_classes, n_classes + 1)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN for classes with no ground-truth point."""
    c = conf.shape[0]
    tp = np.diag(conf[:, :c]).astype(np.float64)
    gt_count = conf.sum(axis=1).astype(np.float64)
    pred_count = conf[:, :c].sum(axis=0).astype(np.float64)
    union = gt_count + pred_count - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    iou[gt_count == 0] = np.nan
    return iou


def accuracy_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class accuracy (recall) = TP / GT count; NaN for classes with no ground-truth point."""
    c = conf.shape[0]
    tp = np.diag(conf[:, :c]).astype(np.float64)
    gt_count = conf.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = tp / gt_count
    acc[gt_count == 0] = np.nan
    return acc


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def harmonic_mean(a: float, b: float) -> float:
    """hIoU = 2ab / (a + b); 0 when both are 0, NaN when either is NaN."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


@dataclass
class SegmentationReport:
    class_names: list[str]
    iou: np.ndarray  # (C,) NaN = class absent from GT
    acc: np.ndarray
    miou: float
    macc: float
    overall_acc: float
    n_points: int
    base_miou: float | None = None
    novel_miou: float | None = None
    hiou: float | None = None
    size_miou: dict[str, float] = field(default_factory=dict)  # {"small": .., "large": ..}
    size_instances: dict[str, int] = field(default_factory=dict)
    confusion: np.ndarray | None = None  # (C, C+1) rows = ground truth, columns = prediction, last = no label
    instance_ap: dict | None = None  # InstanceAP.report() when the scenes carry instance ground truth

    def as_dict(self) -> dict:
        out = {
            "miou": self.miou, "macc": self.macc, "overall_acc": self.overall_acc, "n_points": self.n_points,
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.class_names, self.iou)},
            "per_class_acc": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.class_names, self.acc)},
        }
        if self.hiou is not None:
            out.update(base_miou=self.base_miou, novel_miou=self.novel_miou, hiou=self.hiou)
        if self.size_miou:
            out["size_miou"] = dict(self.size_miou)
            out["size_instances"] = dict(self.size_instances)
        if self.instance_ap is not None:
            out["instance_ap"] = self.instance_ap
        if self.confusion is not None:
            # Which class each class is mistaken for: rows are ground truth, columns predictions, point counts.
            out["confusion"] = {"columns": self.class_names + ["(no label)"],
                                "rows": {n: [int(v) for v in row] for n, row in zip(self.class_names, self.confusion)}}
        return out

    def _top_mistake(self, c: int) -> str:
        """'<class> <share>%' of class c's ground-truth points most often given another label; '' if none."""
        if self.confusion is None:
            return ""
        row = self.confusion[c].astype(np.float64)
        total = row.sum()
        row[c] = 0.0
        if total == 0 or row.max() == 0:
            return ""
        j = int(row.argmax())
        name = self.class_names[j] if j < len(self.class_names) else "(no label)"
        return f"{name} {100 * row[j] / total:.0f}%"

    def format_table(self) -> str:
        width = max([len(n) for n in self.class_names] + [10])
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}  most often mistaken for"]
        for c, (name, iou, acc) in enumerate(zip(self.class_names, self.iou, self.acc)):
            iou_s = "   n/a" if np.isnan(iou) else f"{100 * iou:6.1f}"
            acc_s = "   n/a" if np.isnan(acc) else f"{100 * acc:6.1f}"
            lines.append(f"{name:<{width}}  {iou_s}  {acc_s}  {self._top_mistake(c)}".rstrip())
        lines.append(f"{'mIoU':<{width}}  {100 * self.miou:6.1f}  mAcc {100 * self.macc:5.1f}  "
                     f"allAcc {100 * self.overall_acc:5.1f}  ({self.n_points} points)")
        if self.hiou is not None:
            lines.append(f"base mIoU {100 * self.base_miou:.1f}  novel mIoU {100 * self.novel_miou:.1f}  "
                         f"hIoU {100 * self.hiou:.1f}")
        for bucket, value in self.size_miou.items():
            lines.append(f"{bucket} objects mIoU {100 * value:.1f} ({self.size_instances.get(bucket, 0)} instances)")
        if self.instance_ap is not None:
            lines.append(f"{'instances':<{width}}  {'AP25':>6}  {'AP50':>6}  ground truth / predicted")
            for name, entry in self.instance_ap["per_class"].items():
                cells = ["   n/a" if entry[k] is None else f"{100 * entry[k]:6.1f}" for k in ("ap25", "ap50")]
                lines.append(f"{name:<{width}}  {cells[0]}  {cells[1]}  {entry['instances']} / {entry['predictions']}")
            means = ["n/a" if self.instance_ap[k] is None else f"{100 * self.instance_ap[k]:.1f}"
                     for k in ("ap25", "ap50")]
            lines.append(f"instance AP25 {means[0]}  AP50 {means[1]}")
        return "\n".join(lines)


class SegmentationMetrics:
    """Accumulates confusion over scenes (and size buckets) and produces a SegmentationReport."""

    def __init__(self, class_names: list[str], *, small_instance_points: int = 2000):
        if not class_names:
            raise ValueError("SegmentationMetrics needs at least one class name")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class names must be unique, got {class_names}")
        self.class_names = list(class_names)
        self.small_instance_points = int(small_instance_points)
        c = len(class_names)
        self.conf = np.zeros((c, c + 1), dtype=np.int64)
        self.size_conf = {"small": np.zeros_like(self.conf), "large": np.zeros_like(self.conf)}
        self.size_instances = {"small": 0, "large": 0}
        self._has_instances = False
        self.instances: InstanceAP | None = None  # set by the caller to score object instances too

    def update(self, gt: np.ndarray, pred: np.ndarray, instance: np.ndarray | None = None) -> None:
        """Add one scene. ``instance`` (N,) int, -1 = none: enables IoU by object size for this scene.

        Size buckets: an instance with fewer than ``small_instance_points`` points is small. A bucket's confusion
        counts only the points of its instances, so a bucket's false positives are confusions among those objects.
        """
        c = len(self.class_names)
        self.conf += confusion_matrix(gt, pred, c)
        if instance is None:
            return
        instance = np.asarray(instance)
        if instance.shape != np.asarray(gt).shape:
            raise ValueError(f"instance must match gt shape {np.asarray(gt).shape}, got {instance.shape}")
        self._has_instances = True
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        valid = (instance >= 0) & (gt >= 0)
        ids, counts = np.unique(instance[valid], return_counts=True)
        small_ids = ids[counts < self.small_instance_points]
        is_small = np.isin(instance, small_ids) & valid
        is_large = valid & ~is_small
        self.size_instances["small"] += int(len(small_ids))
        self.size_instances["large"] += int(len(ids) - len(small_ids))
        self.size_conf["small"] += confusion_matrix(gt[is_small], pred[is_small], c)
        self.size_conf["large"] += confusion_matrix(gt[is_large], pred[is_large], c)

    def merge(self, other: "SegmentationMetrics") -> None:
        """Add the scenes another accumulator counted (same classes), e.g. another worker's share."""
        if other.class_names != self.class_names or other.small_instance_points != self.small_instance_points:
            raise ValueError("can only merge metrics over the same classes and size threshold")
        self.conf += other.conf
        for bucket in self.size_conf:
            self.size_conf[bucket] += other.size_conf[bucket]
            self.size_instances[bucket] += other.size_instances[bucket]
        self._has_instances = self._has_instances or other._has_instances
        if other.instances is not None:
            if self.instances is None:
                self.instances = InstanceAP(self.class_names)
            self.instances.merge(other.instances)

    def report(self, base_classes: list[str] | None = None, novel_classes: list[str] | None = None
               ) -> SegmentationReport:
        iou = iou_from_confusion(self.conf)
        acc = accuracy_from_confusion(self.conf)
        total = self.conf.sum()
        rep = SegmentationReport(
            class_names=self.class_names, iou=iou, acc=acc, miou=_nanmean(iou), macc=_nanmean(acc),
            overall_acc=float(np.trace(self.conf[:, :-1]) / total) if total else float("nan"), n_points=int(total),
            confusion=self.conf.copy())
        if base_classes or novel_classes:
            if not (base_classes and novel_classes):
                raise ValueError("a base/novel split needs both base_classes and novel_classes")
            unknown = [n for n in list(base_classes) + list(novel_classes) if n not in self.class_names]
            if unknown:
                raise ValueError(f"base/novel classes not in the class list: {unknown}")
            overlap = set(base_classes) & set(novel_classes)
            if overlap:
                raise ValueError(f"classes in both base and novel: {sorted(overlap)}")
            index = {n: i for i, n in enumerate(self.class_names)}
            rep.base_miou = _nanmean(iou[[index[n] for n in base_classes]])
            rep.novel_miou = _nanmean(iou[[index[n] for n in novel_classes]])
            rep.hiou = harmonic_mean(rep.base_miou, rep.novel_miou)
        if self._has_instances:
            for bucket, conf in self.size_conf.items():
                rep.size_miou[bucket] = _nanmean(iou_from_confusion(conf))
            rep.size_instances = dict(self.size_instances)
        if self.instances is not None and self.instances.n_truth.sum() > 0:
            rep.instance_ap = self.instances.report()
        return rep


def average_precision(scores: np.ndarray, hits: np.ndarray, n_truth: int) -> float:
    """Area under the precision-recall curve of predictions ranked by ``scores`` (``hits``: whether each matched a
    ground-truth instance), with precision made non-increasing (each recall takes the best precision at or beyond
    it). NaN when there is no ground truth; 0 when there are no predictions."""
    if n_truth == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hit = np.asarray(hits, dtype=np.float64)[order]
    tp = np.cumsum(hit)
    precision = tp / np.arange(1, len(hit) + 1)
    recall = tp / n_truth
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


class InstanceAP:
    """Instance average precision over scenes, ScanNet-style: in each scene the predictions of a class, best score
    first, each take the unmatched ground-truth instance of that class with the highest point IoU, if that IoU
    reaches the threshold (a hit), else count as false positives; AP per class over all scenes' predictions ranked by
    score; the mean over classes with ground truth. Thresholds: IoU 0.25 and 0.5 (AP25, AP50)."""

    THRESHOLDS = (0.25, 0.5)

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.n_truth = np.zeros(len(class_names), dtype=np.int64)
        self.scores: list[list[float]] = [[] for _ in class_names]
        self.hits: list[list[tuple]] = [[] for _ in class_names]

    def update(self, gt_class: np.ndarray, gt_instance: np.ndarray, predictions) -> None:
        """Add one scene: per point its ground-truth class (-1 = not evaluated) and instance (-1 = none); the
        predictions as (class, score, point indices). A ground-truth instance's class is its points' most common."""
        gt_class, gt_instance = np.asarray(gt_class), np.asarray(gt_instance)
        valid = (gt_instance >= 0) & (gt_class >= 0)
        ids, inverse = np.unique(gt_instance[valid], return_inverse=True)
        truth_class = np.array([np.bincount(gt_class[valid][inverse == k]).argmax() for k in range(len(ids))],
                               dtype=np.int64)
        truth_of_point = np.full(len(gt_instance), -1, dtype=np.int64)
        truth_of_point[np.flatnonzero(valid)] = inverse
        truth_size = np.bincount(inverse, minlength=len(ids))
        for c in range(len(self.class_names)):
            self.n_truth[c] += int((truth_class == c).sum())
        taken = {t: np.zeros(len(ids), dtype=bool) for t in self.THRESHOLDS}
        for c, score, points in sorted(predictions, key=lambda p: -p[1]):
            points = np.asarray(points)
            overlap = np.bincount(truth_of_point[points][truth_of_point[points] >= 0], minlength=len(ids))
            iou = overlap / (len(points) + truth_size - overlap)  # the union holds the prediction: never 0
            iou[truth_class != c] = 0.0
            hits = []
            for t in self.THRESHOLDS:
                free = np.where(taken[t], -1.0, iou)
                best = int(np.argmax(free)) if len(free) else -1
                hit = best >= 0 and free[best] >= t
                if hit:
                    taken[t][best] = True
                hits.append(hit)
            self.scores[c].append(float(score))
            self.hits[c].append(tuple(hits))

    def merge(self, other: "InstanceAP") -> None:
        if other.class_names != self.class_names:
            raise ValueError("can only merge instance AP over the same classes")
        self.n_truth += other.n_truth
        for c in range(len(self.class_names)):
            self.scores[c] += other.scores[c]
            self.hits[c] += other.hits[c]

    def report(self) -> dict:
        """{"ap25", "ap50" (means over classes with ground truth), "per_class": {name: {"ap25", "ap50",
        "instances", "predictions"}}}."""
        per_class, means = {}, {t: [] for t in self.THRESHOLDS}
        for c, name in enumerate(self.class_names):
            if self.n_truth[c] == 0 and not self.scores[c]:
                continue
            entry = {"instances": int(self.n_truth[c]), "predictions": len(self.scores[c])}
            for k, t in enumerate(self.THRESHOLDS):
                hits = np.array([h[k] for h in self.hits[c]], dtype=bool)
                ap = average_precision(np.array(self.scores[c]), hits, int(self.n_truth[c]))
                entry[f"ap{int(round(100 * t))}"] = None if np.isnan(ap) else ap
                if not np.isnan(ap):
                    means[t].append(ap)
            per_class[name] = entry
        out = {f"ap{int(round(100 * t))}": (float(np.mean(v)) if v else None) for t, v in means.items()}
        out["per_class"] = per_class
        return out
