"""Pairs of points of two partial clouds that see the same physical point (the inter-frame consistency term's
matches)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .fusion import PartialCloud
from .geometry import check_finite_positive, project
from .voxel_grid import pack_keys, voxel_coords

__all__ = ["match_points"]


def match_points(a: PartialCloud, b: PartialCloud, *, method: str = "voxel", voxel_size: float = 0.02,
                 depth_tolerance: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (ia, ib) of int64 indices into ``a`` and ``b`` that see the same physical point; one-to-one.

    method="voxel": voxels of ``voxel_size`` occupied by both clouds; in each, the point of ``a`` and the point of
    ``b`` nearest the voxel centre (lowest index on ties). Paired points are within sqrt(3) * voxel_size.

    method="reprojection": every point of ``a`` is projected into ``b``'s camera, rounded to ``b``'s pixel grid (its
    stride), and paired with ``b``'s point at that pixel when their depths along ``b``'s optical axis differ by at
    most ``depth_tolerance`` metres (so occluded points are not paired). Where several points of ``a`` land on one
    point of ``b``, the one with the smallest depth difference wins (lowest index on ties).

    Pairs are returned sorted by ``ia``.
    """
    for name, cloud in (("a", a), ("b", b)):
        if not isinstance(cloud, PartialCloud):
            raise TypeError(f"match_points: {name} must be a PartialCloud, got {type(cloud).__name__}")
    if method == "voxel":
        ia, ib = _match_voxel(a, b, check_finite_positive(voxel_size, "voxel_size", "match_points"))
    elif method == "reprojection":
        depth_tolerance = float(depth_tolerance)
        if not math.isfinite(depth_tolerance) or depth_tolerance < 0.0:
            raise ValueError(f"match_points: depth_tolerance must be finite and >= 0, got {depth_tolerance}")
        ia, ib = _match_reprojection(a, b, depth_tolerance)
    else:
        raise ValueError(f"match_points: method must be 'voxel' or 'reprojection', got {method!r}")
    order = np.argsort(ia, kind="stable")
    return ia[order].astype(np.int64), ib[order].astype(np.int64)


def _voxel_representatives(xyz: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique voxel keys of a cloud and, for each, the index of the point nearest the voxel centre."""
    pts = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
    ijk = voxel_coords(pts, voxel_size)
    keys = pack_keys(ijk).numpy()
    offset = pts.to(torch.float64).numpy() - (ijk.to(torch.float64).numpy() + 0.5) * voxel_size
    dist2 = np.einsum("ij,ij->i", offset, offset)
    # lexsort: last key is primary. Sort by voxel, then distance to its centre, then index (stable).
    order = np.lexsort((np.arange(len(keys)), dist2, keys))
    first = np.ones(len(order), dtype=bool)
    first[1:] = keys[order[1:]] != keys[order[:-1]]
    rep = order[first]
    return keys[rep], rep


def _match_voxel(a: PartialCloud, b: PartialCloud, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    keys_a, rep_a = _voxel_representatives(a.xyz, voxel_size)
    keys_b, rep_b = _voxel_representatives(b.xyz, voxel_size)
    _, in_a, in_b = np.intersect1d(keys_a, keys_b, assume_unique=True, return_indices=True)
    return rep_a[in_a], rep_b[in_b]


def _match_reprojection(a: PartialCloud, b: PartialCloud, depth_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    empty = np.empty(0, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return empty, empty
    cam, stride = b.camera, b.stride
    # Lookup image on b's (strided) pixel grid: grid cell -> index of b's point there, -1 where b has none.
    grid_h, grid_w = (cam.height + stride - 1) // stride, (cam.width + stride - 1) // stride
    lookup = np.full((grid_h, grid_w), -1, dtype=np.int64)
    gu, gv = b.pixels[:, 0] // stride, b.pixels[:, 1] // stride
    if np.any((gu < 0) | (gu >= grid_w) | (gv < 0) | (gv >= grid_h)):
        raise ValueError(f"match_points: PartialCloud {b.index} has pixels outside its {cam.width}x{cam.height} camera")
    lookup[gv, gu] = np.arange(len(b))
    z_b = (b.xyz.astype(np.float64) - b.T_world_cam[:3, 3]) @ b.T_world_cam[:3, 2]  # depth along b's optical axis

    uv, z_a = project(a.xyz, cam, b.T_world_cam)
    with np.errstate(invalid="ignore"):  # uv is NaN behind the camera; those fail the bounds test below
        cu = np.rint(uv[:, 0] / stride)
        cv = np.rint(uv[:, 1] / stride)
        inside = (z_a > 0) & (cu >= 0) & (cu < grid_w) & (cv >= 0) & (cv < grid_h)
    ia = np.nonzero(inside)[0]
    ib = lookup[cv[ia].astype(np.int64), cu[ia].astype(np.int64)]
    has_b = ib >= 0
    ia, ib = ia[has_b], ib[has_b]
    dz = np.abs(z_a[ia] - z_b[ib])
    close = dz <= depth_tolerance
    ia, ib, dz = ia[close], ib[close], dz[close]
    # One-to-one: per point of b keep the closest-in-depth point of a (lowest index of a on ties).
    order = np.lexsort((ia, dz, ib))
    first = np.ones(len(order), dtype=bool)
    first[1:] = ib[order[1:]] != ib[order[:-1]]
    keep = order[first]
    return ia[keep], ib[keep]
