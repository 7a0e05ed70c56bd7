"""Tiny random-weight SAM and CLIP models saved to checkpoint files, loaded by the tests through the same functions
users call. They prove loading and plumbing, not quality (no real weights can be had here)."""
import json

import pytest

TINY_CLIP = "ov3d-test-tiny-clip"
# Same towers, other embedding width: a checkpoint of TINY_CLIP does not fit it.
TINY_CLIP_WIDE = "ov3d-test-tiny-clip-wide"


def _clip_config(embed_dim):
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(model name, checkpoint path) of a tiny open_clip model registered with open_clip.add_model_config."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip_configs")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(_clip_config(32)))
    (folder / f"{TINY_CLIP_WIDE}.json").write_text(json.dumps(_clip_config(16)))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return TINY_CLIP, path


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory):
    """A tiny custom-size SAM (masks.CUSTOM_SAM_DEFAULTS, 64x64 input) saved as a state dict."""
    import torch

    from ov3d_ros.labelling.masks import _build_custom_sam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(_build_custom_sam({}).state_dict(), path)
    return path
