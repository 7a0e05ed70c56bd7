"""Mask clean-up (Segment3D part removal, minimum area, overlap resolution) on hand-made masks with known answers,
and SAM loading through the real segment_anything code path on a tiny random-weight model saved by the test."""
import numpy as np
import pytest

from ov3d_ros.labelling.masks import (MaskSet, clean_masks, drop_small_masks, intersection_counts,
                                      remove_part_masks, resolve_overlaps)

H, W = 30, 40


def rect(r0, r1, c0, c1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_intersection_counts_match_pixel_counts():
    a, b, c = rect(0, 10, 0, 10), rect(5, 15, 5, 15), rect(20, 30, 30, 40)
    counts = intersection_counts(np.stack([a, b, c]), chunk=7)  # a chunk size that splits rows unevenly
    assert counts.tolist() == [[100, 25, 0], [25, 100, 0], [0, 0, 100]]


def test_part_inside_whole_is_dropped_and_partial_overlap_kept():
    whole = rect(0, 20, 0, 20)  # 400 px
    part = rect(5, 10, 5, 10)  # 25 px, fully inside whole
    neighbour = rect(10, 20, 10, 30)  # 200 px, half inside whole
    keep = remove_part_masks(np.stack([whole, part, neighbour]))
    assert keep.tolist() == [True, False, True]


def test_containment_threshold_is_inclusive_at_ninety_percent():
    whole = rect(0, 20, 0, 20)
    ninety = rect(0, 1, 11, 21)  # 10 px in one row, 9 of them inside whole (cols 11..19), col 20 outside
    eighty = rect(1, 2, 12, 22)  # 10 px, 8 inside (cols 12..19)
    keep = remove_part_masks(np.stack([whole, ninety, eighty]), containment=0.9)
    assert keep.tolist() == [True, False, True]
    # with a stricter threshold the 90% mask survives too
    assert remove_part_masks(np.stack([whole, ninety, eighty]), containment=0.95).tolist() == [True, True, True]


def test_duplicates_keep_exactly_one_by_score_then_index():
    a = rect(0, 10, 0, 10)
    keep = remove_part_masks(np.stack([a, a, a]), scores=np.array([0.5, 0.9, 0.9]))
    assert keep.tolist() == [False, True, False]  # best score wins; the tie goes to the earlier mask
    assert remove_part_masks(np.stack([a, a])).tolist() == [True, False]


def test_empty_masks_are_dropped_and_none_is_fine():
    keep = remove_part_masks(np.stack([np.zeros((H, W), bool), rect(0, 3, 0, 3)]))
    assert keep.tolist() == [False, True]
    assert remove_part_masks(np.zeros((0, H, W), bool)).shape == (0,)


def test_drop_small_masks():
    masks = np.stack([rect(0, 1, 0, 5), rect(0, 2, 0, 5), rect(0, 1, 0, 11), np.zeros((H, W), bool)])
    assert drop_small_masks(masks, 10).tolist() == [False, True, True, False]
    assert drop_small_masks(masks, 0).tolist() == [True, True, True, False]  # never an empty mask
    with pytest.raises(ValueError, match="min_area"):
        drop_small_masks(masks, -1)


def test_resolve_overlaps_smaller_wins_by_default():
    big = rect(0, 20, 0, 20)
    small = rect(10, 25, 10, 25)  # 225 px < 400 px
    index_map = resolve_overlaps(np.stack([small, big]))
    expected = np.full((H, W), -1, np.int32)
    expected[big] = 1
    expected[small] = 0  # the overlap rows 10..19, cols 10..19 goes to the smaller mask
    np.testing.assert_array_equal(index_map, expected)


def test_resolve_overlaps_by_score():
    big = rect(0, 20, 0, 20)
    small = rect(10, 25, 10, 25)
    index_map = resolve_overlaps(np.stack([small, big]), scores=np.array([0.5, 0.9]), priority="score")
    expected = np.full((H, W), -1, np.int32)
    expected[small] = 0
    expected[big] = 1  # the better-scored big mask keeps the overlap
    np.testing.assert_array_equal(index_map, expected)
    with pytest.raises(ValueError, match="priority"):
        resolve_overlaps(np.stack([small, big]), priority="largest")


def test_clean_masks_full_chain():
    floor = rect(5, 20, 0, 20)  # 300 px
    shelf = rect(0, 10, 0, 12)  # 120 px; 60 px inside floor: not a part
    box = rect(0, 9, 0, 11) | rect(0, 9, 12, 14)  # 117 px; 99 inside shelf (0.846) and 52 inside floor: kept
    handle = rect(6, 8, 2, 4)  # 4 px, inside box: a part
    speck = rect(25, 27, 30, 32)  # 4 px, alone: below min_area
    raw = MaskSet(np.stack([floor, shelf, box, handle, speck]), np.array([0.9, 0.9, 0.9, 0.9, 0.9]))
    cleaned, index_map = clean_masks(raw, containment=0.9, min_area=25)
    # shelf's visible remainder after the smaller box wins is 120 - 99 = 21 px < 25: dropped, and its pixels that
    # lie on the floor go to the floor.
    expected = np.full((H, W), -1, np.int32)
    expected[floor] = 0
    expected[box] = 1
    np.testing.assert_array_equal(index_map, expected)
    assert len(cleaned) == 2
    np.testing.assert_array_equal(cleaned.masks[0], floor & ~box)
    np.testing.assert_array_equal(cleaned.masks[1], box)
    assert not (cleaned.masks.sum(0) > 1).any()  # one mask per pixel


def test_clean_masks_of_nothing():
    cleaned, index_map = clean_masks(MaskSet.empty(H, W))
    assert len(cleaned) == 0 and (index_map == -1).all() and index_map.shape == (H, W)


def test_bad_mask_input_is_named():
    with pytest.raises(TypeError, match="bool"):
        remove_part_masks(np.zeros((2, H, W), np.float32))
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        resolve_overlaps(np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="scores"):
        MaskSet(np.zeros((2, H, W), bool), np.zeros(3))
    with pytest.raises(ValueError, match="containment"):
        remove_part_masks(np.zeros((1, H, W), bool), containment=1.5)


# ---------------------------------------------------------------------------------------------------------------
# SAM through segment_anything (tiny random model from conftest.py: proves loading and plumbing, not quality)


def test_tiny_sam_loads_and_generates_masks(tiny_sam_checkpoint):
    import torch

    from ov3d_ros.labelling.masks import SamMaskGenerator, load_sam

    torch.set_num_threads(1)
    sam = load_sam("custom", tiny_sam_checkpoint, custom={})
    saved = torch.load(tiny_sam_checkpoint, weights_only=True)
    for key, value in sam.state_dict().items():  # the weights in the model are the saved ones
        torch.testing.assert_close(value, saved[key])
    generator = SamMaskGenerator(sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = 200
    masks = generator.generate(image)
    assert masks.masks.shape[1:] == (48, 64) and masks.masks.dtype == bool
    assert len(masks.scores) == len(masks.masks)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        generator.generate(np.zeros((48, 64), np.uint8))


def test_sam_checkpoint_errors_are_clear(tiny_sam_checkpoint, tmp_path):
    import torch

    from ov3d_ros.labelling.masks import _build_custom_sam, load_sam

    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        load_sam("vit_b", tmp_path / "missing.pth")
    # a tiny checkpoint for vit_b: refused before vit_b is built, naming what the file holds
    with pytest.raises(ValueError, match=r"does not fit sam.model_type 'vit_b'.*embed_dim 32 and 2 blocks"):
        load_sam("vit_b", tiny_sam_checkpoint)
    # a custom size that differs from the checkpoint's: key/shape comparison
    with pytest.raises(ValueError, match="shape mismatches"):
        load_sam("custom", tiny_sam_checkpoint, custom={"embed_dim": 48, "num_heads": 3})
    other = tmp_path / "deeper.pth"
    torch.save(_build_custom_sam({"depth": 3}).state_dict(), other)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_sam("custom", other, custom={})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_sam("custom", garbage, custom={})
    with pytest.raises(ValueError, match="sam.checkpoint is not set"):
        load_sam("custom", None, custom={})
    with pytest.raises(ValueError, match="model_type"):
        load_sam("vit_x", tiny_sam_checkpoint)
    with pytest.raises(ValueError, match="unknown sam.custom keys"):
        load_sam("custom", tiny_sam_checkpoint, custom={"depht": 2})
