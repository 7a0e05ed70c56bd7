"""Vocabulary sources for 2D pseudo-labelling: which entity texts a frame's masks may be named with.

Three sources, all with one method ``vocabulary(image) -> list[str]``:

- :class:`FixedVocabulary`: a list from the config (by default the ScanNet200 class names, plus the user's own);
- :class:`MLLMVocabulary`: a multimodal LLM through Hugging Face ``transformers`` (a local model folder, e.g.
  LLaVA-NeXT), prompted as PGOV3D does: first describe the image, then list its objects. ``transformers`` is
  imported only when this source is chosen;
- :class:`UnionVocabulary`: the union of several sources (fixed names first, then what the MLLM adds).

The MLLM answer is free text; :func:`parse_object_list` turns it into normalised nouns (lower case, no articles or
counts, last word singular). That parser is plain string work and is what the tests check; the model call itself
needs real weights and is kept as small as possible.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from ..data.class_tables import BUILTIN_TABLES, class_table

log = logging.getLogger(__name__)

BUILTIN_VOCABULARIES = tuple(BUILTIN_TABLES)  # the class names of the built-in class table of that name


class VocabularySource(Protocol):
    def vocabulary(self, image: np.ndarray) -> list[str]: ...


# ----------------------------------------------------------------------------------------------------------------
# text normalisation

# Plurals that English spelling rules get wrong; checked before the suffix rules.
_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "knives": "knife", "leaves": "leaf", "shelves": "shelf", "halves": "half", "loaves": "loaf",
    "scarves": "scarf", "wolves": "wolf", "wives": "wife", "lives": "life", "calves": "calf", "thieves": "thief",
    "geese": "goose", "dice": "die", "cacti": "cactus", "shoes": "shoe", "toes": "toe", "canoes": "canoe",
    "cookies": "cookie", "movies": "movie", "pies": "pie", "ties": "tie", "hoodies": "hoodie",
    "brownies": "brownie", "selfies": "selfie",
}
# Nouns that look plural but name one thing (several are ScanNet200 classes) or have no singular.
_PLURAL_ONLY = {
    "clothes", "stairs", "blinds", "headphones", "glasses", "scissors", "pants", "jeans", "shorts", "trousers",
    "binoculars", "pliers", "tongs", "series", "species", "news", "electronics", "dishes", "supplies", "goggles",
    "earphones", "sunglasses", "tweezers", "leggings", "pajamas", "gas", "lens", "bus", "canvas", "chess", "physics",
    "mathematics", "furniture", "cutlery", "luggage", "toiletries",
}
# Words an MLLM uses for "something" that would make a useless entity text.
_GENERIC_WORDS = {"object", "objects", "item", "items", "thing", "things", "stuff", "etc", "other", "others",
                  "various", "miscellaneous", "misc", "none", "nothing", "n/a"}
# Leading words that count or qualify rather than name: "two chairs", "a pair of shoes", "some books".
_LEADING_FILLERS = (
    "a pair of", "pairs of", "a couple of", "a set of", "a stack of", "a pile of", "a few", "a number of",
    "a lot of", "lots of", "a", "an", "the", "some", "several", "many", "few", "multiple", "various", "numerous",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "other", "more", "possibly",
    "maybe", "perhaps",
)
_LEADING_RE = re.compile(r"^(?:(?:" + "|".join(re.escape(w) for w in sorted(_LEADING_FILLERS, key=len,
                                                                            reverse=True)) + r")\s+|\d+\s*x?\s+)+")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022\u2013>]+|\(?\d+[.)]|\(?[a-z][.)](?=\s))\s*")
_MAX_ENTITY_WORDS = 4  # longer items are sentences, not names


def singularize(word: str) -> str:
    """Singular form of one lower-case English noun by spelling rules plus an exception table.

    A heuristic, good enough for object names ("chairs" -> "chair", "boxes" -> "box", "shelves" -> "shelf"); words
    that name one thing in plural form ("clothes", "stairs", "blinds") are left alone.
    """
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _PLURAL_ONLY or len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes", "oes")):
        return word[:-2]
    return word[:-1]


def normalise_entity(text: str, *, singular: bool = True) -> str | None:
    """One entity text in canonical form, or None when nothing nameable is left.

    Lower case; markdown, quotes, brackets and trailing punctuation removed; leading articles and counts removed
    ("two wooden chairs" -> "wooden chair"); the last word made singular when ``singular``.
    """
    if not isinstance(text, str):
        raise TypeError(f"entity text must be a str, got {type(text).__name__}")
    s = text.lower()
    s = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", s)  # "(two of them)", "[partially visible]"
    s = re.sub(r"[*_`\"\u201c\u201d\u2018\u2019]", " ", s)
    s = s.replace("&", " and ")
    s = re.sub(r"[^a-z0-9' \-/]", " ", s)
    s = re.sub(r"\s+", " ", s).strip(" -'/")
    s = _LEADING_RE.sub("", s).strip(" -'/")
    if len(s) < 2 or s in _GENERIC_WORDS:
        return None
    words = s.split(" ")
    if len(words) > _MAX_ENTITY_WORDS or not re.search(r"[a-z]", s):
        return None
    if singular:
        words[-1] = singularize(words[-1])
    return " ".join(words)


def parse_object_list(answer: str, *, max_items: int = 0) -> list[str]:
    """Turn an MLLM's object list into normalised, de-duplicated entity texts, in the order given.

    Accepts comma/semicolon-separated lists, numbered or bulleted lines, a header before a colon ("Objects: a, b"),
    and a final "and" ("a chair, a table and two lamps"). ``max_items`` > 0 keeps only the first that many.
    """
    if not isinstance(answer, str):
        raise TypeError(f"MLLM answer must be a str, got {type(answer).__name__}")
    items: list[str] = []
    for line in answer.splitlines():
        line = line.strip()
        if not line or line.endswith(":"):
            continue  # blank or a header line such as "Here are the objects:"
        bulleted = _BULLET_RE.match(line) is not None and _BULLET_RE.match(line).end() > 0
        line = _BULLET_RE.sub("", line)
        if bulleted:
            # "1. Chair: a wooden chair by the window" / "- lamp - a desk lamp": the name comes first
            line = re.split(r":|\s[-\u2013]\s", line, maxsplit=1)[0]
        elif ":" in line:
            line = line.rsplit(":", 1)[1]  # "Objects: chair, table": the list comes after the header
        line = re.sub(r"\.\s*$", "", line)
        for part in re.split(r"[,;]|\.\s+|\s+and\s+|\s+or\s+", line):
            part = _BULLET_RE.sub("", part.strip())
            name = normalise_entity(part)
            if name is not None:
                items.append(name)
    unique = list(dict.fromkeys(items))
    return unique[:max_items] if max_items > 0 else unique


def clean_names(names: Iterable[str], where: str = "vocabulary") -> list[str]:
    """Lower-case, whitespace-collapsed, de-duplicated names in their given order (no singularisation: a user's
    own list is taken as written). Raises ValueError on an empty name and TypeError on a non-string."""
    out: list[str] = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"{where}: entry {i} must be a str, got {type(name).__name__} {name!r}")
        cleaned = re.sub(r"\s+", " ", name.strip().lower())
        if not cleaned:
            raise ValueError(f"{where}: entry {i} is empty")
        out.append(cleaned)
    return list(dict.fromkeys(out))


def load_names_file(path: str | Path) -> list[str]:
    """Names from a text file, one per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return clean_names([line for line in lines if line and not line.startswith("#")], where=str(path))


