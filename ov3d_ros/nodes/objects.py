"""Per-query object summaries of a labelled cloud (ROS-free; used by the segmenter node and the demo).

A query's points are rarely one object: a "chair" query labels every chair, plus stray points elsewhere.
The service reports the centroid of the query's LARGEST spatial cluster (26-connected occupied voxels of size
``cluster_voxel``), which is where a robot would go to find "the chair", rather than a mean that can fall
between two objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ov3d_ros.graph_kernels import label_components
from ov3d_ros.instances import ClusterGrid, cluster_grid

__all__ = ["ObjectSummary", "ClusterGrid", "cluster_grid", "voxel_clusters", "summarise_units", "summarise_queries",
           "format_table"]


@dataclass
class ObjectSummary:
    query: str
    point_count: int          # points whose label is this query
    best_score: float         # highest score of this query over the cloud (0 when the cloud is empty)
    centroid: np.ndarray      # (3,) float64 centroid of the largest cluster (zeros when point_count == 0)
    cluster_point_count: int  # points in that cluster


def voxel_clusters(xyz: np.ndarray, cluster_voxel: float) -> np.ndarray:
    """Cluster id per point: connected components of occupied voxels under 26-connectivity."""
    grid = cluster_grid(xyz, cluster_voxel)
    n = len(grid.voxels)  # one node per voxel, all of one label
    component = label_components(np.arange(n + 1), np.zeros(n, dtype=np.int64), grid.a, grid.b)
    out = np.empty(len(grid.group_unit), dtype=np.int64)
    out[grid.group_unit] = component[grid.group_voxel]  # one group per point here
    return out


def summarise_units(grid: ClusterGrid, unit_label: np.ndarray, queries: list[str], best_scores: np.ndarray
                    ) -> list[ObjectSummary]:
    """One ObjectSummary per query, from the label of every unit of ``grid`` (``unit_label`` indexes ``queries``,
    -1 = unlabelled) and the best score of each query (Q,). The clusters of all queries come from one pass over the
    voxel adjacency (``label_components``) on (voxel, label) nodes: a voxel holding points of two queries is in a
    cluster of each."""
    label = np.asarray(unit_label).reshape(-1)[grid.group_unit]
    labelled = label >= 0
    n_labels = max(1, len(queries))
    node_key, node_of_group = np.unique(grid.group_voxel[labelled] * n_labels + label[labelled], return_inverse=True)
    node_voxel, node_label = node_key // n_labels, node_key % n_labels
    node_count = np.bincount(node_of_group, grid.group_count[labelled], len(node_key))
    node_sum = np.stack([np.bincount(node_of_group, grid.group_sum[labelled, i], len(node_key)) for i in range(3)],
                        axis=1)
    node_ptr = np.searchsorted(node_voxel, np.arange(len(grid.voxels) + 1))
    root = label_components(node_ptr, node_label, grid.a, grid.b)
    cluster_count = np.bincount(root, node_count, len(node_key))  # points per cluster, at its root node
    out = []
    for q, query in enumerate(queries):
        mine = np.flatnonzero(node_label == q)
        centroid, in_largest = np.zeros(3), 0
        if len(mine):
            largest = root[mine][np.argmax(cluster_count[root[mine]])]
            members = mine[root[mine] == largest]
            in_largest = int(node_count[members].sum())
            centroid = node_sum[members].sum(axis=0) / in_largest
        best = float(best_scores[q])
        out.append(ObjectSummary(query=query, point_count=int(node_count[mine].sum()),
                                 best_score=best if np.isfinite(best) else 0.0, centroid=centroid,
                                 cluster_point_count=in_largest))
    return out


def summarise_queries(xyz: np.ndarray, label: np.ndarray, queries: list[str], best_scores: np.ndarray,
                      cluster_voxel: float = 0.05) -> list[ObjectSummary]:
    """One ObjectSummary per query of a cloud labelled point by point (``label`` (N,) indexes ``queries``, -1 =
    unlabelled; ``best_scores`` (Q,))."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    label = np.asarray(label).reshape(-1)
    if len(label) != len(xyz):
        raise ValueError(f"summarise_queries: {len(label)} labels for {len(xyz)} points")
    return summarise_units(cluster_grid(xyz, cluster_voxel), label, queries, best_scores)


def format_table(summaries: list[ObjectSummary]) -> str:
    """Plain-text table: query | points | best score | centroid (largest cluster) | cluster points."""
    header = ("query", "points", "best score", "centroid x y z [m]", "cluster pts")
    rows = []
    for s in summaries:
        centroid = "not found" if s.point_count == 0 else " ".join(f"{v:+.2f}" for v in s.centroid)
        best = f"{s.best_score:.3f}"
        rows.append((s.query, str(s.point_count), best, centroid, str(s.cluster_point_count)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return "\n".join(lines)
