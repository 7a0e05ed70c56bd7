"""Map files: one ``.npz`` from which a restarted robot answers queries before its first new frame.

The fusion node writes its VoxelMap into the file (``Mapper.save``: sums, counts, free-space evidence and the
stamp of the newest keyframe), and the segmenter node adds, under ``features.`` names, the feature map it computed
on that map (``FeatureSnapshot.to_arrays``: points, per-tile unit features and superpoints) and the ids of the
objects it has named (``InstanceTracker.state``). Both write to one ``data.npz.staged`` name, renamed to the map
file once both parts are in: the voxels are written once, and no reader sees a file without its features. The
features record what computed them: the model's fingerprint (``model_fingerprint``), the map's voxel and the
feature tile. Features of one model mean nothing to another, so ``read_features`` refuses a file made with another
model or voxel, saying which. A file written by the fusion node alone is a plain VoxelMap file, and one of the
segmenter alone holds features only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .feature_map import FeatureSnapshot
from .data.npz import add_to_npz, npz_names, read_npz, write_npz

__all__ = ["FEATURES_FORMAT", "SavedFeatures", "open_map_file", "read_features", "write_features"]

FEATURES_FORMAT = "ov3d_features"
FEATURES_VERSION = 1
_FEATURES = "features."  # prefix of the feature map's arrays
_TRACKS = "tracks."  # prefix of the object ids' arrays


@dataclass
class SavedFeatures:
    """A feature map read back from a map file: the snapshot (features on the requested device), the map's frame,
    the object tracks (``InstanceTracker.state`` arrays) and the record of what made them (``meta``)."""

    snapshot: FeatureSnapshot
    frame_id: str
    tracks: dict
    meta: dict


def open_map_file(path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` map file at ``path`` (``data.npz.read_npz``); ValueError naming the file when it is
    missing, truncated or not an ``.npz`` archive (a map file is never half read)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"map file not found: {path}")
    try:
        return read_npz(path)
    except ValueError as exc:
        raise ValueError(f"map file {path}: {exc} (truncated or not an .npz map)") from None


def write_features(path, snapshot: FeatureSnapshot, *, fingerprint: str, map_voxel: float, tile: float,
                   frame_id: str, tracks: dict | None = None) -> Path:
    """Put ``snapshot`` (and the object ``tracks``) into the map file at ``path``, or into a new file. Added to a
    VoxelMap file that holds no features yet as further archive members, in place, without reading or rewriting
    its voxels: that is a file being made (``data.npz.staged``, as the segmenter node saves). A file with features
    is replaced at once, its voxels kept and the earlier features dropped. Returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"a map file ends in .npz, got '{path}'")
    meta = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "model_fingerprint": fingerprint,
            "map_voxel": float(map_voxel), "tile": float(tile), "frame_id": frame_id, "points": len(snapshot)}
    arrays = {_FEATURES + "meta": np.array(json.dumps(meta))}
    arrays.update({_FEATURES + name: value for name, value in snapshot.to_arrays().items()})
    arrays.update({_TRACKS + name: value for name, value in (tracks or {}).items()})
    if not path.exists():
        return write_npz(path, arrays)
    if not any(name.startswith((_FEATURES, _TRACKS)) for name in npz_names(path)):
        add_to_npz(path, arrays)
        return path
    kept = {name: value for name, value in open_map_file(path).items() if not name.startswith((_FEATURES, _TRACKS))}
    return write_npz(path, {**kept, **arrays})


def read_features(path, *, fingerprint: str, map_voxel: float, tile: float,
                  device: str | torch.device = "cpu") -> SavedFeatures:
    """The feature map saved in the map file at ``path``, checked against the model (``fingerprint``) and the
    map voxel and feature tile of the caller; ValueError saying what does not match, or what is missing."""
    arrays = open_map_file(path)
    if _FEATURES + "meta" not in arrays:
        raise ValueError(f"map file {path} holds no features (saved by the fusion node alone?): save it with "
                         "the segmenter node's ~/save_map")
    try:
        meta = json.loads(str(arrays[_FEATURES + "meta"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"map file {path}: unreadable feature record: {exc}") from exc
    if meta.get("format") != FEATURES_FORMAT or meta.get("version") != FEATURES_VERSION:
        raise ValueError(f"map file {path}: features of format {meta.get('format')} version {meta.get('version')}; "
                         f"this code reads {FEATURES_FORMAT} version {FEATURES_VERSION}")
    if meta.get("model_fingerprint") != fingerprint:
        raise ValueError(f"map file {path} was made with another model (weights "
                         f"{str(meta.get('model_fingerprint'))[:12]}, this checkpoint's {fingerprint[:12]}): its "
                         "features mean nothing to this checkpoint; load it with the checkpoint that made it, or "
                         "start a new map")
    for name, value in (("map_voxel", map_voxel), ("tile", tile)):
        if not math.isclose(float(meta.get(name, math.nan)), float(value), rel_tol=1e-9):
            raise ValueError(f"map file {path} has {name} {meta.get(name)} m, this node {value} m: set "
                             f"{'map_voxel (the fusion voxel_size)' if name == 'map_voxel' else 'feature_tile'} "
                             f"to {meta.get(name)} to load it")
    features = {name[len(_FEATURES):]: value for name, value in arrays.items() if name.startswith(_FEATURES)}
    tracks = {name[len(_TRACKS):]: value for name, value in arrays.items() if name.startswith(_TRACKS)}
    try:
        snapshot = FeatureSnapshot.from_arrays(features, device)
    except ValueError as exc:
        raise ValueError(f"map file {path}: {exc}") from exc
    return SavedFeatures(snapshot, str(meta.get("frame_id", "map")), tracks, meta)
