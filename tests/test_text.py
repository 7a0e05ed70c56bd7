"""Text encoders: the real offline MiniLM, OpenCLIP with a tiny registered config, templates, cache, errors."""
import json

import pytest
import torch
import torch.nn.functional as F

from ov3d_ros.text import DEFAULT_SPEC, DEFAULT_TEMPLATES, TextEncoder, build_text_encoder

TINY_CLIP = "ov3d-test-tiny-clip"


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder(DEFAULT_SPEC)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    cfg_dir = tmp_path_factory.mktemp("clip_cfg")
    # One-layer ViT and text transformer, 32 wide: builds in well under a second with random weights.
    (cfg_dir / f"{TINY_CLIP}.json").write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(cfg_dir)
    return open_clip


def test_minilm_embeddings_are_normalised_and_semantic(minilm):
    emb = minilm.encode(["sofa", "couch", "lamp"])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2, f"sofa~couch {sim[0, 1]:.3f} vs sofa~lamp {sim[0, 2]:.3f}"
    assert minilm.dim == 384
    assert minilm.spec == {**DEFAULT_SPEC, "templates": list(DEFAULT_TEMPLATES)}


def test_templates_are_averaged_then_renormalised(minilm):
    raw = minilm._embed_texts([t.format("fire extinguisher") for t in minilm.templates])
    expected = F.normalize(raw.mean(dim=0), dim=0)
    torch.testing.assert_close(minilm.encode(["fire extinguisher"])[0], expected, rtol=1e-5, atol=1e-5)


def test_repeated_queries_come_from_the_cache(minilm):
    first = minilm.encode(["mug", "kettle"])
    entries = minilm.cache_info()["entries"]
    calls = []
    original = minilm._embed_texts
    minilm._embed_texts = lambda texts: calls.append(texts) or original(texts)
    try:
        again = minilm.encode(["kettle", "mug"])
    finally:
        del minilm._embed_texts
    assert calls == [] and minilm.cache_info()["entries"] == entries
    assert torch.equal(again, first.flip(0))


def test_embeddings_made_under_inference_mode_work_in_training(minilm):
    with torch.inference_mode():
        text = minilm.encode(["radiator"])
    text = minilm.encode(["radiator"])  # from the cache, outside inference mode
    feats = torch.randn(5, 384, requires_grad=True)
    (feats @ text.T).sum().backward()
    torch.testing.assert_close(feats.grad, text.expand(5, -1))


def test_open_clip_tiny_model_and_local_checkpoint_round_trip(tiny_clip, tmp_path):
    torch.manual_seed(0)
    enc = build_text_encoder({"kind": "open_clip", "name": TINY_CLIP, "pretrained": None, "templates": ["{}"]})
    emb = enc.encode(["chair", "table"])
    assert enc.dim == 24 and emb.shape == (2, 24) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))

    # Save a full CLIP state_dict as a user would download it, then load it through the spec's path.
    reference = tiny_clip.create_model(TINY_CLIP, pretrained=None)
    weights = tmp_path / "tiny_clip.pt"
    torch.save(reference.state_dict(), weights)
    spec = {"kind": "open_clip", "name": TINY_CLIP, "pretrained": str(weights),
            "templates": ["a {} in a scene.", "a photo of a {}."]}
    loaded = build_text_encoder(spec)
    assert loaded.spec == spec
    got = loaded.encode(["chair", "lamp"])
    tokenizer = tiny_clip.get_tokenizer(TINY_CLIP)
    with torch.no_grad():
        per_template = [reference.eval().encode_text(tokenizer([t.format(q) for t in spec["templates"]]),
                                                     normalize=True) for q in ("chair", "lamp")]
    expected = F.normalize(torch.stack([p.mean(dim=0) for p in per_template]), dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Building again from the stored spec gives the same embeddings.
    torch.testing.assert_close(build_text_encoder(loaded.spec).encode(["chair", "lamp"]), got)


def test_open_clip_missing_weights_file_is_a_clear_error(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="weights file not found"):
        build_text_encoder({"kind": "open_clip", "name": TINY_CLIP, "pretrained": str(tmp_path / "none.pt")})
    with pytest.raises(RuntimeError, match="not a known tag or valid file path"):
        build_text_encoder({"kind": "open_clip", "name": TINY_CLIP, "pretrained": "no-such-tag"})


@pytest.mark.parametrize("spec, error, match", [
    ({"kind": "word2vec", "name": "x"}, ValueError, "unknown text encoder kind 'word2vec'"),
    ({"name": "x"}, ValueError, "unknown text encoder kind None"),
    ({"kind": "open_clip", "name": "ViT-B-32"}, ValueError, "needs 'pretrained'"),
    ({"kind": "sentence-transformers", "name": ""}, ValueError, "non-empty 'name'"),
    ({"kind": "sentence-transformers", "name": "x", "colour": 1}, ValueError, "unknown keys"),
    ({"kind": "sentence-transformers", "name": "x", "templates": ["no placeholder"]}, ValueError,
     "exactly one"),
    ("open_clip", TypeError, "must be a dict"),
])
def test_bad_specs_raise(spec, error, match):
    with pytest.raises(error, match=match):
        build_text_encoder(spec)


def test_encode_checks_its_input():
    class Unit(TextEncoder):
        def __init__(self):
            super().__init__({"kind": "unit", "name": "unit"}, ["{}"])

        def _embed_texts(self, texts):
            return torch.ones(len(texts), 2) / 2 ** 0.5

    enc = Unit()
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("chair")
    with pytest.raises(TypeError, match="must be a str"):
        enc.encode(["chair", 3])
    assert enc.encode([]).shape == (0, 2)
