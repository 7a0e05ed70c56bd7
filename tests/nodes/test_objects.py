"""Largest-object centroids behind the QueryObjects response's per-query summaries."""
import numpy as np
import pytest

from ov3d_ros.nodes.objects import format_table, summarise_queries


def test_summary_reports_the_largest_cluster_of_each_query():
    rng = np.random.default_rng(1)
    big = rng.normal([1.0, 2.0, 0.5], 0.05, (400, 3))
    small = rng.normal([-2.0, 0.0, 0.5], 0.05, (50, 3))   # far away: a separate cluster of the same query
    other = rng.normal([0.0, 0.0, 0.0], 0.05, (100, 3))
    xyz = np.concatenate([big, small, other])
    label = np.array([0] * 450 + [1] * 100)
    label[-10:] = -1
    out = summarise_queries(xyz, label, ["chair", "table", "lamp"], np.array([0.9, 0.8, 0.1]), cluster_voxel=0.05)
    assert [s.point_count for s in out] == [450, 90, 0]
    assert out[0].cluster_point_count == 400
    np.testing.assert_allclose(out[0].centroid, big.mean(axis=0))
    np.testing.assert_allclose(out[1].centroid, other[:90].mean(axis=0))
    assert (out[2].centroid == 0).all() and out[2].cluster_point_count == 0  # not found: no NaN
    table = format_table(out)
    expected = " ".join(f"{v:+.2f}" for v in big.mean(axis=0))
    assert "chair" in table and expected in table and "lamp" in table
    with pytest.raises(ValueError, match="3 labels for 2 points"):
        summarise_queries(np.zeros((2, 3)), np.zeros(3), ["a"], np.zeros(1))


def test_summaries_of_units_equal_those_of_their_points():
    """The map's summaries classify units (voxels, superpoints) and sum (cluster voxel, unit) groups: the same
    counts and centroids as labelling every point with its unit's label."""
    from ov3d_ros.instances import cluster_grid, extract_instances
    from ov3d_ros.nodes.objects import summaries

    rng = np.random.default_rng(2)
    xyz = rng.uniform(0.0, 1.5, (3000, 3))
    unit = np.floor(xyz[:, 0] / 0.11).astype(np.int64) * 20 + np.floor(xyz[:, 1] / 0.13).astype(np.int64)
    unit = np.unique(unit, return_inverse=True)[1].reshape(-1)
    unit_label = rng.integers(-1, 3, unit.max() + 1)
    best = np.array([0.5, 0.4, 0.3])
    queries = ["a", "b", "c"]
    found = extract_instances(cluster_grid(xyz, 0.1, unit), unit_label, np.zeros(len(unit_label)), len(queries))
    by_unit = summaries(found, queries, best)
    by_point = summarise_queries(xyz, unit_label[unit], queries, best, cluster_voxel=0.1)
    for u, p in zip(by_unit, by_point):
        assert (u.point_count, u.cluster_point_count) == (p.point_count, p.cluster_point_count)
        np.testing.assert_allclose(u.centroid, p.centroid)
        assert u.point_count == int((unit_label[unit] == queries.index(u.query)).sum())
