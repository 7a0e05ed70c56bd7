"""Curriculum losses (PGOV3D): cosine alignment to entity texts, inter-frame consistency, optional contrastive term.

The point forms take features (N, D) and text embeddings (Q, D) and normalise both, so raw features still give
cosines, not dot products. The voxel forms that training runs take ``voxel_cosines`` (voxels x texts) and the
voxels' label histograms instead, and give the same values. ``text_losses`` is what both stages train with:
the alignment and contrastive terms of one ``LabelledBatch`` of clouds, whose features come from one call of the
``VoxelEncoder`` (the module that DistributedDataParallel wraps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _check_features(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(x.shape)}")


def _check_labels(labels: torch.Tensor, n: int, n_classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be (N={n},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    labels = labels.long()
    if labels.numel() and (labels.max() >= n_classes or labels.min() < -1):
        raise ValueError(f"labels must be in [-1, {n_classes - 1}] (-1 = ignore), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def alignment_loss(features: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_align = mean over labelled points of (1 - cos(f_point, f_text(entity))); labels -1 are ignored.

    Returns a zero that still carries a graph when no point is labelled, so a step over unlabelled frames is a
    harmless no-op instead of a NaN.
    """
    _check_features("features", features)
    _check_features("text", text)
    if features.shape[1] != text.shape[1]:
        raise ValueError(f"feature dim {features.shape[1]} != text dim {text.shape[1]}")
    labels = _check_labels(labels, features.shape[0], text.shape[0])
    keep = labels >= 0
    if not bool(keep.any()):
        return features.sum() * 0.0
    f = F.normalize(features[keep].float(), dim=1)
    t = F.normalize(text.float(), dim=1)[labels[keep]]
    return (1.0 - (f * t).sum(dim=1)).mean()


