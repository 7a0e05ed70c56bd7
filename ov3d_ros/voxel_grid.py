"""Integer voxel coordinates and their packed int64 keys: the grid VoxelMap stores and match_points pairs on.

A voxel (i, j, k) = floor(p / voxel_size) belongs to the block (i, j, k) >> 2 of 4x4x4 voxels. Its int64 key is the
block's coordinates (19 bits per axis, offset 2^18) followed by the voxel's 6-bit place in the block, so sorting keys
groups voxels by block. The keys cover +-2^20 voxels per axis (+-21 km at 2 cm).
"""
from __future__ import annotations

import math

import numpy as np
import torch

BLOCK_BITS = 2
LOCAL_MASK = (1 << BLOCK_BITS) - 1
LOCAL_BITS = 3 * BLOCK_BITS
VOXELS_PER_BLOCK = 1 << LOCAL_BITS
BLOCK_AXIS_BITS = 19
BLOCK_AXIS_OFFSET = 1 << (BLOCK_AXIS_BITS - 1)
BLOCK_AXIS_MASK = (1 << BLOCK_AXIS_BITS) - 1
AXIS_OFFSET = BLOCK_AXIS_OFFSET << BLOCK_BITS


def voxel_coords(xyz: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """(N, 3) int32 voxel indices floor(p / s), computed in float64 so the result does not depend on the device.

    Raises ValueError for non-finite points and for points beyond the key range.
    """
    q = xyz.to(torch.float64, copy=True).div_(voxel_size).floor_()
    if q.numel():
        lo, hi = (float(v) for v in torch.aminmax(q))  # NaN or inf anywhere shows up here: no separate pass
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(xyz).all(dim=1)).sum())
            raise ValueError(f"{bad} of {xyz.shape[0]} points are not finite")
        if lo < -AXIS_OFFSET or hi >= AXIS_OFFSET:
            raise ValueError(f"voxel index range [{lo:.0f}, {hi:.0f}] exceeds +-{AXIS_OFFSET} voxels: points are "
                             f"farther than {AXIS_OFFSET * voxel_size:.0f} m from the origin at voxel size "
                             f"{voxel_size} m")
    return q.to(torch.int32)


