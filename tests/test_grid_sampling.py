"""Stage-2 repeated grid sampling: coverage and confidence logic on synthetic arrays."""
import numpy as np
import pytest

from ov3d_ros.grid_sampling import (confident_labels, repeated_grid_sampling, sample_one_per_voxel,
                                    turn_about_gravity)


def test_one_point_per_voxel():
    rng = np.random.default_rng(0)
    # 3 voxels of 1 m: 5 points in the first, 1 in the second, 3 in the third
    xyz = np.array([[0.1, 0.1, 0.1]] * 5 + [[1.5, 0.2, 0.2]] + [[0.2, 2.5, 0.3]] * 3, dtype=np.float32)
    xyz = xyz + rng.uniform(0, 0.3, size=xyz.shape)
    sampled, voxel_of_point = sample_one_per_voxel(xyz, 1.0, rng)
    assert len(sampled) == 3
    # every sampled point is in the voxel it represents, and voxel membership is consistent with the grid
    assert np.array_equal(voxel_of_point[sampled], np.arange(3))
    grid = np.floor(xyz / 1.0).astype(int)
    for i in range(len(xyz)):
        assert np.array_equal(grid[i], grid[sampled[voxel_of_point[i]]])


def test_sampling_is_uniform_within_a_voxel():
    rng = np.random.default_rng(1)
    xyz = np.full((4, 3), 0.5)
    picks = [sample_one_per_voxel(xyz, 1.0, rng)[0][0] for _ in range(4000)]
    counts = np.bincount(picks, minlength=4) / 4000
    assert counts == pytest.approx([0.25] * 4, abs=0.03)


def test_every_point_covered_at_least_k_times_and_probabilities_averaged():
    rng = np.random.default_rng(2)
    xyz = rng.uniform(0, 1, size=(500, 3))
    n_classes = 3
    # A "model" whose output depends on which point was sampled: point i predicts one-hot(i % 3). The averaged
    # probabilities must then be the mean of the one-hots of the samples that represented each point.
    calls = []

    def predict(idx):
        calls.append(idx.copy())
        return np.eye(n_classes)[idx % n_classes]

    result = repeated_grid_sampling(xyz, predict, voxel_size=0.2, coverage=4, rng=rng)
    assert result.coverage.min() >= 4
    assert result.passes == 4  # every pass covers every point (each voxel's sample speaks for the voxel)
    assert len(calls) == 4
    assert np.allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-6)
    # every point's average is a multiple of 1/4 (4 one-hot votes)
    assert np.allclose(result.probabilities * 4, np.round(result.probabilities * 4), atol=1e-5)


def test_reference_average_by_replay():
    # Replay the same generator by hand and compare with an independent per-point average.
    xyz = np.random.default_rng(3).uniform(0, 1, size=(200, 3))
    probs_of_point = np.random.default_rng(4).dirichlet(np.ones(4), size=200)
    result = repeated_grid_sampling(xyz, lambda idx: probs_of_point[idx], voxel_size=0.25, coverage=3,
                                    rng=np.random.default_rng(5))
    rng = np.random.default_rng(5)
    expected = np.zeros((200, 4))
    for _ in range(result.passes):
        offset = rng.random(3) * 0.25
        sampled, vop = sample_one_per_voxel(xyz, 0.25, rng, offset)
        expected += probs_of_point[sampled[vop]]
    expected /= result.passes
    assert np.allclose(result.probabilities, expected, atol=1e-6)


def test_unscored_samples_do_not_count_as_coverage():
    rng = np.random.default_rng(6)
    xyz = rng.uniform(0, 1, size=(300, 3))
    state = {"n": 0}

    def predict(idx):
        # The first pass fails for every sample (NaN rows), so the loop needs one pass more.
        state["n"] += 1
        out = np.full((len(idx), 2), 0.5)
        if state["n"] == 1:
            out[:] = np.nan
        return out

    result = repeated_grid_sampling(xyz, predict, voxel_size=0.3, coverage=2, rng=rng)
    assert result.passes == 3
    assert result.coverage.min() == 2
    assert np.allclose(result.probabilities, 0.5)


def test_max_passes_bounds_the_loop():
    xyz = np.zeros((10, 3))
    result = repeated_grid_sampling(xyz, lambda idx: np.full((len(idx), 2), np.nan), voxel_size=1.0, coverage=2,
                                    rng=np.random.default_rng(0), max_passes=5)
    assert result.passes == 5 and result.coverage.max() == 0
    assert np.all(result.probabilities == 0)


def test_confidence_threshold_ignores_unconfident_points():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.5, 0.5]])
    label, score = confident_labels(probs, 0.6)
    assert label.tolist() == [0, -1, 1, -1]  # unconfident -> -1 (ignored), never class 0 / "background"
    assert score.tolist() == pytest.approx([0.9, 0.55, 0.7, 0.5])
    label0, _ = confident_labels(probs, 0.0)
    assert label0.tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="threshold"):
        confident_labels(probs, 1.5)


def test_class_top_fraction_keeps_the_most_confident_share_of_every_class():
    # Class 0 (a wall): 6 confident points. Class 1 (a book): 4 points, all below the global bar of 0.7.
    wall = [[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.8, 0.2], [0.75, 0.25], [0.72, 0.28]]
    book = [[0.4, 0.6], [0.35, 0.65], [0.45, 0.55], [0.48, 0.52]]
    probs = np.array(wall + book)
    only_bar, _ = confident_labels(probs, 0.7)
    assert only_bar.tolist() == [0] * 6 + [-1] * 4  # one bar: the book loses every pseudo label
    label, score = confident_labels(probs, 0.7, class_top_fraction=0.5)
    # The book's bar drops to the median of its scores (0.575): its two most confident points are kept. The wall's
    # median (0.825) is above 0.7, so its bar stays 0.7 and nothing of it changes.
    assert label.tolist() == [0] * 6 + [1, 1, -1, -1]
    assert score.tolist() == pytest.approx([0.95, 0.9, 0.85, 0.8, 0.75, 0.72, 0.6, 0.65, 0.55, 0.52])
    everything, _ = confident_labels(probs, 0.7, class_top_fraction=1.0)
    assert everything.tolist() == probs.argmax(axis=1).tolist()
    with pytest.raises(ValueError, match="class_top_fraction"):
        confident_labels(probs, 0.7, class_top_fraction=1.5)


def test_turn_about_gravity_against_a_quarter_turn_by_hand():
    xyz = np.array([[1.0, 0.0, 0.3], [0.0, 2.0, 1.5]])
    turned = turn_about_gravity(xyz, np.pi / 2, centre_xy=[0.0, 0.0])
    np.testing.assert_allclose(turned, [[0.0, 1.0, 0.3], [-2.0, 0.0, 1.5]], atol=1e-12)  # counter-clockwise
    about_mean = turn_about_gravity(xyz, np.pi)
    np.testing.assert_allclose(about_mean, [[0.0, 2.0, 0.3], [1.0, 0.0, 1.5]], atol=1e-12)  # swapped through (.5, 1)
    assert xyz[0, 0] == 1.0  # the input is not modified


def test_bad_input():
    with pytest.raises(ValueError, match="coverage"):
        repeated_grid_sampling(np.zeros((3, 3)), lambda i: np.ones((len(i), 1)), voxel_size=1, coverage=0,
                               rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-empty"):
        sample_one_per_voxel(np.zeros((0, 3)), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="predict returned"):
        repeated_grid_sampling(np.zeros((3, 3)), lambda i: np.ones((len(i) + 1, 2)), voxel_size=1, coverage=1,
                               rng=np.random.default_rng(0))
