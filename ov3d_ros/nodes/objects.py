"""Per-query object summaries of a labelled cloud (ROS-free; used by the segmenter node and the demo).

A query's points are rarely one object: a "chair" query labels every chair, plus stray points elsewhere.
The service reports the centroid of the query's LARGEST spatial cluster (26-connected occupied voxels of size
``cluster_voxel``), which is where a robot would go to find "the chair", rather than a mean that can fall
between two objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ObjectSummary:
    query: str
    point_count: int          # points whose label is this query
    best_score: float         # highest score of this query over the cloud (NaN when the cloud is empty)
    centroid: np.ndarray      # (3,) float64 centroid of the largest cluster (NaN when point_count == 0)
    cluster_point_count: int  # points in that cluster


def voxel_clusters(xyz: np.ndarray, cluster_voxel: float) -> np.ndarray:
    """Cluster id per point: connected components of occupied voxels under 26-connectivity."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    if not cluster_voxel > 0:
        raise ValueError(f"cluster_voxel must be > 0 metres, got {cluster_voxel}")
    keys = np.floor(xyz / cluster_voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 3  # +3: room for the -1/+1 neighbour offsets without wrapping
    keys += 1
    linear = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    voxels, point_voxel = np.unique(linear, return_inverse=True)
    n_vox = len(voxels)
    rows, cols = [np.arange(n_vox)], [np.arange(n_vox)]
    # 13 "forward" neighbour offsets cover all 26 neighbours once the graph is treated as undirected.
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                if (dx, dy, dz) <= (0, 0, 0):
                    continue
                shifted = voxels + (dx * dims[1] + dy) * dims[2] + dz
                pos = np.searchsorted(voxels, shifted)
                pos = np.minimum(pos, n_vox - 1)
                hit = voxels[pos] == shifted
                rows.append(np.nonzero(hit)[0])
                cols.append(pos[hit])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vox, n_vox))
    _, voxel_label = connected_components(graph, directed=False)
    return voxel_label[point_voxel].astype(np.int64)


def summarise_queries(xyz: np.ndarray, label: np.ndarray, queries: list[str], best_scores: np.ndarray,
                      cluster_voxel: float = 0.05) -> list[ObjectSummary]:
    """One ObjectSummary per query. ``label`` indexes ``queries`` (-1 = unlabelled); ``best_scores`` is (Q,)."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    label = np.asarray(label).reshape(-1)
    if len(label) != len(xyz):
        raise ValueError(f"summarise_queries: {len(label)} labels for {len(xyz)} points")
    out = []
    for q, query in enumerate(queries):
        mask = label == q
        count = int(mask.sum())
        centroid = np.full(3, np.nan)
        cluster_count = 0
        if count:
            points = xyz[mask]
            cluster = voxel_clusters(points, cluster_voxel)
            sizes = np.bincount(cluster)
            largest = int(np.argmax(sizes))
            cluster_count = int(sizes[largest])
            centroid = points[cluster == largest].mean(axis=0)
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
