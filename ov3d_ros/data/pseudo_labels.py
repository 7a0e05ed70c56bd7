"""The on-disk pixel pseudo-label format, and realistic noisy pseudo labels made from ground truth.

Format (docs/architecture.md), inside a scene folder::

    SCENE/pseudo_labels/labels/<frame_id>.png   uint16, 0 = unlabelled, k = entities[<frame_id>][k-1]
    SCENE/pseudo_labels/entities.json           {"version": 1, "frames": {"<frame_id>": ["chair", "table", ...]}}
    SCENE/pseudo_labels/vocabulary.txt          the scene vocabulary: one entity text per line (merged, sorted)

``synthetic_pseudo_labels`` imitates what a 2-D segmenter + captioner pipeline (SAM masks named by a vision-language
model) produces on real images, starting from perfect ground truth: mask boundaries that bleed into or fall short of
the object (dilation/erosion by a few pixels, painted in random order so dilated masks overlap), objects that are
missed entirely (unlabelled), masks too small to survive, and a few masks given a wrong name.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from .scannet import ScanNetScene

__all__ = [
    "PSEUDO_LABEL_DIR",
    "FramePseudoLabels",
    "write_frame_labels",
    "read_frame_labels",
    "read_scene_vocabulary",
    "labelled_frame_ids",
    "synthetic_pseudo_labels",
    "write_synthetic_pseudo_labels",
]

PSEUDO_LABEL_DIR = "pseudo_labels"
_VERSION = 1


def _frame_key(frame_id) -> str:
    if isinstance(frame_id, bool) or not isinstance(frame_id, (str, int, np.integer)):
        raise TypeError(f"pseudo labels: frame_id must be a str or int, got {type(frame_id).__name__}")
    key = str(frame_id)
    if not key or "/" in key or "\\" in key or key in (".", ".."):
        raise ValueError(f"pseudo labels: frame_id {key!r} cannot name a file")
    return key


def _check_entities(entities) -> list[str]:
    if isinstance(entities, str) or not isinstance(entities, (list, tuple)):
        raise TypeError(f"pseudo labels: entities must be a list of str, got {type(entities).__name__}")
    out = []
    for e in entities:
        if not isinstance(e, str) or not e.strip():
            raise ValueError(f"pseudo labels: every entity must be a non-empty string, got {e!r}")
        if "\n" in e:
            raise ValueError(f"pseudo labels: entity {e!r} contains a newline (vocabulary.txt is one per line)")
        out.append(e.strip())
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_entities_json(root: Path) -> dict:
    path = root / "entities.json"
    if not path.is_file():
        return {"version": _VERSION, "frames": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"pseudo labels: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), dict):
        raise ValueError(f"pseudo labels: {path} must be {{'version': 1, 'frames': {{...}}}}")
    if data.get("version") != _VERSION:
        raise ValueError(f"pseudo labels: {path} has version {data.get('version')!r}, this reader knows {_VERSION}")
    return data


def _write_entities_json(root: Path, data: dict) -> None:
    _atomic_write_text(root / "entities.json", json.dumps(data, indent=1, ensure_ascii=False))
    vocabulary = sorted({e for ents in data["frames"].values() for e in ents})
    _atomic_write_text(root / "vocabulary.txt", "".join(e + "\n" for e in vocabulary))


def _check_label_image(label_png, n_entities: int, where: str) -> np.ndarray:
    label = np.asarray(label_png)
    if label.ndim != 2:
        raise ValueError(f"{where}: label image must be 2-D (H, W), got shape {label.shape}")
    if label.dtype.kind not in "iu":
        raise TypeError(f"{where}: label image must be integers (uint16), got {label.dtype}")
    if label.size:
        lo, hi = int(label.min()), int(label.max())
        if lo < 0:
            raise ValueError(f"{where}: label image has negative values (0 = unlabelled)")
        if hi > n_entities:
            raise ValueError(f"{where}: label value {hi} but only {n_entities} entities")
    return label.astype(np.uint16)


def write_frame_labels(scene_dir, frame_id, label_png, entities) -> Path:
    """Write one frame's label image and entity list; entities.json and vocabulary.txt are updated.

    ``label_png``: (H, W) integers, 0 = unlabelled, k = ``entities[k-1]``. Returns the PNG path.
    """
    return _write_many(scene_dir, [(frame_id, label_png, entities)])[0]


def _write_many(scene_dir, items) -> list[Path]:
    from PIL import Image

    root = Path(scene_dir) / PSEUDO_LABEL_DIR
    (root / "labels").mkdir(parents=True, exist_ok=True)
    data = _read_entities_json(root)
    paths = []
    for frame_id, label_png, entities in items:
        key = _frame_key(frame_id)
        entities = _check_entities(entities)
        label = _check_label_image(label_png, len(entities), f"write_frame_labels({key})")
        path = root / "labels" / f"{key}.png"
        tmp = path.with_name(path.stem + ".tmp.png")
        Image.fromarray(np.ascontiguousarray(label, dtype="<u2")).save(tmp)
        os.replace(tmp, path)
        data["frames"][key] = entities
        paths.append(path)
    data["version"] = _VERSION
    _write_entities_json(root, data)
    return paths


def read_frame_labels(scene_dir, frame_id) -> tuple[np.ndarray, list[str]]:
    """(label image (H, W) uint16, entities) of one frame; FileNotFoundError if the frame has no labels."""
    from PIL import Image

    root = Path(scene_dir) / PSEUDO_LABEL_DIR
    key = _frame_key(frame_id)
    path = root / "labels" / f"{key}.png"
    if not path.is_file():
        raise FileNotFoundError(f"read_frame_labels: no pseudo labels for frame {key} ({path})")
    data = _read_entities_json(root)
    if key not in data["frames"]:
        raise ValueError(f"read_frame_labels: {path} exists but entities.json has no entry for frame {key}")
    entities = _check_entities(data["frames"][key])
    with Image.open(path) as img:
        label = np.asarray(img)
    return _check_label_image(label, len(entities), f"read_frame_labels({key})"), entities


def read_scene_vocabulary(scene_dir) -> list[str]:
    """The scene's entity texts (vocabulary.txt; rebuilt from entities.json if that file is missing)."""
    root = Path(scene_dir) / PSEUDO_LABEL_DIR
    path = root / "vocabulary.txt"
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not (root / "entities.json").is_file():
        raise FileNotFoundError(f"read_scene_vocabulary: {root} holds no pseudo labels")
    data = _read_entities_json(root)
    return sorted({e for ents in data["frames"].values() for e in ents})


