"""Mask naming: each mask gets the vocabulary text whose CLIP embedding is closest to the embedding of its crop.

No guessing: a mask stays unlabelled (-1) when its best cosine similarity is below ``min_similarity`` or when the
best beats the runner-up by less than ``min_margin`` (two texts fit about equally well, so either would be a coin
toss). With a single-text vocabulary there is no runner-up and only ``min_similarity`` applies.

:class:`MaskNamer` holds the logic and works with any embedder offering ``encode_images(crops)`` and
``encode_texts(texts)`` (the tests use a stub embedding space); :class:`ClipEmbedder` is the real one, built with
open_clip (image *and* text tower of one CLIP model). open_clip is imported only when a ClipEmbedder is built.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

# CLIP's own mean colour (0-255): the neutral fill for pixels outside a mask and for squaring a crop.
CLIP_MEAN_RGB = (122, 116, 104)
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {} in a room.", "a cropped photo of a {}.")


class Embedder(Protocol):
    def encode_images(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class MaskNames:
    """Per mask: the chosen vocabulary index (-1 = unlabelled), its similarity, and its margin over the runner-up."""

    entity: np.ndarray  # (M,) int64, index into the vocabulary, -1 = unlabelled
    score: np.ndarray  # (M,) float32 best cosine similarity
    margin: np.ndarray  # (M,) float32 best - second best (inf with a one-text vocabulary)

    def __len__(self) -> int:
        return len(self.entity)

    def texts(self, vocabulary: Sequence[str]) -> list[str | None]:
        return [vocabulary[i] if i >= 0 else None for i in self.entity]


def assign_names(similarity: np.ndarray, *, min_similarity: float, min_margin: float) -> MaskNames:
    """Pick the best text per row of an (M, Q) similarity matrix, leaving low or ambiguous rows unlabelled."""
    similarity = np.asarray(similarity, np.float32)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (masks, texts), got shape {similarity.shape}")
    m, q = similarity.shape
    if m == 0 or q == 0:
        return MaskNames(np.full(m, -1, np.int64), np.full(m, np.nan, np.float32), np.full(m, np.nan, np.float32))
    if not np.isfinite(similarity).all():
        raise ValueError("similarity holds NaN or inf (an embedding was zero or non-finite)")
    order = np.argsort(-similarity, axis=1, kind="stable")
    best = order[:, 0]
    rows = np.arange(m)
    score = similarity[rows, best]
    margin = score - similarity[rows, order[:, 1]] if q > 1 else np.full(m, np.inf, np.float32)
    confident = (score >= min_similarity) & (margin >= min_margin)
    return MaskNames(np.where(confident, best, -1).astype(np.int64), score.astype(np.float32),
                     margin.astype(np.float32))


def masked_crop(image: np.ndarray, mask: np.ndarray, *, padding: float = 0.1, mask_background: bool = True,
                fill: tuple[int, int, int] = CLIP_MEAN_RGB) -> np.ndarray:
    """A square uint8 crop around ``mask``: its bounding box grown by ``padding`` (a fraction of the longer box
    side), pixels outside the mask set to ``fill`` when ``mask_background``, then padded to a square with ``fill``
    (so CLIP's centre crop never cuts a long thin object)."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise ValueError("cannot crop an empty mask")
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad = int(round(padding * max(r1 - r0, c1 - c0)))
    r0, c0 = max(r0 - pad, 0), max(c0 - pad, 0)
    r1, c1 = min(r1 + pad, image.shape[0]), min(c1 + pad, image.shape[1])
    crop = image[r0:r1, c0:c1].copy()
    if mask_background:
        crop[~mask[r0:r1, c0:c1]] = fill
    h, w = crop.shape[:2]
    side = max(h, w)
    square = np.empty((side, side, 3), np.uint8)
    square[:] = fill
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = crop
    return square


def _normalise_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} embeddings must be 2-D, got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any() or not np.isfinite(norm).all():
        raise ValueError(f"{what} embeddings hold a zero or non-finite vector")
    return x / norm


