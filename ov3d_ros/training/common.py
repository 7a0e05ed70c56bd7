"""What both stages and the evaluator share: the model on its device, the frozen text encoder with a per-vocabulary
embedding cache, and export to the shared checkpoint format (model/checkpoint.py, read by Segmenter.load)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from ..model import build_model
from ..model.backend import resolve_device
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..text import build_text_encoder


log = logging.getLogger("ov3d.train")


class TrainingContext:
    """Model + device + text encoder for one training run."""

    def __init__(self, cfg: dict, *, model: torch.nn.Module | None = None, text_encoder=None):

        self.cfg = cfg
        self.device = resolve_device(cfg["device"])
        self.text_spec = dict(cfg["text_encoder"])
        self._text_encoder = text_encoder
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}
        if model is None:
            model_cfg = {"preset": cfg["model"]["preset"], "voxel_size": float(cfg["model"]["voxel_size"]),
                         **cfg["model"]["overrides"]}
            model_cfg.setdefault("embed_dim", self.text_encoder.dim)
            model = build_model(model_cfg)
        if model.embed_dim != self.text_encoder.dim:
            raise ValueError(f"model embed_dim {model.embed_dim} != text encoder dim {self.text_encoder.dim} "
                             f"({self.text_spec}); set model.overrides.embed_dim or change the encoder")
        self.model = model.to(self.device)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            if self.text_spec.get("kind") == "open_clip" and not self.text_spec.get("pretrained"):
                raise ValueError(f"text_encoder {self.text_spec}: pretrained is not set; without its weights an "
                                 "open_clip model gives random text embeddings to train against. Set "
                                 "text_encoder.pretrained to the local weights file (open_clip_pytorch_model.bin)")
            self._text_encoder = build_text_encoder(self.text_spec)
        return self._text_encoder

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(Q, D) L2-normalised text embeddings on the training device; computed once per vocabulary."""
        key = tuple(texts)
        if key not in self._cache:
            if not texts:
                raise ValueError("cannot embed an empty vocabulary")
            emb = torch.as_tensor(self.text_encoder.encode(list(texts)), dtype=torch.float32)
            self._cache[key] = torch.nn.functional.normalize(emb, dim=1).to(self.device)
        return self._cache[key]

    @classmethod
    def from_checkpoint(cls, cfg: dict, path: str | Path, *, text_encoder=None) -> "TrainingContext":
        """Rebuild the model and text encoder of a shared-format checkpoint (e.g. stage 1's, for stage 2)."""

        ckpt = load_checkpoint(str(path), "cpu")
        cfg = dict(cfg)
        cfg["text_encoder"] = dict(ckpt.text_encoder_spec)
        if text_encoder is None:
            text_encoder = ckpt.build_text_encoder()
        return cls(cfg, model=ckpt.model, text_encoder=text_encoder)


def export_checkpoint(path: Path, ctx: TrainingContext, vocabulary: list[str], meta: dict) -> None:
    """Write the model in the shared checkpoint format (save_checkpoint writes atomically).

    The text encoder object (not just the recipe's spec) is saved, so its prompt templates travel with the weights
    and the segmenter embeds queries exactly as training embedded the entity texts.
    """

    meta = dict(meta)
    meta.setdefault("train_config", ctx.cfg)
    save_checkpoint(Path(path), ctx.model, ctx.text_encoder, vocabulary=list(vocabulary), meta=meta)