def labelled_frame_ids(scene_dir) -> list[str]:
    """Frame ids that have pseudo labels (sorted numerically where they are numbers)."""
    root = Path(scene_dir) / PSEUDO_LABEL_DIR
    if not (root / "entities.json").is_file():
        return []
    keys = list(_read_entities_json(root)["frames"])
    return sorted(keys, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))


# ----------------------------------------------------------------------------------------------------------------------
# Noisy pseudo labels from ground truth
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class FramePseudoLabels:
    frame_id: str
    label: np.ndarray  # (H, W) uint16, 0 = unlabelled
    entities: list[str]
    dropped_instances: list[int]  # ground-truth instances left unlabelled (missed or too small)
    renamed_instances: dict[int, str]  # ground-truth instance -> the wrong name it was given


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a 3x3 cross, ``radius`` times (a diamond of that radius)."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    # Pixels beyond the image border do not count as background: a mask is not eaten away from the frame edge.
    return ~_dilate(~mask, radius)


def _bounding_slices(mask: np.ndarray, pad: int):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(0, rows[0] - pad), min(mask.shape[0], rows[-1] + pad + 1)
    c0, c1 = max(0, cols[0] - pad), min(mask.shape[1], cols[-1] + pad + 1)
    return slice(r0, r1), slice(c0, c1)


