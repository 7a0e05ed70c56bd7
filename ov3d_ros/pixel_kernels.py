"""Compiled loops over a frame's pixels on a CPU: back-projection (``geometry.backproject``), in one pass where
numpy makes several over the whole image (unit conversion, mask, products, a matmul, three compactions).

Two passes over the rows, each in parts at once (``cores.in_parts``): the valid pixels of each row are counted,
then every part writes its rows' points where the counts put them, so the points keep the image's row-major order
for any number of parts. float32 arithmetic like the output, products spelled out (no fused multiply-add).

Module-level numba functions with ``cache=True``: a new process loads their machine code from disk.
"""
from __future__ import annotations

import numba
import numpy as np

from .cores import in_parts

__all__ = ["backproject_pixels"]


def backproject_pixels(depth: np.ndarray, scale: float, stride: int, min_depth: float, max_depth: float,
                       ray_x: np.ndarray, ray_y: np.ndarray, to_world: np.ndarray, color: np.ndarray | None,
                       threads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz (N, 3) float32, rgb (N, 3) uint8, pixels (N, 2) int32 (u, v)) of the valid pixels of the stride-th
    grid of ``depth`` (H, W): uint16 units divided by ``scale`` (0: float32 metres, used as they are), valid when
    finite and ``min_depth`` <= d <= ``max_depth`` (compared in float32) and d > 0. ``ray_x`` (W'), ``ray_y`` (H'):
    the grid's (u - cx) / fx and (v - cy) / fy; ``to_world`` (4, 3): [R^T; t]. ``color`` (H, W, 3) or None
    (zeros)."""
    sub_h = len(ray_y)
    lo, hi, scale32 = np.float32(min_depth), np.float32(max_depth), np.float32(scale)
    counts = np.empty(sub_h, np.int64)
    in_parts(_count_valid, threads, depth, scale32, stride, lo, hi, counts)
    begin = np.zeros(sub_h + 1, np.int64)
    np.cumsum(counts, out=begin[1:])
    n = int(begin[-1])
    xyz, rgb, pixels = np.empty((n, 3), np.float32), np.zeros((n, 3), np.uint8), np.empty((n, 2), np.int32)
    has_color = color is not None
    in_parts(_write_points, threads, depth, scale32, stride, lo, hi, ray_x, ray_y, to_world,
             color if has_color else np.zeros((1, 1, 3), np.uint8), has_color, begin, xyz, rgb, pixels)
    return xyz, rgb, pixels


@numba.njit(cache=True, nogil=True, inline="always")
def _metres(depth, r, c, scale):
    return np.float32(depth[r, c]) / scale if scale > 0 else np.float32(depth[r, c])


@numba.njit(cache=True, nogil=True, inline="always")
def _valid(d, lo, hi):
    return d > 0 and d >= lo and d <= hi and np.isfinite(d)  # NaN fails every comparison


@numba.njit(cache=True, nogil=True)
def _count_valid(depth, scale, stride, lo, hi, counts, part, parts):
    sub_h, width = len(counts), depth.shape[1]
    for r in range(part * sub_h // parts, (part + 1) * sub_h // parts):
        k = 0
        for c in range(0, width, stride):
            k += _valid(_metres(depth, r * stride, c, scale), lo, hi)
        counts[r] = k


@numba.njit(cache=True, nogil=True)
def _write_points(depth, scale, stride, lo, hi, ray_x, ray_y, to_world, color, has_color, begin, xyz, rgb, pixels,
                  part, parts):
    sub_h, sub_w = len(ray_y), len(ray_x)
    for r in range(part * sub_h // parts, (part + 1) * sub_h // parts):
        k = begin[r]
        for c in range(sub_w):
            d = _metres(depth, r * stride, c * stride, scale)
            if not _valid(d, lo, hi):
                continue
            x, y = d * ray_x[c], d * ray_y[r]
            for a in range(3):
                xyz[k, a] = x * to_world[0, a] + y * to_world[1, a] + d * to_world[2, a] + to_world[3, a]
                if has_color:
                    rgb[k, a] = color[r * stride, c * stride, a]
            pixels[k, 0], pixels[k, 1] = c * stride, r * stride
            k += 1
