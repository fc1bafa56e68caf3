"""Panoptic quality: hand-worked COCO cases, then cross-checks against MONAI and panoptica."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medpanoptic.errors import PanopticError
from medpanoptic.labels import LabelSet
from medpanoptic.metrics import contingency, mean_over_images, panoptic_quality

from .metrics_cases import LABELS, perturb, random_truth

THINGS = LabelSet.from_names(things=["cell"])  # id 1, a thing
STUFF_AND_THING = LabelSet.from_names(stuff=["tissue"], things=["cell"])  # 1 stuff, 2 thing


def pair(label, instance):
    return np.stack([np.asarray(label), np.asarray(instance)])


def test_one_match_by_hand():
    gt = pair([[1, 1, 1, 1, 0]], [[1, 1, 1, 1, 0]])
    pred = pair([[0, 1, 1, 1, 1]], [[0, 5, 5, 5, 5]])  # overlap 3, union 5
    r = panoptic_quality(pred, gt, THINGS)
    assert (r.tp(1), r.fp(1), r.fn(1)) == (1, 0, 0)
    assert r.pq(1) == pytest.approx(0.6) and r.sq(1) == pytest.approx(0.6) and r.rq(1) == 1.0
    assert r.per_class()[0]["pq_dsc"] == pytest.approx(2 * 3 / 8)


def test_iou_exactly_half_is_not_a_match():
    gt = pair([[1, 1, 0, 0]], [[1, 1, 0, 0]])
    pred = pair([[1, 1, 1, 1]], [[2, 2, 2, 2]])  # intersection 2, union 4: IoU = 0.5
    r = panoptic_quality(pred, gt, THINGS)
    assert (r.tp(1), r.fp(1), r.fn(1)) == (0, 1, 1)
    assert r.pq(1) == 0.0 and r.sq(1) == 0.0 and r.rq(1) == 0.0


def test_void_leaves_the_union_and_excuses_false_positives():
    void = 9
    labels = LabelSet.from_names(things=["cell"])
    gt = pair([[1, 1, 1, 1, 9, 9, 9, 9, 0, 0]], [[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]])
    pred = pair([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]], [[3, 3, 3, 3, 3, 3, 4, 4, 4, 0]])
    # instance 3: area 6, 2 of them in void -> IoU = 4 / (4 + 6 - 4 - 2) = 1
    # instance 4: area 3, 2 of them in void (> half) -> ignored, not a false positive
    r = panoptic_quality(pred, gt, labels, void_label=void)
    assert (r.tp(1), r.fp(1), r.fn(1)) == (1, 0, 0)
    assert r.pq(1) == pytest.approx(1.0)
    # the same region as an ordinary class: its voxels stay in the union, and the stray instance is a FP
    from medpanoptic.labels import LabelClass

    plain = LabelSet(labels.classes + (LabelClass(9, "unlabelled", "stuff"),))
    without_void = panoptic_quality(pred, gt, plain)
    assert without_void.fp(1) == 1 and without_void.sq(1) == pytest.approx(4 / 6)
    with pytest.raises(PanopticError, match=r"^ground truth: label ids \[9\] are not in the label set \[1\]$"):
        panoptic_quality(pred, gt, labels)  # label 9 is neither a class nor declared void


def test_thing_voxel_without_instance_is_refused_naming_the_input():
    gt = pair([[1, 1, 1, 0]], [[1, 1, 1, 0]])
    stray = pair([[1, 1, 1, 1]], [[1, 1, 1, 0]])  # the last thing voxel has no instance
    with pytest.raises(PanopticError, match=r"^prediction: thing voxels with instance 0$"):
        panoptic_quality(stray, gt, THINGS)
    with pytest.raises(PanopticError, match=r"^ground truth: thing voxels with instance 0$"):
        panoptic_quality(torch.from_numpy(gt), torch.from_numpy(stray), THINGS)
    with pytest.raises(PanopticError, match=r"^prediction: instance ids \[4\] span more than one class$"):
        panoptic_quality(pair([[3, 4, 0]], [[4, 4, 0]]), pair([[3, 3, 0]], [[1, 1, 0]]), LABELS)
    # unchecked, the stray voxel is one more segment of class 1 and silently one more false positive
    unchecked = panoptic_quality(stray, gt, THINGS, check=False)
    assert (unchecked.tp(1), unchecked.fp(1), unchecked.fn(1)) == (1, 1, 0)


def test_stuff_is_one_segment_per_image():
    gt = pair([[1, 1, 0, 1, 1]], [[0, 0, 0, 0, 0]])  # two blobs of stuff: one segment
    pred = pair([[1, 1, 1, 1, 0]], [[0, 0, 0, 0, 0]])
    r = panoptic_quality(pred, gt, STUFF_AND_THING)
    assert (r.tp(1), r.fp(1), r.fn(1)) == (1, 0, 0)
    assert r.pq(1) == pytest.approx(3 / 5)


def test_empty_class_is_nan_and_left_out_of_means():
    gt = pair([[1, 1, 0]], [[0, 0, 0]])
    pred = pair([[1, 1, 0]], [[0, 0, 0]])
    r = panoptic_quality(pred, gt, STUFF_AND_THING)
    assert math.isnan(r.pq(2)) and r.pq(1) == 1.0
    s = r.summary()
    assert s["pq"] == 1.0 and s["pq_stuff"] == 1.0 and math.isnan(s["pq_things"])


def test_missed_and_invented_things_count():
    gt = pair([[1, 1, 0, 0, 0, 0]], [[1, 1, 0, 0, 0, 0]])
    pred = pair([[0, 0, 0, 0, 1, 1]], [[0, 0, 0, 0, 1, 1]])
    r = panoptic_quality(pred, gt, THINGS)
    assert (r.tp(1), r.fp(1), r.fn(1)) == (0, 1, 1) and r.pq(1) == 0.0
    assert r.unmatched_gt == [(1, 1, 2)] and r.unmatched_pred == [(1, 1, 2)]


def test_classes_never_match_across():
    gt = pair([[3, 3, 3]], [[1, 1, 1]])
    pred = pair([[4, 4, 4]], [[1, 1, 1]])
    r = panoptic_quality(pred, gt, LABELS)
    assert (r.tp(3), r.fn(3), r.fp(4)) == (0, 1, 1)


def test_hungarian_below_half():
    """With a 0.25 threshold, maximum total IoU prefers two moderate matches over one better one."""
    # gt A = cols 0-9, gt B = cols 10-13; pred P1 = cols 5-13 (IoU A 5/14, B 4/9), P2 = cols 0-4... see asserts
    gt = pair([[1] * 14], [[1] * 10 + [2] * 4])
    pred = pair([[1] * 14], [[2] * 4 + [1] * 10])
    # P2 = cols 0-3 (IoU with A = 4/10), P1 = cols 4-13 (IoU with A = 6/14, with B = 4/10)
    r = panoptic_quality(pred, gt, THINGS, iou_threshold=0.25)
    assert r.tp(1) == 2
    assert r.sq(1) == pytest.approx((4 / 10 + 4 / 10) / 2)
    assert panoptic_quality(pred, gt, THINGS).tp(1) == 0  # nothing above 0.5
    with pytest.raises(ValueError):
        panoptic_quality(pred, gt, THINGS, iou_threshold=0.25, matching="unique")


def test_dataset_sums_and_image_means():
    a = panoptic_quality(pair([[1, 1, 0]], [[1, 1, 0]]), pair([[1, 1, 0]], [[1, 1, 0]]), THINGS)
    b = panoptic_quality(pair([[0, 0, 0]], [[0, 0, 0]]), pair([[1, 1, 0]], [[1, 1, 0]]), THINGS)
    total = a + b
    assert (total.tp(1), total.fn(1)) == (1, 1)
    assert total.pq(1) == pytest.approx(1 / 1.5)
    assert mean_over_images([a, b])["pq"] == pytest.approx(0.5)


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    gt = random_truth(rng, (40, 40, 20))
    pred = perturb(rng, gt)
    a = panoptic_quality(pred, gt, LABELS)
    b = panoptic_quality(torch.from_numpy(pred), torch.from_numpy(gt), LABELS)
    c = panoptic_quality(pred.astype(np.uint16), gt.astype(np.uint8), LABELS)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.counts, c.counts)


def test_contingency_against_brute_force():
    rng = np.random.default_rng(3)
    gt = random_truth(rng, (30, 30, 12))
    pred = perturb(rng, gt)
    table = contingency(pred, gt)
    dense = table.dense()
    for r, (gl, gi, ga) in enumerate(table.gt_segments):
        gm = (gt[0] == gl) & (gt[1] == gi)
        assert gm.sum() == ga
        for c, (pl, pi, pa) in enumerate(table.pred_segments):
            pm = (pred[0] == pl) & (pred[1] == pi)
            assert dense[r, c] == (gm & pm).sum()
    assert table.gt_segments[:, 2].sum() == gt[0].size


# -- cross-checks against independent implementations ---------------------------------------
def _monai_format(p: np.ndarray) -> torch.Tensor:
    """MONAI's layout: channel 0 instance, channel 1 class; stuff gets a non-zero instance id."""
    instance = p[1].copy()
    for stuff in LABELS.stuff_ids:
        instance[p[0] == stuff] = 10000 + stuff
    return torch.as_tensor(np.stack([instance, p[0]])[None])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), dims=st.sampled_from([2, 3]), threshold=st.sampled_from([0.5, 0.3]))
