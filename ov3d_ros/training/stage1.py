"""Stage 1 (partial scenes): align per-frame partial clouds to their pixel-wise pseudo-label texts, with inter-frame
consistency on matched points of overlapping frames.

Per step: ``frames_per_step // 2`` overlapping pairs (or single frames when there are none) are drawn, each frame is
augmented independently (the matches are point indices, so they survive any augmentation - and differing
augmentations make the consistency term teach invariance too), all frames go through the model as one batch, and

    L = L_align + consistency_weight * L_cons + contrastive_weight * L_contrast (set a weight to 0 to drop a term).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .augment import augment_points
from .common import TrainingContext, export_checkpoint
from .datasets import FramePair, SceneData
from .loop import LoopConfig, train_loop
from .losses import (LabelledBatch, VoxelEncoder, class_balance_weights, consistency_loss, label_counts,
                     text_losses, voxelize_labelled)

log = logging.getLogger("ov3d.train")

STAGE1_TAG = 1


@dataclass
class Stage1Draw:
    """One step's frames: voxelised as a batch, the overlapping pairs among them, and each frame's candidate texts."""

    batch: LabelledBatch
    links: list[tuple[int, int, FramePair]]
    candidates: list[np.ndarray | None]


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


class Stage1Loss:
    """The stage-1 loss for train_loop: ``draw`` the step's frames (sampling, augmentation, voxelisation: no
    parameters), one call of the network on them, then ``losses``. Stage 2 draws these frames too and puts them in
    its own single network call."""

    def __init__(self, ctx: TrainingContext, scenes: list[SceneData], text: torch.Tensor, cfg: dict):
        self.text = text
        self.scenes = scenes
        s1 = cfg["stage1"]
        self.n_frames = int(s1["frames_per_step"])
        if self.n_frames < 1:
            raise ValueError(f"stage1.frames_per_step must be >= 1, got {self.n_frames}")
        self.lam = float(s1["consistency_weight"])
        self.beta = float(s1["contrastive_weight"])
        if self.lam < 0 or self.beta < 0:
            raise ValueError("stage1.consistency_weight and stage1.contrastive_weight must be >= 0")
        self.aug_cfg = s1["augment"]
        self.model = ctx.model
        self.device = ctx.device
        self.contrast_vocabulary = s1["contrast_vocabulary"]
        if self.contrast_vocabulary not in ("frame", "scene"):
            raise ValueError(f"stage1.contrast_vocabulary must be 'frame' or 'scene', got {self.contrast_vocabulary!r}")
        counts = label_counts((frame.label for scene in scenes for frame in scene.frames), text.shape[0])
        self.class_weight = class_balance_weights(counts, float(s1["class_balance"])).to(self.device)
        self.with_scale = self.beta > 0

    def draw(self, rng: np.random.Generator) -> Stage1Draw:
        # Pairs are drawn whether or not the consistency term is on, so "consistency off" sees the same data.
        picks, links = sample_frames(self.scenes, self.n_frames, rng)
        clouds = []
        for s, f in picks:
            frame = self.scenes[s].frames[f]
            pxyz, prgb, _ = augment_points(frame.xyz, frame.rgb, rng, self.aug_cfg)
            clouds.append((pxyz, prgb, frame.label))
        scenes = self.scenes
        candidates = [scenes[s].frames[f].vocab_ids if self.contrast_vocabulary == "frame" else scenes[s].vocab_ids
                      for s, f in picks]
        return Stage1Draw(voxelize_labelled(self.model, clouds, self.device), links, candidates)

    def losses(self, d: Stage1Draw, vfeat: torch.Tensor, logit_scale) -> dict:
        # Losses are computed per voxel (label histograms), which equals the per-point losses: see losses.py.
        # The contrastive softmax runs over a frame's candidate texts: its scene's merged vocabulary
        # (stage1.contrast_vocabulary "scene") or only the texts its own image was labelled with ("frame").
        terms = text_losses(vfeat, d.batch, self.text, candidates=d.candidates, class_weight=self.class_weight,
                            logit_scale=logit_scale)
        loss = terms["align"]
        out = {k: v.detach() for k, v in terms.items()}
        if self.beta > 0:
            loss = loss + self.beta * terms["contrast"]
        # Consistency on every drawn pair (computed for logging even when its weight is 0).
        inverse, offsets = d.batch.vox.inverse, d.batch.offsets
        cons_terms = []
        for pos_a, pos_b, pair in d.links:
            va = inverse[torch.from_numpy(pair.ia + offsets[pos_a]).to(self.device)]
            vb = inverse[torch.from_numpy(pair.ib + offsets[pos_b]).to(self.device)]
            cons_terms.append(consistency_loss(vfeat[va], vfeat[vb]))
        if cons_terms:
            l_cons = torch.stack(cons_terms).mean()
            out["cons"] = l_cons.detach()
            if self.lam > 0:
                loss = loss + self.lam * l_cons
        out["loss"] = loss
        return out

    def __call__(self, step: int, rng: np.random.Generator, net: torch.nn.Module) -> dict:
        d = self.draw(rng)
        (vfeat,), logit_scale = net([d.batch.vox], with_scale=self.with_scale)
        return self.losses(d, vfeat, logit_scale)


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

    return train_loop(model=ctx.model, network=VoxelEncoder(ctx.model), loss_fn=Stage1Loss(ctx, scenes, text, cfg),
                      loop=loop, out_dir=out_dir,
                      seed=int(cfg["seed"]), tag=STAGE1_TAG, device=ctx.device, export_model=export, desc="stage1",
                      stop_after_step=stop_after_step, resume=resume, show_progress=show_progress)
