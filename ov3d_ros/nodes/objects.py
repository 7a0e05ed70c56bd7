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
    grid's dims (with a one-voxel border, so the +-1 neighbour offsets of a linear key never wrap). Computed once
    per cloud, it serves any number of queries (``summarise_queries(..., grid=)``)."""

    voxels: np.ndarray
    point_voxel: np.ndarray
    dims: np.ndarray


def cluster_grid(xyz: np.ndarray, cluster_voxel: float) -> ClusterGrid:
    return ClusterGrid(*_voxel_grid(np.asarray(xyz, dtype=np.float64).reshape(-1, 3), cluster_voxel))


def _voxel_grid(xyz: np.ndarray, cluster_voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not cluster_voxel > 0:
        raise ValueError(f"cluster_voxel must be > 0 metres, got {cluster_voxel}")
    keys = np.floor(xyz / cluster_voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 3
    keys += 1
    linear = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    voxels, point_voxel = np.unique(linear, return_inverse=True)
    return voxels, point_voxel.reshape(-1), dims


def _components(voxels: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """Connected component of each voxel (sorted linear keys) under 26-connectivity."""
    n_vox = len(voxels)
    rows, cols = [np.arange(n_vox)], [np.arange(n_vox)]
    # 13 "forward" neighbour offsets cover all 26 neighbours once the graph is treated as undirected.
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                if (dx, dy, dz) <= (0, 0, 0):
                    continue
                shifted = voxels + (dx * dims[1] + dy) * dims[2] + dz
                pos = np.minimum(np.searchsorted(voxels, shifted), n_vox - 1)
                hit = voxels[pos] == shifted
                rows.append(np.nonzero(hit)[0])
                cols.append(pos[hit])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vox, n_vox))
    return connected_components(graph, directed=False)[1]


def voxel_clusters(xyz: np.ndarray, cluster_voxel: float) -> np.ndarray:
    """Cluster id per point: connected components of occupied voxels under 26-connectivity."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    voxels, point_voxel, dims = _voxel_grid(xyz, cluster_voxel)
    return _components(voxels, dims)[point_voxel].astype(np.int64)


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
    if len(xyz):
        voxels, point_voxel, dims = (grid.voxels, grid.point_voxel, grid.dims) if grid is not None \
            else _voxel_grid(xyz, cluster_voxel)
    out = []
    for q, query in enumerate(queries):
        mask = label == q
        count = int(mask.sum())
        centroid = np.full(3, np.nan)
        cluster_count = 0
        if count:
            occupancy = np.bincount(point_voxel[mask], minlength=len(voxels))
            mine = np.flatnonzero(occupancy)  # this query's voxels, in key order
            component = _components(voxels[mine], dims)
            largest = int(np.argmax(np.bincount(component, weights=occupancy[mine])))
            in_largest = np.zeros(len(voxels), dtype=bool)
            in_largest[mine[component == largest]] = True
            points = mask & in_largest[point_voxel]
            cluster_count = int(points.sum())
            centroid = xyz[points].mean(axis=0)
        out.append(ObjectSummary(query=query, point_count=count, best_score=float(best_scores[q]),
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
