"""2D pseudo-labelling of RGB-D scenes: per frame vocabulary -> SAM masks -> clean-up -> CLIP names -> label PNG.

:class:`PseudoLabeller` labels images (any vocabulary source, mask generator and namer with the small interfaces of
``vocabulary``, ``masks`` and ``naming``); :func:`label_scene` runs it over a ScanNet-layout scene (or a rosbag2
recording) and writes the pseudo-label format of docs/architecture.md (``data.pseudo_labels``), resumably: frames
already labelled are skipped, and each batch is on disk before the next starts. A ``summary.json`` next to the
labels records masks per frame, the share of pixels labelled and the vocabulary size.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from ..data.pseudo_labels import PSEUDO_LABEL_DIR, read_scene_vocabulary, write_frame_labels
from ..data.pseudo_labels import labelled_frame_ids as listed_frame_ids
from ..data.scenes import open_scene, read_frames
from .masks import MaskSet, build_mask_generator, check_rgb_image, clean_masks
from .naming import MaskNames, build_namer, check_clip_source
from .vocabulary import VocabularySource, build_vocabulary_source

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"  # next to entities.json; not part of the format stage 1 reads


class MaskGenerator(Protocol):
    def generate(self, image: np.ndarray) -> MaskSet: ...


class Namer(Protocol):
    def name_batch(self, items: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]]) -> list[MaskNames]: ...


@dataclass
class FrameLabels:
    """One frame's pseudo labels: ``label_image`` value k > 0 means ``entities[k-1]``, 0 means unlabelled.

    Every named mask gets its own k (two chairs are two entries "chair", "chair"), so mask identity survives.
    """

    label_image: np.ndarray  # (H, W) uint16
    entities: list[str]
    masks: int  # masks left after clean-up
    named: int  # of those, masks that got a name
    labelled_fraction: float  # share of the frame's pixels with a name
    vocabulary_size: int  # texts the frame's masks could be named with

    def summary(self) -> dict:
        return {"masks": self.masks, "named": self.named, "labelled_fraction": round(self.labelled_fraction, 6),
                "vocabulary_size": self.vocabulary_size}


def compose_label_image(index_map: np.ndarray, names: MaskNames, vocabulary: Sequence[str]
                        ) -> tuple[np.ndarray, list[str]]:
    """Label PNG content and its entity list from a mask index map (-1 = none) and the masks' names."""
    if len(names) >= np.iinfo(np.uint16).max:
        raise ValueError(f"{len(names)} named masks do not fit a uint16 label image")
    entities: list[str] = []
    lut = np.zeros(len(names) + 1, np.uint16)  # lut[0]: pixels of no mask
    for i, entity in enumerate(names.entity):
        if entity >= 0:
            entities.append(vocabulary[int(entity)])
            lut[i + 1] = len(entities)
    return lut[index_map.astype(np.int64) + 1], entities


class PseudoLabeller:
    """Vocabulary, masks, clean-up and naming for a batch of RGB images."""

    def __init__(self, vocabulary_source: VocabularySource, mask_generator: MaskGenerator, namer: Namer, *,
                 containment: float = 0.9, min_area: int = 100, overlap_priority: str = "smaller"):
        if overlap_priority not in ("smaller", "score"):
            raise ValueError(f"overlap_priority must be 'smaller' or 'score', got {overlap_priority!r}")
        if not 0.0 < containment <= 1.0:
            raise ValueError(f"containment must be in (0, 1], got {containment}")
        if min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {min_area}")
        self.vocabulary_source = vocabulary_source
        self.mask_generator = mask_generator
        self.namer = namer
        self.containment = float(containment)
        self.min_area = int(min_area)
        self.overlap_priority = overlap_priority

    @classmethod
    def from_config(cls, cfg: dict) -> "PseudoLabeller":
        """Load every model the config names (so a bad path fails before the first frame)."""

        device = resolve_device(cfg.get("device", "auto"))
        allow_random = bool(cfg.get("allow_random_weights", False))
        log.info("loading models on %s", device)
        # Every path is checked before any large model is loaded: a typo in the CLIP or MLLM path should not
        # wait for SAM vit_h to be read.
        check_clip_source(cfg["naming"]["model"], cfg["naming"].get("pretrained"), allow_random_weights=allow_random)
        vocabulary = build_vocabulary_source(cfg["vocabulary"], device=device, load=False)
        generator = build_mask_generator(cfg["sam"], device=device, allow_random_weights=allow_random)
        namer = build_namer(cfg["naming"], device=device, allow_random_weights=allow_random)
        if hasattr(vocabulary, "load"):
            vocabulary.load()
        m = cfg["masks"]
        return cls(vocabulary, generator, namer, containment=m["containment"], min_area=m["min_area"],
                   overlap_priority=m["overlap_priority"])

    def label_images(self, images: Sequence[np.ndarray]) -> list[FrameLabels]:
        prepared = []
        for image in images:
            image = check_rgb_image(image)
            vocabulary = list(self.vocabulary_source.vocabulary(image))
            raw = self.mask_generator.generate(image)
            if raw.shape != image.shape[:2]:
                raise ValueError(f"mask generator returned masks of shape {raw.shape} for an image of "
                                 f"{image.shape[:2]}")
            cleaned, index_map = clean_masks(raw, containment=self.containment, min_area=self.min_area,
                                             priority=self.overlap_priority)
            prepared.append((image, cleaned, index_map, vocabulary))
        names = self.namer.name_batch([(image, cleaned.masks, vocab) for image, cleaned, _, vocab in prepared])
        out = []
        for (_, cleaned, index_map, vocabulary), frame_names in zip(prepared, names):
            label_image, entities = compose_label_image(index_map, frame_names, vocabulary)
            out.append(FrameLabels(label_image=label_image, entities=entities, masks=len(cleaned),
                                   named=len(entities), labelled_fraction=float((label_image > 0).mean()),
                                   vocabulary_size=len(vocabulary)))
        return out

    def label_image(self, image: np.ndarray) -> FrameLabels:
        return self.label_images([image])[0]


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is present, else "cpu"; other values are checked and passed through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for but torch sees no CUDA GPU (use device: auto or cpu)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


