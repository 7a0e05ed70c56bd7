"""Compiled loops of VoxelMap integration on a CPU: one pass over a frame's points where torch would make a dozen
(each a full pass over memory, one thread). The CUDA path stays in torch; both give the same map, bit for bit: the
sums are integers held in float64 (micrometres, colour units), so their order does not matter.

Module-level numba functions with ``cache=True``: a new process loads their machine code from disk.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .voxel_grid import BLOCK_BITS, LOCAL_MASK, pack_blocks

__all__ = ["frame_cells", "missing_cells", "add_points"]


def frame_cells(ijk: np.ndarray, slots_of_sorted_blocks) -> torch.Tensor | None:
    """Each voxel's cell in the map's (blocks, 64) table, for the voxels ``ijk`` (N, 3) int32 of a frame;
    ``slots_of_sorted_blocks`` gives the table rows of sorted block keys (allocating new ones). None when the
    frame's blocks span a box too large to mark densely (the map then sorts them)."""
    lo, dims = block_box(ijk)
    volume = int(dims.prod())
    if volume > max(1 << 20, 4 * len(ijk)):
        return None
    linear, places = occupied_blocks(ijk, lo, dims)
    coords = np.stack([places // (dims[1] * dims[2]), (places // dims[2]) % dims[1], places % dims[2]], 1) + lo
    slots = slots_of_sorted_blocks(pack_blocks(torch.from_numpy(coords)))
    return torch.from_numpy(point_cells(ijk, linear, places, slots.numpy(), volume))


@numba.njit(cache=True)
def block_box(ijk):
    """(lower corner (3,), extent (3,)) of the box of blocks that the voxels ``ijk`` (N, 3) int32 fall in."""
    lo = np.full(3, np.iinfo(np.int64).max, np.int64)
    hi = np.full(3, np.iinfo(np.int64).min, np.int64)
    for i in range(ijk.shape[0]):
        for c in range(3):
            b = np.int64(ijk[i, c]) >> BLOCK_BITS
            lo[c] = min(lo[c], b)
            hi[c] = max(hi[c], b)
    return lo, hi - lo + 1


@numba.njit(cache=True)
def occupied_blocks(ijk, lo, dims):
    """(each voxel's block as a place in the box (N,), the occupied places in increasing order): the box's order is
    the block-key order, so the blocks come out sorted."""
    n = ijk.shape[0]
    linear = np.empty(n, np.int64)
    occupied = np.zeros(dims[0] * dims[1] * dims[2], np.bool_)
    for i in range(n):
        at = ((((np.int64(ijk[i, 0]) >> BLOCK_BITS) - lo[0]) * dims[1] + ((np.int64(ijk[i, 1]) >> BLOCK_BITS) - lo[1]))
              * dims[2] + ((np.int64(ijk[i, 2]) >> BLOCK_BITS) - lo[2]))
        linear[i] = at
        occupied[at] = True
    return linear, np.flatnonzero(occupied)


@numba.njit(cache=True)
def point_cells(ijk, linear, places, slots, volume):
    """Each voxel's cell in the (blocks, 64) table: its block's row (``slots`` of the occupied box ``places``) x 64
    plus its place in the block."""
    row = np.empty(volume, np.int64)
    for k in range(len(places)):
        row[places[k]] = slots[k]
    cell = np.empty(ijk.shape[0], np.int64)
    for i in range(ijk.shape[0]):
        local = ((ijk[i, 0] & LOCAL_MASK) << (2 * BLOCK_BITS)) | ((ijk[i, 1] & LOCAL_MASK) << BLOCK_BITS) | \
            (ijk[i, 2] & LOCAL_MASK)
        cell[i] = (row[linear[i]] << (3 * BLOCK_BITS)) | local
    return cell


@numba.njit(cache=True)
def missing_cells(table, cell):
    """The cells (sorted, unique) that no voxel holds yet (``table`` -1)."""
    out = np.empty(len(cell), np.int64)
    k = 0
    for i in range(len(cell)):
        if (i == 0 or cell[i] != cell[i - 1]) and table[cell[i]] < 0:  # runs of one cell: looked up once
            out[k] = cell[i]
            k += 1
    return np.unique(out[:k])


@numba.njit(cache=True)
def add_points(table, cell, xyz, rgb, xyz_sum, rgb_sum, count, frames, last_seen, free, tick):
    """Add each point to its voxel: position in whole micrometres (rounded half to even, as torch.round), colour,
    count; a voxel hit for the first time in integration ``tick`` counts one more frame and loses a free-space
    vote. Neighbouring pixels mostly share a voxel: a run of points in one cell is summed first and added once
    (the sums are integers, so the order of the additions does not change them)."""
    n = len(cell)
    run_xyz = np.zeros(3)
    run_rgb = np.zeros(3)
    start = 0
    for i in range(n + 1):
        if i < n and (i == start or cell[i] == cell[start]):
            for c in range(3):
                run_xyz[c] += np.rint(np.float64(xyz[i, c]) * 1e6)
                run_rgb[c] += rgb[i, c]
            continue
        v = table[cell[start]]
        for c in range(3):
            xyz_sum[v, c] += run_xyz[c]
            rgb_sum[v, c] += run_rgb[c]
            run_xyz[c] = 0.0
            run_rgb[c] = 0.0
        count[v] += i - start
        if last_seen[v] != tick:
            last_seen[v] = tick
            frames[v] += 1
            if free[v] > 0:
                free[v] -= 1
        if i < n:
            start = i
            for c in range(3):
                run_xyz[c] += np.rint(np.float64(xyz[i, c]) * 1e6)
                run_rgb[c] += rgb[i, c]
