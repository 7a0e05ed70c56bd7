"""Compiled loops of VoxelMap on a CPU: integration (one pass over a frame's points where torch makes a dozen, each
a full pass over memory) and the free-space and surface step (one voxel at a time). The CUDA path stays in torch;
both give the same map, bit for bit: the sums are integers held in float64 (micrometres, colour units), so their
order does not matter, and both sides spell out every product and lerp (no fused multiply-add).

The loops release the GIL and run in ``threads`` parts at once (``cores.in_parts``; 0: ``cores.default_threads()``).
Parts never add to the same voxel (the points are shared out by their block's table row, the voxels in view by their
block; a new voxel two parts find is collected once), so the map is the same for any number of parts.

Module-level numba functions with ``cache=True``: a new process loads their machine code from disk.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .cores import in_parts
from .voxel_grid import AXIS_OFFSET, BLOCK_AXIS_BITS, BLOCK_AXIS_MASK, BLOCK_AXIS_OFFSET, BLOCK_BITS, LOCAL_BITS, \
    LOCAL_MASK, VOXELS_PER_BLOCK, voxel_coords

__all__ = ["frame_cells", "merge_blocks", "missing_cells", "number_new", "add_points", "rows_in_view", "depth_grid",
           "observe"]


# -- integration ------------------------------------------------------------------------------------------------------
def frame_cells(xyz: np.ndarray, voxel_size: float, slots_of_sorted_blocks, threads: int = 0) -> np.ndarray | None:
    """Each point's cell in the map's (blocks, 64) table, for the points ``xyz`` (N, 3) of a frame (its voxel
    floor(p / voxel_size), computed in float64 like ``voxel_grid.voxel_coords``); ``slots_of_sorted_blocks`` gives
    the table rows of sorted block keys (allocating new ones). Raises voxel_coords' ValueError, before any row is
    allocated, for points that are not finite or out of the keys' range. None when the frame's blocks span a box
    too large to mark densely (the map then sorts them)."""
    ijk = np.empty(xyz.shape, np.int32)
    bounds = in_parts(_voxel_coords, threads, xyz, voxel_size, ijk)
    if not all(ok for _, _, ok in bounds):
        voxel_coords(torch.from_numpy(xyz), voxel_size)  # raises, naming what is wrong
        raise ValueError("points out of the voxel grid's range")
    lo = np.min(np.stack([b[0] for b in bounds]), axis=0) >> BLOCK_BITS
    dims = (np.max(np.stack([b[1] for b in bounds]), axis=0) >> BLOCK_BITS) - lo + 1
    volume = int(dims.prod())
    if volume > max(1 << 20, 4 * len(ijk)):
        return None
    linear, places = occupied_blocks(ijk, lo, dims)
    slots = slots_of_sorted_blocks(torch.from_numpy(_place_keys(places, lo, dims)))
    row = block_rows(places, slots.numpy(), volume)
    cell = np.empty(len(ijk), np.int64)
    in_parts(point_cells, threads, ijk, linear, row, cell)
    return cell


@numba.njit(cache=True, nogil=True)
def _voxel_coords(xyz, voxel_size, ijk, part, parts):
    """``ijk`` of part ``part`` of the points, and (lowest (3,), highest (3,) voxel, all finite and in range)."""
    lo = np.full(3, AXIS_OFFSET, np.int64)
    hi = np.full(3, -AXIS_OFFSET, np.int64)
    n = xyz.shape[0]
    for i in range(part * n // parts, (part + 1) * n // parts):
        for c in range(3):
            q = np.floor(np.float64(xyz[i, c]) / voxel_size)
            if not (q >= -AXIS_OFFSET and q < AXIS_OFFSET):  # NaN too
                return lo, hi, False
            v = np.int64(q)
            ijk[i, c] = v
            lo[c] = min(lo[c], v)
            hi[c] = max(hi[c], v)
    return lo, hi, True


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
def _place_keys(places, lo, dims):
    """The block keys (``voxel_grid.pack_blocks``) of places in the box of blocks from ``lo`` with extent ``dims``."""
    keys = np.empty(len(places), np.int64)
    for k in range(len(places)):
        i, j, m = places[k] // (dims[1] * dims[2]), (places[k] // dims[2]) % dims[1], places[k] % dims[2]
        keys[k] = ((i + lo[0] + BLOCK_AXIS_OFFSET) << (2 * BLOCK_AXIS_BITS)) | \
            ((j + lo[1] + BLOCK_AXIS_OFFSET) << BLOCK_AXIS_BITS) | (m + lo[2] + BLOCK_AXIS_OFFSET)
    return keys


@numba.njit(cache=True, nogil=True)
def merge_blocks(index_keys, index_rows, block_keys):
    """The table rows of the sorted unique ``block_keys`` in a map whose sorted block index is (``index_keys``,
    ``index_rows``); keys not in it get the rows n, n + 1, ... (n = len(index_keys)) in key order. Returns (the
    rows, the keys and the rows of the index with the new keys merged in)."""
    n, m = len(index_keys), len(block_keys)
    rows = np.empty(m, np.int64)
    at = np.searchsorted(index_keys, block_keys)
    fresh = n
    for j in range(m):
        if at[j] < n and index_keys[at[j]] == block_keys[j]:
            rows[j] = index_rows[at[j]]
        else:
            rows[j] = fresh
            fresh += 1
    if fresh == n:
        return rows, index_keys, index_rows
    keys, merged = np.empty(fresh, np.int64), np.empty(fresh, np.int64)
    i = k = 0
    for j in range(m):
        if rows[j] < n:
            continue
        while i < at[j]:  # the index's keys below this new one
            keys[k], merged[k] = index_keys[i], index_rows[i]
            i += 1
            k += 1
        keys[k], merged[k] = block_keys[j], rows[j]
        k += 1
    keys[k:], merged[k:] = index_keys[i:], index_rows[i:]
    return rows, keys, merged


@numba.njit(cache=True, nogil=True)
def block_rows(places, slots, volume):
    """The table row of each occupied place of the box (``slots`` of ``places``); other places are not read."""
    row = np.empty(volume, np.int64)
    for k in range(len(places)):
        row[places[k]] = slots[k]
    return row


@numba.njit(cache=True, nogil=True)
def point_cells(ijk, linear, row, cell, part, parts):
    """``cell`` (N,) of part ``part`` of the points: each voxel's block row (``row`` of its box place) x 64 plus its
    place in the block."""
    n = ijk.shape[0]
    for i in range(part * n // parts, (part + 1) * n // parts):
        local = ((ijk[i, 0] & LOCAL_MASK) << (2 * BLOCK_BITS)) | ((ijk[i, 1] & LOCAL_MASK) << BLOCK_BITS) | \
            (ijk[i, 2] & LOCAL_MASK)
        cell[i] = (row[linear[i]] << LOCAL_BITS) | local


def missing_cells(table: np.ndarray, cell: np.ndarray, threads: int = 0) -> np.ndarray:
    """The cells (sorted, unique) that no voxel holds yet (``table`` -1). They are marked -2 while they are
    collected (so each is collected once, or by two parts at once: the union is taken) and left -1, so a map that
    cannot make room for them afterwards (MemoryError) keeps a consistent table."""
    return _sorted_unique_unmarked(np.concatenate(in_parts(_missing_cells, threads, table, cell)), table)


@numba.njit(cache=True, nogil=True)
def _sorted_unique_unmarked(values, table):
    values = np.sort(values)
    k = 0
    for i in range(len(values)):
        if i == 0 or values[i] != values[k - 1]:
            values[k] = values[i]
            table[values[i]] = -1
            k += 1
    return values[:k]


@numba.njit(cache=True, nogil=True)
def _missing_cells(table, cell, part, parts):
    """``missing_cells`` of part ``part`` of the points, unsorted; a run of one cell is looked up once."""
    n = len(cell)
    start, stop = part * n // parts, (part + 1) * n // parts
    out = np.empty(stop - start, np.int64)  # room for this part's points, not every point's
    k = 0
    last = -1
    for i in range(start, stop):
        here = cell[i]
        if here != last and table[here] == -1:
            table[here] = -2
            out[k] = here
            k += 1
        last = here
    return out[:k].copy()


def number_new(table, new: np.ndarray, first: int, voxels, slot_block_key, threads: int = 0) -> None:
    """Give the cells ``new`` the voxels ``first``, ``first`` + 1, ... (the map has room for them), empty.
    ``voxels``: the map's per-voxel arrays (keys, frames, last_seen, count, xyz_sum, rgb_sum, free, surface_sum,
    surface_weight); ``slot_block_key``: the block key of each table row."""
    if len(new):
        in_parts(_number_new, threads, table, new, first, *voxels, slot_block_key)


@numba.njit(cache=True, nogil=True)
def _number_new(table, new, first, keys, frames, last_seen, count, xyz_sum, rgb_sum, free, surface_sum,
                surface_weight, slot_block_key, part, parts):
    n = len(new)
    for i in range(part * n // parts, (part + 1) * n // parts):
        v = first + i
        table[new[i]] = v
        keys[v] = (slot_block_key[new[i] >> LOCAL_BITS] << LOCAL_BITS) | (new[i] & (VOXELS_PER_BLOCK - 1))
        frames[v] = last_seen[v] = count[v] = free[v] = surface_weight[v] = 0
        for c in range(3):
            xyz_sum[v, c] = rgb_sum[v, c] = surface_sum[v, c] = 0.0


def add_points(table, cell, xyz, rgb, voxels, tick: int, threads: int = 0) -> None:
    """Add each point to its voxel: position in whole micrometres (rounded half to even, as torch.round), colour,
    count; a voxel hit for the first time in integration ``tick`` counts one more frame and loses a free-space
    vote. ``voxels``: as ``number_new``'s."""
    in_parts(_add_points, threads, table, cell, xyz, rgb, *voxels[1:7], tick)


