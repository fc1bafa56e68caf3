"""The inputs and expected figures of MONAI's and panoptica's own panoptic quality tests, as facts.

Each case re-types a peer's small arrays and the numbers its tests expect, checks ours, and runs
the live peer (installed here) on the same input. Where our figure differs, the test asserts
both numbers and names the rule that explains the difference:

- an empty class: NaN for us and panoptica ("not applicable"), 0 for MONAI (its smoothing term);
- the threshold: a match needs IoU > 0.5 for us (COCO) and MONAI, IoU >= 0.5 for panoptica's default;
- matching: one prediction to one truth for us; panoptica's `MaximizeMergeMatching` merges
  several predictions into one truth;
- below IoU 0.5: we drop the pairs under the threshold and then assign (as panoptica's
  `MaxBipartiteMatching`); MONAI assigns over all IoUs and drops afterwards.

Sources: MONAI `tests/metrics/test_compute_panoptic_quality.py`; panoptica
`unit_tests/test_panoptic_evaluator.py` and `unit_tests/test_matcher_variations.py`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medpanoptic.errors import PanopticError
from medpanoptic.labels import LabelSet
from medpanoptic.metrics import panoptic_quality

CELL = LabelSet.from_names(things=["cell"])  # id 1: the one class of a class-agnostic instance map
THREE = LabelSet.from_names(things=["a", "b", "c"])  # ids 1, 2, 3
FOUR = LabelSet.from_names(things=["a", "b", "c", "d"])  # ids 1..4


def instance_pair(instance) -> np.ndarray:
    """A class-agnostic instance map (0 = background) as one thing class."""
    instance = np.asarray(instance, dtype=np.int32)
    return np.stack([(instance > 0).astype(np.int32), instance])


def from_monai(instance, cls) -> np.ndarray:
    """MONAI's (instance, class) channels as our pair.

    MONAI evaluates class c on `(class == c) * instance`: a voxel of a class with instance 0 is
    background, and one id may recur in several classes as different segments. Our pair says the
    same thing with label 0 on those voxels and one id per (class, instance).
    """
    instance, cls = np.asarray(instance), np.asarray(cls)
    segment = (instance > 0) & (cls > 0)
    codes = np.where(segment, cls * (int(instance.max()) + 1) + instance, 0)
    _, ids = np.unique(codes, return_inverse=True)  # code 0 (background) is the smallest: id 0
    return np.stack([np.where(segment, cls, 0), ids.reshape(codes.shape)]).astype(np.int32)


# -- MONAI: compute_panoptic_quality on one class-agnostic instance map -------------------------------
MONAI_PRED = [[0, 1, 1, 1], [0, 0, 0, 0], [2, 0, 3, 3], [4, 2, 2, 0]]
MONAI_PRED_REMAPPED = [[0, 7, 7, 7], [0, 0, 0, 0], [1, 0, 8, 8], [9, 1, 1, 0]]
MONAI_GT = [[1, 1, 2, 1], [0, 0, 0, 0], [1, 3, 0, 0], [4, 3, 3, 3]]


def _monai_value(pred, gt, metric_name: str, threshold: float) -> float:
    from monai.metrics import compute_panoptic_quality

    value = compute_panoptic_quality(torch.as_tensor(pred), torch.as_tensor(gt), metric_name=metric_name,
                                     match_iou_threshold=threshold)
    return float(value)


@pytest.mark.parametrize("pred, metric, threshold, expected", [
    (MONAI_PRED, "pq", 0.5, 0.25),
    (MONAI_PRED, "sq", 0.3, 0.6),
    (MONAI_PRED_REMAPPED, "rq", 0.3, 0.75),  # ids need not be consecutive
])
def test_monai_single_image_cases(pred, metric, threshold, expected):
    ours = panoptic_quality(instance_pair(pred), instance_pair(MONAI_GT), CELL, iou_threshold=threshold)
    assert getattr(ours, metric)(1) == pytest.approx(expected, abs=1e-4)
    assert _monai_value(pred, MONAI_GT, metric, threshold) == pytest.approx(expected, abs=1e-4)


def test_monai_identical_random_map_is_perfect():
    sample = np.random.default_rng(0).integers(0, 5, (64, 64))  # MONAI draws torch.randint(0, 5, (64, 64))
    ours = panoptic_quality(instance_pair(sample), instance_pair(sample), CELL, iou_threshold=0.99)
    assert ours.pq(1) == 1.0
    assert _monai_value(sample, sample, "pq", 0.99) == pytest.approx(1.0, abs=1e-4)


# -- MONAI: PanopticQualityMetric on a batch of two (instance, class) images ---------------------------
MONAI_BATCH_PRED = [
    [[[2, 0, 1], [2, 1, 1], [0, 1, 1]], [[0, 1, 3], [0, 0, 0], [1, 2, 1]]],
    [[[1, 1, 1], [3, 2, 0], [3, 2, 1]], [[1, 1, 3], [3, 1, 1], [0, 3, 0]]],
]
MONAI_BATCH_GT = [
    [[[2, 0, 0], [2, 0, 0], [2, 2, 3]], [[3, 3, 3], [3, 2, 1], [2, 2, 3]]],
    [[[1, 1, 1], [0, 0, 3], [0, 0, 3]], [[0, 1, 3], [2, 1, 0], [3, 0, 3]]],
]


def _ours_per_image(label_set: LabelSet, threshold: float):
    return [panoptic_quality(from_monai(*p), from_monai(*g), label_set, iou_threshold=threshold)
            for p, g in zip(MONAI_BATCH_PRED, MONAI_BATCH_GT)]


def _monai_metric(threshold: float, num_classes: int = 3, **options):
    from monai.metrics import PanopticQualityMetric

    metric = PanopticQualityMetric(num_classes=num_classes, match_iou_threshold=threshold, **options)
    metric(torch.as_tensor(MONAI_BATCH_PRED), torch.as_tensor(MONAI_BATCH_GT))
    return metric.aggregate()


def test_monai_layout_is_refused_as_is_and_read_through_its_rule():
    """MONAI's channels put instance ids on background and one id in several classes: not a pair of ours."""
    raw_pred = np.stack([np.asarray(MONAI_BATCH_PRED[0][1]), np.asarray(MONAI_BATCH_PRED[0][0])])  # label, instance
    raw_gt = np.stack([np.asarray(MONAI_BATCH_GT[0][1]), np.asarray(MONAI_BATCH_GT[0][0])])
    with pytest.raises(PanopticError, match="^prediction: instance ids on background"):
        panoptic_quality(raw_pred, raw_gt, THREE)
    converted = from_monai(*MONAI_BATCH_PRED[0])
    assert converted[1].max() == len(np.unique(converted[1])) - 1  # one id per (class, instance)


