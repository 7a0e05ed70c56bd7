"""Point-cloud augmentation for training: rotation about gravity, scaling, translation, jitter, colour jitter.

Gravity is the world -z axis (REP 103/105 world frames are z-up), so rotations are about z and never tilt the floor.
Translation matters more than it looks: the model's voxel grid is anchored at the world origin, so a floor at
exactly z = 0 (or a wall at x = 0) always sits on a voxel boundary. Without random shifts the network learns that
one phase and fails where the grid cuts surfaces differently (e.g. a ground-truth cloud sampled on a regular grid).
Every random draw comes from the generator passed in, which the training loop seeds per step (exact resume).
"""
from __future__ import annotations

import numpy as np


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def augment_points(xyz: np.ndarray, rgb: np.ndarray, rng: np.random.Generator, cfg: dict, *,
                   transform: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Return augmented (xyz float32, rgb uint8) and the geometric transform used.

    ``cfg`` keys: rotate_gravity (bool), scale ([lo, hi] or null), translate ([x, y, z] maximum shift in metres,
    uniform in +-), jitter_sigma / jitter_clip (metres), color_permute (bool: random channel order), color_gain
    (per-channel gain range +-), color_jitter (fraction). ``transform`` (from a previous
    call) reuses the same rotation/scale/shift. Jitter and colour jitter are always drawn fresh.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    rgb = np.asarray(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got {xyz.shape}")
    if rgb.shape != xyz.shape or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (N, 3) uint8 like xyz, got {rgb.shape} {rgb.dtype}")
    if transform is None:
        angle = rng.uniform(0.0, 2.0 * np.pi) if cfg.get("rotate_gravity", True) else 0.0
        scale_range = cfg.get("scale")
        scale = rng.uniform(scale_range[0], scale_range[1]) if scale_range else 1.0
        # Rotate about the cloud's own vertical axis so the point coordinates stay near where they were.
        centre = xyz.mean(axis=0) if len(xyz) else np.zeros(3)
        centre[2] = 0.0
        shift_max = np.asarray(cfg.get("translate") or [0.0, 0.0, 0.0], dtype=np.float64)
        shift = rng.uniform(-1.0, 1.0, size=3) * shift_max
        transform = {"angle": float(angle), "scale": float(scale), "centre": centre, "shift": shift}
    rot = _rotation_z(transform["angle"]) * transform["scale"]
    out = (xyz - transform["centre"]) @ rot.T + transform["centre"] + transform["shift"]
    sigma = float(cfg.get("jitter_sigma", 0.0) or 0.0)
    if sigma > 0:
        clip = float(cfg.get("jitter_clip", 3 * sigma) or 3 * sigma)
        out = out + np.clip(rng.normal(0.0, sigma, size=out.shape), -clip, clip)
    color = rgb.astype(np.float64)
    if cfg.get("color_permute", False):
        # Whole-cloud colour remapping (channel order, per-channel gain): absolute colour says little about a class
        # when objects come in any colour (true of the synthetic rooms, and of real chairs), while colour contrast
        # between neighbouring surfaces (a picture on a wall) survives. Without it the model memorised the colours
        # of the few training instances.
        color = color[:, rng.permutation(3)]
    gain = float(cfg.get("color_gain", 0.0) or 0.0)
    if gain > 0:
        color = color * rng.uniform(1.0 - gain, 1.0 + gain, size=3)
    amount = float(cfg.get("color_jitter", 0.0) or 0.0)
    if amount > 0:
        # Global brightness/contrast change plus a small per-channel shift: lighting changes between frames.
        contrast = rng.uniform(1.0 - amount, 1.0 + amount)
        brightness = rng.uniform(-amount, amount) * 255.0
        shift = rng.uniform(-amount / 2, amount / 2, size=3) * 255.0
        mean = color.mean(axis=0, keepdims=True) if len(color) else 0.0
        color = (color - mean) * contrast + mean + brightness + shift
    return out.astype(np.float32), np.clip(np.rint(color), 0, 255).astype(np.uint8), transform