def consistency_loss(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """L_cons = 1 - mean cos(f_a[i], f_b[i]) over matched rows (the caller gathers matches from match_points)."""
    _check_features("features_a", features_a)
    _check_features("features_b", features_b)
    if features_a.shape != features_b.shape:
        raise ValueError(f"matched features must have the same shape, got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}")
    if features_a.shape[0] == 0:
        return (features_a.sum() + features_b.sum()) * 0.0
    a = F.normalize(features_a.float(), dim=1)
    b = F.normalize(features_b.float(), dim=1)
    return 1.0 - (a * b).sum(dim=1).mean()


def contrastive_loss(features: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                     temperature: float = 0.07) -> torch.Tensor:
    """Cross-entropy over the vocabulary on cos / temperature (OpenScene/PLA-style), labelled points only.

    The plain cosine alignment pulls each point to its own text but never pushes it away from the others; with
    text embeddings that are themselves similar (e.g. 'chair' and 'sofa' at cos ~0.5) that leaves classes poorly
    separated. This term adds the push. It is off by default (weight 0); recipes that enable it say so.
    """
    _check_features("features", features)
    _check_features("text", text)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = _check_labels(labels, features.shape[0], text.shape[0])
    keep = labels >= 0
    if not bool(keep.any()):
        return features.sum() * 0.0
    logits = F.normalize(features[keep].float(), dim=1) @ F.normalize(text.float(), dim=1).T / temperature
    return F.cross_entropy(logits, labels[keep])


def class_probabilities(features: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over the vocabulary of cos(f, t) / temperature: (N, Q) probabilities (stage-2 pseudo labels)."""
    _check_features("features", features)
    _check_features("text", text)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = F.normalize(features.float(), dim=1) @ F.normalize(text.float(), dim=1).T / temperature
    return torch.softmax(logits, dim=1)


def label_counts(label_arrays, n_classes: int) -> np.ndarray:
    """Points per class, (n_classes,) int64, summed over integer label arrays; -1 (unlabelled) is not counted."""
    counts = np.zeros(int(n_classes), dtype=np.int64)
    for labels in label_arrays:
        labels = np.asarray(labels)
        counts += np.bincount(labels[labels >= 0], minlength=int(n_classes))
    return counts


def class_balance_weights(counts, power: float) -> torch.Tensor:
    """Per-class loss weights count_c ** -power, scaled so that the weighted mean over the counted points is 1.

    power 0 gives all ones; 1 makes every present class weigh the same in total; classes never counted get 0.
    Used on the contrastive term: indoor frames are mostly wall and floor (85-90% of the synthetic rooms' points),
    and without it the rare classes (books, lamps, bins) hardly move the loss.
    """
    if power < 0:
        raise ValueError(f"class balance power must be >= 0, got {power}")
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or bool((counts < 0).any()):
        raise ValueError("counts must be a 1-D tensor of non-negative class counts")
    present = counts > 0
    w = torch.where(present, counts.clamp(min=1.0) ** -float(power), torch.zeros_like(counts))
    total = float((w * counts).sum())
    if total > 0:
        w = w * float(counts.sum()) / total
    return w.float()


# -- voxel-level forms ----------------------------------------------------------------------------------------------
# Every point of a voxel gets that voxel's feature, so a sum over points of a term that is linear in the point's
# label (one-hot) collapses to a sum over voxels weighted by the voxel's label histogram. The values are exactly the
# point-level losses above, but the cost scales with voxels instead of points: no (N, D) gather, no (N, D) backward
# scatter, which on CPU was most of a training step.


def voxel_label_histogram(inverse: torch.Tensor, labels: torch.Tensor, n_voxels: int, n_classes: int
                          ) -> torch.Tensor:
    """(M, Q) float32 counts of each label among a voxel's points (labels -1 are left out)."""
    if inverse.shape != labels.shape or inverse.ndim != 1:
        raise ValueError(f"inverse and labels must be (N,) of one length, got {tuple(inverse.shape)} and "
                         f"{tuple(labels.shape)}")
    labels = _check_labels(labels, labels.shape[0], n_classes)
    keep = labels >= 0
    flat = inverse[keep].long() * n_classes + labels[keep]
    counts = torch.bincount(flat, minlength=n_voxels * n_classes)
    return counts.reshape(n_voxels, n_classes).float()


def voxel_cosines(voxel_features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(M, Q) cos(f_voxel, t) for every voxel and text, the input of the voxel-level losses below.

    Only the (Q, D) text side is normalised; each row of the (M, Q) product is divided by its feature's norm. That
    equals normalising the (M, D) features first, without the element-wise passes over M x D (and their backward)
    that a training step on CPU spent about a fifth of its time in.
    """
    _check_features("voxel_features", voxel_features)
    _check_features("text", text)
    if voxel_features.shape[1] != text.shape[1]:
        raise ValueError(f"feature dim {voxel_features.shape[1]} != text dim {text.shape[1]}")
    f = voxel_features.float()
    return (f @ F.normalize(text.float(), dim=1).T) / f.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _check_histogram(histogram: torch.Tensor, cosines: torch.Tensor) -> None:
    _check_features("cosines", cosines)
    if histogram.shape != cosines.shape:
        raise ValueError(f"histogram must be (M, Q) = {tuple(cosines.shape)} like the cosines, got "
                         f"{tuple(histogram.shape)}")


def alignment_loss_voxels(cosines: torch.Tensor, histogram: torch.Tensor) -> torch.Tensor:
    """``alignment_loss`` of the points (same value), from ``voxel_cosines`` and the voxels' label histograms."""
    _check_histogram(histogram, cosines)
    n = histogram.sum()
    if float(n) == 0:
        return cosines.sum() * 0.0
    return 1.0 - (histogram * cosines).sum() / n


def contrastive_loss_voxels(cosines: torch.Tensor, histogram: torch.Tensor, temperature) -> torch.Tensor:
    """``contrastive_loss`` of the points (same value), from ``voxel_cosines`` and the voxels' label histograms.

    Columns of both are the candidate texts of the softmax: pass ``cosines[:, ids]`` for a sub-vocabulary.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_histogram(histogram, cosines)
    n = histogram.sum()
    if float(n) == 0:
        return cosines.sum() * 0.0
    logits = cosines / temperature
    nll = torch.logsumexp(logits, dim=1, keepdim=True) - logits  # (M, Q): -log p(class | voxel)
    return (histogram * nll).sum() / n


# ---------------------------------------------------------------------------------------------------------------
# One training batch, shared by both stages: labelled clouds -> voxels -> features -> the text losses.
class VoxelEncoder(torch.nn.Module):
    """The step's only call into parameters: voxelised clouds -> raw voxel features, and the logit scale when the
    contrastive term needs it. DistributedDataParallel wraps this module, so every stage makes exactly one
    forward call per step (whatever it puts in the list) and its gradients are averaged over the workers.
    Each cloud of the list is encoded on its own (its own batch-norm statistics)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, voxelized: list, with_scale: bool = False):
        features = [self.model.encode_voxels(v) for v in voxelized]
        return features, (self.model.logit_scale_value() if with_scale else None)


@dataclass
class LabelledBatch:
    """Clouds voxelised as one batch (cloud b has batch index b), with their points' vocabulary labels."""

    vox: object  # model.voxelize.Voxelized
    label: torch.Tensor  # (N,) int64, -1 = unlabelled
    offsets: list[int]  # first point of each cloud in the concatenation


def voxelize_labelled(model, clouds: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      device: torch.device) -> LabelledBatch:
    """[(xyz, rgb, label)] -> one LabelledBatch (points concatenated in order)."""
    offsets, total = [], 0
    for xyz, _, _ in clouds:
        offsets.append(total)
        total += len(xyz)
    xyz = torch.from_numpy(np.concatenate([c[0] for c in clouds])).to(device)
    rgb = torch.from_numpy(np.concatenate([c[1] for c in clouds])).to(device)
    batch = torch.from_numpy(np.concatenate([np.full(len(c[0]), b, dtype=np.int64)
                                             for b, c in enumerate(clouds)])).to(device)
    label = torch.from_numpy(np.concatenate([c[2] for c in clouds]).astype(np.int64)).to(device)
    return LabelledBatch(model.voxelize(xyz, rgb, batch), label, offsets)


def text_losses(features: torch.Tensor, batch: LabelledBatch, text: torch.Tensor, *,
                candidates: list[np.ndarray | None] | None = None, class_weight: torch.Tensor | None = None,
                logit_scale: torch.Tensor | None = None) -> dict:
    """The losses of voxel features against their points' texts, per voxel (equal to the per-point losses).

    ``align``: mean over labelled points of 1 - cos(f, t_label). With ``logit_scale`` also ``contrast``: per cloud b,
    cross-entropy over its candidate texts ``candidates[b]`` (vocabulary ids; None or fewer than two: left out) of
    cos x logit_scale, points weighted by ``class_weight`` of their label, the clouds' terms averaged by weight.
    """
    hist = voxel_label_histogram(batch.vox.inverse, batch.label, len(batch.vox), text.shape[0])
    cos = voxel_cosines(features, text)  # (voxels, vocabulary)
    out = {"align": alignment_loss_voxels(cos, hist)}
    if logit_scale is not None:
        voxel_batch = batch.vox.coords[:, 0].long()
        terms, weights = [], []
        for b, vocab in enumerate(candidates or []):
            if vocab is None or len(vocab) < 2:
                continue  # one text (or none): nothing to tell apart
            rows = voxel_batch == b
            ids = torch.as_tensor(vocab, device=features.device)
            h = hist[rows][:, ids]
            if class_weight is not None:
                h = h * class_weight[ids]
            terms.append(contrastive_loss_voxels(cos[rows][:, ids], h, temperature=1.0 / logit_scale) * h.sum())
            weights.append(h.sum())
        out["contrast"] = (torch.stack(terms).sum() / torch.stack(weights).sum().clamp(min=1.0) if terms
                           else features.sum() * 0.0)
    return out
