"""The one checkpoint format: weights plus everything needed to rebuild the model and its text encoder.

File = ``torch.save`` of a dict made only of plain types (str/int/float/bool/None, lists, dicts, tensors), so it
loads with ``torch.load(weights_only=True)`` (no pickled code runs when a checkpoint is opened)::

    {"format": "ov3d", "version": 1,
     "model": resolved model cfg (unet.resolve_config), "state_dict": {name: tensor},
     "text_encoder": encoder spec (text.build_text_encoder), "embed_dim": D, "voxel_size": metres,
     "vocabulary": [entity texts seen in training], "meta": {free-form plain data: epoch, metrics, ...}}
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..text import build_text_encoder
from .backend import resolve_device
from .unet import SpUNet, build_model, resolve_config

FORMAT = "ov3d"
VERSION = 1
_REQUIRED = ("format", "version", "model", "state_dict", "text_encoder", "embed_dim", "voxel_size", "vocabulary",
             "meta")


def _check_plain(value, where: str) -> None:
    """Raise TypeError naming the first value that torch.load(weights_only=True) could not rebuild."""
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where} has a key of type {type(k).__name__}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"checkpoint {where} is a {type(value).__name__}; checkpoints hold only plain types "
                    "(str, int, float, bool, None, lists, dicts, tensors)")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on ``device``) and what was saved with it."""

    model: SpUNet
    text_encoder_spec: dict
    embed_dim: int
    voxel_size: float
    vocabulary: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    path: str | None = None

    def build_text_encoder(self, device="cpu", **kwargs):
        """Build the saved text encoder and check that its dimension matches the model's."""

        encoder = build_text_encoder(self.text_encoder_spec, device=device, **kwargs)
        check_embed_dim(self.embed_dim, encoder, self.path)
        return encoder


def check_embed_dim(embed_dim: int, encoder, path=None) -> None:
    if int(encoder.dim) != int(embed_dim):
        source = f"checkpoint {path}" if path else "the model"
        raise ValueError(f"{source} has embedding dim {embed_dim} but text encoder {encoder.spec.get('kind')}:"
                         f"{encoder.spec.get('name')} produces {encoder.dim}-d embeddings; use the encoder the "
                         "model was trained with")


def save_checkpoint(path, model: SpUNet, text_encoder, *, vocabulary=(), meta: dict | None = None) -> Path:
    """Write ``model`` and its text encoder (a TextEncoder, or its spec dict) to ``path`` atomically.

    vocabulary: entity texts seen in training; meta: plain data (epoch, metrics, training config, ...).
    """
    if not isinstance(model, SpUNet):
        raise TypeError(f"save_checkpoint expects an SpUNet, got {type(model).__name__}")
    if isinstance(text_encoder, dict):
        spec = dict(text_encoder)
        if "kind" not in spec:
            raise ValueError(f"text encoder spec has no 'kind': {spec!r}")
    elif hasattr(text_encoder, "spec") and hasattr(text_encoder, "dim"):
        check_embed_dim(model.embed_dim, text_encoder)
        spec = text_encoder.spec
    else:
        raise TypeError("text_encoder must be a TextEncoder or its spec dict, got "
                        f"{type(text_encoder).__name__}")
    if isinstance(vocabulary, str):
        raise TypeError("vocabulary must be a list of strings, not one str")
    vocabulary = [str(v) for v in vocabulary]
    meta = dict(meta or {})
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": dict(model.cfg),
        "state_dict": state_dict,
        "text_encoder": spec,
        "embed_dim": int(model.embed_dim),
        "voxel_size": float(model.voxel_size),
        "vocabulary": vocabulary,
        "meta": meta,
    }
    for key in ("model", "text_encoder", "meta"):
        _check_plain(payload[key], key)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a crash mid-save never leaves a truncated file under the final name.
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (hex) of a model's weights and buffers: names, dtypes, shapes and values. Features of two models are
    comparable only when their fingerprints agree, wherever and however often their checkpoints were copied."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path) -> dict:
    """Load and validate a checkpoint file's dict (no model built). Raises ValueError for corrupt/wrong files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF errors, and weights_only refusing a pickled object
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"{path} is not a readable checkpoint (corrupt, not a torch file, or holding objects "
                         f"other than plain data): {type(exc).__name__}: {detail}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not an ov3d checkpoint (format {found!r}, expected {FORMAT!r}); "
                         "checkpoints are written by ov3d_ros.model.checkpoint.save_checkpoint")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise ValueError(f"{path}: checkpoint version {version!r} is not supported (this ov3d_ros reads "
                         f"version <= {VERSION}); update ov3d_ros")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    if not isinstance(data["state_dict"], dict):
        raise ValueError(f"{path}: checkpoint state_dict is a {type(data['state_dict']).__name__}, not a dict")
    if not isinstance(data["text_encoder"], dict) or "kind" not in data["text_encoder"]:
        raise ValueError(f"{path}: checkpoint text_encoder spec is invalid: {data['text_encoder']!r}")
    cfg = data["model"]
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: checkpoint model config is a {type(cfg).__name__}, not a dict")
    if int(cfg.get("embed_dim", -1)) != data["embed_dim"]:
        raise ValueError(f"{path}: embed_dim {data['embed_dim']} disagrees with the model config's "
                         f"{cfg.get('embed_dim')}")
    if not math.isclose(float(cfg.get("voxel_size", -1.0)), float(data["voxel_size"]), rel_tol=1e-9):
        raise ValueError(f"{path}: voxel_size {data['voxel_size']} disagrees with the model config's "
                         f"{cfg.get('voxel_size')}")
    return data


def load_checkpoint(path, device="cpu", *, text_encoder=None) -> Checkpoint:
    """Rebuild the model from a checkpoint on ``device`` ('cpu', 'cuda', 'auto'), in eval mode.

    text_encoder: optionally an encoder to check against the checkpoint's embedding dim (ValueError if it differs).
    """
    data = read_checkpoint(path)
    try:
        cfg = resolve_config(data["model"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: checkpoint model config is invalid: {exc}") from exc
    model = build_model(cfg)
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model config (a corrupt or mismatched checkpoint): "
                         f"{exc}") from exc
    model = model.to(resolve_device(device)).eval()
    ckpt = Checkpoint(model=model, text_encoder_spec=dict(data["text_encoder"]), embed_dim=int(data["embed_dim"]),
                      voxel_size=float(data["voxel_size"]), vocabulary=list(data["vocabulary"]),
                      meta=dict(data["meta"]), path=str(path))
    if text_encoder is not None:
        check_embed_dim(ckpt.embed_dim, text_encoder, path)
    return ckpt
