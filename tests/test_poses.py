"""Pose tracks and transform trees (ov3d_ros.poses): interpolation, tolerances, the live wait, tf chains."""
import numpy as np
import pytest

from ov3d_ros.geometry import invert_rigid, rigid_from_quaternion
from ov3d_ros.poses import PoseTrack, TransformTree


def _yaw(T):
    return np.arctan2(T[1, 0], T[0, 0])


def _turn(yaw, t=(0.0, 0.0, 0.0)):
    return rigid_from_quaternion(t, [0, 0, np.sin(yaw / 2), np.cos(yaw / 2)])


def test_pose_track_interpolates_and_falls_back_to_nearest():
    track = PoseTrack("x")
    track.add(1.0, translation=[2.0, 0, 0], quaternion=[0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    track.add(0.0, _turn(0.0))  # out of order on purpose
    T = track.at(0.25, max_gap=2.0, tolerance=0.0)
    np.testing.assert_allclose(T[:3, 3], [0.5, 0, 0])
    assert _yaw(T) == pytest.approx(np.pi / 8)  # a quarter of the 90 degree turn
    assert track.at(0.5, max_gap=0.5, tolerance=0.1) is None  # gap too long, no sample near enough
    np.testing.assert_allclose(track.at(1.05, max_gap=2.0, tolerance=0.1)[:3, 3], [2.0, 0, 0])
    assert track.at(1.5, max_gap=2.0, tolerance=0.1) is None


def test_pose_track_keeps_the_newest_maxlen_samples():
    track = PoseTrack("live", maxlen=3)
    for i in range(5):
        track.add(float(i), _turn(0.1 * i, (i, 0, 0)))
    assert len(track) == 3 and track.newest == 4.0
    assert track.at(0.0, max_gap=1.0, tolerance=0.5) is None  # dropped
    np.testing.assert_allclose(track.at(2.5, max_gap=1.0, tolerance=0.0)[:3, 3], [2.5, 0, 0])


def test_live_lookup_waits_until_a_pose_brackets_the_frame():
    track = PoseTrack("odom")
    track.add(1.0, _turn(0.0))
    # Only an older pose so far: a bracketing one may still arrive.
    assert track.lookup(1.02, max_gap=0.5, tolerance=0.05) == (None, True)
    # At the deadline the nearest pose within tolerance is taken.
    T, _ = track.lookup(1.02, max_gap=0.5, tolerance=0.05, final=True)
    np.testing.assert_allclose(T, np.eye(4))
    track.add(1.1, _turn(0.5, (1.0, 0, 0)))
    T, may_arrive = track.lookup(1.02, max_gap=0.5, tolerance=0.05)
    assert not may_arrive
    np.testing.assert_allclose(T[:3, 3], [0.2, 0, 0], atol=1e-12)
    assert _yaw(T) == pytest.approx(0.1)
    # A frame long before every pose: nothing can arrive for it any more.
    assert track.lookup(0.2, max_gap=0.5, tolerance=0.05) == (None, False)


def test_transform_tree_composes_static_and_dynamic_edges():
    tree = TransformTree(max_gap=1.0, tolerance=0.01)
    T_map_odom = _turn(0.3, (1.0, -2.0, 0.0))
    T_base_cam = _turn(-0.2, (0.1, 0.0, 0.5))
    tree.add("map", "odom", 0.0, T_map_odom, static=True)
    tree.add("/odom", "base_link", 0.0, _turn(0.0, (0.0, 0, 0)), static=False)
    tree.add("odom", "base_link", 1.0, _turn(1.0, (2.0, 0, 0)), static=False)
    tree.add("base_link", "camera", 0.0, T_base_cam, static=True)
    assert tree.roots() == ["map"] and tree.frames() == {"map", "odom", "base_link", "camera"}
    T = tree.lookup("map", "camera", 0.5)
    np.testing.assert_allclose(T, T_map_odom @ _turn(0.5, (1.0, 0, 0)) @ T_base_cam, atol=1e-12)
    # The other way round, and between two branches of the chain.
    np.testing.assert_allclose(tree.lookup("camera", "map", 0.5), invert_rigid(T), atol=1e-12)
    assert tree.lookup("map", "camera", 3.0) is None  # the dynamic edge has no sample near enough
    tree.add("world", "elsewhere", 0.0, np.eye(4), static=True)
    with pytest.raises(ValueError, match="no chain"):
        tree.lookup("map", "elsewhere", 0.5)


def test_newest_on_chain_is_the_oldest_newest_dynamic_edge():
    from ov3d_ros.poses import TransformTree

    tree = TransformTree()
    tree.add("map", "odom", 1.0, np.eye(4), static=False)
    tree.add("odom", "base", 2.5, np.eye(4), static=False)
    tree.add("base", "camera", 0.0, np.eye(4), static=True)
    tree.add("base", "arm", 9.0, np.eye(4), static=False)  # a fast joint elsewhere does not count
    assert tree.newest_on_chain("map", "camera") == 1.0
    assert tree.newest_on_chain("base", "camera") == float("inf")  # static only
    assert tree.newest_on_chain("arm", "camera") == 9.0
    tree.add("world", "other", 0.0, np.eye(4), static=True)
    assert tree.newest_on_chain("map", "other") == -float("inf")  # not joined
