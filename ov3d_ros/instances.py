"""Object instances of a labelled cloud: for each query, its points split into objects, each with a gravity-aligned
oriented box. ROS-free; the segmenter node (live answers, ids kept across map updates by ``InstanceTracker``),
``ov3d-segment --instances`` and evaluation share it.

The cloud is first put on a grid of ``cluster_voxel`` metres (``ClusterGrid``): its points are grouped by (voxel,
unit), a unit being what carries one label (a point, a network voxel, a superpoint), so a query labels units and
never touches the points. Instances are found on (voxel, label) nodes:
1. nodes of one label in 26-adjacent voxels are neighbours;
2. a node with at least ``core_neighbours`` neighbours lies inside a surface (a core node). Core nodes joined
   through core nodes make the seeds, so two objects that touch only through a narrow contact (leg against leg,
   edge against edge) stay apart, while an L-shaped object, whose arms meet in a broad junction, stays whole;
3. the other nodes join the seed they reach first (breadth-first), and those that reach none form components of
   their own;
4. components under ``min_points`` points are dropped (stray labels and noise).
Boxes are the minimum-area rectangle of the instance's convex hull in the ground plane (one side lies on a hull
edge, so the hull's edges are the only headings to try) times its height.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from ov3d_ros.graph_kernels import split_components

__all__ = ["ClusterGrid", "cluster_grid", "Box", "Instance", "InstanceSet", "extract_instances", "fit_box",
           "InstanceTracker"]


@dataclass(frozen=True)
class ClusterGrid:
    """A cloud on a grid of ``cluster_voxel`` metres, for summaries of labelled units: the sorted linear keys of the
    occupied voxels, the pairs of 26-adjacent occupied voxels (``a`` < ``b`` as rows of ``voxels``, each pair once),
    and the cloud's points grouped by (voxel, unit): each group's voxel, unit, point count, coordinate sum and
    coordinate bounds (so instance boxes enclose every point). A
    unit is what carries one label (a point, a network voxel, a superpoint), so a query classifies the units and
    sums the groups, never touching the points. Computed once per cloud, it serves any number of queries."""

    cluster_voxel: float
    voxels: np.ndarray
    a: np.ndarray
    b: np.ndarray
    group_voxel: np.ndarray
    group_unit: np.ndarray
    group_count: np.ndarray
    group_sum: np.ndarray
    group_min: np.ndarray
    group_max: np.ndarray


def cluster_grid(xyz: np.ndarray, cluster_voxel: float, unit: np.ndarray | None = None) -> ClusterGrid:
    """The cloud ``xyz`` (N, 3) on a grid of ``cluster_voxel`` metres; ``unit`` (N,) int64 gives each point the
    row of its label (None: every point is a unit of its own)."""
    if not cluster_voxel > 0:
        raise ValueError(f"cluster_voxel must be > 0 metres, got {cluster_voxel}")
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    unit = np.arange(len(xyz), dtype=np.int64) if unit is None else np.asarray(unit, dtype=np.int64).reshape(-1)
    if len(unit) != len(xyz):
        raise ValueError(f"cluster_grid: {len(unit)} units for {len(xyz)} points")
    if len(xyz) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ClusterGrid(cluster_voxel, empty, empty, empty, empty, empty, empty, np.zeros((0, 3)),
                           np.zeros((0, 3)), np.zeros((0, 3)))
    keys = np.floor(xyz / cluster_voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 3  # a free border of one voxel: the +-1 offsets of a linear key never wrap
    keys += 1
    linear = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    n_units = int(unit.max()) + 1
    group, point_group = np.unique(linear * n_units + unit, return_inverse=True)
    group_linear = group // n_units  # sorted: the groups' voxels, each voxel's groups together
    first = np.concatenate([[True], group_linear[1:] != group_linear[:-1]])
    voxels, group_voxel = group_linear[first], np.cumsum(first) - 1
    count = np.bincount(point_group, minlength=len(group))
    total = np.stack([np.bincount(point_group, xyz[:, i], len(group)) for i in range(3)], axis=1)
    by_group = np.argsort(point_group, kind="stable")
    starts = np.searchsorted(point_group[by_group], np.arange(len(group)))
    lo, hi = np.minimum.reduceat(xyz[by_group], starts), np.maximum.reduceat(xyz[by_group], starts)
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
    return ClusterGrid(float(cluster_voxel), voxels, np.concatenate(a), np.concatenate(b), group_voxel,
                       group % n_units, count, total, lo, hi)


@dataclass
class Box:
    """A gravity-aligned oriented box: ``center`` (3,), ``size`` (3,) along its own x (the longer horizontal side,
    heading ``yaw``), y and z, ``yaw`` about +z in [-pi/2, pi/2)."""
    center: np.ndarray
    size: np.ndarray
    yaw: float

    def corners(self) -> np.ndarray:
        """(8, 3) corners (for drawing and tests)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        unit = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        return self.center + (unit * self.size) @ R.T


