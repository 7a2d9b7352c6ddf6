"""Metrics against hand-computed values."""
import math

import numpy as np
import pytest

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.metrics import ConfusionMatrix, IdConsistency, PanopticQuality

U = 65535


def test_semantic_metrics_exact():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1, 1, U, 1, 2]), np.array([0, 0, 1, 1, 1, 2, U]))
    s = cm.compute(["wall", "chair", "table", "bed"])
    # wall: TP1 FN1 FP0 -> 1/2; chair: TP2, gt 3, pred 4 -> 2/5; table: 0/1; bed: never seen -> NaN
    np.testing.assert_allclose(s.iou[:3], [0.5, 0.4, 0.0])
    assert math.isnan(s.iou[3]) and math.isnan(s.acc[3])
    np.testing.assert_allclose(s.acc[:3], [0.5, 2 / 3, 0.0])
    assert s.miou == pytest.approx(0.3)
    assert s.macc == pytest.approx((0.5 + 2 / 3) / 3)
    assert s.oacc == pytest.approx(0.5)
    assert s.fg_miou == pytest.approx(0.2)
    assert s.fg_macc == pytest.approx(1 / 3)
    assert s.num_pixels == 6


def test_semantic_accumulates_and_background_configurable():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update([0, 1], [0, 1])
    b.update([1, 1], [0, 1])
    a.merge(b)
    s = a.compute(["floor", "chair"], background=("chair",))
    np.testing.assert_allclose(s.iou, [0.5, 2 / 3])
    assert s.fg_miou == pytest.approx(0.5)  # only 'floor' is foreground here


def test_semantic_validation():
    cm = ConfusionMatrix(2)
    with pytest.raises(InvalidInputError, match="ground-truth"):
        cm.update([0], [5])
    with pytest.raises(InvalidInputError, match="predicted"):
        cm.update([7], [0])
    with pytest.raises(InvalidInputError):
        cm.update([0, 1], [0])


def test_panoptic_quality_exact():
    pq = PanopticQuality(3, thing=[False, True, True])
    pq.update(pred_semantic=[0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
              pred_instance=[0, 5, 7, 7, 7, 8, 9, 9, 4, 4],
              gt_semantic=[0, 0, 1, 1, 1, 1, 2, 2, U, U],
              gt_instance=[1, 1, 2, 2, 2, 2, 3, 3, U, U])
    s = pq.compute()
    # chair: 7 matches gt 2 with IoU 3/4, 8 is a false positive; table: 9 matches with IoU 1;
    # 4 lies entirely in void (ignored); 5 is a floor (stuff) segment (not evaluated).
    assert s.tp.tolist() == [0, 1, 1] and s.fp.tolist() == [0, 1, 0] and s.fn.tolist() == [0, 0, 0]
    assert s.pq == pytest.approx((0.75 / 1.5 + 1.0) / 2)
    assert s.sq == pytest.approx((0.75 + 1.0) / 2)
    assert s.rq == pytest.approx((1 / 1.5 + 1.0) / 2)
    # a second view where the chair is missed entirely
    pq.update([1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2])
    s = pq.compute()
    assert s.fn.tolist() == [0, 1, 0]
    assert s.per_class_pq[1] == pytest.approx(0.75 / 2)
    assert math.isnan(s.per_class_pq[0])


def test_panoptic_void_reduces_union():
    # prediction covers the 2-pixel gt object and 2 void pixels: IoU = 2 / (2 + 4 - 2 - 2) = 1
    pq = PanopticQuality(2, thing=[False, True])
    pq.update([1, 1, 1, 1], [3, 3, 3, 3], [1, 1, U, U], [1, 1, U, U])
    s = pq.compute()
    assert s.tp.tolist() == [0, 1] and s.pq == pytest.approx(1.0)


def test_id_consistency_exact():
    ic = IdConsistency()
    ic.update([1, 1, 1, 1, 2, 2], [5, 5, 5, 6, 7, 0])
    ic.update([1, 1, 2, 2, U, 1], [6, 6, 7, 7, 3, 6])
    ic.update([1, 1], [9, 9], scene="other")   # another scene's object 1: consistency 1
    s = ic.compute()
    assert s.num_objects == 3
    assert s.object_mean == pytest.approx((4 / 7 + 3 / 4 + 1.0) / 3)
    assert s.pixel_weighted == pytest.approx((4 + 3 + 2) / (7 + 4 + 2))


def test_id_consistency_things_only_and_min_pixels():
    ic = IdConsistency(thing=[False, True], min_pixels=2)
    ic.update(gt_instance=[1, 1, 2, 3], pred_instance=[4, 4, 5, 6], gt_semantic=[0, 0, 1, 1])
    s = ic.compute()
    assert s.num_objects == 0  # object 1 is stuff, objects 2 and 3 have 1 pixel each
    assert math.isnan(s.object_mean)
