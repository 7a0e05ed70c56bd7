"""Training data held in memory: per-frame partial clouds with entity labels, overlapping frame pairs, global clouds.

Sources (all end up as ``SceneData``):
  * a ScanNet-layout scene folder (``data.scannet.ScanNetScene``) with pseudo labels in the documented format
    (``SCENE/pseudo_labels/``, ``data.pseudo_labels``) - this includes synthetic scenes exported by ``prepare``;
  * a rosbag2 recording (``data.rosbag.RosbagScene``, options from ``data.rosbag``); its pseudo labels live in
    ``<bag folder>/pseudo_labels/``, keyed by ``RosbagScene.frame_ids``.

Frames are back-projected once (``fusion.make_partial_cloud``) and cached as arrays: every training step then only
indexes memory. Each point inherits its pixel's entity through ``PartialCloud.pixels``; entity texts are mapped to
indices into one training vocabulary shared by all scenes (so text embeddings are computed once per vocabulary).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.ply import read_ply
from ..data.pseudo_labels import read_frame_labels
from ..data.scannet import ScanNetScene
from ..data.scenes import open_scene, read_frames
from ..fusion import make_partial_cloud
from ..matching import match_points
from ..mapping import Mapper, MapperConfig

log = logging.getLogger("ov3d.train")


@dataclass
class FrameData:
    """One partial cloud with per-point labels (index into the training vocabulary, -1 = unlabelled)."""

    xyz: np.ndarray  # (N, 3) float32 world
    rgb: np.ndarray  # (N, 3) uint8
    label: np.ndarray  # (N,) int32
    index: int  # frame number in its sequence
    partial: object = None  # the fusion.PartialCloud (kept for matching / global fusion)
    vocab_ids: np.ndarray | None = None  # the frame's own entity texts (its image's vocabulary), training indices

    def __len__(self) -> int:
        return len(self.xyz)


@dataclass
class FramePair:
    """Two overlapping frames of one scene and their matched points (matching.match_points)."""

    a: int  # positions in SceneData.frames
    b: int
    ia: np.ndarray
    ib: np.ndarray


@dataclass
class SceneData:
    name: str
    path: str
    frames: list[FrameData]
    vocabulary: list[str]  # this scene's entity texts (merged over its frames, sorted)
    vocab_ids: np.ndarray  # (len(vocabulary),) indices of those texts in the training vocabulary
    pairs: list[FramePair] = field(default_factory=list)


def label_points_from_image(pixels: np.ndarray, label_image: np.ndarray, entities: list[str],
                            text_index: dict[str, int]) -> np.ndarray:
    """Per-point training-vocabulary index from a uint16 entity image (0 = unlabelled, k = entities[k-1])."""
    label_image = np.asarray(label_image)
    if label_image.ndim != 2:
        raise ValueError(f"label image must be (H, W), got shape {label_image.shape}")
    u, v = pixels[:, 0], pixels[:, 1]
    h, w = label_image.shape
    if len(pixels) and (u.max() >= w or v.max() >= h or u.min() < 0 or v.min() < 0):
        raise ValueError(f"pixels fall outside the {w}x{h} label image: the label image and the depth image must "
                         "have the same size")
    k = label_image[v, u].astype(np.int64)
    if len(k) and k.max() > len(entities):
        raise ValueError(f"label image holds entity {k.max()} but the frame lists only {len(entities)} entities")
    lut = np.array([-1] + [text_index[t] for t in entities], dtype=np.int32)
    return lut[k]


def find_pairs(frames: list[FrameData], *, max_gap: int, min_matches: int, voxel_size: float) -> list[FramePair]:
    """Pairs of frames at most ``max_gap`` apart in the sequence that share at least ``min_matches`` points."""

    pairs = []
    order = sorted(range(len(frames)), key=lambda i: frames[i].index)
    for pos, i in enumerate(order):
        for j in order[pos + 1:]:
            if frames[j].index - frames[i].index > max_gap:
                break
            ia, ib = match_points(frames[i].partial, frames[j].partial, method="voxel", voxel_size=voxel_size)
            if len(ia) >= min_matches:
                pairs.append(FramePair(i, j, ia, ib))
    return pairs


def load_scene_frames(path: str | Path, data_cfg: dict) -> tuple[list[tuple[str, object]], Path]:
    """Read a scene's frames as (frame_id, PartialCloud) with the configured strides, and its label root."""

    strict = bool(data_cfg.get("strict", False))
    opened = open_scene(path, rosbag={**data_cfg["rosbag"], "strict": strict})
    scene, ids, label_root = opened.scene, opened.frame_ids, opened.label_root
    stride = int(data_cfg["frame_stride"])
    if stride < 1:
        raise ValueError(f"data.frame_stride must be >= 1, got {stride}")
    positions = list(range(0, len(ids), stride))
    limit = int(data_cfg["max_frames_per_scene"])
    if limit > 0:
        positions = positions[:limit]
    out = []
    with opened:
        for pos, frame in read_frames(scene, positions, strict=strict):
            partial = make_partial_cloud(frame, min_depth=data_cfg["min_depth"], max_depth=data_cfg["max_depth"],
                                         stride=int(data_cfg["pixel_stride"]))
            out.append((ids[pos], partial))
    return out, label_root


