"""Lesion-wise figures, surface distances against MONAI, the BraTS 2023 mode, the MONAI metric class, the CLI."""

import csv

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medpanoptic.errors import PanopticError
from medpanoptic.labels import LabelSet
from medpanoptic.metrics import (
    CumulativePanopticQuality, brats_lesion_metrics, hd95_assd, lesion_metrics, panoptic_quality,
)

from .metrics_cases import LABELS, perturb, random_truth


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_surface_distances_match_monai(seed):
    """HD95 and ASSD on the joint bounding box equal MONAI's on the whole volume (anisotropic spacing)."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (40, 36, 24)
    a = _ball(shape, rng.uniform(12, 24, 3), rng.uniform(3, 7))
    b = _ball(shape, rng.uniform(12, 24, 3), rng.uniform(3, 7)) | (a & (rng.random(shape) < 0.3))
    spacing = (0.7, 0.9, 2.5)
    hd95, assd = hd95_assd(a, b, spacing)
    ta, tb = torch.as_tensor(a)[None, None], torch.as_tensor(b)[None, None]
    ref_hd95 = float(compute_hausdorff_distance(ta, tb, percentile=95, spacing=spacing))
    ref_assd = float(compute_average_surface_distance(ta, tb, symmetric=True, spacing=spacing))
    assert hd95 == pytest.approx(ref_hd95, rel=1e-6, abs=1e-6)
    assert assd == pytest.approx(ref_assd, rel=1e-6, abs=1e-6)


def test_lesion_counts_agree_with_pq_and_volumes_are_in_mm3():
    rng = np.random.default_rng(7)
    gt = random_truth(rng, (40, 40, 20), n_things=8)
    pred = perturb(rng, gt)
    spacing = (0.5, 0.5, 3.0)
    quality = panoptic_quality(pred, gt, LABELS)
    lesions = lesion_metrics(pred, gt, LABELS, spacing, quality=quality)
    for row in lesions.per_class():
        c = row["class_id"]
        assert (row["tp"], row["fp"], row["fn"]) == (quality.tp(c), quality.fp(c), quality.fn(c))
        assert row["fp_per_scan"] == quality.fp(c)
    for r in lesions.instances:
        if r["status"] == "TP":
            voxels = int((gt[1] == r["gt_instance"]).sum())
            assert r["gt_volume_mm3"] == pytest.approx(voxels * 0.75)
            pred_voxels = int((pred[1] == r["pred_instance"]).sum())
            assert r["volume_error_mm3"] == pytest.approx((pred_voxels - voxels) * 0.75)
            assert r["hd95_mm"] >= 0 and r["assd_mm"] <= r["hd95_mm"] + 1e-9


def test_precision_recall_and_size_bins_by_hand():
    labels = LabelSet.from_names(things=["lesion"])
    shape = (30, 30, 30)
    big, small, missed = _ball(shape, (8, 8, 8), 4), _ball(shape, (22, 22, 22), 2), _ball(shape, (8, 22, 15), 2)
    gt = np.zeros((2,) + shape, np.int32)
    for i, m in enumerate((big, small, missed), start=1):
        gt[0][m], gt[1][m] = 1, i
    pred = np.zeros_like(gt)
    for i, m in enumerate((big, small, _ball(shape, (22, 8, 8), 2)), start=1):  # the last one is invented
        pred[0][m], pred[1][m] = 1, i
    result = lesion_metrics(pred, gt, labels, (1.0, 1.0, 1.0), size_bins_mm3=(0, 100, float("inf")))
    row = result.per_class()[0]
    assert (row["tp"], row["fp"], row["fn"]) == (2, 1, 1)
    assert row["precision"] == pytest.approx(2 / 3) and row["recall"] == pytest.approx(2 / 3)
    assert row["f1"] == pytest.approx(2 / 3) and row["mean_dice"] == 1.0 and row["mean_hd95_mm"] == 0.0
    bins = result.recall_by_size()
    assert [(b["n_gt"], b["detected"]) for b in bins] == [(2, 1), (1, 1)]  # the two small ones, the big one
    both = result + result
    assert both.per_class()[0]["fp_per_scan"] == 1.0 and both.per_class()[0]["fp"] == 2


def test_brats_mode_by_hand():
    shape = (40, 40, 40)
    a = _ball(shape, (10, 10, 10), 4)
    a2 = _ball(shape, (10, 10, 20), 3)  # two empty voxels between a and a2: merged by the dilation
    b = _ball(shape, (30, 30, 30), 4)
    tiny = _ball(shape, (30, 8, 30), 1)  # below 50 voxels: not a lesion
    gt = a | a2 | b | tiny
    pred_a = _ball(shape, (10, 10, 11), 4)  # overlaps a
    fp = _ball(shape, (30, 10, 10), 3)
    pred = pred_a | fp
    result = brats_lesion_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert (result.tp, result.fp, result.fn) == (1, 1, 1)
    lesion = a | a2
    dice_a = 2 * (pred_a & lesion).sum() / (pred_a.sum() + lesion.sum())
    assert result.lesion_dice == pytest.approx(dice_a / 3)  # (dice(A) + 0 for B) / (2 GT + 1 FP)
    assert [r["detected"] for r in result.lesions] == [True, False]
    assert result.lesion_hd95 == pytest.approx((result.lesions[0]["hd95_mm"] + 374 + 374) / 3)
    empty = brats_lesion_metrics(np.zeros(shape, bool), np.zeros(shape, bool), (1, 1, 1))
    assert (empty.lesion_dice, empty.lesion_hd95) == (1.0, 0.0)


def test_cumulative_metric_in_a_monai_loop():
    rng = np.random.default_rng(2)
    metric = CumulativePanopticQuality(LABELS)
    results = []
    for _ in range(3):
        gt = random_truth(rng, (32, 32, 16))
        pred = perturb(rng, gt)
        results.append(panoptic_quality(pred, gt, LABELS))
        metric(torch.as_tensor(pred)[None], torch.as_tensor(gt)[None].float())  # a resampled label comes as floats
    total = results[0] + results[1] + results[2]
    assert float(metric.aggregate()) == pytest.approx(total.summary()["pq"])
    per_image = np.nanmean([r.summary()["pq"] for r in results])
    assert float(metric.aggregate("mean")) == pytest.approx(per_image)
    np.testing.assert_allclose(metric.result().counts, total.counts)
    # its result carries counts only: lesion_metrics refuses it rather than count zero lesions
    assert metric.result().counts[:, 0].sum() > 0 and metric.result().matches == []
    with pytest.raises(PanopticError, match=r"lesion_metrics: the quality given counts \d+ TP, \d+ FN, \d+ FP things "
                                            r"but lists 0, 0, 0 of them .*CumulativePanopticQuality.result\(\)"):
        lesion_metrics(pred, gt, LABELS, (1.0, 1.0, 1.0), quality=metric.result())
    assert len(lesion_metrics(pred, gt, LABELS, (1.0, 1.0, 1.0), quality=results[-1]).instances) > 0
    metric.reset()
    assert metric.result().counts.sum() == 0
    with pytest.raises(ValueError, match="metric_name must be one of"):
        CumulativePanopticQuality(LABELS, metric_name="accuracy")


def test_evaluate_cli(tmp_path, capsys):
    from medpanoptic.cli import main
    from medpanoptic.io import read_panoptic, write_panoptic
    from medpanoptic.io.decathlon import load_datalist

    assert main(["phantom", str(tmp_path / "gt"), "--n", "3", "--shape", "48,48,24", "--things", "4"]) == 0
    entries, labels = load_datalist(tmp_path / "gt")
    for e in entries[:2]:
        pair, _ = read_panoptic(e["label"], label_set=labels, instance_path=e["instance"])
        name = e["label"].split("/")[-1].removesuffix(".nii.gz")
        write_panoptic(pair, tmp_path / "pred" / name, labels)  # a perfect prediction
    (tmp_path / "pred" / "stray_label.nii.gz").write_bytes(b"")  # a prediction with no ground truth
    capsys.readouterr()
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(tmp_path / "r.csv")])
    out = capsys.readouterr()
    assert code == 1  # one ground-truth case has no prediction
    assert "phantom_0002" in out.err and "stray" in out.err
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["case"] for r in rows] == ["phantom_0000", "phantom_0001"]
    assert all(float(r["pq"]) == 1.0 for r in rows)
    instances = list(csv.DictReader(open(tmp_path / "r_instances.csv")))
    assert len(instances) == 8 and all(r["status"] == "TP" and float(r["dice"]) == 1.0 for r in instances)
    summary = list(csv.DictReader(open(tmp_path / "r_summary.csv")))
    lesion = next(r for r in summary if r["class"] == "lesion")
    assert (lesion["tp"], lesion["fp"], lesion["fn"], lesion["pq"]) == ("8", "0", "0", "1")
    assert "lesion" in out.out and "PQ 1.000" in out.out
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out",
                 str(tmp_path / "r.csv"), "--allow-missing"])
    assert code == 0


def test_evaluate_refuses_mismatched_grids(tmp_path, capsys):
    from medpanoptic.cli import main
    from medpanoptic.synthetic import ct_phantom
    from medpanoptic.io import write_panoptic

    a = ct_phantom(shape=(32, 32, 16), n_lesions=2, seed=1)
    b = ct_phantom(shape=(32, 32, 18), n_lesions=2, seed=1)
    write_panoptic(a.pair, tmp_path / "gt" / "case", a.label_set)
    write_panoptic(b.pair, tmp_path / "pred" / "case", b.label_set)
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(tmp_path / "r.csv")])
    assert code == 1
    assert "does not match the ground truth" in capsys.readouterr().err
