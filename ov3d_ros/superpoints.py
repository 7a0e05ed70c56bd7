"""Geometric over-segmentation of a cloud into superpoints: surface patches of one orientation and one colour.

A network that labels 5 cm voxels makes scattered mistakes inside objects (a few lamp voxels on a bed, a chair leg
taken for the table it stands under). Surfaces that are smooth and of one colour almost always belong to one
object, so averaging the network's outputs over such a patch and giving the whole patch the result removes most of
those mistakes and puts the label borders where the colour or the surface orientation changes, finer than the
network's voxels. This is the superpoint refinement common in 3D scene segmentation (ScanNet ships mesh segments
made the same way).

The segmentation is Felzenszwalb-Huttenlocher graph segmentation (IJCV 2004) on a voxel grid:
  * nodes: the occupied cells of a ``voxel_size`` grid (mean colour; surface normal from the covariance of the
    points in the 3x3x3 cells around it), so the cost follows the surface area, not the point count;
  * edges: the 26 neighbours of each cell, weighted ``(1 - |n_a . n_b|) + colour_weight * |rgb_a - rgb_b| / 255``;
  * edges are merged in increasing weight while ``w <= min(Int(A) + k / |A|, Int(B) + k / |B|)`` (Int: the
    largest weight inside a component), so ``k`` sets the scale: larger k, larger segments;
  * components below ``min_size`` cells are then merged into a neighbour.
The loops over the graph's edges are compiled with numba (``ov3d_ros.graph_kernels``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ov3d_ros.graph_kernels import fh_segment, neighbour_sums

# The 13 "forward" offsets of the 26-neighbourhood: each undirected edge between two cells is listed once.
_FORWARD = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) > (0, 0, 0)],
                    dtype=np.int64)


@dataclass(frozen=True)
class SuperpointConfig:
    """Parameters of ``superpoints``; the defaults were chosen on synthetic rooms that are never evaluated on."""

    voxel_size: float = 0.02  # metres: the graph's cells (a fused map's resolution)
    k: float = 1.0  # scale: larger k, larger segments
    colour_weight: float = 2.0  # weight of the colour distance against the normal term
    min_size: int = 20  # cells: smaller segments are merged into a neighbour

    def __post_init__(self):
        if not (np.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise ValueError(f"superpoint voxel_size must be > 0 metres, got {self.voxel_size!r}")
        if not (np.isfinite(self.k) and self.k > 0):
            raise ValueError(f"superpoint k must be > 0, got {self.k!r}")
        if not (np.isfinite(self.colour_weight) and self.colour_weight >= 0):
            raise ValueError(f"superpoint colour_weight must be >= 0, got {self.colour_weight!r}")
        if isinstance(self.min_size, bool) or int(self.min_size) != self.min_size or self.min_size < 1:
            raise ValueError(f"superpoint min_size must be an integer >= 1, got {self.min_size!r}")


class _Grid:
    """Occupied cells of a voxel grid with O(log n) lookup of a cell by its integer coordinates."""

    def __init__(self, xyz: np.ndarray, voxel_size: float):
        ijk = np.floor(xyz / voxel_size).astype(np.int64)
        ijk -= ijk.min(axis=0) - 1  # a free border of one cell, so neighbour keys never wrap around
        self.dims = ijk.max(axis=0) + 2
        keys = self._key(ijk)
        self.keys, self.cell_of_point = np.unique(keys, return_inverse=True)
        self.cell_of_point = self.cell_of_point.reshape(-1)
        self.ijk = np.zeros((len(self.keys), 3), dtype=np.int64)
        self.ijk[self.cell_of_point] = ijk

    def _key(self, ijk: np.ndarray) -> np.ndarray:
        return (ijk[..., 0] * self.dims[1] + ijk[..., 1]) * self.dims[2] + ijk[..., 2]

    def neighbours(self, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cells, their neighbour at ``offset``) for every cell whose neighbour there is occupied."""
        query = self._key(self.ijk + offset)
        pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        hit = self.keys[pos] == query
        return np.flatnonzero(hit), pos[hit]

    def __len__(self) -> int:
        return len(self.keys)


