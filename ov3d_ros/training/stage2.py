"""Stage 2 (global scenes): pseudo-label each scene's global cloud with the stage-1 model by repeated grid sampling,
then fine-tune from the stage-1 weights on the global clouds (whole, or crops of ``crop_radius``) with the same
cosine alignment loss.

Per scene: the frames' vocabularies are merged into the scene vocabulary; the global cloud is the frames fused in a
VoxelMap (or a PLY given in ``stage2.global_ply``); class probabilities are a softmax over the scene vocabulary of
cosine * the model's logit scale (its learned inverse temperature), averaged over the passes and, with
``stage2.superpoints``, over each superpoint; labels below the confidence threshold are -1 (ignored by the loss).
With ``stage2.vocabulary_guard`` a point is also left unlabelled when its best class over the whole training
vocabulary is not in the scene vocabulary: the 2D pipeline missed or misnamed that object in every image, and the
nearest scene class would be a wrong label. The share of points that got a label is logged and written to
``pseudo_labels.json``. With several workers each labels its share of the scenes and all of them train on all the
labels.

With ``stage2.replicas`` = k > 1, k fine-tuning runs start from the stage-1 weights on the same labels, each with
its own crops and augmentations (``replica<i>/``), and ``model.pt`` is the mean of their weights.

With ``stage2.partial_weight`` = w > 0, every step also adds w x the stage-1 loss on partial frames and their pixel
pseudo labels (consistency included when stage 1 has it). Those labels come from the 2D pipeline, so they hold the
fine-tuning back from learning only the stage-1 model's own confident mistakes.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.ply import read_ply
from ..grid_sampling import confident_labels, repeated_grid_sampling, turn_about_gravity
from ..superpoints import SuperpointConfig, superpoint_mean, superpoints
from . import distributed
from .augment import augment_points
from .common import TrainingContext, export_checkpoint
from .datasets import SceneData, fuse_global_cloud
from .loop import LoopConfig, average_state_dicts, train_loop
from .losses import VoxelEncoder, class_balance_weights, label_counts, text_losses, voxelize_labelled
from .stage1 import Stage1Loss

log = logging.getLogger("ov3d.train")

STAGE2_TAG = 2
REPLICA_TAG = 100  # replica k draws its steps from tag STAGE2_TAG + REPLICA_TAG * k


@dataclass
class GlobalScene:
    name: str
    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray  # (N, 3) uint8
    label: np.ndarray  # (N,) int32 training-vocabulary index, -1 = unconfident / ignored
    score: np.ndarray  # (N,) float32 averaged probability of the argmax
    vocab_ids: np.ndarray
    passes: int

    @property
    def labelled_share(self) -> float:
        return float((self.label >= 0).mean()) if len(self.label) else 0.0


@torch.no_grad()
def scene_logits(ctx: TrainingContext, xyz: np.ndarray, rgb: np.ndarray, text: torch.Tensor,
                 idx: np.ndarray, angle: float = 0.0) -> torch.Tensor:
    """Class logits (len(idx), Q), cosine x the model's logit scale, on the subset ``idx`` (one point per voxel of a
    pass), with the cloud turned by ``angle`` radians about the vertical axis through its centre."""
    model = ctx.model
    pts = turn_about_gravity(xyz[idx], angle) if angle else xyz[idx].astype(np.float64)
    feats = model(torch.from_numpy(pts.astype(np.float32)).to(ctx.device), torch.from_numpy(rgb[idx]).to(ctx.device))
    return model.logit_scale_value() * (feats.float() @ text.T)


def pseudo_label_scene(ctx: TrainingContext, name: str, xyz: np.ndarray, rgb: np.ndarray, vocab_ids: np.ndarray,
                       text: torch.Tensor, s2: dict, rng: np.random.Generator,
                       superpoint_cfg: SuperpointConfig | None = None) -> GlobalScene:
    """Repeated grid sampling over the scene vocabulary; returns labels in training-vocabulary indices."""
    if len(vocab_ids) == 0:
        raise ValueError(f"scene {name}: empty scene vocabulary, nothing to pseudo-label with")
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        scene_text = text[torch.as_tensor(vocab_ids, device=ctx.device)]
        rotate = bool(s2["rotate_passes"])
        guard = bool(s2["vocabulary_guard"]) and len(vocab_ids) < len(text)
        n_scene = len(vocab_ids)

        def predict(idx: np.ndarray) -> np.ndarray:
            angle = float(rng.uniform(0.0, 2.0 * np.pi)) if rotate else 0.0
            # With the guard, the scene vocabulary's softmax and the whole vocabulary's side by side: one pass of
            # the network, both averaged over the same passes.
            both = torch.cat([scene_text, text]) if guard else scene_text
            logits = scene_logits(ctx, xyz, rgb, both, idx, angle)
            probs = torch.softmax(logits[:, :n_scene], dim=1)
            if guard:
                probs = torch.cat([probs, torch.softmax(logits[:, n_scene:], dim=1)], dim=1)
            return probs.cpu().numpy()

        result = repeated_grid_sampling(
            xyz, predict, voxel_size=float(s2["grid_voxel"]),
            coverage=int(s2["coverage"]), rng=rng, max_passes=int(s2["max_passes"]))
    finally:
        ctx.model.train(was_training)
    probabilities = result.probabilities
    if superpoint_cfg is not None:
        probabilities = superpoint_mean(probabilities, superpoints(xyz, rgb, superpoint_cfg))
    local, score = confident_labels(probabilities[:, :n_scene], float(s2["confidence"]),
                                    float(s2["class_top_fraction"]))
    if guard:
        # A point whose best class over the whole vocabulary is one this scene's images never named is left
        # unlabelled: the 2D pipeline missed or misnamed that object, and the nearest scene class would be wrong.
        in_scene = np.zeros(len(text), dtype=bool)
        in_scene[vocab_ids] = True
        local[~in_scene[probabilities[:, n_scene:].argmax(axis=1)]] = -1
    label = np.where(local >= 0, vocab_ids[np.maximum(local, 0)], -1).astype(np.int32)
    return GlobalScene(name, xyz, rgb, label, score, vocab_ids, result.passes)


def build_global_scenes(ctx: TrainingContext, scenes: list[SceneData], vocabulary: list[str], cfg: dict,
                        out_dir: Path) -> list[GlobalScene]:
    """Fuse (or read) every scene's global cloud and pseudo-label it; writes pseudo_labels.json with the shares."""
    s2 = cfg["stage2"]
    text = ctx.embed(vocabulary)
    given = {str(Path(k)): v for k, v in (s2["global_ply"] or {}).items()}
    superpoint_cfg = SuperpointConfig(**cfg["superpoints"]) if s2["superpoints"] else None
    world = distributed.world()
    mine = {}
    for i in world.share(len(scenes)):  # several workers label different scenes, then trade them
        scene = scenes[i]
        if str(Path(scene.path)) in given:

            cloud, _ = read_ply(given[str(Path(scene.path))])
        else:
            cloud = fuse_global_cloud(scene.frames, float(s2["global_voxel"]))
        rng = np.random.default_rng((int(cfg["seed"]), STAGE2_TAG, 10_000 + i))
        g = pseudo_label_scene(ctx, scene.name, cloud.xyz, cloud.rgb, scene.vocab_ids, text, s2, rng, superpoint_cfg)
        log.info("stage 2 pseudo labels %s: %d points, %d passes, %.1f%% labelled (confidence >= %.2f%s)",
                 scene.name, len(g.xyz), g.passes, 100 * g.labelled_share, s2["confidence"],
                 f", or in the top {s2['class_top_fraction']:.0%} of its class" if s2["class_top_fraction"] else "")
        mine[i] = g
    labelled = {i: g for part in distributed.all_gather_objects(mine) for i, g in part.items()}
    out = [labelled[i] for i in range(len(scenes))]
    report = {g.name: {"points": int(len(g.xyz)), "passes": g.passes, "labelled_share": g.labelled_share}
              for g in out}
    total = sum(len(g.xyz) for g in out)
    share = sum(int((g.label >= 0).sum()) for g in out) / max(total, 1)
    per_class = label_counts((g.label for g in out), len(vocabulary))
    report["_all"] = {"points": total, "labelled_share": share,
                      "labelled_points_per_class": {vocabulary[c]: int(n) for c, n in enumerate(per_class) if n}}
    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "pseudo_labels.json").write_text(json.dumps(report, indent=2))
    log.info("stage 2: %.1f%% of %d global points got a pseudo label", 100 * share, total)
    return out