@numba.njit(cache=True, nogil=True)
def _add_points(table, cell, xyz, rgb, frames, last_seen, count, xyz_sum, rgb_sum, free, tick, part, parts):
    """``add_points`` for the points whose block row is ``part`` modulo ``parts``. Neighbouring pixels mostly share
    a voxel: a run of points in one cell is summed first and added once (the sums are integers, so the order of the
    additions does not change them)."""
    n = len(cell)
    i = 0
    while i < n:
        here = cell[i]
        j = i + 1
        while j < n and cell[j] == here:
            j += 1
        if (here >> LOCAL_BITS) % parts == part:
            x = y = z = r = g = b = 0.0
            for k in range(i, j):
                x += np.rint(np.float64(xyz[k, 0]) * 1e6)
                y += np.rint(np.float64(xyz[k, 1]) * 1e6)
                z += np.rint(np.float64(xyz[k, 2]) * 1e6)
                r += rgb[k, 0]
                g += rgb[k, 1]
                b += rgb[k, 2]
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


# -- the free-space and surface step ----------------------------------------------------------------------------------
def rows_in_view(block_keys: np.ndarray, bounds: np.ndarray, R: np.ndarray, origin: np.ndarray,
                 threads: int = 0) -> np.ndarray:
    """The table rows (increasing) whose blocks ``voxel_grid.blocks_in_view`` chooses, with the same arithmetic:
    ``block_keys`` of the rows, ``bounds`` from ``voxel_grid.view_bounds``."""
    return np.concatenate(in_parts(_rows_in_view, threads, block_keys, bounds, R, origin))


