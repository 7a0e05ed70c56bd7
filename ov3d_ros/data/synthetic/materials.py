"""Colours of the synthetic rooms: class-typical materials, and a texture fixed to world positions.

With ``appearance="materials"`` each instance's albedo is drawn from materials typical of its class (wood, fabric,
painted plaster, dark plastic ...); they overlap between classes as they do in real rooms. ``"random"`` draws any
colour, so only geometry tells classes apart.
"""
from __future__ import annotations

import numpy as np


# Materials per class: (weight, hue range, saturation range, value range) in HSV, hue in [0, 1). They overlap on
# purpose (white tables and walls, black chairs and monitors, wooden tables, cabinets and floors), as in real rooms.
_ANY = (0.0, 1.0)
_WOOD = ((0.05, 0.11), (0.35, 0.65), (0.30, 0.65))
_WHITE = (_ANY, (0.0, 0.08), (0.78, 0.95))
_BLACK = (_ANY, (0.0, 0.15), (0.08, 0.25))
_GREY = (_ANY, (0.0, 0.10), (0.30, 0.65))
_FABRIC = (_ANY, (0.20, 0.60), (0.30, 0.70))
MATERIALS: dict[str, list[tuple]] = {
    "wall": [(3, _ANY, (0.03, 0.18), (0.75, 0.95)), (1, (0.05, 0.15), (0.10, 0.30), (0.65, 0.85))],
    "floor": [(2, *_WOOD), (1, *_GREY), (1, _ANY, (0.05, 0.25), (0.40, 0.75))],
    "table": [(3, *_WOOD), (1, *_WHITE), (1, *_BLACK)],
    "chair": [(2, *_BLACK), (1, *_WOOD), (2, *_FABRIC)],
    "cabinet": [(2, *_WOOD), (2, *_WHITE), (1, *_GREY)],
    "sofa": [(3, *_FABRIC), (1, *_GREY)],
    "bed": [(2, *_WHITE), (1, _ANY, (0.10, 0.35), (0.65, 0.90))],
    "lamp": [(2, *_WHITE), (1, *_GREY), (1, (0.08, 0.16), (0.20, 0.50), (0.70, 0.95))],
    "monitor": [(3, *_BLACK), (1, *_GREY)],
    "bin": [(1, *_GREY), (1, *_BLACK), (2, _ANY, (0.40, 0.80), (0.35, 0.75))],
    "book": [(1, _ANY, (0.45, 0.90), (0.35, 0.85))],
    "picture": [(1, _ANY, (0.30, 0.85), (0.25, 0.90))],
}
APPEARANCES = ("materials", "random")


def material_color(rng, class_name: str) -> np.ndarray:
    """An albedo for one instance: a material typical of the class, then a colour within its ranges."""
    materials = MATERIALS[class_name]
    w = np.array([m[0] for m in materials], dtype=np.float64)
    _, hue, sat, val = materials[int(rng.choice(len(materials), p=w / w.sum()))]
    return hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val))


def hsv_to_rgb(h, s, v) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float64)



def _hash01(ix, iy, iz) -> np.ndarray:
    """A uniform [0, 1) value per integer cell (integer hashing; wraps on purpose)."""
    h = (ix.astype(np.uint64) * np.uint64(0x9E3779B185EBCA87)) ^ (iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= iz.astype(np.uint64) * np.uint64(0x165667B19E3779F9)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def surface_texture(points: np.ndarray) -> np.ndarray:
    """Relative brightness variation fixed to world positions (so every view of a surface agrees): two scales."""
    with np.errstate(invalid="ignore", over="ignore"):
        fine = np.floor(points / 0.01).astype(np.int64)
        coarse = np.floor(points / 0.07).astype(np.int64)
        f = _hash01(fine[..., 0], fine[..., 1], fine[..., 2])
        c = _hash01(coarse[..., 0], coarse[..., 1], coarse[..., 2] + 7919)
    return (0.06 * (f - 0.5) + 0.10 * (c - 0.5)).astype(np.float32)