def stage2_loss_fn(ctx: TrainingContext, scenes: list[GlobalScene], text: torch.Tensor, cfg: dict,
                   partial_scenes: list[SceneData] | None = None):
    """Build ``loss_fn(step, rng)`` for train_loop: the cosine (and contrastive) loss on crops of
    ``stage2.scenes_per_step`` pseudo-labelled global scenes (one batch), plus ``stage2.partial_weight`` x the
    stage-1 loss on frames of ``partial_scenes`` when it is > 0."""
    s2 = cfg["stage2"]
    beta = float(s2["contrastive_weight"])
    radius = float(s2["crop_radius"])
    aug_cfg = s2["augment"]
    model = ctx.model
    device = ctx.device
    usable = [g for g in scenes if (g.label >= 0).any()]
    if not usable:
        raise ValueError("stage 2: no scene has any confident pseudo label; lower stage2.confidence")
    power = float(s2["class_balance"])
    # Class weights n_c^-power over all pseudo-labelled points (weighted mean 1), on the contrastive term as in
    # stage 1: self-training otherwise drifts to the classes that dominate the pseudo labels (walls, floors).
    counts = label_counts((g.label for g in usable), len(text))
    class_weight = class_balance_weights(counts, power).to(device)
    partial = float(s2["partial_weight"])
    if partial < 0:
        raise ValueError(f"stage2.partial_weight must be >= 0, got {partial}")
    if partial > 0 and not partial_scenes:
        raise ValueError("stage2.partial_weight > 0 needs the training scenes' frames")
    partial_loss = Stage1Loss(ctx, partial_scenes, text, cfg) if partial > 0 else None
    with_scale = beta > 0 or (partial_loss is not None and partial_loss.with_scale)

    per_step = int(s2["scenes_per_step"])
    if per_step < 1:
        raise ValueError(f"stage2.scenes_per_step must be >= 1, got {per_step}")

    def draw(rng: np.random.Generator):
        """A pseudo-labelled scene, cropped and augmented: (xyz, rgb, label) and its vocabulary ids."""
        g = usable[int(rng.integers(len(usable)))]
        idx = np.arange(len(g.xyz))
        if radius > 0:
            centre = g.xyz[int(rng.integers(len(g.xyz)))]
            idx = np.flatnonzero(((g.xyz[:, :2] - centre[:2]) ** 2).sum(axis=1) <= radius ** 2)
        xyz, rgb, _ = augment_points(g.xyz[idx], g.rgb[idx], rng, aug_cfg)
        return (xyz, rgb, g.label[idx]), g.vocab_ids

    def loss_fn(step: int, rng: np.random.Generator, net: torch.nn.Module) -> dict:
        clouds, vocabularies = zip(*(draw(rng) for _ in range(per_step)))
        crop = voxelize_labelled(model, list(clouds), device)
        frames = partial_loss.draw(rng) if partial_loss is not None else None
        # One network call for the crop and the frames (each encoded with its own batch statistics).
        features, logit_scale = net([crop.vox] + ([frames.batch.vox] if frames is not None else []),
                                    with_scale=with_scale)
        # The class weights go on the contrastive term as in stage 1.
        terms = text_losses(features[0], crop, text, candidates=list(vocabularies), class_weight=class_weight,
                            logit_scale=logit_scale if beta > 0 else None)
        loss = terms["align"]
        out = {k: v.detach() for k, v in terms.items()}
        if beta > 0:
            loss = loss + beta * terms["contrast"]
        if frames is not None:
            frame_terms = partial_loss.losses(frames, features[1], logit_scale)
            loss = loss + partial * frame_terms.pop("loss")
            out.update({f"partial_{k}": v for k, v in frame_terms.items()})
        out["loss"] = loss
        return out

    return loss_fn


