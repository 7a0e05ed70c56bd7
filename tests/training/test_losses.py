"""Curriculum losses on hand-built cases with values worked out by hand."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ov3d_ros.training.losses import alignment_loss, class_probabilities, consistency_loss, contrastive_loss


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


TEXT = unit([1, 0, 0], [0, 1, 0], [0, 0, 1])


def test_alignment_perfect_match_is_zero():
    feats = unit([1, 0, 0], [0, 0, 1])
    assert alignment_loss(feats, TEXT, torch.tensor([0, 2])).item() == pytest.approx(0.0, abs=1e-7)


def test_alignment_hand_values_and_ignore():
    # cos = 1 (label 0), cos = 0 (label 1 vs x axis), cos = -1 (label 2 vs -z), ignored point anywhere.
    feats = unit([1, 0, 0], [1, 0, 0], [0, 0, -1], [0, 1, 0])
    labels = torch.tensor([0, 1, 2, -1])
    # mean of (1-1, 1-0, 1-(-1)) = (0 + 1 + 2) / 3 = 1
    assert alignment_loss(feats, TEXT, labels).item() == pytest.approx(1.0, abs=1e-6)
    # 45 degrees: 1 - cos(45deg)
    feats45 = unit([1, 1, 0])
    assert alignment_loss(feats45, TEXT, torch.tensor([0])).item() == pytest.approx(1 - math.sqrt(0.5), abs=1e-6)


def test_alignment_normalises_raw_features():
    feats = torch.tensor([[5.0, 0, 0], [0, 0.1, 0]])
    assert alignment_loss(feats, TEXT, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_all_ignored_is_zero_with_graph():
    feats = unit([1, 0, 0]).requires_grad_(True)
    loss = alignment_loss(feats, TEXT, torch.tensor([-1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_alignment_gradient_pulls_towards_text():
    feats = unit([1, 1, 0]).requires_grad_(True)
    alignment_loss(feats, TEXT, torch.tensor([1])).backward()
    # Descending the loss moves the feature towards +y (the text of class 1) and away from +x.
    step = -feats.grad[0]
    assert step[1] > 0 and step[0] < 0


def test_alignment_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must be in"):
        alignment_loss(unit([1, 0, 0]), TEXT, torch.tensor([3]))
    with pytest.raises(ValueError, match="feature dim"):
        alignment_loss(torch.ones(2, 4), TEXT, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        alignment_loss(unit([1, 0, 0]), TEXT, torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"\(N=1,\)"):
        alignment_loss(unit([1, 0, 0]), TEXT, torch.tensor([0, 1]))


def test_consistency_hand_values():
    a = unit([1, 0, 0], [0, 1, 0])
    b = unit([1, 0, 0], [0, -1, 0])
    # cos = 1 and -1: mean 0 -> loss 1
    assert consistency_loss(a, b).item() == pytest.approx(1.0, abs=1e-6)
    assert consistency_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    c = unit([1, 1, 0], [0, 1, 0])
    # cos(45) and 1
    assert consistency_loss(a, c).item() == pytest.approx(1 - (math.sqrt(0.5) + 1) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        consistency_loss(a, a[:1])
    assert consistency_loss(a[:0], b[:0]).item() == 0.0


def test_contrastive_hand_values():
    feats = unit([1, 0, 0])
    t = 0.5
    # logits = (1, 0, 0) / 0.5 = (2, 0, 0); CE for class 0 = -log(e^2 / (e^2 + 2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert contrastive_loss(feats, TEXT, torch.tensor([0]), temperature=t).item() == pytest.approx(expected, rel=1e-6)
    expected_wrong = -math.log(1 / (math.exp(2) + 2))
    assert contrastive_loss(feats, TEXT, torch.tensor([1]), temperature=t).item() == pytest.approx(
        expected_wrong, rel=1e-6)
    assert contrastive_loss(feats, TEXT, torch.tensor([-1])).item() == 0.0
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(feats, TEXT, torch.tensor([0]), temperature=0)


def test_class_probabilities_softmax_of_scaled_cosines():
    p = class_probabilities(unit([1, 0, 0]), TEXT, temperature=0.5)
    e = math.exp(2)
    assert p[0].tolist() == pytest.approx([e / (e + 2), 1 / (e + 2), 1 / (e + 2)], rel=1e-6)


def test_voxel_forms_equal_point_forms():
    # 5 points in 3 voxels; every point of a voxel carries the voxel's feature (as the model's inverse map does).
    from ov3d_ros.training.losses import (alignment_loss_voxels, contrastive_loss_voxels, voxel_cosines,
                                         voxel_label_histogram)

    gen = torch.Generator().manual_seed(0)
    vfeat = torch.randn(3, 3, generator=gen)
    inverse = torch.tensor([0, 0, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, -1, 2, 2, 0])
    hist = voxel_label_histogram(inverse, labels, 3, 3)
    assert hist.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 2]]
    point_feats = vfeat[inverse]
    cos = voxel_cosines(vfeat, TEXT)
    assert torch.allclose(cos, F.normalize(vfeat, dim=1) @ F.normalize(TEXT, dim=1).T, atol=1e-6)
    assert alignment_loss_voxels(cos, hist).item() == pytest.approx(
        alignment_loss(point_feats, TEXT, labels).item(), abs=1e-6)
    assert contrastive_loss_voxels(cos, hist, 0.1).item() == pytest.approx(
        contrastive_loss(point_feats, TEXT, labels, 0.1).item(), rel=1e-5)
    # a sub-vocabulary: the softmax over texts 0 and 2 only, as stage 1 does per frame
    sub = torch.tensor([0, 2])
    keep = labels != 1
    assert contrastive_loss_voxels(cos[:, sub], hist[:, sub], 0.1).item() == pytest.approx(
        contrastive_loss(point_feats[keep], TEXT[sub], torch.tensor([0, -1, 1, 1, 0]), 0.1).item(), rel=1e-5)
    # gradients agree too (the voxel form is the same function, not an approximation)
    a = vfeat.clone().requires_grad_(True)
    alignment_loss_voxels(voxel_cosines(a, TEXT), hist).backward()
    b = vfeat.clone().requires_grad_(True)
    alignment_loss(b[inverse], TEXT, labels).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    empty = voxel_label_histogram(inverse, torch.full((6,), -1), 3, 3)
    assert alignment_loss_voxels(cos, empty).item() == 0.0


def test_class_balance_weights_hand_values():
    from ov3d_ros.training.losses import class_balance_weights

    counts = torch.tensor([900.0, 100.0, 0.0])
    # power 0: unweighted
    torch.testing.assert_close(class_balance_weights(counts, 0.0), torch.tensor([1.0, 1.0, 0.0]))
    # power 1: both present classes weigh the same in total, weighted point mean 1, absent class 0
    w = class_balance_weights(counts, 1.0)
    torch.testing.assert_close(w * counts, torch.tensor([500.0, 500.0, 0.0]))
    # power 0.5: w ~ 1/sqrt(n), scaled so sum(w n) = sum(n): w = [1/30, 1/10] * 1000 / (30 + 10)
    torch.testing.assert_close(class_balance_weights(counts, 0.5), torch.tensor([25.0 / 30, 2.5, 0.0]))
    with pytest.raises(ValueError):
        class_balance_weights(counts, -1.0)
    with pytest.raises(ValueError):
        class_balance_weights(torch.tensor([1.0, -2.0]), 0.5)


def test_label_counts_sums_classes_over_arrays_and_skips_unlabelled():
    from ov3d_ros.training.losses import label_counts

    counts = label_counts([np.array([0, 2, 2, -1], dtype=np.int32), np.array([-1, -1]), np.array([2, 1])], 4)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [1, 1, 3, 0])
    np.testing.assert_array_equal(label_counts([], 3), [0, 0, 0])