@pytest.mark.parametrize("threshold, expected", [(0.5, (0.0, 0.0, 0.25)), (0.3, (0.25, 0.5, 0.25))])
def test_monai_batch_pq_per_class(threshold, expected):
    """MONAI averages the counts over the batch, which gives the ratios of our dataset-level sums."""
    a, b = _ours_per_image(THREE, threshold)
    total = a + b
    assert [total.pq(c) for c in (1, 2, 3)] == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(_monai_metric(threshold).numpy(), expected, atol=1e-4)


def test_monai_class_absent_from_both_is_zero_there_nan_here():
    """num_classes=4: class 4 is in no image. MONAI's smoothing makes its SQ 0; for us it is not applicable."""
    expected_monai = (0.5, 0.5, 1.0, 0.0)
    a, b = _ours_per_image(FOUR, 0.3)
    total = a + b
    assert [total.sq(c) for c in (1, 2, 3)] == pytest.approx(expected_monai[:3], abs=1e-4)
    assert (total.tp(4), total.fp(4), total.fn(4)) == (0, 0, 0) and math.isnan(total.sq(4))
    live = _monai_metric(0.3, num_classes=4, metric_name="segmentation_quality").numpy()
    np.testing.assert_allclose(live, expected_monai, atol=1e-4)


def test_monai_per_image_rq_and_pq():
    """reduction='none' at IoU 0.4: MONAI's 0 for a class an image lacks is our NaN; every other figure agrees."""
    expected_rq = [[0.0, 1.0, 0.0], [0.6667, 0.0, 0.4]]
    expected_pq = [[0.0, 0.5, 0.0], [0.3333, 0.0, 0.4]]
    live_rq, live_pq = _monai_metric(0.4, reduction="none", metric_name=["Recognition Quality", "pq"])
    np.testing.assert_allclose(live_rq.numpy(), expected_rq, atol=1e-4)
    np.testing.assert_allclose(live_pq.numpy(), expected_pq, atol=1e-4)
    for image, ours in enumerate(_ours_per_image(THREE, 0.4)):
        for c in (1, 2, 3):
            if ours.tp(c) + ours.fp(c) + ours.fn(c) == 0:
                assert math.isnan(ours.rq(c)) and expected_rq[image][c - 1] == 0.0, (image, c)
                continue
            assert ours.rq(c) == pytest.approx(expected_rq[image][c - 1], abs=1e-4), (image, c)
            assert ours.pq(c) == pytest.approx(expected_pq[image][c - 1], abs=1e-4), (image, c)