def train_stage2(ctx: TrainingContext, scenes: list[SceneData], vocabulary: list[str], cfg: dict, out_dir: Path, *,
                 stop_after_step: int | None = None, resume: bool = True, show_progress: bool = True) -> dict:
    """Pseudo-label the global scenes with ``ctx.model`` (stage-1 weights) and fine-tune it; returns the last scalars
    (of the last replica) plus ``labelled_share``. Writes out_dir/pseudo_labels.json and model.pt, and state.pt in
    out_dir (one replica) or in out_dir/replica<i>/ with each replica's own model.pt."""
    out_dir = Path(out_dir)
    # Pseudo labels come from ctx.model as given (the stage-1 weights) before train_loop loads any stage-2 resume
    # state; grid sampling is seeded, so a resumed run gets the very same labels.
    global_scenes = build_global_scenes(ctx, scenes, vocabulary, cfg, out_dir)
    text = ctx.embed(vocabulary)
    loop = LoopConfig.from_section(cfg["stage2"])
    replicas = int(cfg["stage2"]["replicas"])
    if replicas < 1:
        raise ValueError(f"stage2.replicas must be >= 1, got {replicas}")
    # Built once for all replicas: the class weights come from all the pseudo labels.
    loss_fn = stage2_loss_fn(ctx, global_scenes, text, cfg, scenes)
    init = copy.deepcopy(ctx.model.state_dict())
    finals = []
    for k in range(replicas):
        # Replica k: the same pseudo labels and stage-1 start, its own crops and augmentations. Replica 0 is the
        # run a single replica would make.
        folder = out_dir if replicas == 1 else out_dir / f"replica{k}"
        meta = {"stage": 2, "steps": loop.steps, **({"replica": k} if replicas > 1 else {})}

        def export(path: Path, step: int, meta=meta) -> None:
            export_checkpoint(path, ctx, vocabulary, meta={**meta, "step": step})

        ctx.model.load_state_dict(init)
        result = train_loop(model=ctx.model, network=VoxelEncoder(ctx.model), loss_fn=loss_fn, loop=loop,
                            out_dir=folder, seed=int(cfg["seed"]), tag=STAGE2_TAG + REPLICA_TAG * k,
                            device=ctx.device, export_model=export,
                            desc="stage2" if replicas == 1 else f"stage2.{k}", stop_after_step=stop_after_step,
                            resume=resume, show_progress=show_progress)
        finals.append(copy.deepcopy(ctx.model.state_dict()))
    if replicas > 1:
        # The replicas' weights averaged (a "model soup"): fine-tuned from one start, they stay close enough for
        # their mean to be a good model, and it varies less from run to run than any one of them.
        ctx.model.load_state_dict(average_state_dicts(finals))
        if distributed.world().main:
            export_checkpoint(out_dir / "model.pt", ctx, vocabulary,
                              meta={"stage": 2, "step": loop.steps, "steps": loop.steps, "replicas": replicas})
        distributed.barrier()
        log.info("stage 2: model.pt is the mean of %d replicas' weights", replicas)
    total = sum(len(g.xyz) for g in global_scenes)
    result["labelled_share"] = sum(int((g.label >= 0).sum()) for g in global_scenes) / max(total, 1)
    return result
