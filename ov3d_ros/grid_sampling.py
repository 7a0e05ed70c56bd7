"""Stage-2 pseudo labels by repeated grid sampling (PGOV3D), independent of any model.

A global cloud is far denser than the model's voxels. One pass voxelises it (with a random grid offset, so passes
group points differently), keeps one random point per voxel, asks the model for that subset's class probabilities,
and gives every point of a voxel its sampled point's probabilities. Passes repeat until every point has been covered
at least ``coverage`` times; each point's probabilities are averaged over the passes that covered it, and the argmax
is kept only where that average reaches the confidence threshold (optionally lowered per class, see
``confident_labels``). Unconfident points get -1 (ignored in training), never "background".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class GridSamplingResult:
    probabilities: np.ndarray  # (N, Q) float32 mean class probabilities over the passes covering each point
    coverage: np.ndarray  # (N,) int32 number of passes that covered each point
    passes: int


def turn_about_gravity(xyz: np.ndarray, angle: float, centre_xy=None) -> np.ndarray:
    """(N, 3) float64 copy of ``xyz`` turned by ``angle`` radians about the vertical (z) axis through ``centre_xy``
    (default: the points' mean x, y). z is unchanged, so a height channel sees the same values."""
    out = np.array(xyz, dtype=np.float64)
    centre = out[:, :2].mean(axis=0) if centre_xy is None else np.asarray(centre_xy, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    out[:, :2] = (out[:, :2] - centre) @ np.array([[c, s], [-s, c]]) + centre
    return out


def sample_one_per_voxel(xyz: np.ndarray, voxel_size: float, rng: np.random.Generator,
                         offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One uniformly random point per occupied voxel.

    Returns (sampled, voxel_of_point): ``sampled`` (M,) int64 point indices, one per voxel; ``voxel_of_point``
    (N,) int64 index into ``sampled`` of the voxel each point falls in.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise ValueError(f"xyz must be a non-empty (N, 3) array, got shape {xyz.shape}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    shift = np.zeros(3) if offset is None else np.asarray(offset, dtype=np.float64)
    grid = np.floor((xyz + shift) / voxel_size).astype(np.int64)
    grid -= grid.min(axis=0)
    # One int64 key per cell, row-major over the grid's extent: the same order as unique rows, several times faster.
    _, sy, sz = grid.max(axis=0) + 1
    _, voxel_of_point = np.unique((grid[:, 0] * sy + grid[:, 1]) * sz + grid[:, 2], return_inverse=True)
    voxel_of_point = voxel_of_point.reshape(-1)
    # A random key per point; the point with the smallest key in its voxel is that voxel's sample. Sorting by
    # (voxel, key) and keeping each voxel's first row does that in O(N log N) without a Python loop.
    key = rng.random(len(xyz))
    order = np.lexsort((key, voxel_of_point))
    first = np.ones(len(order), dtype=bool)
    first[1:] = voxel_of_point[order[1:]] != voxel_of_point[order[:-1]]
    sampled = order[first]  # sorted by voxel id, so sampled[v] is voxel v's point
    return sampled.astype(np.int64), voxel_of_point.astype(np.int64)


def repeated_grid_sampling(xyz: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], *, voxel_size: float,
                           coverage: int, rng: np.random.Generator, max_passes: int = 50,
                           random_offset: bool = True) -> GridSamplingResult:
    """Average class probabilities over repeated one-point-per-voxel samplings until every point is covered.

    ``predict(indices) -> (len(indices), Q)`` probabilities of the sampled points (rows sum to 1). A pass covers
    every point of a voxel whose sample got a prediction; ``predict`` may return NaN rows for samples it could not
    score (those voxels are not covered in that pass), which is why the loop runs on coverage, not a pass count.
    """
    if int(coverage) < 1:
        raise ValueError(f"coverage must be >= 1, got {coverage}")
    if int(max_passes) < 1:
        raise ValueError(f"max_passes must be >= 1, got {max_passes}")
    n = len(xyz)
    sums: np.ndarray | None = None
    counts = np.zeros(n, dtype=np.int32)
    passes = 0
    while passes < max_passes and (passes == 0 or counts.min() < coverage):
        offset = rng.random(3) * voxel_size if random_offset else None
        sampled, voxel_of_point = sample_one_per_voxel(xyz, voxel_size, rng, offset)
        probs = np.asarray(predict(sampled), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != len(sampled):
            raise ValueError(f"predict returned shape {probs.shape}, expected ({len(sampled)}, Q)")
        if sums is None:
            sums = np.zeros((n, probs.shape[1]), dtype=np.float64)
        scored = np.isfinite(probs).all(axis=1)
        point_scored = scored[voxel_of_point]
        sums[point_scored] += probs[voxel_of_point[point_scored]]
        counts += point_scored
        passes += 1
    assert sums is not None
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    mean[counts == 0] = 0.0
    return GridSamplingResult(probabilities=mean, coverage=counts, passes=passes)


def confident_labels(probabilities: np.ndarray, threshold: float,
                     class_top_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(label int32 with -1 where the point is not confident enough, max probability float32).

    A point keeps its argmax class c when its probability reaches ``threshold``. With ``class_top_fraction`` q > 0
    the bar for class c is lowered to the (1 - q) quantile of the probabilities of the points predicted c, when that
    is lower: the most confident q of every predicted class is kept (class-balanced self-training). One global bar
    otherwise keeps nearly all wall and floor points and drops small objects, whose averaged probabilities are
    lower, so the fine-tuning set loses exactly the classes that need it.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] == 0:
        raise ValueError(f"probabilities must be (N, Q) with Q >= 1, got {probabilities.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")
    if not 0.0 <= class_top_fraction <= 1.0:
        raise ValueError(f"class_top_fraction must be in [0, 1], got {class_top_fraction}")
    label = probabilities.argmax(axis=1).astype(np.int32)
    score = probabilities.max(axis=1).astype(np.float32)
    bar = np.full(probabilities.shape[1], threshold, dtype=np.float64)
    if class_top_fraction > 0 and len(label):
        for c in np.unique(label):
            bar[c] = min(threshold, float(np.quantile(score[label == c], 1.0 - class_top_fraction)))
    keep = score >= bar[label]
    return np.where(keep, label, -1).astype(np.int32), score
