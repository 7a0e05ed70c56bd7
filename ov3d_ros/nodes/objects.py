"""Per-query object summaries of a labelled cloud (ROS-free; used by the segmenter node and the demo).

A query's points are rarely one object: a "chair" query labels every chair, plus stray points elsewhere. The service
reports the centroid of the query's largest object (its largest component in ``ov3d_ros.instances``: occupied
``cluster_voxel`` cells of the query, split at narrow contacts), which is where a robot would go to find "the chair",
rather than a mean that can fall between two objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ov3d_ros.instances import InstanceSet, cluster_grid, extract_instances

__all__ = ["ObjectSummary", "summaries", "summarise_queries", "format_table", "select_instances"]


@dataclass
class ObjectSummary:
    query: str
    point_count: int          # points whose label is this query
    best_score: float         # highest score of this query over the cloud (0 when the cloud is empty)
    centroid: np.ndarray      # (3,) float64 centroid of the largest object (zeros when point_count == 0)
    cluster_point_count: int  # points in that object


def summaries(found: InstanceSet, queries: list[str], best_scores: np.ndarray) -> list[ObjectSummary]:
    """One ObjectSummary per query from the instance split of its points and its best score (Q,)."""
    out = []
    for q, query in enumerate(queries):
        best = float(best_scores[q])
        out.append(ObjectSummary(query=query, point_count=int(found.query_points[q]),
                                 best_score=best if np.isfinite(best) else 0.0,
                                 centroid=np.array(found.largest_centroid[q], dtype=np.float64),
                                 cluster_point_count=int(found.largest_points[q])))
    return out


def summarise_queries(xyz: np.ndarray, label: np.ndarray, queries: list[str], best_scores: np.ndarray,
                      cluster_voxel: float = 0.05, core_neighbours: int = 6) -> list[ObjectSummary]:
    """One ObjectSummary per query of a cloud labelled point by point (``label`` (N,) indexes ``queries``, -1 =
    unlabelled; ``best_scores`` (Q,); ``core_neighbours`` as ``extract_instances``)."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    label = np.asarray(label).reshape(-1)
    if len(label) != len(xyz):
        raise ValueError(f"summarise_queries: {len(label)} labels for {len(xyz)} points")
    found = extract_instances(cluster_grid(xyz, cluster_voxel), label, np.zeros(len(label)), len(queries),
                              core_neighbours=core_neighbours)
    return summaries(found, queries, best_scores)


def format_table(summaries: list[ObjectSummary]) -> str:
    """Plain-text table: query | points | best score | centroid (largest object) | its points."""
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


def select_instances(instances: list, min_points: int, max_instances: int) -> list:
    """The instances a request asks for: at least ``min_points`` points (0: all given), at most ``max_instances``
    per query (0: all), each query's largest first (the order extraction gives)."""
    chosen, per_query = [], {}
    for inst in instances:
        if inst.points < min_points or (max_instances and per_query.get(inst.query, 0) >= max_instances):
            continue
        per_query[inst.query] = per_query.get(inst.query, 0) + 1
        chosen.append(inst)
    return chosen