def block_coords(ijk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel indices -> (block indices (N, 3) int32, place of the voxel in its block 0..63 (N,) int32)."""
    block = ijk >> BLOCK_BITS  # arithmetic shift: floor division for negative indices too
    local = ijk & LOCAL_MASK
    place = local[:, 0] * (1 << (2 * BLOCK_BITS)) + local[:, 1] * (1 << BLOCK_BITS) + local[:, 2]
    return block, place


def pack_blocks(block: torch.Tensor) -> torch.Tensor:
    """(N, 3) block indices -> (N,) int64 block keys (lexicographic order of the indices)."""
    b = block.to(torch.int64) + BLOCK_AXIS_OFFSET
    return (b[:, 0] << (2 * BLOCK_AXIS_BITS)) | (b[:, 1] << BLOCK_AXIS_BITS) | b[:, 2]


def pack_keys(ijk: torch.Tensor) -> torch.Tensor:
    block, place = block_coords(ijk)
    return (pack_blocks(block) << LOCAL_BITS) | place.to(torch.int64)


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    block_key, place = keys >> LOCAL_BITS, keys & (VOXELS_PER_BLOCK - 1)
    block = torch.stack([(block_key >> (2 * BLOCK_AXIS_BITS)) & BLOCK_AXIS_MASK,
                         (block_key >> BLOCK_AXIS_BITS) & BLOCK_AXIS_MASK,
                         block_key & BLOCK_AXIS_MASK], dim=1) - BLOCK_AXIS_OFFSET
    local = torch.stack([(place >> (2 * BLOCK_BITS)) & LOCAL_MASK, (place >> BLOCK_BITS) & LOCAL_MASK,
                         place & LOCAL_MASK], dim=1)
    return block * (1 << BLOCK_BITS) + local


def merge_block_index(index_keys: torch.Tensor, index_rows: torch.Tensor,
                      block_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The table rows of the sorted unique ``block_keys`` in a map whose sorted block index is (``index_keys``,
    ``index_rows``); keys not in it get the rows n, n + 1, ... (n = len(index_keys)) in key order. Returns (the
    rows, the keys and the rows of the index with the new keys merged in): ``voxel_kernels.merge_blocks`` in torch
    operations, in one linear pass (the index has ~1/16 as many entries as the map has voxels)."""
    n, dev = int(index_keys.shape[0]), index_keys.device
    at = torch.searchsorted(index_keys, block_keys)
    found = index_keys[at.clamp(max=n - 1)] == block_keys if n else torch.zeros_like(block_keys, dtype=torch.bool)
    rows = torch.empty_like(block_keys)
    rows[found] = index_rows[at[found]]
    unknown = ~found
    n_new = int(unknown.sum())
    rows[unknown] = torch.arange(n, n + n_new, dtype=torch.int64, device=dev)
    if n_new == 0:
        return rows, index_keys, index_rows
    # An old entry moves down by the number of new keys inserted at or before it.
    at = at[unknown]
    old_dest = torch.arange(n, device=dev) + torch.bincount(at, minlength=n + 1)[:n].cumsum(0)
    new_dest = at + torch.arange(n_new, device=dev)
    keys, merged = (torch.empty(n + n_new, dtype=torch.int64, device=dev) for _ in range(2))
    keys[old_dest], keys[new_dest] = index_keys, block_keys[unknown]
    merged[old_dest], merged[new_dest] = index_rows, rows[unknown]
    return rows, keys, merged


def view_bounds(voxel_size: float, camera, max_range: float) -> np.ndarray:
    """The numbers ``blocks_in_view`` tests a block against (float64): block side, radius of its sphere, the depth
    range's far end, then (a, b, least) of each frustum side plane, a * lateral + b * depth >= least."""
    side = voxel_size * (1 << BLOCK_BITS)
    r = side * math.sqrt(3) / 2
    fx, fy, cx, cy, w, h = camera.fx, camera.fy, camera.cx, camera.cy, float(camera.width), float(camera.height)
    return np.array([side, r, max_range + r, fx, cx, -r * math.hypot(fx, cx), -fx, w - cx, -r * math.hypot(fx, w - cx),
                     fy, cy, -r * math.hypot(fy, cy), -fy, h - cy, -r * math.hypot(fy, h - cy)])


def blocks_in_view(block_keys: torch.Tensor, voxel_size: float, camera, R: torch.Tensor, origin: torch.Tensor,
                   max_range: float) -> torch.Tensor:
    """Which blocks (their keys, without the voxel place) reach into the view of a camera at ``origin`` with
    rotation ``R`` (camera to world, float64) up to ``max_range`` metres of depth: the sphere around each block
    against the frustum's four side planes and its depth range. A superset of the blocks the camera sees. Products
    are spelled out, as ``voxel_kernels.rows_in_view`` does, so both choose the same blocks."""
    side, r, far, *planes = view_bounds(voxel_size, camera, max_range).tolist()
    coords = torch.stack([(block_keys >> (2 * BLOCK_AXIS_BITS)) & BLOCK_AXIS_MASK,
                          (block_keys >> BLOCK_AXIS_BITS) & BLOCK_AXIS_MASK,
                          block_keys & BLOCK_AXIS_MASK], dim=1) - BLOCK_AXIS_OFFSET
    p = (coords.to(torch.float64) + 0.5) * side - origin
    x, y, z = (p[:, 0] * R[0, c] + p[:, 1] * R[1, c] + p[:, 2] * R[2, c] for c in range(3))
    inside = (z >= -r) & (z <= far)
    for k, lateral in enumerate((x, x, y, y)):
        a, b, least = planes[3 * k:3 * k + 3]
        inside &= (a * lateral + b * z) >= least
    return inside
