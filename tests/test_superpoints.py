"""Superpoints: graph segmentation of built scenes against their known surfaces, and the segment means."""
import numpy as np
import pytest

from ov3d_ros.superpoints import SuperpointConfig, superpoint_mean, superpoints


def grid_plane(origin, u, v, nu, nv, spacing):
    """Points on the parallelogram origin + i*spacing*u + j*spacing*v (a regular sampling of one face)."""
    i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    return (np.asarray(origin) + spacing * (i.reshape(-1, 1) * np.asarray(u) + j.reshape(-1, 1) * np.asarray(v))
            ).astype(np.float32)


def corner_room(spacing=0.01, seed=0):
    """A floor, a wall at y = 0 (same colour as the floor) and a red picture hung 2 cm in front of the wall.

    Returns xyz, rgb, part (0 floor, 1 wall, 2 picture).
    """
    rng = np.random.default_rng(seed)
    n = int(round(1.6 / spacing))
    floor = grid_plane([0.005, 0.005, 0.0], [1, 0, 0], [0, 1, 0], n, n, spacing)
    wall = grid_plane([0.005, 0.0, 0.005], [1, 0, 0], [0, 0, 1], n, n, spacing)
    m = int(round(0.5 / spacing))
    picture = grid_plane([0.5, 0.02, 0.8], [1, 0, 0], [0, 0, 1], m, m, spacing)
    # the wall behind the picture is hidden, as in a scan
    hidden = (wall[:, 0] >= 0.5) & (wall[:, 0] < 1.0) & (wall[:, 2] >= 0.8) & (wall[:, 2] < 1.3)
    wall = wall[~hidden]
    xyz = np.concatenate([floor, wall, picture])
    part = np.repeat([0, 1, 2], [len(floor), len(wall), len(picture)])
    palette = np.array([[200, 200, 195], [200, 200, 195], [200, 40, 30]])
    rgb = np.clip(palette[part] + rng.integers(-6, 7, (len(xyz), 3)), 0, 255).astype(np.uint8)
    xyz = xyz + rng.normal(0, 0.002, xyz.shape).astype(np.float32)
    return xyz, rgb, part


def purity(segment, part):
    """Share of points whose segment's majority part is their own part."""
    majority = np.zeros(segment.max() + 1, dtype=np.int64)
    for s in np.unique(segment):
        majority[s] = np.bincount(part[segment == s]).argmax()
    return float((majority[segment] == part).mean())


def test_surfaces_of_one_colour_split_at_the_corner_and_the_picture_stands_alone():
    xyz, rgb, part = corner_room()
    segment = superpoints(xyz, rgb)
    assert segment.dtype == np.int64 and segment.shape == (len(xyz),)
    assert set(np.unique(segment)) == set(range(segment.max() + 1))  # ids 0..S-1
    # floor and wall have the same colour: only the change of orientation separates them
    assert purity(segment, part) > 0.98
    # and each surface is one (or a very few) large pieces, not a dust of segments
    for p in (0, 1, 2):
        sizes = np.bincount(segment[part == p])
        assert sizes.max() > 0.8 * (part == p).sum(), f"part {p} is split into {np.count_nonzero(sizes)} pieces"


def test_a_colour_border_on_a_flat_surface_separates_only_with_the_colour_term():
    rng = np.random.default_rng(1)
    xyz = grid_plane([0.005, 0.005, 0.0], [1, 0, 0], [0, 1, 0], 120, 120, 0.01)
    rug = (xyz[:, 0] > 0.3) & (xyz[:, 0] < 0.8) & (xyz[:, 1] > 0.3) & (xyz[:, 1] < 0.9)
    rgb = np.where(rug[:, None], [40, 60, 160], [190, 180, 160]) + rng.integers(-6, 7, (len(xyz), 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    assert purity(superpoints(xyz, rgb), rug.astype(np.int64)) > 0.98
    # without the colour term a flat surface is one smooth patch: the rug is lost in the floor
    assert purity(superpoints(xyz, rgb, SuperpointConfig(colour_weight=0.0)), rug.astype(np.int64)) < 0.9


def test_segments_follow_the_grid_not_the_point_density():
    xyz, rgb, part = corner_room(spacing=0.01)
    sparse = np.arange(len(xyz)) % 3 == 0  # a third of the points, still more than one per 2 cm cell
    a = superpoints(xyz, rgb)
    b = superpoints(xyz[sparse], rgb[sparse])
    assert purity(b, part[sparse]) > 0.98
    # the dense and the sparse cloud give the same split of the three surfaces
    assert abs(len(np.unique(a)) - len(np.unique(b))) <= 2


def test_larger_k_gives_fewer_segments_and_it_is_deterministic():
    xyz, rgb, _ = corner_room()
    fine = superpoints(xyz, rgb, SuperpointConfig(k=0.05, min_size=1))
    coarse = superpoints(xyz, rgb, SuperpointConfig(k=2.0, min_size=1))
    assert fine.max() > coarse.max()
    np.testing.assert_array_equal(superpoints(xyz, rgb), superpoints(xyz, rgb))


def test_float_colours_in_unit_range_give_the_same_segments_as_uint8():
    xyz, rgb, _ = corner_room()
    np.testing.assert_array_equal(superpoints(xyz, rgb), superpoints(xyz, rgb.astype(np.float32) / 255.0))


def test_isolated_points_are_their_own_segments():
    xyz = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)  # 1 m apart: no neighbouring cells
    segment = superpoints(xyz, np.zeros((3, 3), np.uint8))
    assert sorted(segment) == [0, 1, 2]


def test_superpoint_mean_on_hand_built_values():
    values = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]], np.float32)
    segment = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(superpoint_mean(values, segment),
                               [[0.5, 0.5], [0.5, 0.5], [0.35, 0.65], [0.35, 0.65]], atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"voxel_size": 0}, {"k": -1}, {"colour_weight": float("nan")},
                                    {"min_size": 0}, {"min_size": 2.5}])
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        SuperpointConfig(**kwargs)


def test_bad_clouds_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        superpoints(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        superpoints(np.array([[0, 0, np.nan]], np.float32), np.zeros((1, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb"):
        superpoints(np.zeros((4, 3), np.float32), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError):
        superpoint_mean(np.zeros((3, 2)), np.zeros(2, np.int64))