class MaskNamer:
    """Names masks with an embedder's crop and text embeddings (see the module docstring for the rule)."""

    def __init__(self, embedder: Embedder, *, min_similarity: float = 0.2, min_margin: float = 0.01,
                 crop_padding: float = 0.1, mask_background: bool = True):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {min_margin}")
        self.embedder = embedder
        self.min_similarity = float(min_similarity)
        self.min_margin = float(min_margin)
        self.crop_padding = float(crop_padding)
        self.mask_background = bool(mask_background)

    def name(self, image: np.ndarray, masks: np.ndarray, vocabulary: Sequence[str]) -> MaskNames:
        return self.name_batch([(image, masks, vocabulary)])[0]

    def name_batch(self, items: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]]) -> list[MaskNames]:
        """Name the masks of several frames with one pass of crops and one of texts through the embedder.

        ``items``: (image (H, W, 3) uint8, masks (K, H, W) bool, vocabulary) per frame.
        """
        crops: list[np.ndarray] = []
        counts: list[int] = []
        for image, masks, _ in items:
            masks = np.asarray(masks, bool)
            if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
                raise ValueError(f"masks must be (K, H, W) matching the image {image.shape[:2]}, got {masks.shape}")
            crops.extend(masked_crop(image, m, padding=self.crop_padding, mask_background=self.mask_background)
                         for m in masks)
            counts.append(len(masks))
        all_texts = list(dict.fromkeys(t for _, _, vocab in items for t in vocab))
        crop_emb = _normalise_rows(self.embedder.encode_images(crops), "crop") if crops else None
        text_emb = _normalise_rows(self.embedder.encode_texts(all_texts), "text") if (all_texts and crops) else None
        if crop_emb is not None and len(crop_emb) != len(crops):
            raise ValueError(f"embedder returned {len(crop_emb)} crop embeddings for {len(crops)} crops")
        if text_emb is not None and len(text_emb) != len(all_texts):
            raise ValueError(f"embedder returned {len(text_emb)} text embeddings for {len(all_texts)} texts")
        row_of = {t: i for i, t in enumerate(all_texts)}
        results: list[MaskNames] = []
        start = 0
        for (_, _, vocab), count in zip(items, counts):
            if count == 0 or not vocab:
                results.append(assign_names(np.zeros((count, 0), np.float32), min_similarity=self.min_similarity,
                                            min_margin=self.min_margin))
                start += count
                continue
            rows = [row_of[t] for t in vocab]
            similarity = crop_emb[start:start + count] @ text_emb[rows].T
            results.append(assign_names(similarity, min_similarity=self.min_similarity, min_margin=self.min_margin))
            start += count
        return results


# ----------------------------------------------------------------------------------------------------------------
# open_clip


def _require_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError("CLIP naming needs open_clip: pip install open_clip_torch "
                          "(and torchvision matching your torch)") from exc
    return open_clip


def check_clip_source(model: str, pretrained: str | None, *, allow_random_weights: bool = False) -> str | None:
    """Validate the CLIP model name and weights before building anything; returns ``pretrained`` to pass on.

    ``pretrained`` is a local checkpoint file (.pt/.bin/.safetensors) or an open_clip tag (only usable where the
    weights are already in the Hugging Face cache or can be downloaded). ``model`` may also be
    ``local-dir:/folder`` (open_clip_config.json + weights), in which case ``pretrained`` must be empty.
    """
    open_clip = _require_open_clip()
    if model.startswith(("local-dir:", "hf-hub:")):
        if pretrained:
            raise ValueError(f"naming.pretrained must be empty when naming.model is '{model}' (the weights come "
                             "from that folder/repo)")
        if model.startswith("local-dir:") and not Path(model[len("local-dir:"):]).is_dir():
            raise FileNotFoundError(f"CLIP model folder not found: {model[len('local-dir:'):]}")
        return None
    known = open_clip.list_models()
    if model not in known:
        raise ValueError(f"unknown open_clip model '{model}' (e.g. ViT-B-32, ViT-B-16, ViT-L-14; "
                         f"open_clip.list_models() has {len(known)})")
    if not pretrained:
        if not allow_random_weights:
            raise ValueError(f"naming.pretrained is not set: give a local CLIP checkpoint for '{model}' (e.g. an "
                             "open_clip_pytorch_model.bin from its Hugging Face repo) or an open_clip tag")
        log.warning("CLIP %s has RANDOM weights (no checkpoint): names are meaningless; use this for timing only",
                    model)
        return None
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser())
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained in tags:
        return pretrained
    raise FileNotFoundError(f"CLIP weights '{pretrained}' are neither a file nor an open_clip tag of '{model}' "
                            f"(tags: {', '.join(tags) or 'none'})")