def fit_box(xyz: np.ndarray) -> Box:
    """The gravity-aligned box of least footprint around ``xyz`` (N, 3): the minimum-area rectangle of the points'
    convex hull in x-y (one of its sides lies on a hull edge) and their z range."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        raise ValueError("fit_box: no points")
    return _fit_footprint(xyz[:, :2], xyz[:, 2].min(), xyz[:, 2].max())


def _fit_footprint(xy: np.ndarray, z0: float, z1: float) -> Box:
    """fit_box from the points' x-y and their z range."""
    hull = _hull_2d(xy)
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    angles = np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2) if len(hull) > 1 else np.zeros(1)
    angles = np.unique(np.round(angles, 12))
    # The hull along every candidate heading at once: coordinates along (c, s) and (-s, c).
    along = hull @ np.stack([np.cos(angles), np.sin(angles)])
    across = hull @ np.stack([-np.sin(angles), np.cos(angles)])
    extent_a = along.max(axis=0) - along.min(axis=0)
    extent_b = across.max(axis=0) - across.min(axis=0)
    k = int(np.argmin(extent_a * extent_b))  # the first of equal areas
    theta = angles[k]
    lo = np.array([along[:, k].min(), across[:, k].min()])
    hi = np.array([along[:, k].max(), across[:, k].max()])
    size = hi - lo
    mid = (lo + hi) / 2
    c, s = np.cos(theta), np.sin(theta)
    center = np.array([c * mid[0] - s * mid[1], s * mid[0] + c * mid[1], (z0 + z1) / 2])
    if size[0] < size[1]:  # x along the longer side
        size, theta = size[::-1], theta + np.pi / 2
    yaw = (theta + np.pi / 2) % np.pi - np.pi / 2
    return Box(center, np.array([size[0], size[1], z1 - z0]), float(yaw))


def _hull_2d(xy: np.ndarray) -> np.ndarray:
    """Convex hull vertices of 2D points in order (Qhull); fewer than 3 distinct or collinear points: the points."""
    pts = np.asarray(xy, dtype=np.float64)
    if len(pts) >= 3:
        try:
            return pts[ConvexHull(pts).vertices]
        except QhullError:  # all on one line, or all the same point
            pass
    return np.unique(pts, axis=0)


@dataclass
class Instance:
    """One object of one query: ``query`` (index), point count, score mean and max, centroid, box; ``id`` and
    ``last_seen`` (stamp, s) once an InstanceTracker has seen it."""
    query: int
    points: int
    score_mean: float
    score_max: float
    centroid: np.ndarray
    box: Box
    id: int = -1
    last_seen: float = 0.0


@dataclass
class InstanceSet:
    """The instances of a labelled grid; per group of the grid the instance it belongs to (-1: none); per query its
    labelled points and the centroid and size of its largest component (instance or not: a query whose points are
    all below ``min_points`` still has one; zeros when it has no point)."""
    instances: list[Instance]
    group_instance: np.ndarray = field(repr=False)
    query_points: np.ndarray = field(repr=False)
    largest_centroid: np.ndarray = field(repr=False)
    largest_points: np.ndarray = field(repr=False)