# ----------------------------------------------------------------------------------------------------------------
# scenes


def labelled_frame_ids(scene_dir: str | Path) -> set[str]:
    """Frames whose labels are complete on disk: listed in entities.json and with their label PNG present."""

    labels = Path(scene_dir) / PSEUDO_LABEL_DIR / "labels"
    return {fid for fid in listed_frame_ids(str(scene_dir)) if (labels / f"{fid}.png").is_file()}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    os.replace(tmp, path)


def _summary_totals(frames: dict, vocabulary_size: int) -> dict:
    n = len(frames)

    def mean(key: str) -> float:
        return round(float(np.mean([f[key] for f in frames.values()])), 6) if n else 0.0

    return {"frames": n, "masks_per_frame": mean("masks"), "named_per_frame": mean("named"),
            "labelled_fraction": mean("labelled_fraction"), "vocabulary_size": vocabulary_size}


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def label_scene(scene_path: str | Path, labeller: PseudoLabeller, *, every: int = 1, max_frames: int = 0,
                batch_size: int = 4, overwrite: bool = False, progress: bool = True,
                rosbag_topics: dict | None = None, config: dict | None = None, strict: bool = False) -> dict:
    """Label a scene's frames (every ``every``-th, at most ``max_frames``; 0 = all) and return its summary.

    ``scene_path``: a ScanNet-layout folder or a rosbag2 recording (read with ``rosbag_topics``, see
    ``data.scenes.open_scene``).
    ``config``: the resolved recipe, recorded in the summary so the labels can be reproduced.

    Frames already labelled are skipped unless ``overwrite``. Labels, the scene vocabulary and ``summary.json``
    are written after every batch of ``batch_size`` frames, so an interrupted run resumes where it stopped.
    An unreadable frame is skipped with a warning that names it and listed in the summary's ``unreadable``
    (``strict``: the FrameError stops the run instead).
    """
    from tqdm import tqdm


    if every < 1 or batch_size < 1 or max_frames < 0:
        raise ValueError(f"every and batch_size must be >= 1 and max_frames >= 0, got {every}, {batch_size}, "
                         f"{max_frames}")
    scene_path = Path(scene_path)
    opened = open_scene(scene_path, rosbag={**(rosbag_topics or {}), "strict": strict})
    scene, frame_ids, scene_dir = opened.scene, opened.frame_ids, opened.label_root
    positions = list(range(0, len(frame_ids), every))
    if max_frames:
        positions = positions[:max_frames]
    done = set() if overwrite else labelled_frame_ids(scene_dir)
    todo = [p for p in positions if frame_ids[p] not in done]
    out_dir = scene_dir / PSEUDO_LABEL_DIR
    summary_path = out_dir / SUMMARY_FILE
    summary = {"version": 1, "frames": {}}
    if summary_path.is_file() and not overwrite:
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is corrupt; starting a new summary", summary_path)
    if len(positions) > len(todo):
        log.info("%s: %d of %d frames already labelled, %d to go", scene_path.name, len(positions) - len(todo),
                 len(positions), len(todo))
    if config is not None:
        summary["config"] = config
    started = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"label {scene_path.name}", unit="frame", disable=not progress)
    try:
        for batch in _batches(todo, batch_size):
            skipped: list[int] = []
            readable = list(read_frames(scene, batch, strict=strict, skipped=skipped))
            if skipped:
                summary["unreadable"] = sorted(set(summary.get("unreadable", [])) | {frame_ids[p] for p in skipped})
            for (position, _), labels in zip(readable, labeller.label_images([f.color for _, f in readable])):
                write_frame_labels(str(scene_dir), frame_ids[position], labels.label_image, labels.entities)
                summary["frames"][frame_ids[position]] = labels.summary()
            # write_frame_labels keeps vocabulary.txt (merged, sorted) up to date
            summary["totals"] = _summary_totals(summary["frames"], len(read_scene_vocabulary(str(scene_dir))))
            out_dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(summary_path, summary)
            bar.update(len(batch))
            bar.set_postfix(masks=summary["totals"]["masks_per_frame"],
                            labelled=f"{summary['totals']['labelled_fraction']:.0%}")
    finally:
        bar.close()
        opened.close()  # a RosbagScene holds the bag open
    if not todo:
        vocabulary = read_scene_vocabulary(str(scene_dir)) if (out_dir / "entities.json").is_file() else []
        summary["totals"] = _summary_totals(summary["frames"], len(vocabulary))
    else:
        summary["totals"]["seconds_per_frame_last_run"] = round((time.perf_counter() - started) / len(todo), 4)
        _write_json_atomic(summary_path, summary)
    return summary