def load_training_scenes(paths: list[str], data_cfg: dict, *, pair_max_gap: int, min_pair_matches: int,
                         match_voxel: float, progress: bool = True) -> tuple[list[SceneData], list[str]]:
    """Scenes with their labelled frames and consistency pairs, and the merged training vocabulary."""

    if not paths:
        raise ValueError("no training scenes given (data.train is empty)")
    raw = []
    for path in _progress(paths, "load scenes", progress):
        partials, label_root = load_scene_frames(path, data_cfg)
        labelled = []
        for frame_id, partial in partials:
            try:
                label_image, entities = read_frame_labels(str(label_root), frame_id)
            except FileNotFoundError:
                log.warning("%s: no pseudo labels for frame %s; it is used for consistency only", path, frame_id)
                label_image, entities = None, []
            labelled.append((frame_id, partial, label_image, list(entities)))
        raw.append((Path(path), labelled))
    vocabulary = sorted({t for _, labelled in raw for *_, ents in labelled for t in ents})
    if not vocabulary:
        raise ValueError(f"no pseudo labels found in any training scene ({', '.join(map(str, paths))}); run "
                         "`ov3d-train label` or `ov3d-train prepare` first")
    text_index = {t: i for i, t in enumerate(vocabulary)}
    scenes = []
    for path, labelled in raw:
        frames = []
        for frame_id, partial, label_image, entities in labelled:
            if label_image is None:
                label = np.full(len(partial), -1, dtype=np.int32)
            else:
                label = label_points_from_image(partial.pixels, label_image, entities, text_index)
            frame_vocab = np.array(sorted({text_index[t] for t in entities}), dtype=np.int64)
            frames.append(FrameData(partial.xyz, partial.rgb, label, int(partial.index), partial, frame_vocab))
        scene_vocab = sorted({t for *_, ents in labelled for t in ents})
        scene = SceneData(name=path.name, path=str(path), frames=frames, vocabulary=scene_vocab,
                          vocab_ids=np.array([text_index[t] for t in scene_vocab], dtype=np.int64))
        scene.pairs = find_pairs(frames, max_gap=pair_max_gap, min_matches=min_pair_matches, voxel_size=match_voxel)
        log.info("scene %s: %d frames, %d points, %d entities, %d overlapping pairs", scene.name, len(frames),
                 sum(len(f) for f in frames), len(scene_vocab), len(scene.pairs))
        scenes.append(scene)
    return scenes, vocabulary


def fuse_global_cloud(frames: list[FrameData], voxel_size: float):
    """The scene's global cloud: every partial cloud integrated by a Mapper (voxel-mean xyz, mean rgb). Stage 2
    trains on running means, without the free-space and surface step of the live map (``SurfaceConfig``): the
    curriculum's recorded figures (training/README.md) were measured on such clouds."""

    mapper = Mapper(MapperConfig(voxel_size=voxel_size, capacity=50_000_000, surface=None))
    for frame in frames:
        mapper.integrate(frame.partial)
    return mapper.cloud()[0]


@dataclass
class LabelledScene:
    """A held-out scene with ground truth: cloud (xyz, rgb, label = index into class_names, instance)."""

    name: str
    cloud: object  # PointCloud
    class_names: list[str]


def load_labelled_scene(path: str | Path) -> LabelledScene:
    """Ground-truth labelled global cloud of a ScanNet-layout scene (labels PLY or exported synthetic GT)."""

    path = Path(path)
    if path.suffix == ".ply":
        return _labelled_ply(path)
    scene = ScanNetScene(str(path))
    gt = scene.ground_truth()
    if gt is None or gt.label is None:
        raise ValueError(f"scene {path} has no labelled ground-truth cloud to evaluate on")
    names = getattr(scene, "class_names", None)
    if callable(names):
        names = names()
    return LabelledScene(name=path.name, cloud=gt, class_names=list(names) if names else [])


def _labelled_ply(path: Path) -> LabelledScene:
    cloud, extras = read_ply(str(path))
    if cloud.label is None:
        raise ValueError(f"{path} has no 'label' field to evaluate against")
    names_file = path.with_suffix(".classes.txt")
    names = names_file.read_text().split("\n") if names_file.exists() else []
    return LabelledScene(name=path.stem, cloud=cloud, class_names=[n for n in names if n])


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