def builtin_vocabulary(name: str) -> list[str]:
    """A vocabulary shipped with the package: the names of a built-in class table (``"scannet200"``: the 200
    ScanNet200 benchmark classes; ``"scannet20"``, ``"nyu40"``)."""
    if name not in BUILTIN_VOCABULARIES:
        raise ValueError(f"unknown built-in vocabulary '{name}' (known: {', '.join(BUILTIN_VOCABULARIES)})")
    return clean_names(class_table(name).names, where=name)


def resolve_names(spec: str | Sequence[str]) -> list[str]:
    """A names spec from the config: a built-in name ("scannet200"), a path to a names file, or a list."""
    if isinstance(spec, str):
        if spec in BUILTIN_VOCABULARIES:
            return builtin_vocabulary(spec)
        return load_names_file(spec)
    if isinstance(spec, (list, tuple)):
        return clean_names(spec)
    raise TypeError(f"vocabulary names must be a built-in name, a file path or a list, got {type(spec).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# sources


class FixedVocabulary:
    """The same names for every image."""

    def __init__(self, names: Sequence[str]):
        self.names = clean_names(names)
        if not self.names:
            raise ValueError("fixed vocabulary is empty: give at least one name")

    def vocabulary(self, image: np.ndarray) -> list[str]:
        return list(self.names)

    def __repr__(self) -> str:
        return f"FixedVocabulary({len(self.names)} names)"


class UnionVocabulary:
    """Names of several sources merged in order, duplicates removed."""

    def __init__(self, sources: Sequence[VocabularySource]):
        if not sources:
            raise ValueError("UnionVocabulary needs at least one source")
        self.sources = list(sources)

    def load(self) -> "UnionVocabulary":
        for source in self.sources:
            if hasattr(source, "load"):
                source.load()
        return self

    def vocabulary(self, image: np.ndarray) -> list[str]:
        merged: list[str] = []
        for source in self.sources:
            merged.extend(source.vocabulary(image))
        return list(dict.fromkeys(merged))


DESCRIBE_PROMPT = "Describe this image in detail, including every object you can see."
LIST_PROMPT = ("List every object visible in the image as a single comma-separated list of short object names "
               "(nouns only, no descriptions, no counts). Answer with the list only.")


class MLLMVocabulary:
    """Per-image vocabulary from a multimodal LLM (Hugging Face ``transformers``, local weights only).

    Two turns, as PGOV3D prompts LLaVA-NeXT: the model first describes the image, then, with its description in the
    conversation, lists the objects as a comma-separated list, which :func:`parse_object_list` normalises. Any model
    that ``AutoModelForImageTextToText`` (or ``AutoModelForVision2Seq``) and ``AutoProcessor`` load and whose
    processor has a chat template works, e.g. ``llava-hf/llava-v1.6-mistral-7b-hf`` downloaded to a folder.

    Not exercised by the tests (no weights can be had here): only :func:`parse_object_list` is.
    """

    def __init__(self, model_path: str | Path, *, device: str = "cpu", max_new_tokens: int = 256,
                 describe_prompt: str = DESCRIBE_PROMPT, list_prompt: str = LIST_PROMPT, dtype: str = "auto",
                 max_items: int = 0):
        if not model_path:
            raise ValueError("vocabulary.mllm.model is not set: give the local folder of a Hugging Face multimodal "
                             "model (e.g. a downloaded llava-hf/llava-v1.6-mistral-7b-hf)")
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise FileNotFoundError(f"MLLM model folder not found: {self.model_path} (vocabulary.mllm.model must be "
                                    "a local folder holding a Hugging Face model: config.json, weights, processor)")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        self.describe_prompt = describe_prompt
        self.list_prompt = list_prompt
        self.dtype = dtype
        self.max_items = int(max_items)
        self._model = None
        self._processor = None

    def load(self) -> "MLLMVocabulary":
        """Load processor and model (done once, before the first frame, so a bad folder fails early)."""
        if self._model is not None:
            return self
        try:
            import transformers
        except ImportError as exc:
            raise ImportError("the MLLM vocabulary source needs Hugging Face transformers: "
                              "pip install transformers (or choose vocabulary.source: fixed)") from exc
        import torch

        model_cls = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
        dtype = {"auto": "auto", "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}.get(self.dtype)
        if dtype is None:
            raise ValueError(f"vocabulary.mllm.dtype must be auto/float16/bfloat16/float32, got {self.dtype!r}")
        self._processor = transformers.AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
        self._model = model_cls.from_pretrained(self.model_path, local_files_only=True, torch_dtype=dtype)
        self._model.to(self.device).eval()
        return self

    def _generate(self, conversation: list[dict], image) -> str:
        import torch

        prompt = self._processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = self._processor(images=image, text=prompt, return_tensors="pt").to(self._model.device)
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]  # only the answer, not the echoed prompt
        return self._processor.decode(new_tokens, skip_special_tokens=True).strip()

    def vocabulary(self, image: np.ndarray) -> list[str]:
        from PIL import Image

        self.load()
        picture = Image.fromarray(np.ascontiguousarray(image))
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                          "text": self.describe_prompt}]}]
        description = self._generate(conversation, picture)
        conversation += [
            {"role": "assistant", "content": [{"type": "text", "text": description}]},
            {"role": "user", "content": [{"type": "text", "text": self.list_prompt}]},
        ]
        answer = self._generate(conversation, picture)
        names = parse_object_list(answer, max_items=self.max_items)
        log.debug("MLLM listed %d objects: %s", len(names), ", ".join(names))
        return names