def test_matches_monai(seed, dims, threshold):
    from monai.metrics import PanopticQualityMetric

    rng = np.random.default_rng(seed)
    shape = (48, 40) if dims == 2 else (24, 20, 16)
    gt = random_truth(rng, shape, n_things=10 if dims == 2 else 6)
    pred = perturb(rng, gt)
    ours = panoptic_quality(pred, gt, LABELS, iou_threshold=threshold)
    metric = PanopticQualityMetric(num_classes=4, return_confusion_matrix=True, reduction="none",
                                   match_iou_threshold=threshold)
    theirs = metric(_monai_format(pred), _monai_format(gt))[0].numpy()  # (classes, [tp, fp, fn, iou_sum])
    np.testing.assert_array_equal(ours.counts[:, :3], theirs[:, :3])
    np.testing.assert_allclose(ours.counts[:, 3], theirs[:, 3], atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), dims=st.sampled_from([2, 3]))
def test_matches_panoptica_for_things(seed, dims):
    from panoptica import InputType, Metric, NaiveThresholdMatching, Panoptica_Evaluator

    rng = np.random.default_rng(seed)
    shape = (48, 40) if dims == 2 else (24, 20, 16)
    gt = random_truth(rng, shape, n_things=10 if dims == 2 else 6)
    pred = perturb(rng, gt)
    thing = 3
    gt_i = np.where(gt[0] == thing, gt[1], 0).astype(np.int32)
    pred_i = np.where(pred[0] == thing, pred[1], 0).astype(np.int32)
    ours = panoptic_quality(np.stack([(pred_i > 0).astype(np.int32), pred_i]), np.stack([(gt_i > 0).astype(np.int32), gt_i]), THINGS)
    evaluator = Panoptica_Evaluator(
        expected_input=InputType.UNMATCHED_INSTANCE,
        instance_matcher=NaiveThresholdMatching(Metric.IOU, 0.5, strict_threshold=True),
        instance_metrics=[Metric.IOU, Metric.DSC], global_metrics=[Metric.DSC],
    )
    theirs = evaluator.evaluate(pred_i, gt_i, verbose=False)["ungrouped"].to_dict()
    assert (ours.tp(1), ours.fp(1), ours.fn(1)) == (theirs["tp"], theirs["fp"], theirs["fn"])
    row = ours.per_class()[0]
    for name in ("pq", "sq", "rq", "pq_dsc", "sq_dsc"):
        if math.isnan(row[name]):
            continue
        assert row[name] == pytest.approx(theirs[name], abs=1e-6), name


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), dims=st.sampled_from([2, 3]))
def test_torch_path_equals_compiled_path(seed, dims):
    """The torch pass (what runs on a GPU) and the compiled CPU pass build the same table."""
    rng = np.random.default_rng(seed)
    gt = random_truth(rng, (48, 40) if dims == 2 else (24, 20, 16))
    pred = perturb(rng, gt)
    a = contingency(pred, gt, backend="numba")
    b = contingency(torch.from_numpy(pred), torch.from_numpy(gt), backend="torch")
    np.testing.assert_array_equal(a.gt_segments, b.gt_segments)
    np.testing.assert_array_equal(a.pred_segments, b.pred_segments)
    np.testing.assert_array_equal(a.overlaps[np.lexsort(a.overlaps.T[::-1])], b.overlaps[np.lexsort(b.overlaps.T[::-1])])


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_bad_ids_are_refused(backend):
    from medpanoptic.errors import PanopticError

    gt = pair([[1, 1, 0]], [[1, 1, 0]])
    with pytest.raises(PanopticError, match="negative"):
        contingency(pair([[1, -1, 0]], [[1, 0, 0]]), gt, backend=backend)
    with pytest.raises(PanopticError, match="not in the label set"):
        contingency(pair([[5, 1, 0]], [[1, 1, 0]]), gt, n_labels=2, backend=backend)
