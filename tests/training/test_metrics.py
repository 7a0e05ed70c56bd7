"""Metrics on hand-built confusion cases."""
import math

import numpy as np
import pytest

from ov3d_ros.training.metrics import SegmentationMetrics, confusion_matrix, harmonic_mean, iou_from_confusion


def test_confusion_and_iou_by_hand():
    gt = np.array([0, 0, 0, 1, 1, 2, -1])
    pred = np.array([0, 0, 1, 1, -1, 2, 0])
    conf = confusion_matrix(gt, pred, 3)
    # the gt=-1 point is dropped; pred -1 lands in the extra "no label" column
    assert conf.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]
    iou = iou_from_confusion(conf)
    # class 0: TP 2, FN 1, FP 0 -> 2/3; class 1: TP 1, FN 1 (the -1), FP 1 -> 1/3; class 2: 1
    assert iou.tolist() == pytest.approx([2 / 3, 1 / 3, 1.0])


def test_report_means_skip_absent_classes():
    m = SegmentationMetrics(["wall", "chair", "lamp"])
    m.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    rep = m.report()
    # wall: 1/2, chair: 2/3, lamp: absent from GT -> NaN, not in the mean
    assert rep.iou[0] == pytest.approx(0.5)
    assert rep.iou[1] == pytest.approx(2 / 3)
    assert math.isnan(rep.iou[2])
    assert rep.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert rep.macc == pytest.approx((0.5 + 1.0) / 2)
    assert rep.overall_acc == pytest.approx(0.75)
    assert "mIoU" in rep.format_table()


def test_accumulates_over_scenes():
    m = SegmentationMetrics(["a", "b"])
    m.update(np.array([0, 1]), np.array([0, 0]))
    m.update(np.array([1, 1]), np.array([1, 1]))
    rep = m.report()
    # a: TP1 FP1 -> 1/2 ; b: TP2 FN1 -> 2/3
    assert rep.iou.tolist() == pytest.approx([0.5, 2 / 3])
    # the report keeps the summed confusion: b was taken for a once, never left unlabelled
    assert rep.as_dict()["confusion"] == {"columns": ["a", "b", "(no label)"], "rows": {"a": [1, 0, 0], "b": [1, 2, 0]}}
    rows = rep.format_table().splitlines()
    assert rows[1].split() == ["a", "50.0", "100.0"]  # nothing of a was mistaken
    assert rows[2].split() == ["b", "66.7", "66.7", "a", "33%"]


def test_base_novel_hiou():
    m = SegmentationMetrics(["a", "b", "c", "d"])
    gt = np.array([0, 1, 2, 3])
    pred = np.array([0, 1, 2, 0])  # d wrong: a IoU 1/2, b 1, c 1, d 0
    m.update(gt, pred)
    rep = m.report(base_classes=["a", "b"], novel_classes=["c", "d"])
    assert rep.base_miou == pytest.approx(0.75)
    assert rep.novel_miou == pytest.approx(0.5)
    assert rep.hiou == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="not in the class list"):
        m.report(base_classes=["a"], novel_classes=["zebra"])
    with pytest.raises(ValueError, match="both"):
        m.report(base_classes=["a"])


def test_iou_by_object_size():
    m = SegmentationMetrics(["floor", "cup"], small_instance_points=3)
    # instance 7: 4 floor points (large); instance 9: 2 cup points (small), one predicted floor
    gt = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0, 1, 0])
    inst = np.array([7, 7, 7, 7, 9, 9])
    m.update(gt, pred, inst)
    rep = m.report()
    assert rep.size_instances == {"small": 1, "large": 1}
    # small bucket: only the cup points: cup TP1 FN1 -> 1/2; floor has no GT there but 1 FP -> NaN (absent)
    assert rep.size_miou["small"] == pytest.approx(0.5)
    assert rep.size_miou["large"] == pytest.approx(1.0)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="gt values"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.array([0.0]), np.array([0]), 3)
    with pytest.raises(ValueError, match="unique"):
        SegmentationMetrics(["a", "a"])


def test_instance_ap_against_a_hand_computed_case():
    from ov3d_ros.training.metrics import InstanceAP, average_precision

    gt_class = np.zeros(40, dtype=np.int64)
    gt_class[30:] = -1  # not evaluated
    gt_instance = np.full(40, -1)
    gt_instance[:10], gt_instance[10:20] = 7, 9  # two chairs; points 20-29 are chair-class stuff of no instance
    predictions = [(0, 0.9, np.arange(0, 10)),     # chair 7 exactly: a hit at both thresholds
                   (0, 0.8, np.arange(20, 30)),    # no instance there: a false positive
                   (0, 0.7, np.arange(10, 14)),    # 4 of chair 9's 10 points: IoU 0.4, a hit at 0.25 only
                   (0, 0.6, np.arange(0, 10))]     # chair 7 again: taken, a false positive
    ap = InstanceAP(["chair", "table"])
    ap.update(gt_class, gt_instance, predictions)
    report = ap.report()
    # IoU 0.25: hit, miss, hit, miss -> precision 1, 1/2, 2/3, 2/4 at recall 1/2, 1/2, 1, 1;
    # non-increasing precision 1, 2/3, 2/3, 1/2 -> AP = 1/2 * 1 + 1/2 * 2/3.
    assert report["per_class"]["chair"]["ap25"] == pytest.approx(0.5 + 1 / 3)
    # IoU 0.5: hit, miss, miss, miss -> recall reaches 1/2 at precision 1: AP = 1/2.
    assert report["per_class"]["chair"]["ap50"] == pytest.approx(0.5)
    assert report["per_class"]["chair"]["instances"] == 2 and report["per_class"]["chair"]["predictions"] == 4
    assert "table" not in report["per_class"]  # no ground truth, no prediction
    assert report["ap25"] == pytest.approx(0.5 + 1 / 3) and report["ap50"] == pytest.approx(0.5)
    # Another scene in another accumulator adds up as one: a second perfect chair.
    other = InstanceAP(["chair", "table"])
    other.update(np.zeros(5, np.int64), np.zeros(5, np.int64), [(0, 0.95, np.arange(5))])
    ap.merge(other)
    assert ap.report()["per_class"]["chair"]["instances"] == 3
    assert average_precision(np.array([]), np.array([]), 0) != average_precision(np.array([]), np.array([]), 0)  # NaN
    assert average_precision(np.array([]), np.array([], bool), 3) == 0.0
