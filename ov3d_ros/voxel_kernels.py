"""Compiled loops of VoxelMap on a CPU: integration (one pass over a frame's points where torch makes a dozen, each
a full pass over memory) and the free-space and surface step (one voxel at a time). The CUDA path stays in torch;
both give the same map, bit for bit: the sums are integers held in float64 (micrometres, colour units), so their
order does not matter, and both sides spell out every product and lerp (no fused multiply-add).

Module-level numba functions with ``cache=True``: a new process loads their machine code from disk.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .voxel_grid import BLOCK_AXIS_BITS, BLOCK_AXIS_MASK, BLOCK_AXIS_OFFSET, BLOCK_BITS, LOCAL_BITS, LOCAL_MASK, \
    VOXELS_PER_BLOCK, pack_blocks

__all__ = ["frame_cells", "missing_cells", "add_points", "observe"]


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
    """The cells (sorted, unique) that no voxel holds yet (``table`` -1). They are marked -2 in ``table`` on the way
    (each is collected once): the caller numbers them at once."""
    out = np.empty(len(cell), np.int64)
    k = 0
    for i in range(len(cell)):
        if table[cell[i]] == -1:
            table[cell[i]] = -2
            out[k] = cell[i]
            k += 1
    return np.sort(out[:k])


@numba.njit(cache=True)
def add_points(table, cell, xyz, rgb, xyz_sum, rgb_sum, count, frames, last_seen, free, tick):
    """Add each point to its voxel: position in whole micrometres (rounded half to even, as torch.round), colour,
    count; a voxel hit for the first time in integration ``tick`` counts one more frame and loses a free-space
    vote. Neighbouring pixels mostly share a voxel: a run of points in one cell is summed first and added once
    (the sums are integers, so the order of the additions does not change them)."""
    n = len(cell)
    i = 0
    while i < n:
        here = cell[i]
        x = y = z = r = g = b = 0.0
        j = i
        while j < n and cell[j] == here:
            x += np.rint(np.float64(xyz[j, 0]) * 1e6)
            y += np.rint(np.float64(xyz[j, 1]) * 1e6)
            z += np.rint(np.float64(xyz[j, 2]) * 1e6)
            r += rgb[j, 0]
            g += rgb[j, 1]
            b += rgb[j, 2]
            j += 1
        v = table[here]
        xyz_sum[v, 0] += x
        xyz_sum[v, 1] += y
        xyz_sum[v, 2] += z
        rgb_sum[v, 0] += r
        rgb_sum[v, 1] += g
        rgb_sum[v, 2] += b
        count[v] += j - i
        if last_seen[v] != tick:
            last_seen[v] = tick
            frames[v] += 1
            if free[v] > 0:
                free[v] -= 1
        i = j


@numba.njit(cache=True)
def _centre(key, c, voxel_size):
    """Coordinate ``c`` of the centre of the voxel with packed ``key`` (voxel_grid.unpack_keys), metres."""
    block = ((key >> LOCAL_BITS) >> ((2 - c) * BLOCK_AXIS_BITS)) & BLOCK_AXIS_MASK
    local = ((key & (VOXELS_PER_BLOCK - 1)) >> ((2 - c) * BLOCK_BITS)) & LOCAL_MASK
    return (np.float64(((block - BLOCK_AXIS_OFFSET) << BLOCK_BITS) + local) + 0.5) * voxel_size


@numba.njit(cache=True)
def _lerp(a, b, w):
    """torch.lerp, to the bit: two forms, as ATen evaluates it."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1.0 - w)


@numba.njit(cache=True)
def observe(voxel, xyz_sum, count, last_seen, free, keys, surface_sum, surface_weight, padded, R, origin, camera,
            stride, voxel_size, carve_margin, max_range, carve, surface, pitch, weight_at_1m, weight_max, views,
            tick):
    """The projective step of ``SurfaceConfig`` for the voxels ``voxel`` in view, one voxel at a time; the same
    arithmetic, in the same order, as the torch step of ``VoxelMap._observe`` (so the same bits). ``padded``: the
    frame's depth on its (stride-th) pixel grid with a border of zeros; ``camera``: fx, fy, cx, cy."""
    fx, fy, cx, cy = camera[0], camera[1], camera[2], camera[3]
    gh, gw = padded.shape[0] - 2, padded.shape[1] - 2
    ray = np.empty(3)
    for k in range(len(voxel)):
        t = voxel[k]
        n = np.float64(count[t]) * 1e6
        for c in range(3):
            ray[c] = xyz_sum[t, c] / n - origin[c]
        q0 = ray[0] * R[0, 0] + ray[1] * R[1, 0] + ray[2] * R[2, 0]
        q1 = ray[0] * R[0, 1] + ray[1] * R[1, 1] + ray[2] * R[2, 1]
        z = ray[0] * R[0, 2] + ray[1] * R[1, 2] + ray[2] * R[2, 2]
        if not (z > 1e-6 and z <= max_range):
            continue
        u = (fx * q0 / z + cx) / stride
        v = (fy * q1 / z + cy) / stride
        if not (u > -0.5 and u < gw - 0.5 and v > -0.5 and v < gh - 0.5):
            continue
        u0 = min(max(np.floor(u), -1.0), gw - 1.0)
        v0 = min(max(np.floor(v), -1.0), gh - 1.0)
        fu, fv = u - u0, v - v0
        row, col = int(v0) + 1, int(u0) + 1
        c00, c01, c10, c11 = padded[row, col], padded[row, col + 1], padded[row + 1, col], padded[row + 1, col + 1]
        lo = min(min(c00, c01), min(c10, c11))
        hi = max(max(c00, c01), max(c10, c11))
        if carve and lo > 0 and z < lo - (voxel_size + carve_margin * lo * lo) and last_seen[t] != tick:
            free[t] += 1
        if not surface:
            continue
        d = _lerp(_lerp(c00, c01, fu), _lerp(c10, c11, fu), fv)
        margin = voxel_size + carve_margin * d * d
        if not (lo > 0 and hi - lo <= margin + pitch * d and abs(d - z) <= margin):
            continue
        weight = min(max(np.rint(weight_at_1m / ((d * d) * (d * d))), 1.0), weight_max)
        w = np.int64(weight)
        for c in range(3):
            crossing = np.rint((ray[c] * (d / z) + origin[c] - _centre(keys[t], c, voxel_size)) * 1e6)
            surface_sum[t, c] += crossing * weight
        surface_weight[t] += w
        cap = w * views
        if surface_weight[t] > cap:
            scale = np.float64(cap) / np.float64(surface_weight[t])
            for c in range(3):
                surface_sum[t, c] = np.rint(surface_sum[t, c] * scale)
            surface_weight[t] = cap
