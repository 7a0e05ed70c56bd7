"""Augmentation: a similarity transform about gravity (z) plus shift, bounded jitter, colour jitter."""
import numpy as np
import pytest

from ov3d_ros.training.augment import augment_points

CFG = {"rotate_gravity": True, "scale": [0.8, 1.2], "translate": [0.5, 0.5, 0.5], "jitter_sigma": 0.0,
       "color_jitter": 0.0}


def test_rigid_part_is_a_rotation_about_z_with_scale_and_shift():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, size=(100, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(100, 3)).astype(np.uint8)
    out, out_rgb, t = augment_points(xyz, rgb, np.random.default_rng(1), CFG)
    s = t["scale"]
    assert 0.8 <= s <= 1.2 and np.all(np.abs(t["shift"]) <= 0.5)
    # distances scale by s; heights map affinely (no tilt: gravity stays gravity)
    d_in = np.linalg.norm(xyz[:50] - xyz[50:], axis=1)
    d_out = np.linalg.norm(out[:50] - out[50:], axis=1)
    assert d_out == pytest.approx(s * d_in, rel=1e-4)
    assert out[:, 2] == pytest.approx(s * (xyz[:, 2] - t["centre"][2]) + t["centre"][2] + t["shift"][2], abs=1e-5)
    assert np.array_equal(out_rgb, rgb)
    # the same generator state gives the same augmentation (exact resume relies on it)
    again, _, _ = augment_points(xyz, rgb, np.random.default_rng(1), CFG)
    assert np.array_equal(out, again)


def test_jitter_is_clipped_and_colour_jitter_stays_in_range():
    rng = np.random.default_rng(2)
    xyz = np.zeros((1000, 3), dtype=np.float32)
    rgb = np.full((1000, 3), 250, dtype=np.uint8)
    cfg = {"rotate_gravity": False, "scale": None, "jitter_sigma": 0.01, "jitter_clip": 0.015, "color_jitter": 0.3}
    out, out_rgb, _ = augment_points(xyz, rgb, rng, cfg)
    assert np.abs(out).max() <= 0.015 + 1e-6 and out.std() > 0.005
    assert out_rgb.dtype == np.uint8


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        augment_points(np.zeros((3, 3)), np.zeros((3, 3)), np.random.default_rng(0), CFG)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        augment_points(np.zeros((3, 2)), np.zeros((3, 3), np.uint8), np.random.default_rng(0), CFG)