def build_vocabulary_source(cfg: dict, *, device: str = "cpu", load: bool = True) -> VocabularySource:
    """The source named by ``cfg["source"]`` ("fixed" | "mllm" | "union") from the ``vocabulary`` config section.

    Paths are checked at once; with ``load=False`` the MLLM weights are loaded only by a later ``.load()`` (so a
    caller can check every other path before spending minutes on a large model)."""
    source = cfg.get("source", "fixed")
    fixed_cfg = cfg.get("fixed", {}) or {}
    mllm_cfg = cfg.get("mllm", {}) or {}

    def fixed() -> FixedVocabulary:
        names = resolve_names(fixed_cfg.get("names", "scannet200")) if fixed_cfg.get("names") is not None else []
        return FixedVocabulary(names + clean_names(fixed_cfg.get("extra", []) or [], where="vocabulary.fixed.extra"))

    def mllm() -> MLLMVocabulary:
        return MLLMVocabulary(
            mllm_cfg.get("model"), device=device, max_new_tokens=mllm_cfg.get("max_new_tokens", 256),
            describe_prompt=mllm_cfg.get("describe_prompt", DESCRIBE_PROMPT),
            list_prompt=mllm_cfg.get("list_prompt", LIST_PROMPT), dtype=mllm_cfg.get("dtype", "auto"),
            max_items=mllm_cfg.get("max_items", 0),
        )

    def loaded(source):
        return source.load() if load else source

    if source == "fixed":
        return fixed()
    if source == "mllm":
        return loaded(mllm())
    if source == "union":
        return loaded(UnionVocabulary([fixed(), mllm()]))
    raise ValueError(f"vocabulary.source must be 'fixed', 'mllm' or 'union', got {source!r}")