def _cell_normals(grid: _Grid, xyz: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(cells, 3) unit normals: smallest-eigenvalue eigenvector of the points in each cell's 3x3x3 block.

    ``a``, ``b``: every pair of neighbouring cells, once (the graph's edges).
    """
    n_cells = len(grid)
    cell = grid.cell_of_point
    p = xyz.astype(np.float64)
    p = p - p.mean(axis=0)  # moments about the cloud's centre keep the covariance well conditioned
    # per cell: point count, sum of p, sum of p p^T (upper triangle), as the columns of one array
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    columns = [np.ones(len(p))] + [p[:, i] for i in range(3)] + [p[:, i] * p[:, j] for i, j in pairs]
    own = np.stack([np.bincount(cell, c, n_cells) for c in columns], axis=1)
    block = neighbour_sums(own, a, b)
    n = block[:, 0]
    mean = block[:, 1:4] / n[:, None]
    cov = np.empty((n_cells, 3, 3))
    for m, (i, j) in enumerate(pairs):
        cov[:, i, j] = cov[:, j, i] = block[:, 4 + m] / n - mean[:, i] * mean[:, j]
    _, vectors = np.linalg.eigh(cov)
    return vectors[:, :, 0]


def superpoints(xyz, rgb, config: SuperpointConfig | None = None) -> np.ndarray:
    """(N,) int64 superpoint id of every point, ids 0..S-1 (see the module docstring).

    xyz (N, 3) metres; rgb (N, 3) uint8, or float in [0, 1]. Deterministic: the same cloud always gets the same
    segments.
    """
    config = config or SuperpointConfig()
    xyz = np.asarray(xyz)
    rgb = np.asarray(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise ValueError(f"xyz must be a non-empty (N, 3) array, got shape {xyz.shape}")
    if rgb.shape != xyz.shape:
        raise ValueError(f"rgb must be (N, 3) like xyz, got {rgb.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz contains NaN or inf; drop invalid points first")
    grid = _Grid(xyz, config.voxel_size)
    n_cells = len(grid)
    count = np.bincount(grid.cell_of_point, minlength=n_cells).astype(np.float64)
    scale = 1.0 if rgb.dtype == np.uint8 else 255.0  # colour distances in 0..255 units either way
    colour = np.stack([np.bincount(grid.cell_of_point, rgb[:, i].astype(np.float64), n_cells) for i in range(3)],
                      axis=1) * (scale / count[:, None])
    pairs = [grid.neighbours(offset) for offset in _FORWARD]
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    normal = _cell_normals(grid, xyz, a, b)
    weight = (1.0 - np.abs((normal[a] * normal[b]).sum(axis=1))
              + config.colour_weight * np.linalg.norm(colour[a] - colour[b], axis=1) / 255.0)
    order = np.argsort(weight, kind="stable")  # FH merges edges in increasing weight; stable = deterministic ties
    roots = fh_segment(n_cells, a, b, weight, order, float(config.k), int(config.min_size))
    _, cell_segment = np.unique(roots, return_inverse=True)
    return cell_segment.reshape(-1)[grid.cell_of_point].astype(np.int64)


def superpoint_mean(values, segment: np.ndarray) -> np.ndarray:
    """(N, C) float32: every row replaced by the mean of the rows of its superpoint (``segment`` from superpoints)."""
    values = np.asarray(values)
    segment = np.asarray(segment)
    if values.ndim != 2 or segment.shape != (values.shape[0],):
        raise ValueError(f"values must be (N, C) and segment (N,), got {values.shape} and {segment.shape}")
    n_seg = int(segment.max()) + 1 if len(segment) else 0
    sums = np.stack([np.bincount(segment, values[:, c], n_seg) for c in range(values.shape[1])], axis=1)
    counts = np.bincount(segment, minlength=n_seg)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)[segment]
