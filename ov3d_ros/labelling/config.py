"""The `ov3d-train label` recipe: built-in defaults, a YAML file over them, dotted ``--set`` overrides.

Every key a user may set is in ``LABEL_DEFAULTS`` (training/label.yaml repeats them with comments), so a typo fails
loudly. Merging and override parsing are the trainer's (``training.config``): one config mechanism for the project.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from ..training.config import DEFAULTS as TRAINING_DEFAULTS
from ..training.config import ConfigError, apply_overrides, check_types, deep_merge
from .masks import CUSTOM_SAM_DEFAULTS
from .naming import DEFAULT_TEMPLATES
from .vocabulary import DESCRIBE_PROMPT, LIST_PROMPT

LABEL_DEFAULTS: dict[str, Any] = {
    "device": "auto",  # "auto" (cuda when present), "cpu", "cuda", "cuda:1"
    "threads": 0,  # torch CPU threads; 0 leaves torch's default
    # Random weights give random masks and names: refused unless set (benchmarks and plumbing checks only).
    "allow_random_weights": False,
    "frames": {
        "every": 1,  # label every n-th frame of a scene (ScanNet streams are highly redundant; 10-20 is common)
        "max_frames": 0,  # per scene, 0 = all
        "batch_size": 4,  # frames whose masks go through CLIP together (and are written together)
        "strict": False,  # stop at an unreadable frame instead of skipping it (skipped frames are listed)
    },
    # Topics of rosbag2 recordings given as scenes: the trainer's (data.rosbag), so labels and training agree.
    "rosbag": copy.deepcopy(TRAINING_DEFAULTS["data"]["rosbag"]),
    "vocabulary": {
        "source": "fixed",  # fixed | mllm | union
        "fixed": {
            "names": "scannet200",  # a built-in class table (scannet200, scannet20, nyu40), a names file (one per line), or a YAML list
            "extra": [],  # the user's own names, added to `names`
        },
        "mllm": {
            "model": None,  # local folder of a Hugging Face multimodal model (e.g. llava-v1.6-mistral-7b-hf)
            "max_new_tokens": 256,
            "dtype": "auto",  # auto | float16 | bfloat16 | float32
            "max_items": 0,  # keep at most this many listed objects per image; 0 = all
            "describe_prompt": DESCRIBE_PROMPT,
            "list_prompt": LIST_PROMPT,
        },
    },
    "sam": {
        "model_type": "vit_h",  # vit_h | vit_l | vit_b | custom (custom: sizes from sam.custom; tests)
        "checkpoint": None,  # e.g. /models/sam_vit_h_4b8939.pth
        "points_per_side": 32,
        "points_per_batch": 64,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
        "min_mask_region_area": 0,  # > 0 needs OpenCV (SAM's hole/island clean-up)
        "custom": dict(CUSTOM_SAM_DEFAULTS),
    },
    "masks": {
        "containment": 0.9,  # Segment3D: drop a mask lying >= this fraction inside a larger mask
        "min_area": 100,  # pixels; smaller masks (and visible remainders) are dropped
        "overlap_priority": "smaller",  # smaller | score: who keeps a pixel covered by two masks
    },
    "naming": {
        "model": "ViT-B-16",  # open_clip model name, or local-dir:/folder
        "pretrained": None,  # local checkpoint file (or an open_clip tag where the weights are cached)
        "templates": list(DEFAULT_TEMPLATES),
        "min_similarity": 0.2,  # cosine; below it a mask stays unlabelled
        "min_margin": 0.01,  # cosine; best minus runner-up below it leaves the mask unlabelled
        "crop_padding": 0.1,  # grow each mask's box by this fraction of its longer side
        "mask_background": True,  # grey out pixels of the crop outside the mask
        "batch_size": 64,  # crops per CLIP forward pass
    },
}
# Keys whose value may be either of two kinds.
_FLEXIBLE = {"vocabulary.fixed.names": (str, list), "sam.checkpoint": (str,), "naming.pretrained": (str,),
             "vocabulary.mllm.model": (str,)}


def _resolve_paths(recipe: dict, folder: Path) -> None:
    """Model and names paths in a recipe are relative to the recipe's folder (recipes travel with their models)."""
    def fix(section: dict | None, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str) and section[key]:
            value = section[key]
            if value.startswith(("local-dir:", "hf-hub:")) or Path(value).expanduser().is_absolute():
                return
            candidate = folder / value
            if candidate.exists() or "/" in value or value.endswith((".pth", ".pt", ".bin", ".safetensors", ".txt")):
                section[key] = str(candidate)

    fix(recipe.get("sam"), "checkpoint")
    fix(recipe.get("naming"), "pretrained")
    vocab = recipe.get("vocabulary") or {}
    fix(vocab.get("mllm"), "model")
    fix(vocab.get("fixed"), "names")


def _read_recipe(path: Path, seen: tuple = ()) -> dict:
    """A label recipe merged over the recipe its ``base:`` names (relative to it), paths resolved per file."""
    if not path.is_file():
        raise FileNotFoundError(f"label recipe not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"label recipe base cycle: {' -> '.join(map(str, seen + (path.resolve(),)))}")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"label recipe {path} must be a YAML mapping, got {type(recipe).__name__}")
    _resolve_paths(recipe, path.resolve().parent)
    base = recipe.pop("base", None)
    if base is None:
        return recipe
    base_path = Path(base) if Path(base).is_absolute() else path.resolve().parent / base
    return deep_merge(_read_recipe(base_path, seen + (path.resolve(),)), recipe, strict=False)


def load_label_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults, then the YAML recipe at ``path``, then ``key.sub=value`` overrides; validated."""
    config = copy.deepcopy(LABEL_DEFAULTS)
    if path is not None:
        config = deep_merge(config, _read_recipe(Path(path)))
    config = apply_overrides(config, overrides)
    check_types(config, LABEL_DEFAULTS, kinds=_FLEXIBLE, allow_empty=False, free_form=("rosbag",))
    return config

