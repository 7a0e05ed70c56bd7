"""Pseudo-label files (format of docs/architecture.md) and noisy pseudo labels made from ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ov3d_ros.data.pseudo_labels import (
    _dilate,
    _erode,
    labelled_frame_ids,
    read_frame_labels,
    read_scene_vocabulary,
    synthetic_pseudo_labels,
    write_frame_labels,
    write_synthetic_pseudo_labels,
)
from ov3d_ros.data.synthetic import CLASS_NAMES


def test_format_round_trip(tmp_path):
    a = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint16)
    b = np.array([[3, 0], [1, 2]], dtype=np.uint16)
    write_frame_labels(tmp_path, "0", a, ["chair", "table"])
    write_frame_labels(tmp_path, 20, b, ["wall", "chair", "office lamp"])
    label, entities = read_frame_labels(tmp_path, "0")
    np.testing.assert_array_equal(label, a)
    assert label.dtype == np.uint16 and entities == ["chair", "table"]
    label, entities = read_frame_labels(tmp_path, 20)
    np.testing.assert_array_equal(label, b)
    assert entities == ["wall", "chair", "office lamp"]
    root = tmp_path / "pseudo_labels"
    with Image.open(root / "labels" / "20.png") as img:
        assert np.asarray(img).dtype == np.uint16
    data = json.loads((root / "entities.json").read_text())
    assert data == {"version": 1, "frames": {"0": ["chair", "table"], "20": ["wall", "chair", "office lamp"]}}
    assert (root / "vocabulary.txt").read_text() == "chair\noffice lamp\ntable\nwall\n"
    assert read_scene_vocabulary(tmp_path) == ["chair", "office lamp", "table", "wall"]
    assert labelled_frame_ids(tmp_path) == ["0", "20"]
    # Rewriting a frame replaces its entities and the merged vocabulary follows.
    write_frame_labels(tmp_path, "20", b * 0, ["sofa"])
    assert read_scene_vocabulary(tmp_path) == ["chair", "sofa", "table"]
    (root / "vocabulary.txt").unlink()  # rebuilt from entities.json when missing
    assert read_scene_vocabulary(tmp_path) == ["chair", "sofa", "table"]


@pytest.mark.parametrize("label, entities, error, message", [
    (np.array([[0, 3]]), ["a", "b"], ValueError, "label value 3 but only 2 entities"),
    (np.array([[-1, 0]]), ["a"], ValueError, "negative"),
    (np.zeros((2, 2, 3), np.uint16), ["a"], ValueError, "2-D"),
    (np.zeros((2, 2), np.float32), ["a"], TypeError, "integers"),
    (np.zeros((2, 2), np.uint16), "chair", TypeError, "list of str"),
    (np.zeros((2, 2), np.uint16), ["ok", ""], ValueError, "non-empty"),
    (np.zeros((2, 2), np.uint16), ["two\nlines"], ValueError, "newline"),
])
def test_write_rejects_bad_labels(tmp_path, label, entities, error, message):
    with pytest.raises(error, match=message):
        write_frame_labels(tmp_path, "0", label, entities)


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pseudo labels for frame 5"):
        read_frame_labels(tmp_path, 5)
    with pytest.raises(FileNotFoundError):
        read_scene_vocabulary(tmp_path)
    with pytest.raises(ValueError, match="cannot name a file"):
        write_frame_labels(tmp_path, "../x", np.zeros((1, 1), np.uint16), [])
    write_frame_labels(tmp_path, "1", np.ones((2, 2), np.uint16), ["a"])
    (tmp_path / "pseudo_labels" / "entities.json").write_text('{"version": 2, "frames": {}}')
    with pytest.raises(ValueError, match="version 2"):
        read_frame_labels(tmp_path, "1")
    assert labelled_frame_ids(tmp_path / "nothing") == []


def test_morphology_helpers():
    mask = np.zeros((9, 9), bool)
    mask[3:6, 3:6] = True
    assert _dilate(mask, 1).sum() == 9 + 4 * 3  # a cross-shaped structuring element adds one row per side
    assert _erode(mask, 1).sum() == 1
    assert _erode(np.ones((4, 4), bool), 2).all()  # the image border is not background


def _texts_at(labels, pixels_mask=None):
    """Entity text per pixel (None = unlabelled)."""
    lut = np.array([None] + list(labels.entities), dtype=object)
    return lut[labels.label]


def test_without_noise_pseudo_labels_equal_the_ground_truth(clean_frames):
    out = synthetic_pseudo_labels(clean_frames, CLASS_NAMES, seed=0, drop_fraction=0.0, wrong_name_fraction=0.0,
                                  max_boundary_px=0, min_pixels=0)
    assert [p.frame_id for p in out] == [str(sf.frame.index) for sf in clean_frames]
    for p, sf in zip(out, clean_frames):
        expected = np.array([None] + list(CLASS_NAMES), dtype=object)[sf.class_map + 1]
        np.testing.assert_array_equal(_texts_at(p), expected)
        assert p.entities == sorted(set(p.entities)) and p.label.dtype == np.uint16
        assert p.dropped_instances == [] and p.renamed_instances == {}


def test_noise_statistics(room):
    from ov3d_ros.data.synthetic import render_sequence

    frames = render_sequence(room, n_frames=40, width=80, height=60, noise=False)
    out = synthetic_pseudo_labels(frames, CLASS_NAMES, seed=4, drop_fraction=0.2, wrong_name_fraction=0.15,
                                  max_boundary_px=2, min_pixels=0, consistent_names=False)
    visible = dropped = renamed = 0
    agree = labelled = 0
    for p, sf in zip(out, frames):
        instances = [i for i in np.unique(sf.instance_map) if i >= 0]
        visible += len(instances)
        dropped += len(p.dropped_instances)
        renamed += len(p.renamed_instances)
        texts = _texts_at(p)
        truth = np.array(CLASS_NAMES, dtype=object)[np.maximum(sf.class_map, 0)]
        has = texts != None  # noqa: E711 (element-wise on an object array)
        labelled += has.sum()
        agree += (texts[has] == truth[has]).sum()
        for inst, wrong in p.renamed_instances.items():
            true_name = CLASS_NAMES[int(np.bincount(sf.class_map[sf.instance_map == inst]).argmax())]
            assert wrong != true_name and wrong in CLASS_NAMES
    assert visible > 200
    assert 0.13 < dropped / visible < 0.27
    kept = visible - dropped
    assert 0.08 < renamed / kept < 0.22
    # Most labelled pixels carry the right name; boundary noise and renaming make it imperfect.
    assert 0.6 < agree / labelled < 0.97


def test_boundary_noise_stays_near_boundaries(clean_frames):
    out = synthetic_pseudo_labels(clean_frames, CLASS_NAMES, seed=2, drop_fraction=0.0, wrong_name_fraction=0.0,
                                  max_boundary_px=2, min_pixels=0)
    changed_any = False
    for p, sf in zip(out, clean_frames):
        texts = _texts_at(p)
        truth = np.array([None] + list(CLASS_NAMES), dtype=object)[sf.class_map + 1]
        changed = texts != truth
        changed_any |= bool(changed.any())
        # A pixel can only change within 2 px of an instance boundary.
        inst = sf.instance_map
        boundary = np.zeros(inst.shape, bool)
        boundary[1:] |= inst[1:] != inst[:-1]
        boundary[:-1] |= inst[1:] != inst[:-1]
        boundary[:, 1:] |= inst[:, 1:] != inst[:, :-1]
        boundary[:, :-1] |= inst[:, 1:] != inst[:, :-1]
        assert not (changed & ~_dilate(boundary, 2)).any()
    assert changed_any


def test_consistent_names_follow_an_instance_across_frames(clean_frames):
    out = synthetic_pseudo_labels(clean_frames, CLASS_NAMES, seed=9, drop_fraction=0.3, wrong_name_fraction=0.3,
                                  min_pixels=0)
    renamed, dropped = {}, {}
    for p in out:
        for inst, name in p.renamed_instances.items():
            assert renamed.setdefault(inst, name) == name
    seen_kept = set()
    for p, sf in zip(out, clean_frames):
        kept = set(int(i) for i in np.unique(sf.instance_map) if i >= 0) - set(p.dropped_instances)
        seen_kept |= kept
        for inst in p.dropped_instances:
            dropped.setdefault(inst, 0)
    assert not (set(dropped) & seen_kept)


def test_determinism_and_rng_argument(clean_frames):
    a = synthetic_pseudo_labels(clean_frames[:3], CLASS_NAMES, seed=1)
    b = synthetic_pseudo_labels(clean_frames[:3], CLASS_NAMES, rng=np.random.default_rng(1))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.label, y.label)
        assert x.entities == y.entities
    with pytest.raises(ValueError, match="drop_fraction"):
        synthetic_pseudo_labels(clean_frames[:1], CLASS_NAMES, drop_fraction=1.5)
    with pytest.raises(TypeError, match="class_map"):
        synthetic_pseudo_labels([clean_frames[0].frame], CLASS_NAMES)
    with pytest.raises(ValueError, match="two class names"):
        synthetic_pseudo_labels(clean_frames[:1], ["wall"])


def test_write_for_an_exported_scene(exported_scene, clean_frames):
    written = write_synthetic_pseudo_labels(exported_scene, seed=0)  # maps and names read from disk
    assert labelled_frame_ids(exported_scene) == [str(sf.frame.index) for sf in clean_frames]
    assert set(read_scene_vocabulary(exported_scene)) <= set(CLASS_NAMES)
    for p in written[:3]:
        label, entities = read_frame_labels(exported_scene, p.frame_id)
        np.testing.assert_array_equal(label, p.label)
        assert entities == p.entities
    # The same noise from in-memory frames.
    again = synthetic_pseudo_labels(clean_frames, CLASS_NAMES, seed=0)
    for x, y in zip(written, again):
        np.testing.assert_array_equal(x.label, y.label)
