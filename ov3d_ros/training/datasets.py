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

from ..data.class_tables import ClassTable
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
                         match_voxel: float, progress: bool = True, vocabulary: list[str] | None = None
                         ) -> tuple[list[SceneData], list[str]]:
    """Scenes with their labelled frames and consistency pairs, and the merged training vocabulary. A scene whose
    frames have no pseudo labels takes ``vocabulary`` as its own (stage 2 from a class list); without it, such a
    scene has an empty vocabulary."""

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
                if vocabulary is None:
                    log.warning("%s: no pseudo labels for frame %s; it is used for consistency only", path, frame_id)
                label_image, entities = None, []
            labelled.append((frame_id, partial, label_image, list(entities)))
        raw.append((Path(path), labelled))
    given = list(vocabulary or [])
    scene_texts = [sorted({t for *_, ents in labelled for t in ents}) or given for _, labelled in raw]
    if vocabulary is not None:
        unlabelled = [path.name for (path, _), texts in zip(raw, scene_texts) if texts is given]
        if unlabelled:
            log.info("%d scenes without pseudo labels take the given vocabulary of %d texts: %s", len(unlabelled),
                     len(given), ", ".join(unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else ""))
    vocabulary = sorted({t for texts in scene_texts for t in texts})
    if not vocabulary:
        raise ValueError(f"no pseudo labels found in any training scene ({', '.join(map(str, paths))}); run "
                         "`ov3d-train label` or `ov3d-train prepare` first (stage 2 alone can also take a class "
                         "list: stage2.vocabulary)")
    text_index = {t: i for i, t in enumerate(vocabulary)}
    scenes = []
    for (path, labelled), scene_vocab in zip(raw, scene_texts):
        frames = []
        for frame_id, partial, label_image, entities in labelled:
            if label_image is None:
                label = np.full(len(partial), -1, dtype=np.int32)
            else:
                label = label_points_from_image(partial.pixels, label_image, entities, text_index)
            frame_vocab = np.array(sorted({text_index[t] for t in entities}), dtype=np.int64)
            frames.append(FrameData(partial.xyz, partial.rgb, label, int(partial.index), partial, frame_vocab))
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


def load_labelled_scene(path: str | Path, classes: ClassTable | None = None,
                        category_ids: dict[str, int] | None = None) -> LabelledScene:
    """Ground-truth labelled global cloud of a ScanNet-layout scene (labels PLY or exported synthetic GT) or of a
    labels PLY.

    ``classes``: the class table the stored labels were written with (``data.class_tables``); the labels are read
    through it, and values it does not list are refused. Without it: the scene's classes.json, else ScanNet's NYU40
    ids (a PLY: the names in ``<stem>.classes.txt``). ``category_ids``: ScanNet's raw category -> label id
    (``class_tables.read_category_ids``): the labels then come from the scene's object annotations
    (aggregation.json), as ScanNet200 is scored. A per-vertex mask, ``*_mask.npy`` beside the labels (one bool or
    0/1 per vertex) or a PLY vertex property ``mask``, scores only the vertices it marks."""
    path = Path(path)
    if path.suffix == ".ply":
        cloud, extras = read_ply(str(path))
        names_file = path.with_suffix(".classes.txt")
        names = [n for n in names_file.read_text().split("\n") if n] if names_file.exists() else []
        masks = [path.with_name(path.stem + "_mask.npy")]
    else:
        scene = ScanNetScene(str(path))
        cloud = scene.ground_truth(raw=classes is not None)
        if cloud is None:
            raise ValueError(f"scene {path} has no labelled ground-truth cloud to evaluate on")
        extras = cloud.extras or {}
        names = list(scene.class_names)
        if classes is None and not (path / "classes.json").is_file():
            log.warning("scene %s has no classes.json: its labels are read as ScanNet's NYU40 ids; give the class "
                        "table they were written with (ov3d-train eval --classes) if they are not", path.name)
        masks = sorted(path.glob("*_mask.npy"))
        if category_ids is not None:
            cloud = cloud.with_labels(_annotation_labels(scene, len(cloud), category_ids), cloud.score)
    if cloud.label is None:
        raise ValueError(f"{path} has no 'label' field to evaluate against")
    if classes is not None:
        label = classes.indices(cloud.label, where=f"the ground truth of {path}")
        if names and path.suffix != ".ply" and (path / "classes.json").is_file():
            _check_same_names(path, names, classes, cloud.label)
        cloud, names = cloud.with_labels(label, cloud.score), list(classes.names)
    mask = _vertex_mask(path, masks, extras, len(cloud))
    if mask is not None:
        cloud = cloud.with_labels(np.where(mask, cloud.label, -1).astype(np.int32), cloud.score)
    return LabelledScene(name=path.stem if path.suffix == ".ply" else path.name, cloud=cloud, class_names=names)


def _annotation_labels(scene: ScanNetScene, n: int, category_ids: dict[str, int]) -> np.ndarray:
    """Per-vertex label ids of a ScanNet scene's object annotations through its raw-category map (0 = none)."""
    annotations = scene.annotations(n)
    if annotations is None:
        raise ValueError(f"scene {scene.path}: a label map needs the object annotations (*.aggregation.json and "
                         "*_vh_clean_2.0.010000.segs.json)")
    objects, category = annotations
    unknown = sorted({c for c in category.values() if c not in category_ids})
    if unknown:
        log.warning("scene %s: %d annotated categories are not in the label map (left unannotated): %s",
                    scene.name, len(unknown), ", ".join(unknown[:5]))
    label_of = {o: category_ids.get(c, 0) for o, c in category.items()}
    return np.array([label_of.get(int(o), 0) for o in objects], dtype=np.int64) if len(objects) else \
        np.zeros(0, np.int64)


def _check_same_names(path: Path, names: list[str], classes: ClassTable, labels: np.ndarray) -> None:
    """A scene that names its labels (classes.json) must name them as the class table does."""
    table = dict(zip(classes.values, classes.names))
    for value in np.unique(labels[labels >= 0]).tolist():
        if value in table and value < len(names) and names[value] != table[value]:
            raise ValueError(f"scene {path}: its classes.json calls label {value} '{names[value]}', class table "
                             f"{classes.source} calls it '{table[value]}'")


def _vertex_mask(path: Path, candidates: list[Path], extras: dict, n: int) -> np.ndarray | None:
    """The scored vertices: a ``*_mask.npy`` file or a ``mask`` PLY property; None = all."""
    files = [p for p in candidates if p.is_file()]
    if len(files) > 1:
        raise ValueError(f"scene {path}: more than one vertex mask ({', '.join(p.name for p in files)})")
    if files:
        try:
            mask = np.load(files[0], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"vertex mask {files[0]}: {exc}") from None
        where = files[0]
    elif "mask" in extras:
        mask, where = extras["mask"], f"{path}: vertex property 'mask'"
    else:
        return None
    mask = np.asarray(mask).reshape(-1)
    if len(mask) != n:
        raise ValueError(f"vertex mask {where} has {len(mask)} entries for {n} vertices")
    return mask.astype(bool)


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
