"""SpUNet: configs and presets, output shapes and normalisation, determinism, gradients, receptive field."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ov3d_ros.model import MAX_LOGIT_SCALE, PRESETS, SpUNet, build_model, resolve_config


def test_forward_gives_one_normalised_float32_feature_per_point(tiny_cfg, cloud):
    xyz, rgb, _ = cloud
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        feats = model(xyz, rgb)
        raw = model(xyz, rgb, normalize=False)
    assert isinstance(model, SpUNet)
    assert feats.shape == (len(xyz), 16) and feats.dtype == torch.float32
    # Unit rows, except where the head's output is exactly zero (possible with random weights; stays zero).
    nonzero = raw.norm(dim=1) > 1e-6
    assert bool(nonzero.float().mean() > 0.95)
    torch.testing.assert_close(feats[nonzero].norm(dim=1), torch.ones(int(nonzero.sum())))
    torch.testing.assert_close(feats, F.normalize(raw, dim=1))
    # Points of one voxel share its feature: the voxelisation's inverse map is applied.
    vox = model.voxelize(xyz, rgb)
    first = torch.nonzero(vox.inverse == vox.inverse[0]).flatten()
    assert torch.equal(feats[first], feats[first[:1]].expand(len(first), -1))


def test_cpu_inference_is_deterministic(tiny_cfg, cloud):
    xyz, rgb, _ = cloud
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        a = model(xyz, rgb)
        b = model(torch.from_numpy(xyz), torch.from_numpy(rgb))
    assert torch.equal(a, b)


def test_batched_forward_equals_separate_clouds(tiny_cfg, cloud):
    xyz, rgb, _ = cloud
    model = build_model(tiny_cfg).eval()
    # 10 m sideways: whole voxels and blocks of 2**levels voxels, the same local structure and the same heights
    # (the height channel is absolute z, so only a horizontal shift leaves the features unchanged).
    shifted = xyz + np.array([10.0, 10.0, 0.0], dtype=np.float32)
    with torch.no_grad():
        alone = model(xyz, rgb)
        both = model(np.concatenate([xyz, shifted]), np.concatenate([rgb, rgb]),
                     np.repeat([0, 1], len(xyz)))
    torch.testing.assert_close(both[:len(xyz)], alone, rtol=1e-5, atol=1e-5)
    # float32 xyz + 10 m is rounded to ~1e-6 m, which moves the in-voxel offsets by ~2e-5: hence atol 1e-3.
    torch.testing.assert_close(both[len(xyz):], alone, rtol=1e-3, atol=1e-3)


def test_gradients_reach_every_parameter(tiny_cfg, cloud):
    xyz, rgb, part = cloud
    torch.manual_seed(0)
    model = build_model(tiny_cfg).train()
    text = F.normalize(torch.randn(4, 16), dim=1)
    feats = model(xyz, rgb)
    logits = model.logit_scale_value() * (feats @ text.T)
    loss = F.cross_entropy(logits, torch.from_numpy(part).long())
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_logit_scale_starts_at_clip_temperature_and_is_clamped(tiny_cfg):
    model = build_model(tiny_cfg)
    assert math.isclose(float(model.logit_scale_value().detach()), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert float(model.logit_scale_value().detach()) == MAX_LOGIT_SCALE


def test_presets_resolve_and_small_is_a_few_megabytes():
    small = build_model("small")
    assert small.cfg == resolve_config({"preset": "small"})
    assert small.embed_dim == PRESETS["small"]["embed_dim"]
    # float32 weights: a few MB on disk
    assert 0.5e6 < small.num_parameters() < 2.5e6
    cfg = resolve_config({"preset": "full", "embed_dim": 512})
    assert cfg["voxel_size"] == 0.02 and len(cfg["encoder_channels"]) == 4
    # resolve_config is idempotent: a checkpoint's stored config rebuilds the same model
    assert resolve_config(small.cfg) == small.cfg


def test_height_and_offset_features_set_the_input_channels():
    small = resolve_config("small")
    assert small["height_feature"] is True and small["offset_feature"] is False and small["in_channels"] == 4
    assert resolve_config({"height_feature": False})["in_channels"] == 3
    assert resolve_config({"offset_feature": True})["in_channels"] == 7
    # Stored configs from before these keys (in_channels only) had the offsets: 7 with height, 6 without.
    for channels, height in ((7, True), (6, False)):
        old = resolve_config({"in_channels": channels})
        assert old["height_feature"] is height and old["offset_feature"] is True
        model = build_model(old).eval()
        with torch.no_grad():
            assert model(np.zeros((5, 3), np.float32), np.zeros((5, 3), np.uint8)).shape == (5, model.embed_dim)


@pytest.mark.parametrize("cfg, match", [
    ({"preset": "huge"}, "unknown model preset"),
    ({"widths": [1]}, "unknown model config keys"),
    ({"encoder_channels": [8, 16]}, "same length"),
    ({"embed_dim": 0}, "embed_dim must be a positive int"),
    ({"stem_kernel": 4}, "stem_kernel must be odd"),
    ({"voxel_size": -0.1}, "voxel_size must be a positive"),
    ({"in_channels": 6, "height_feature": True}, "does not match the voxel features"),
    ({"in_channels": 7, "offset_feature": False}, "does not match the voxel features"),
    ({"height_feature": 1}, "height_feature must be true or false"),
    ({"offset_feature": "no"}, "offset_feature must be true or false"),
])
def test_bad_configs_raise(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_receptive_field_bounds_the_influence_of_far_points(tiny_cfg, cloud):
    """Points beyond receptive_field() of a region cannot change its features; nearer ones can."""
    xyz, rgb, _ = cloud
    model = build_model(tiny_cfg).eval()
    rf = model.receptive_field()
    assert rf > 0
    with torch.no_grad():
        # Give batch norm non-trivial statistics so that every layer matters.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        base = model(xyz, rgb)
        probe = np.array([0.2, 0.2, 0.0], np.float32)
        near = np.linalg.norm(xyz - probe, axis=1) < 0.15
        # Remove every point farther than rf from the probed region: its features must not change.
        keep = np.linalg.norm(xyz - probe, axis=1) < 0.15 + rf + 0.1
        cropped = model(xyz[keep], rgb[keep])
        torch.testing.assert_close(cropped[torch.from_numpy(near[keep])], base[torch.from_numpy(near)],
                                   rtol=1e-5, atol=1e-5)


def test_full_preset_builds_with_four_levels_and_runs_on_cpu():
    model = build_model({"preset": "full"}).eval()
    assert 35e6 < model.num_parameters() < 45e6  # Pointcept SpUNet-v1m1 scale
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 1, (1500, 2)), np.zeros(1500)].astype(np.float32)
    rgb = rng.integers(0, 256, (1500, 3)).astype(np.uint8)
    with torch.no_grad():
        feats = model(xyz, rgb)
    assert feats.shape == (1500, 512) and bool(torch.isfinite(feats).all())


def test_forward_voxels_gathers_to_forward(tiny_cfg, cloud):
    xyz, rgb, _ = cloud
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        voxel_feats, inverse = model.forward_voxels(xyz, rgb)
        per_point = model(xyz, rgb)
    assert voxel_feats.shape == (len(model.voxelize(xyz, rgb)), 16) and inverse.shape == (len(xyz),)
    assert torch.equal(voxel_feats[inverse], per_point)
