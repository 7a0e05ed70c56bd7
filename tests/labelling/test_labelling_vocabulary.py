"""Vocabulary sources: the fixed list (ScanNet200 default), the union, and the parsing of MLLM answers into nouns.
The MLLM call itself needs weights that cannot be had here; only its failure modes before loading are tested."""
import sys

import numpy as np
import pytest

from ov3d_ros.labelling.vocabulary import (FixedVocabulary, MLLMVocabulary, UnionVocabulary, build_vocabulary_source,
                                           builtin_vocabulary, normalise_entity, parse_object_list, resolve_names,
                                           singularize)

IMAGE = np.zeros((4, 4, 3), np.uint8)


def test_scannet200_names():
    names = builtin_vocabulary("scannet200")
    assert len(names) == 200 and len(set(names)) == 200
    assert names[:4] == ["wall", "chair", "floor", "table"]
    assert names[-1] == "mattress" and "fire extinguisher" in names and "case of water bottles" in names


@pytest.mark.parametrize("plural,singular", [
    ("chairs", "chair"), ("boxes", "box"), ("benches", "bench"), ("shelves", "shelf"), ("bodies", "body"),
    ("shoes", "shoe"), ("potatoes", "potato"), ("glasses", "glasses"), ("clothes", "clothes"), ("stairs", "stairs"),
    ("blinds", "blinds"), ("cactus", "cactus"), ("people", "person"), ("vases", "vase"), ("tvs", "tvs"),
    ("lamp", "lamp"), ("cookies", "cookie"), ("knives", "knife"), ("dress", "dress"),
])
def test_singularize(plural, singular):
    assert singularize(plural) == singular


@pytest.mark.parametrize("raw,expected", [
    ("Two Wooden Chairs", "wooden chair"),
    ("a pair of shoes", "shoe"),
    ("**Coffee table**", "coffee table"),
    ("the TV (turned off)", "tv"),
    ("3 pillows", "pillow"),
    ("several books.", "book"),
    ("objects", None),
    ("", None),
    ("a", None),
    ("a very long description of a chair that is not a name", None),
])
def test_normalise_entity(raw, expected):
    assert normalise_entity(raw) == expected


def test_parse_comma_list_with_final_and():
    answer = "A wooden desk, two office chairs, a laptop, some books and a lamp."
    assert parse_object_list(answer) == ["wooden desk", "office chair", "laptop", "book", "lamp"]


def test_parse_numbered_and_bulleted_lines_with_header_and_descriptions():
    answer = ("Here is a list of the objects in the image:\n"
              "1. Sofa: a grey fabric sofa along the wall\n"
              "2. Cushions\n"
              "- coffee table - low, made of glass\n"
              "* Plant\n"
              "3) rug\n"
              "4. sofa\n")
    assert parse_object_list(answer) == ["sofa", "cushion", "coffee table", "plant", "rug"]


def test_parse_header_on_the_same_line_and_semicolons():
    assert parse_object_list("Objects: bed; nightstands; a lamp") == ["bed", "nightstand", "lamp"]
    assert parse_object_list("chair, chair, Chairs") == ["chair"]  # de-duplicated after normalisation
    assert parse_object_list("a, x, tv") == ["tv"]  # single letters are no names


def test_parse_max_items_and_empty():
    assert parse_object_list("bed, lamp, desk, chair", max_items=2) == ["bed", "lamp"]
    assert parse_object_list("") == []
    assert parse_object_list("None.") == []
    with pytest.raises(TypeError):
        parse_object_list(None)


def test_fixed_union_and_build(tmp_path):
    fixed = FixedVocabulary(["Chair", " table ", "chair"])
    assert fixed.vocabulary(IMAGE) == ["chair", "table"]

    class Listed:  # a second source (an MLLM in practice) proposing some names the list already has
        def vocabulary(self, image):
            return ["table", "robot", "chair"]

    assert UnionVocabulary([fixed, Listed()]).vocabulary(IMAGE) == ["chair", "table", "robot"]

    names_file = tmp_path / "names.txt"
    names_file.write_text("# my lab\nrobot arm\n\ncharging dock\n")
    source = build_vocabulary_source({"source": "fixed", "fixed": {"names": str(names_file), "extra": ["Mug"]}})
    assert source.vocabulary(IMAGE) == ["robot arm", "charging dock", "mug"]
    default = build_vocabulary_source({"source": "fixed", "fixed": {"names": "scannet200", "extra": ["robot"]}})
    assert len(default.vocabulary(IMAGE)) == 201 and default.vocabulary(IMAGE)[-1] == "robot"
    assert resolve_names(["A", "b"]) == ["a", "b"]


def test_bad_vocabulary_input():
    with pytest.raises(ValueError, match="empty"):
        FixedVocabulary([])
    with pytest.raises(ValueError, match="entry 1 is empty"):
        FixedVocabulary(["chair", "  "])
    with pytest.raises(TypeError, match="entry 0"):
        FixedVocabulary([3])
    with pytest.raises(ValueError, match="unknown built-in"):
        builtin_vocabulary("scannet999")
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        resolve_names("/no/such/names.txt")
    with pytest.raises(ValueError, match="vocabulary.source"):
        build_vocabulary_source({"source": "llm"})


def test_mllm_source_fails_early_and_clearly(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="vocabulary.mllm.model is not set"):
        MLLMVocabulary(None)
    with pytest.raises(FileNotFoundError, match="MLLM model folder not found"):
        MLLMVocabulary(tmp_path / "llava")
    # transformers absent (blocked here so the test holds whether or not it is installed): the message says what
    # to install. The import happens only when the MLLM source is chosen.
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        MLLMVocabulary(tmp_path).load()