@numba.njit(cache=True, nogil=True)
def _rows_in_view(block_keys, bounds, R, origin, part, parts):
    side, r, far = bounds[0], bounds[1], bounds[2]
    n = len(block_keys)
    rows = np.empty((part + 1) * n // parts - part * n // parts, np.int64)
    k = 0
    for row in range(part * n // parts, (part + 1) * n // parts):
        key = block_keys[row]
        bx, by = ((key >> (2 * BLOCK_AXIS_BITS)) & BLOCK_AXIS_MASK), ((key >> BLOCK_AXIS_BITS) & BLOCK_AXIS_MASK)
        p0 = (np.float64(bx - BLOCK_AXIS_OFFSET) + 0.5) * side - origin[0]
        p1 = (np.float64(by - BLOCK_AXIS_OFFSET) + 0.5) * side - origin[1]
        p2 = (np.float64((key & BLOCK_AXIS_MASK) - BLOCK_AXIS_OFFSET) + 0.5) * side - origin[2]
        x = p0 * R[0, 0] + p1 * R[1, 0] + p2 * R[2, 0]
        y = p0 * R[0, 1] + p1 * R[1, 1] + p2 * R[2, 1]
        z = p0 * R[0, 2] + p1 * R[1, 2] + p2 * R[2, 2]
        if (z >= -r and z <= far and bounds[3] * x + bounds[4] * z >= bounds[5]
                and bounds[6] * x + bounds[7] * z >= bounds[8] and bounds[9] * y + bounds[10] * z >= bounds[11]
                and bounds[12] * y + bounds[13] * z >= bounds[14]):
            rows[k] = row
            k += 1
    return rows[:k]


def depth_grid(xyz: np.ndarray, pixels: np.ndarray, R: np.ndarray, origin: np.ndarray, stride: int, gh: int, gw: int,
               threads: int = 0) -> np.ndarray:
    """The frame's depth (along the optical axis, from its points ``xyz`` in the world) on its (stride-th) pixel
    grid ``pixels`` (N, 2: u, v), with a border of zeros: (gh + 2, gw + 2) float64, 0 where it has no point."""
    padded = np.zeros((gh + 2, gw + 2))
    in_parts(_depth_grid, threads, xyz, pixels, R, origin, stride, padded)
    return padded


@numba.njit(cache=True, nogil=True)
def _depth_grid(xyz, pixels, R, origin, stride, padded, part, parts):
    n = xyz.shape[0]
    r0, r1, r2 = R[0, 2], R[1, 2], R[2, 2]
    width, flat = padded.shape[1], padded.reshape(-1)
    for i in range(part * n // parts, (part + 1) * n // parts):
        u, v = np.int64(pixels[i, 0]), np.int64(pixels[i, 1])
        if stride != 1:  # the same for every point: the compiler takes the test out of the loop
            u, v = u // stride, v // stride
        flat[(v + 1) * width + u + 1] = (np.float64(xyz[i, 0]) - origin[0]) * r0 + \
            (np.float64(xyz[i, 1]) - origin[1]) * r1 + (np.float64(xyz[i, 2]) - origin[2]) * r2


@numba.njit(cache=True, nogil=True)
def _centre(key, c, voxel_size):
    """Coordinate ``c`` of the centre of the voxel with packed ``key`` (voxel_grid.unpack_keys), metres."""
    block = ((key >> LOCAL_BITS) >> ((2 - c) * BLOCK_AXIS_BITS)) & BLOCK_AXIS_MASK
    local = ((key & (VOXELS_PER_BLOCK - 1)) >> ((2 - c) * BLOCK_BITS)) & LOCAL_MASK
    return (np.float64(((block - BLOCK_AXIS_OFFSET) << BLOCK_BITS) + local) + 0.5) * voxel_size


@numba.njit(cache=True, nogil=True)
def _lerp(a, b, w):
    """torch.lerp, to the bit: two forms, as ATen evaluates it."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1.0 - w)


def observe(threads: int, rows, block_keys, table, voxels, *args) -> np.ndarray:
    """The projective step of ``SurfaceConfig`` for the voxels of the table rows ``rows`` (the blocks in view;
    ``block_keys``: the block key of each row), in ``threads`` parts; ``voxels`` as ``number_new``'s, ``args`` as
    ``_observe``'s after them. Returns the voxels a free-space vote has just brought to ``carve`` votes (to be
    removed)."""
    return np.concatenate(in_parts(_observe, threads, rows, block_keys, table, *voxels, *args))


@numba.njit(cache=True, nogil=True)
def _observe(rows, block_keys, table, keys, frames, last_seen, count, xyz_sum, rgb_sum, free, surface_sum,
             surface_weight, padded, R, origin, camera, stride, voxel_size, carve_margin, max_range, carve, surface,
             pitch, weight_at_1m, weight_max, views, tick, part, parts):
    """The projective step for the voxels of part ``part`` of the blocks ``rows``, one voxel at a time; the same
    arithmetic, in the same order, as the torch step of ``VoxelMap._observe`` (so the same bits). ``padded``: the
    frame's ``depth_grid``; ``camera``: fx, fy, cx, cy; ``carve``: the votes that remove a voxel (0: no votes)."""
    fx, fy, cx, cy = camera[0], camera[1], camera[2], camera[3]
    gone = np.empty(64, np.int64)
    k = 0
    gh, gw = padded.shape[0] - 2, padded.shape[1] - 2
    n_rows = len(rows)
    for b in range(part * n_rows // parts, (part + 1) * n_rows // parts):
        for place in range(VOXELS_PER_BLOCK):
            t = table[rows[b] * VOXELS_PER_BLOCK + place]
            if t < 0:
                continue
            n = np.float64(count[t]) * 1e6
            r0 = xyz_sum[t, 0] / n - origin[0]
            r1 = xyz_sum[t, 1] / n - origin[1]
            r2 = xyz_sum[t, 2] / n - origin[2]
            q0 = r0 * R[0, 0] + r1 * R[1, 0] + r2 * R[2, 0]
            q1 = r0 * R[0, 1] + r1 * R[1, 1] + r2 * R[2, 1]
            z = r0 * R[0, 2] + r1 * R[1, 2] + r2 * R[2, 2]
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
            c00, c01 = padded[row, col], padded[row, col + 1]
            c10, c11 = padded[row + 1, col], padded[row + 1, col + 1]
            lo = min(min(c00, c01), min(c10, c11))
            hi = max(max(c00, c01), max(c10, c11))
            if carve and lo > 0 and z < lo - (voxel_size + carve_margin * lo * lo) and last_seen[t] != tick:
                free[t] += 1
                if free[t] >= carve:
                    if k == len(gone):
                        gone = np.concatenate((gone, np.empty(k, np.int64)))
                    gone[k] = t
                    k += 1
            if not surface:
                continue
            d = _lerp(_lerp(c00, c01, fu), _lerp(c10, c11, fu), fv)
            margin = voxel_size + carve_margin * d * d
            if not (lo > 0 and hi - lo <= margin + pitch * d and abs(d - z) <= margin):
                continue
            weight = min(max(np.rint(weight_at_1m / ((d * d) * (d * d))), 1.0), weight_max)
            w = np.int64(weight)
            ratio = d / z
            key = (block_keys[rows[b]] << LOCAL_BITS) | place
            surface_sum[t, 0] += np.rint((r0 * ratio + origin[0] - _centre(key, 0, voxel_size)) * 1e6) * weight
            surface_sum[t, 1] += np.rint((r1 * ratio + origin[1] - _centre(key, 1, voxel_size)) * 1e6) * weight
            surface_sum[t, 2] += np.rint((r2 * ratio + origin[2] - _centre(key, 2, voxel_size)) * 1e6) * weight
            surface_weight[t] += w
            cap = w * views
            if surface_weight[t] > cap:
                scale = np.float64(cap) / np.float64(surface_weight[t])
                for c in range(3):
                    surface_sum[t, c] = np.rint(surface_sum[t, c] * scale)
                surface_weight[t] = cap
    return gone[:k]