def extract_instances(grid: ClusterGrid, unit_label: np.ndarray, unit_score: np.ndarray, n_queries: int, *,
                      min_points: int = 30, core_neighbours: int = 6, max_instances: int = 0) -> InstanceSet:
    """Instances of the grid's cloud whose units have ``unit_label`` (index of a query, -1 = none) and
    ``unit_score``; see the module docstring. Per query the instances come largest first, at most
    ``max_instances`` (0 = all)."""
    unit_label = np.asarray(unit_label).reshape(-1)
    unit_score = np.asarray(unit_score, dtype=np.float64).reshape(-1)
    label, score = unit_label[grid.group_unit], unit_score[grid.group_unit]
    kept = np.flatnonzero(label >= 0)
    group_instance = np.full(len(label), -1, dtype=np.int64)
    n = max(1, int(n_queries))
    if len(kept) == 0:
        return InstanceSet([], group_instance, np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros(n, np.int64))
    # Groups come sorted by voxel, so their (voxel, label) keys are nearly sorted: a stable sort is about linear.
    key = grid.group_voxel[kept] * n + label[kept]
    order = np.argsort(key, kind="stable")
    by_node, sorted_key = kept[order], key[order]
    first = np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]])
    starts = np.flatnonzero(first)
    node_key = sorted_key[first]
    node_voxel, node_label = node_key // n, node_key % n
    weight = grid.group_count[by_node].astype(np.float64)
    count = np.add.reduceat(weight, starts)
    total = np.add.reduceat(grid.group_sum[by_node], starts, axis=0)
    score_sum = np.add.reduceat(weight * score[by_node], starts)
    score_max = np.maximum.reduceat(score[by_node], starts)
    node_min = np.minimum.reduceat(grid.group_min[by_node], starts, axis=0)
    node_max = np.maximum.reduceat(grid.group_max[by_node], starts, axis=0)
    group_node = np.full(len(label), -1, dtype=np.int64)
    group_node[by_node] = np.cumsum(first) - 1

    node_ptr = np.searchsorted(node_voxel, np.arange(len(grid.voxels) + 1))
    comp = split_components(node_ptr, node_label, grid.a, grid.b, core_neighbours)
    ids, node_comp = np.unique(comp, return_inverse=True)
    comp_points = np.bincount(node_comp, count, len(ids))
    comp_label = node_label[ids]  # a component's root node carries its label
    comp_sum = np.stack([np.bincount(node_comp, total[:, i], len(ids)) for i in range(3)], axis=1)
    query_points = np.bincount(node_label, count, n).astype(np.int64)
    largest_centroid, largest_points = np.zeros((n, 3)), np.zeros(n, np.int64)
    by_size = np.lexsort((-comp_points, comp_label))  # per label, largest first
    first_of_label = by_size[np.concatenate([[True], comp_label[by_size][1:] != comp_label[by_size][:-1]])]
    largest_points[comp_label[first_of_label]] = comp_points[first_of_label]
    largest_centroid[comp_label[first_of_label]] = comp_sum[first_of_label] / comp_points[first_of_label, None]
    order = np.argsort(node_comp, kind="stable")
    starts = np.searchsorted(node_comp[order], np.arange(len(ids) + 1))
    # A node's bounds hold its points, so a box around the bounds of an instance's grid columns (the nodes of one
    # x-y cell, contiguous in voxel order) holds every point, from far fewer corners than the points.
    cell = np.floor(total[:, :2] / count[:, None] / grid.cluster_voxel).astype(np.int64)
    node_column = cell[:, 0] * (1 << 32) + cell[:, 1]
    instances, comp_instance = [], np.full(len(ids), -1, dtype=np.int64)
    for q in range(n):
        mine = np.flatnonzero((comp_label == q) & (comp_points >= min_points))
        mine = mine[np.argsort(-comp_points[mine], kind="stable")]
        if max_instances > 0:
            mine = mine[:max_instances]
        for c in mine:
            nodes = order[starts[c]:starts[c + 1]]
            points = comp_points[c]
            comp_instance[c] = len(instances)
            instances.append(Instance(query=q, points=int(points), score_mean=float(score_sum[nodes].sum() / points),
                                      score_max=float(score_max[nodes].max()),
                                      centroid=total[nodes].sum(axis=0) / points,
                                      box=_column_box(nodes, node_column, node_min, node_max)))
    group_instance[kept] = comp_instance[node_comp[group_node[kept]]]
    return InstanceSet(instances, group_instance, query_points, largest_centroid, largest_points)


