"""Per-query object summaries of a labelled cloud (ROS-free; used by the segmenter node and the demo).

A query's points are rarely one object: a "chair" query labels every chair, plus stray points elsewhere.
The service reports the centroid of the query's LARGEST spatial cluster (26-connected occupied voxels of size
``cluster_voxel``), which is where a robot would go to find "the chair", rather than a mean that can fall
between two objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class ObjectSummary:
    query: str
    point_count: int          # points whose label is this query
    best_score: float         # highest score of this query over the cloud (NaN when the cloud is empty)
    centroid: np.ndarray      # (3,) float64 centroid of the largest cluster (NaN when point_count == 0)
    cluster_point_count: int  # points in that cluster


@dataclass(frozen=True)
class ClusterGrid:
    """A cloud on the cluster grid: sorted linear keys of the occupied voxels, the voxel of each point, and the
    pairs of 26-adjacent occupied voxels (``a`` < ``b`` as rows of ``voxels``, each pair once). Computed once per
    cloud, it serves any number of queries (``summarise_queries(..., grid=)``): a query only keeps the pairs whose
    two voxels hold its points."""

    voxels: np.ndarray
    point_voxel: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def components(self, occupied: np.ndarray) -> np.ndarray:
        """Connected component of every voxel among the ``occupied`` ones (bool per voxel), 26-connected; voxels
        not occupied are components of their own."""
        keep = occupied[self.a]
        keep &= occupied[self.b]
        n = len(self.voxels)
        graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (self.a[keep], self.b[keep])), shape=(n, n))
        return connected_components(graph, directed=False)[1]


def cluster_grid(xyz: np.ndarray, cluster_voxel: float) -> ClusterGrid:
    """The cloud ``xyz`` (N, 3) on a grid of ``cluster_voxel`` metres, with its voxels' adjacency."""
    if not cluster_voxel > 0:
        raise ValueError(f"cluster_voxel must be > 0 metres, got {cluster_voxel}")
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ClusterGrid(empty, empty, empty, empty)
    keys = np.floor(xyz / cluster_voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 3  # a free border of one voxel: the +-1 offsets of a linear key never wrap
    keys += 1
    linear = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    voxels, point_voxel = np.unique(linear, return_inverse=True)
    a, b = [], []
    # 13 "forward" neighbour offsets list every pair of the 26-neighbourhood once.
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                if (dx, dy, dz) <= (0, 0, 0):
                    continue
                shifted = voxels + (dx * dims[1] + dy) * dims[2] + dz
                pos = np.minimum(np.searchsorted(voxels, shifted), len(voxels) - 1)
                hit = voxels[pos] == shifted
                a.append(np.flatnonzero(hit))
                b.append(pos[hit])
    return ClusterGrid(voxels, point_voxel.reshape(-1), np.concatenate(a), np.concatenate(b))


def voxel_clusters(xyz: np.ndarray, cluster_voxel: float) -> np.ndarray:
    """Cluster id per point: connected components of occupied voxels under 26-connectivity."""
    grid = cluster_grid(xyz, cluster_voxel)
    return grid.components(np.ones(len(grid.voxels), dtype=bool))[grid.point_voxel].astype(np.int64)


def summarise_queries(xyz: np.ndarray, label: np.ndarray, queries: list[str], best_scores: np.ndarray,
                      cluster_voxel: float = 0.05, *, grid: ClusterGrid | None = None) -> list[ObjectSummary]:
    """One ObjectSummary per query. ``label`` indexes ``queries`` (-1 = unlabelled); ``best_scores`` is (Q,).

    The cloud is put on the cluster grid once (or ``grid``, the cloud's ``cluster_grid`` at ``cluster_voxel``, is
    reused); each query then clusters only the voxels its points occupy.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    label = np.asarray(label).reshape(-1)
    if len(label) != len(xyz):
        raise ValueError(f"summarise_queries: {len(label)} labels for {len(xyz)} points")
    if grid is None:
        grid = cluster_grid(xyz, cluster_voxel)
    if len(grid.point_voxel) != len(xyz):
        raise ValueError(f"summarise_queries: a cluster grid of {len(grid.point_voxel)} points for {len(xyz)}")
    # The points sorted by label (a radix sort on int16), so each query takes the slice of its own points.
    by_label = np.argsort(np.clip(label, -1, len(queries)).astype(np.int16), kind="stable")
    bounds = np.searchsorted(label[by_label], np.arange(len(queries) + 1))
    out = []
    for q, query in enumerate(queries):
        points = by_label[bounds[q]:bounds[q + 1]]
        centroid = np.full(3, np.nan)
        cluster_count = 0
        if len(points):
            voxel = grid.point_voxel[points]
            occupancy = np.bincount(voxel, minlength=len(grid.voxels))
            component = grid.components(occupancy > 0)
            largest = int(np.argmax(np.bincount(component, weights=occupancy)))
            in_largest = points[component[voxel] == largest]
            cluster_count = len(in_largest)
            centroid = xyz[in_largest].mean(axis=0)
        out.append(ObjectSummary(query=query, point_count=len(points), best_score=float(best_scores[q]),
                                 centroid=centroid, cluster_point_count=cluster_count))
    return out


def format_table(summaries: list[ObjectSummary]) -> str:
    """Plain-text table: query | points | best score | centroid (largest cluster) | cluster points."""
    header = ("query", "points", "best score", "centroid x y z [m]", "cluster pts")
    rows = []
    for s in summaries:
        centroid = ("-" if not np.all(np.isfinite(s.centroid))
                    else " ".join(f"{v:+.2f}" for v in s.centroid))
        best = "-" if not np.isfinite(s.best_score) else f"{s.best_score:.3f}"
        rows.append((s.query, str(s.point_count), best, centroid, str(s.cluster_point_count)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return "\n".join(lines)