def test_below_half_we_filter_then_assign_monai_assigns_then_filters():
    """At IoU 0.3: A-P 0.5, A-Q 0.4, B-P 0.25. MONAI's assignment over all IoUs prefers A-Q + B-P
    (0.65), then drops B-P, keeping A-Q 0.4; among the pairs above 0.3 the best is A-P 0.5."""
    gt = [[1] * 10 + [2] * 2]  # A: 10 voxels, B: 2
    pred = [[1] * 6 + [2] * 4 + [1] * 2]  # P: 6 in A and all of B, Q: 4 in A
    ours = panoptic_quality(instance_pair(pred), instance_pair(gt), CELL, iou_threshold=0.3)
    assert (ours.tp(1), ours.fp(1), ours.fn(1)) == (1, 1, 1)
    assert ours.sq(1) == pytest.approx(0.5) and ours.pq(1) == pytest.approx(0.25)
    assert [(m.gt_instance, m.pred_instance) for m in ours.matches] == [(1, 1)]
    assert _monai_value(pred, gt, "sq", 0.3) == pytest.approx(0.4, abs=1e-4)
    assert _monai_value(pred, gt, "pq", 0.3) == pytest.approx(0.2, abs=1e-4)
    assert _monai_value(pred, gt, "rq", 0.3) == pytest.approx(0.5, abs=1e-4)  # the same counts
    from panoptica import MaxBipartiteMatching, Metric

    theirs = _panoptica(np.asarray(pred), np.asarray(gt), MaxBipartiteMatching(Metric.IOU, 0.3, strict_threshold=True))
    assert (theirs["tp"], theirs["sq"]) == (1, pytest.approx(0.5))


# -- panoptica ----------------------------------------------------------------------------------------
def _panoptica(pred_instance: np.ndarray, ref_instance: np.ndarray, matcher=None) -> dict:
    """panoptica on instance maps (`UNMATCHED_INSTANCE`, no class), as a dict of its figures."""
    from panoptica import InputType, NaiveThresholdMatching, Panoptica_Evaluator

    evaluator = Panoptica_Evaluator(expected_input=InputType.UNMATCHED_INSTANCE,
                                    instance_matcher=matcher or NaiveThresholdMatching())
    return evaluator.evaluate(pred_instance.astype(np.int32), ref_instance.astype(np.int32), verbose=False)[
        "ungrouped"].to_dict()


def _grid(size=(50, 50)) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(size, np.int32), np.zeros(size, np.int32)  # reference, prediction


def _ours(pred_instance: np.ndarray, ref_instance: np.ndarray) -> dict:
    result = panoptic_quality(instance_pair(pred_instance), instance_pair(ref_instance), CELL)
    return {"tp": result.tp(1), "fp": result.fp(1), "fn": result.fn(1), **result.per_class()[0]}


def _one_box():
    ref, pred = _grid()
    ref[20:40, 10:20] = 1
    pred[20:35, 10:20] = 2
    return ref, pred


def _two_truths():
    ref, pred = _grid()
    ref[20:30, 10:20] = 1
    ref[30:40, 10:20] = 3
    pred[20:35, 10:20] = 2
    return ref, pred


def _small_inside():
    ref, pred = _grid()
    ref[20:40, 10:20] = 1
    pred[20:25, 10:15] = 2
    return ref, pred


def _pred_empty():
    ref, pred = _grid()
    ref[20:40, 10:20] = 1
    return ref, pred


def _ref_empty():
    ref, pred = _grid()
    pred[20:35, 10:20] = 2
    return ref, pred


