"""Instances of hand-built labelled clouds: objects joined by a narrow contact are split, an L-shaped object stays
whole, stray points are dropped; boxes against known boxes (yaw included); ids kept across answers."""
from __future__ import annotations

import numpy as np
import pytest

from ov3d_ros.instances import InstanceTracker, cluster_grid, extract_instances, fit_box

SPACING = 0.01


def box_surface(lo, hi, yaw=0.0, spacing=SPACING, rng=None):
    """Points on the five visible faces (no bottom) of a box [lo, hi] in its own frame, turned by ``yaw`` about its
    vertical axis through its centre."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    faces = []
    for axis in range(3):
        for side, value in ((0, lo[axis]), (1, hi[axis])):
            if axis == 2 and side == 0:
                continue
            others = [a for a in range(3) if a != axis]
            u = np.arange(lo[others[0]], hi[others[0]] + 1e-9, spacing)
            v = np.arange(lo[others[1]], hi[others[1]] + 1e-9, spacing)
            uu, vv = np.meshgrid(u, v, indexing="ij")
            face = np.zeros((uu.size, 3))
            face[:, axis], face[:, others[0]], face[:, others[1]] = value, uu.ravel(), vv.ravel()
            faces.append(face)
    pts = np.concatenate(faces)
    center = (lo + hi) / 2
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return (pts - center) @ R.T + center


def instances_of(xyz, label, n_queries=1, **kw):
    grid = cluster_grid(xyz, 0.05)  # every point a unit of its own
    label = np.asarray(label)
    score = np.where(label >= 0, 0.5, 0.0)
    return extract_instances(grid, label, score, n_queries, **kw)  # unit i is point i


def test_a_narrow_contact_splits_two_objects_and_an_l_shape_stays_whole():
    a = box_surface([0, 0, 0], [0.5, 0.5, 0.45])
    b = box_surface([0.9, 0, 0], [1.4, 0.5, 0.45])
    bridge = np.stack([np.arange(0.5, 0.9, SPACING), np.full(40, 0.25), np.full(40, 0.02)], axis=1)  # a 1-point strip
    l_shape = np.concatenate([box_surface([3, 0, 0], [4, 0.4, 0.45]), box_surface([3, 0.4, 0], [3.4, 1.4, 0.45])])
    noise = np.random.default_rng(0).uniform([6, 0, 0], [7, 1, 1], (8, 3))  # stray labelled points, far apart
    xyz = np.concatenate([a, b, bridge, l_shape, noise])
    label = np.zeros(len(xyz), dtype=np.int64)
    grid = cluster_grid(xyz, 0.05)
    out = extract_instances(grid, label, np.full(len(xyz), 0.5), 1)
    per_point = np.empty(len(xyz), dtype=np.int64)
    per_point[grid.group_unit] = out.group_instance
    assert len(out.instances) == 3, sorted(i.points for i in out.instances)
    parts = np.split(per_point, np.cumsum([len(a), len(b), len(bridge), len(l_shape)]))
    ia, ib = parts[0][0], parts[1][0]
    assert ia != ib and (parts[0] == ia).all() and (parts[1] == ib).all()  # each box whole, apart
    assert set(parts[2]) == {ia, ib}  # the contact strip is shared out between them
    il = parts[3][0]
    assert (parts[3] == il).all() and out.instances[il].points == len(l_shape)  # the L in one piece
    assert (parts[4] == -1).all()  # the stray points belong to no instance


def test_labels_keep_objects_apart_and_unlabelled_points_are_ignored():
    a = box_surface([0, 0, 0], [0.5, 0.5, 0.45])
    b = box_surface([0.5, 0, 0], [1.0, 0.5, 0.45])  # face to face with a, another query
    floor = np.stack(np.meshgrid(np.arange(-1, 2, 0.02), np.arange(-1, 2, 0.02)), -1).reshape(-1, 2)
    floor = np.column_stack([floor, np.zeros(len(floor))])
    xyz = np.concatenate([a, b, floor])
    label = np.concatenate([np.zeros(len(a)), np.ones(len(b)), -np.ones(len(floor))]).astype(np.int64)
    out = instances_of(xyz, label, n_queries=2)
    assert [(i.query, i.points) for i in out.instances] == [(0, len(a)), (1, len(b))]
    assert out.instances[0].score_mean == pytest.approx(0.5) and out.instances[0].score_max == pytest.approx(0.5)


@pytest.mark.parametrize("yaw", [0.0, 0.3, -0.7, 1.2])
def test_fit_box_recovers_a_turned_box(yaw):
    pts = box_surface([1, 2, 0], [2.2, 2.6, 0.75], yaw=yaw)
    box = fit_box(pts)
    np.testing.assert_allclose(box.center, [1.6, 2.3, 0.375], atol=1e-6)
    np.testing.assert_allclose(box.size, [1.2, 0.6, 0.75], atol=1e-6)
    expected = (yaw + np.pi / 2) % np.pi - np.pi / 2
    assert abs(np.angle(np.exp(2j * (box.yaw - expected)))) < 1e-6  # same heading up to a half turn
    assert -np.pi / 2 <= box.yaw < np.pi / 2
    corners = box.corners()
    assert np.allclose(np.sort(corners[:, 2]), [0] * 4 + [0.75] * 4)


def test_fit_box_of_degenerate_clouds():
    assert np.allclose(fit_box(np.array([[1.0, 2.0, 3.0]])).size, 0)
    line = np.stack([np.linspace(0, 1, 5), np.zeros(5), np.zeros(5)], axis=1)
    box = fit_box(line)
    assert np.allclose(box.size, [1, 0, 0]) and np.allclose(box.center, [0.5, 0, 0])
    with pytest.raises(ValueError):
        fit_box(np.zeros((0, 3)))


def test_tracker_keeps_ids_while_objects_stay():
    a = box_surface([0, 0, 0], [0.5, 0.5, 0.45])
    b = box_surface([2, 0, 0], [2.5, 0.5, 0.45])
    tracker = InstanceTracker(radius=0.3)
    first = instances_of(np.concatenate([a, b]), np.zeros(len(a) + len(b), np.int64)).instances
    tracker.assign("chair", first, stamp=1.0)
    # The map grows (b is seen more fully, a third chair appears): the two keep their ids, the new one gets a new id.
    c = box_surface([4, 0, 0], [4.5, 0.5, 0.45])
    second = instances_of(np.concatenate([a, b + [0.05, 0, 0], c]), np.zeros(len(a) + len(b) + len(c), np.int64))
    tracker.assign("chair", second.instances, stamp=2.0)
    def id_near(instances, xy):
        return min(instances, key=lambda i: np.linalg.norm(i.box.center[:2] - xy)).id

    for xy in ((0.25, 0.25), (2.25, 0.25)):
        assert id_near(second.instances, xy) == id_near(first, xy)
    got = {i.id for i in second.instances}
    assert len(got) == 3 and all(i.last_seen == 2.0 for i in second.instances)
    tracker.assign("table", second.instances[:1], stamp=3.0)  # another query: ids of its own
    assert second.instances[0].id not in got