class ClipEmbedder:
    """Image and text embeddings of one open_clip model (L2-normalised float32 numpy arrays).

    Text embeddings average the prompt ``templates`` (CLIP's prompt ensembling) and are cached per text, since
    every frame asks for the same vocabulary again.
    """

    def __init__(self, model: str, pretrained: str | None, *, device: str = "cpu",
                 templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 64,
                 allow_random_weights: bool = False):
        import torch

        open_clip = _require_open_clip()
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"naming.templates must be a non-empty list of strings holding '{{}}', got {templates!r}")
        if batch_size < 1:
            raise ValueError(f"naming.batch_size must be >= 1, got {batch_size}")
        pretrained = check_clip_source(model, pretrained, allow_random_weights=allow_random_weights)
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device="cpu")
        except RuntimeError as exc:
            if "state_dict" in str(exc) or "size mismatch" in str(exc):
                raise ValueError(f"CLIP checkpoint {pretrained} does not fit open_clip model '{model}': "
                                 f"{str(exc).splitlines()[0]} ({str(exc).count('size mismatch')} size mismatches)"
                                 ) from exc
            raise
        self.device = torch.device(device)
        self.model = clip.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model)
        self.templates = list(templates)
        self.batch_size = int(batch_size)
        self.name = model
        self._text_cache: dict[str, np.ndarray] = {}

    def _autocast(self):
        import contextlib

        import torch

        # Half precision halves the time on a GPU and leaves the argmax of cosine similarities alone.
        return torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else contextlib.nullcontext()

    def encode_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(c)) for c in crops[start:start + self.batch_size]])
            with torch.inference_mode(), self._autocast():
                emb = self.model.encode_image(batch.to(self.device), normalize=True)
            out.append(emb.float().cpu().numpy())
        dim = self.model.text_projection.shape[-1] if hasattr(self.model, "text_projection") else 0
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            prompts = [template.format(t) for t in chunk for template in self.templates]
            tokens = self.tokenizer(prompts).to(self.device)
            with torch.inference_mode(), self._autocast():
                emb = self.model.encode_text(tokens, normalize=True).float()
            emb = emb.reshape(len(chunk), len(self.templates), -1).mean(1)
            emb = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
            self._text_cache.update(zip(chunk, emb))
        return np.stack([self._text_cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def build_namer(naming_cfg: dict, *, device: str = "cpu", allow_random_weights: bool = False) -> MaskNamer:
    """A MaskNamer over a ClipEmbedder from the ``naming`` config section."""
    embedder = ClipEmbedder(naming_cfg.get("model", "ViT-B-16"), naming_cfg.get("pretrained"), device=device,
                            templates=naming_cfg.get("templates", DEFAULT_TEMPLATES),
                            batch_size=naming_cfg.get("batch_size", 64), allow_random_weights=allow_random_weights)
    return MaskNamer(embedder, min_similarity=naming_cfg.get("min_similarity", 0.2),
                     min_margin=naming_cfg.get("min_margin", 0.01), crop_padding=naming_cfg.get("crop_padding", 0.1),
                     mask_background=naming_cfg.get("mask_background", True))