@pytest.mark.parametrize("case, expected", [
    (_one_box, {"tp": 1, "fp": 0, "fn": 0, "sq": 0.75, "pq": 0.75}),
    (_two_truths, {"tp": 1, "fp": 0, "fn": 1, "sq": 0.6666666666666666, "pq": 0.4444444444444444}),
    (_small_inside, {"tp": 0, "fp": 1, "fn": 1, "sq": 0.0, "pq": 0.0}),
    (_pred_empty, {"tp": 0, "fp": 0, "fn": 1, "sq": 0.0, "pq": 0.0}),
    (_ref_empty, {"tp": 0, "fp": 1, "fn": 0, "sq": 0.0, "pq": 0.0}),
])
def test_panoptica_cases_agree(case, expected):
    ref, pred = case()
    ours, theirs = _ours(pred, ref), _panoptica(pred, ref)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value), name
        assert theirs[name] == pytest.approx(value), name


def test_both_empty_is_nan_here_and_in_panoptica_zero_in_monai():
    ref, pred = _grid()
    ours, theirs = _ours(pred, ref), _panoptica(pred, ref)
    assert (ours["tp"], ours["fp"], ours["fn"]) == (0, 0, 0) == (theirs["tp"], theirs["fp"], theirs["fn"])
    assert math.isnan(ours["pq"]) and math.isnan(ours["sq"]) and math.isnan(theirs["pq"]) and math.isnan(theirs["sq"])
    assert _monai_value(pred, ref, "pq", 0.5) == 0.0  # MONAI: 0 / (0 + 1e-6)


def test_iou_exactly_half_matches_in_panoptica_by_default_not_here():
    """IoU = 10 / 20: panoptica's default threshold is >= 0.5 (a TP, PQ 0.5); ours and COCO's is > 0.5."""
    from panoptica import NaiveThresholdMatching

    ref, pred = _grid((28, 28))
    ref[2:6, 2:7] = 1
    pred[2:4, 2:7] = 1
    theirs = _panoptica(pred, ref)
    assert (theirs["tp"], theirs["fp"], theirs["fn"], theirs["pq"]) == (1, 0, 0, pytest.approx(0.5))
    assert theirs["sq_dsc"] == pytest.approx(2 / 3)
    ours = _ours(pred, ref)
    assert (ours["tp"], ours["fp"], ours["fn"], ours["pq"], ours["sq_dsc"]) == (0, 1, 1, 0.0, 0.0)
    strict = _panoptica(pred, ref, NaiveThresholdMatching(matching_threshold=0.5, strict_threshold=True))
    assert (strict["tp"], strict["fp"], strict["fn"], strict["pq"]) == (0, 1, 1, 0.0)  # their strict mode is ours


def _merged_pieces(with_stray: bool):
    ref, pred = _grid()
    ref[20:40, 10:20] = 1  # 200 voxels
    pred[20:35, 10:20] = 2  # 150 inside
    pred[36:38, 10:20] = 3  # 20 inside
    if with_stray:
        pred[39:47, 10:20] = 4  # 10 of its 80 inside
    return ref, pred


@pytest.mark.parametrize("with_stray, merged, one_to_one", [
    (False, {"tp": 1, "fp": 0, "sq": 0.85, "pq": 0.85}, {"tp": 1, "fp": 1, "sq": 0.75, "pq": 0.5}),
    (True, {"tp": 1, "fp": 1, "sq": 0.85, "pq": 0.5666666, "rq": 0.6666666, "sq_dsc": 0.9189189189189},
     {"tp": 1, "fp": 2, "sq": 0.75, "pq": 0.375, "rq": 0.5, "sq_dsc": 2 * 150 / 350}),
])
def test_merge_matching_counts_pieces_as_one_we_count_them_apart(with_stray, merged, one_to_one):
    """panoptica's MaximizeMergeMatching joins pieces 2 and 3 into one prediction of the truth
    ((150 + 20) / 200 = 0.85); one-to-one matching (ours, COCO, MONAI) keeps piece 2 (IoU 0.75)
    and counts piece 3 as a false positive. panoptica's one-to-one matcher agrees with us."""
    from panoptica.instance_matcher import MaximizeMergeMatching

    ref, pred = _merged_pieces(with_stray)
    theirs_merged = _panoptica(pred, ref, MaximizeMergeMatching())
    theirs_one_to_one = _panoptica(pred, ref)
    ours = _ours(pred, ref)
    for name in merged:
        assert theirs_merged[name] == pytest.approx(merged[name]), name
        assert ours[name] == pytest.approx(one_to_one[name]), name
        assert theirs_one_to_one[name] == pytest.approx(one_to_one[name]), name
