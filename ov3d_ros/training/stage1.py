"""Stage 1 (partial scenes): align per-frame partial clouds to their pixel-wise pseudo-label texts, with inter-frame
consistency on matched points of overlapping frames.

Per step: ``frames_per_step // 2`` overlapping pairs (or single frames when there are none) are drawn, each frame is
augmented independently (the matches are point indices, so they survive any augmentation - and differing
augmentations make the consistency term teach invariance too), all frames go through the model as one batch, and

    L = L_align + consistency_weight * L_cons + contrastive_weight * L_contrast (set a weight to 0 to drop a term).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .augment import augment_points
from .common import TrainingContext, export_checkpoint
from .datasets import FramePair, SceneData
from .loop import LoopConfig, train_loop
from .losses import (alignment_loss_voxels, class_balance_weights, consistency_loss, contrastive_loss_voxels,
                     label_counts, voxel_cosines, voxel_label_histogram)

log = logging.getLogger("ov3d.train")

STAGE1_TAG = 1


def sample_frames(scenes: list[SceneData], n_frames: int, rng: np.random.Generator
                  ) -> tuple[list[tuple[int, int]], list[tuple[int, int, FramePair]]]:
    """Draw ``n_frames`` frames: overlapping pairs first (2 frames each), padded with single frames.

    Returns ([(scene, frame)], [(position_a, position_b, pair)]) - positions index the first list.
    """
    picks: list[tuple[int, int]] = []
    links: list[tuple[int, int, FramePair]] = []
    scene_ids = [i for i, s in enumerate(scenes) if s.frames]
    if not scene_ids:
        raise ValueError("no frames to train on")
    while len(picks) < n_frames:
        s = scene_ids[int(rng.integers(len(scene_ids)))]
        scene = scenes[s]
        if scene.pairs and n_frames - len(picks) >= 2:
            pair = scene.pairs[int(rng.integers(len(scene.pairs)))]
            links.append((len(picks), len(picks) + 1, pair))
            picks += [(s, pair.a), (s, pair.b)]
        else:
            picks.append((s, int(rng.integers(len(scene.frames)))))
    return picks, links


def stage1_loss_fn(ctx: TrainingContext, scenes: list[SceneData], text: torch.Tensor, cfg: dict):
    """Build ``loss_fn(step, rng)`` for train_loop."""
    s1 = cfg["stage1"]
    n_frames = int(s1["frames_per_step"])
    if n_frames < 1:
        raise ValueError(f"stage1.frames_per_step must be >= 1, got {n_frames}")
    lam = float(s1["consistency_weight"])
    beta = float(s1["contrastive_weight"])
    if lam < 0 or beta < 0:
        raise ValueError("stage1.consistency_weight and stage1.contrastive_weight must be >= 0")
    aug_cfg = s1["augment"]
    model = ctx.model
    device = ctx.device
    contrast_vocabulary = s1["contrast_vocabulary"]
    if contrast_vocabulary not in ("frame", "scene"):
        raise ValueError(f"stage1.contrast_vocabulary must be 'frame' or 'scene', got {contrast_vocabulary!r}")
    counts = label_counts((frame.label for scene in scenes for frame in scene.frames), text.shape[0])
    class_weight = class_balance_weights(counts, float(s1["class_balance"])).to(device)

    def loss_fn(step: int, rng: np.random.Generator) -> dict:
        # Pairs are drawn whether or not the consistency term is on, so "consistency off" sees the same data.
        picks, links = sample_frames(scenes, n_frames, rng)
        xyz, rgb, batch, labels, offsets = [], [], [], [], []
        total = 0
        for b, (s, f) in enumerate(picks):
            frame = scenes[s].frames[f]
            pxyz, prgb, _ = augment_points(frame.xyz, frame.rgb, rng, aug_cfg)
            xyz.append(pxyz)
            rgb.append(prgb)
            batch.append(np.full(len(pxyz), b, dtype=np.int64))
            labels.append(frame.label)
            offsets.append(total)
            total += len(pxyz)
        # Losses are computed per voxel (label histograms), which equals the per-point losses: see losses.py.
        vox = model.voxelize(torch.from_numpy(np.concatenate(xyz)).to(device),
                             torch.from_numpy(np.concatenate(rgb)).to(device),
                             torch.from_numpy(np.concatenate(batch)).to(device))
        vfeat = model.encode_voxels(vox)
        label_t = torch.from_numpy(np.concatenate(labels).astype(np.int64)).to(device)
        hist = voxel_label_histogram(vox.inverse, label_t, len(vox), text.shape[0])
        cos = voxel_cosines(vfeat, text)  # (voxels, vocabulary)
        l_align = alignment_loss_voxels(cos, hist)
        loss = l_align
        out = {"align": l_align.detach()}
        if beta > 0:
            # Softmax over a frame's candidate texts: its scene's merged vocabulary (stage1.contrast_vocabulary
            # "scene") or only the texts its own image was labelled with ("frame"), class-weighted (class_balance).
            voxel_batch = vox.coords[:, 0].long()
            terms, weights = [], []
            for b, (s, f) in enumerate(picks):
                frame = scenes[s].frames[f]
                vocab = frame.vocab_ids if contrast_vocabulary == "frame" else scenes[s].vocab_ids
                if vocab is None or len(vocab) < 2:
                    continue  # one text (or none): nothing to tell apart
                rows = voxel_batch == b
                ids = torch.as_tensor(vocab, device=device)
                h = hist[rows][:, ids] * class_weight[ids]
                terms.append(contrastive_loss_voxels(cos[rows][:, ids], h,
                                                     temperature=1.0 / model.logit_scale_value()) * h.sum())
                weights.append(h.sum())
            l_con = torch.stack(terms).sum() / torch.stack(weights).sum().clamp(min=1.0) if terms else vfeat.sum() * 0.0
            loss = loss + beta * l_con
            out["contrast"] = l_con.detach()
        # Consistency on every drawn pair (computed for logging even when its weight is 0).
        cons_terms = []
        for pos_a, pos_b, pair in links:
            va = vox.inverse[torch.from_numpy(pair.ia + offsets[pos_a]).to(device)]
            vb = vox.inverse[torch.from_numpy(pair.ib + offsets[pos_b]).to(device)]
            cons_terms.append(consistency_loss(vfeat[va], vfeat[vb]))
        if cons_terms:
            l_cons = torch.stack(cons_terms).mean()
            out["cons"] = l_cons.detach()
            if lam > 0:
                loss = loss + lam * l_cons
        out["loss"] = loss
        return out

    return loss_fn


def train_stage1(ctx: TrainingContext, scenes: list[SceneData], vocabulary: list[str], cfg: dict, out_dir: Path, *,
                 stop_after_step: int | None = None, resume: bool = True, show_progress: bool = True) -> dict:
    """Train stage 1; writes out_dir/state.pt (resume) and out_dir/model.pt (shared checkpoint format)."""
    text = ctx.embed(vocabulary)
    loop = LoopConfig.from_section(cfg["stage1"])
    n_pairs = sum(len(s.pairs) for s in scenes)
    if cfg["stage1"]["consistency_weight"] > 0 and n_pairs == 0:
        log.warning("stage 1: consistency is on but no overlapping frame pairs were found; only L_align is used")

    def export(path: Path, step: int) -> None:
        export_checkpoint(path, ctx, vocabulary, meta={"stage": 1, "step": step, "steps": loop.steps})

    return train_loop(model=ctx.model, loss_fn=stage1_loss_fn(ctx, scenes, text, cfg), loop=loop, out_dir=out_dir,
                      seed=int(cfg["seed"]), tag=STAGE1_TAG, device=ctx.device, export_model=export, desc="stage1",
                      stop_after_step=stop_after_step, resume=resume, show_progress=show_progress)