def _column_box(nodes: np.ndarray, node_column: np.ndarray, node_min: np.ndarray, node_max: np.ndarray) -> Box:
    """The box of an instance from the x-y bounds of each of its grid columns and its z range."""
    column = node_column[nodes]
    starts = np.flatnonzero(np.concatenate([[True], column[1:] != column[:-1]]))
    lo = np.minimum.reduceat(node_min[nodes, :2], starts)
    hi = np.maximum.reduceat(node_max[nodes, :2], starts)
    corners = np.concatenate([lo, hi, np.column_stack([lo[:, 0], hi[:, 1]]), np.column_stack([hi[:, 0], lo[:, 1]])])
    return _fit_footprint(corners, node_min[nodes, 2].min(), node_max[nodes, 2].max())


class InstanceTracker:
    """Instance ids that stay with an object across answers on a changing map.

    ``assign(query_text, instances, stamp)`` gives each instance the id of the nearest earlier instance of the same
    query text whose box centre lies within ``radius`` metres of its own (each earlier id used once, nearest pairs
    first), else a new id; matched and new instances record ``stamp`` as their ``last_seen``. Thread-safe use is the
    caller's (the segmenter node calls it from its service callback only)."""

    def __init__(self, radius: float = 0.3) -> None:
        self.radius = float(radius)
        self._known: dict[str, dict[int, np.ndarray]] = {}
        self._next = 0

    def assign(self, query_text: str, instances: list[Instance], stamp: float) -> None:
        known = self._known.setdefault(query_text, {})
        old_ids = list(known)
        pairs = []
        if old_ids and instances:
            old = np.array([known[i] for i in old_ids])
            new = np.array([inst.box.center for inst in instances])
            dist = np.linalg.norm(new[:, None, :] - old[None, :, :], axis=2)
            pairs = sorted((d, a, b) for (a, b), d in np.ndenumerate(dist) if d <= self.radius)
        taken_new, taken_old = set(), set()
        for _, a, b in pairs:
            if a in taken_new or b in taken_old:
                continue
            taken_new.add(a)
            taken_old.add(b)
            instances[a].id = old_ids[b]
        for a, inst in enumerate(instances):
            if a not in taken_new:
                inst.id = self._next
                self._next += 1
            inst.last_seen = float(stamp)
            known[inst.id] = np.asarray(inst.box.center, dtype=np.float64)

    def state(self) -> dict[str, np.ndarray]:
        """The known objects as plain arrays (query text, id, box centre) and the next free id, for a map file;
        ``restore`` takes them back."""
        tracks = [(query, i, centre) for query, known in self._known.items() for i, centre in known.items()]
        return {"query": np.array([t[0] for t in tracks], dtype=str),
                "id": np.array([t[1] for t in tracks], dtype=np.int64),
                "center": np.array([t[2] for t in tracks], dtype=np.float64).reshape(-1, 3),
                "next": np.array(self._next, dtype=np.int64)}

    def restore(self, state: dict) -> None:
        """Know the objects of ``state`` (``state()``'s arrays) instead of the current ones."""
        query, ids, center = state["query"], state["id"], state["center"]
        if not len(query) == len(ids) == len(center) or np.asarray(center).shape[1:] != (3,):
            raise ValueError("instance tracks: query, id and center must have one row per object")
        self._known = {}
        for q, i, c in zip(query.tolist(), ids.tolist(), np.asarray(center, dtype=np.float64)):
            self._known.setdefault(str(q), {})[int(i)] = c
        self._next = max(int(state["next"]), max(ids.tolist(), default=-1) + 1)