def synthetic_pseudo_labels(frames, class_names, rng=None, *, seed: int | None = None, drop_fraction: float = 0.1,
                            wrong_name_fraction: float = 0.05, max_boundary_px: int = 3, min_pixels: int = 40,
                            consistent_names: bool = True) -> list[FramePseudoLabels]:
    """Noisy pixel pseudo labels for frames with ground truth (SyntheticFrame-like: ``class_map``,
    ``instance_map``, ``frame.index``).

    Per frame, every ground-truth instance becomes one mask named by its class, except:
    - with probability ``drop_fraction`` it is missed (stays unlabelled);
    - its boundary is eroded or dilated by 0..``max_boundary_px`` pixels (masks are painted in random order, so a
      dilated mask overlaps its neighbours);
    - masks with fewer than ``min_pixels`` pixels left are dropped;
    - with probability ``wrong_name_fraction`` it is named as another, random class.
    With ``consistent_names`` an instance keeps its (possibly wrong) name and its dropped state across frames, as a
    captioner tends to repeat itself; otherwise every frame draws anew.
    Entities of a frame are the distinct names in it (sorted); label k means ``entities[k-1]``.
    ``rng`` (a numpy Generator) or ``seed`` makes the noise reproducible.
    """
    names = list(class_names)
    if len(names) < 2:
        raise ValueError("synthetic_pseudo_labels: need at least two class names (wrong names swap between them)")
    for value, what in ((drop_fraction, "drop_fraction"), (wrong_name_fraction, "wrong_name_fraction")):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"synthetic_pseudo_labels: {what} must be in [0, 1], got {value}")
    if int(max_boundary_px) < 0 or int(min_pixels) < 0:
        raise ValueError("synthetic_pseudo_labels: max_boundary_px and min_pixels must be >= 0")
    if rng is None:
        rng = np.random.default_rng(seed)
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"synthetic_pseudo_labels: rng must be a numpy Generator, got {type(rng).__name__}")

    instance_state: dict[int, tuple[bool, str | None]] = {}  # instance -> (dropped, wrong name or None)

    def draw_state(cls_index: int) -> tuple[bool, str | None]:
        dropped = bool(rng.uniform() < drop_fraction)
        wrong = None
        if rng.uniform() < wrong_name_fraction:
            others = [n for i, n in enumerate(names) if i != cls_index and n != names[cls_index]]
            wrong = others[int(rng.integers(len(others)))]
        return dropped, wrong

    out = []
    for position, f in enumerate(frames):
        if not (hasattr(f, "class_map") and hasattr(f, "instance_map")):
            raise TypeError(f"synthetic_pseudo_labels: frame {position} ({type(f).__name__}) has no class_map / "
                            "instance_map ground truth")
        class_map, instance_map = np.asarray(f.class_map), np.asarray(f.instance_map)
        if class_map.ndim != 2 or instance_map.shape != class_map.shape:
            raise ValueError(f"synthetic_pseudo_labels: frame {position} needs 2-D class_map and instance_map "
                             "of one shape")
        frame = getattr(f, "frame", None)
        frame_id = str(int(frame.index)) if frame is not None else str(getattr(f, "frame_id", position))
        instances = [int(i) for i in np.unique(instance_map) if i >= 0]
        rng.shuffle(instances)  # painting order: later masks overwrite earlier ones where they overlap
        text_map = np.full(class_map.shape, -1, dtype=np.int64)  # index into `names`-like list of texts
        texts: list[str] = []
        dropped, renamed = [], {}
        for inst in instances:
            mask = instance_map == inst
            classes = class_map[mask]
            classes = classes[classes >= 0]
            if classes.size == 0:
                continue
            cls = int(np.bincount(classes).argmax())
            if cls >= len(names):
                raise ValueError(f"synthetic_pseudo_labels: class index {cls} but only {len(names)} class names")
            if consistent_names and inst in instance_state:
                is_dropped, wrong = instance_state[inst]
            else:
                is_dropped, wrong = draw_state(cls)
                if consistent_names:
                    instance_state[inst] = (is_dropped, wrong)
            if is_dropped:
                dropped.append(inst)
                continue
            r = int(rng.integers(0, int(max_boundary_px) + 1))
            if r:
                rows, cols = _bounding_slices(mask, r + 1)
                sub = mask[rows, cols]
                sub = _dilate(sub, r) if rng.uniform() < 0.5 else _erode(sub, r)
                mask = np.zeros_like(mask)
                mask[rows, cols] = sub
            if int(mask.sum()) < int(min_pixels):
                dropped.append(inst)
                continue
            text = wrong if wrong is not None else names[cls]
            if wrong is not None:
                renamed[inst] = wrong
            if text not in texts:
                texts.append(text)
            text_map[mask] = texts.index(text)
        entities = sorted(set(texts))
        remap = np.array([entities.index(t) + 1 for t in texts] + [0], dtype=np.uint16)
        label = remap[text_map]  # -1 indexes the trailing 0 (unlabelled)
        # A text whose every pixel was painted over by later masks would be listed without pixels: drop it.
        present = np.unique(label[label > 0]) - 1
        if len(present) != len(entities):
            keep = [entities[i] for i in present]
            lut = np.zeros(len(entities) + 1, dtype=np.uint16)
            for new, old in enumerate(present):
                lut[old + 1] = new + 1
            label, entities = lut[label], keep
        out.append(FramePseudoLabels(frame_id, label, entities, dropped, renamed))
    return out


def write_synthetic_pseudo_labels(scene_dir, frames=None, class_names=None, *, seed: int = 0,
                                  **noise) -> list[FramePseudoLabels]:
    """Write noisy pseudo labels for an exported synthetic scene (``write_scannet_scene`` output).

    With ``frames`` (SyntheticFrames) their ground-truth maps are used; without, the maps and class names are read
    from the scene folder (label-filt/, instance-filt/, classes.json). ``noise`` goes to synthetic_pseudo_labels.
    """
    if frames is None:

        scene = ScanNetScene(scene_dir)
        if class_names is None:
            class_names = scene.class_names
        frames = []
        for i, frame_id in enumerate(scene.frame_ids):
            maps = scene.ground_truth_maps(i)
            if maps is None:
                raise FileNotFoundError(f"write_synthetic_pseudo_labels: {scene_dir} has no ground-truth maps for "
                                        f"frame {frame_id} (label-filt/, instance-filt/); export it with "
                                        "write_scannet_scene from SyntheticFrames")
            frames.append(_GroundTruthMaps(frame_id, maps[0], maps[1]))
    if class_names is None:
        raise ValueError("write_synthetic_pseudo_labels: class_names are needed with frames")
    labels = synthetic_pseudo_labels(frames, class_names, seed=seed, **noise)
    _write_many(scene_dir, [(p.frame_id, p.label, p.entities) for p in labels])
    return labels


@dataclass
class _GroundTruthMaps:
    frame_id: str
    class_map: np.ndarray
    instance_map: np.ndarray
