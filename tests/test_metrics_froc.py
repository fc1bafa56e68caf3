"""FROC from per-instance scores: the curve, its operating points, the CPM, and `evaluate` writing them."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medpanoptic.io import write_panoptic
from medpanoptic.labels import ct_lesion_labels
from medpanoptic.metrics.evaluate import evaluate_folders
from medpanoptic.metrics.froc import froc
from medpanoptic.pair import make_pair

# two scans, four ground-truth lesions; detections by falling score: TP FP TP FP FP TP, and one lesion missed
ROWS = [{"status": s, "score": v} for s, v in
        [("TP", 0.9), ("FP", 0.8), ("TP", 0.7), ("FP", 0.6), ("FP", 0.5), ("TP", 0.3), ("FN", None)]]
EXPECTED = {0.125: 0.25, 0.25: 0.25, 0.5: 0.5, 1.0: 0.5, 2.0: 0.75, 4.0: 0.75, 8.0: 0.75}


def test_froc_of_constructed_scores():
    curve = froc(ROWS, n_scans=2)
    assert curve.fp_per_scan.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.5, 1.5]
    assert curve.sensitivity.tolist() == [0.0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.75]
    assert {p["fp_per_scan"]: p["sensitivity"] for p in curve.operating_points} == EXPECTED
    assert curve.cpm == pytest.approx(3.75 / 7)


def test_tied_scores_enter_together_and_no_lesions_give_nan():
    curve = froc([{"status": "TP", "score": 0.5}, {"status": "FP", "score": 0.5}, {"status": "FN"}], n_scans=4)
    assert curve.fp_per_scan.tolist() == [0.0, 0.25] and curve.sensitivity.tolist() == [0.0, 0.5]
    assert np.isnan(froc([{"status": "FP", "score": 0.2}], n_scans=1).cpm)
    with pytest.raises(ValueError, match="at least one scan"):
        froc(ROWS, n_scans=0)


def _case(boxes: list[tuple[slice, slice, slice]]):
    label = np.ones((24, 24, 8), dtype=np.int32)
    instance = np.zeros_like(label)
    for number, box in enumerate(boxes, start=1):
        label[box], instance[box] = 3, number
    return make_pair(label, instance, np.diag([0.8, 0.9, 2.0, 1.0]))


def test_evaluate_writes_the_froc_from_the_predictions_scores(tmp_path):
    labels = ct_lesion_labels()
    boxes = [(slice(2, 6), slice(2, 6), slice(1, 4)), (slice(10, 14), slice(2, 6), slice(1, 4)),
             (slice(2, 6), slice(12, 16), slice(4, 7)), (slice(16, 20), slice(16, 20), slice(2, 5))]
    fake = [(slice(18, 21), slice(6, 9), slice(5, 7)), (slice(8, 11), slice(18, 21), slice(5, 7)),
            (slice(12, 15), slice(10, 13), slice(1, 3))]
    write_panoptic(_case(boxes[:2]), tmp_path / "gt" / "a", labels)
    write_panoptic(_case(boxes[2:]), tmp_path / "gt" / "b", labels)
    # case a: lesion 1 found (0.9), a false positive (0.8), lesion 2 found (0.7)
    write_panoptic(_case([boxes[0], fake[0], boxes[1]]), tmp_path / "pred" / "a", labels,
                   extra={"scores": {"1": 0.9, "2": 0.8, "3": 0.7}})
    # case b: two false positives (0.6, 0.5), lesion 4 found (0.3), lesion 3 missed
    write_panoptic(_case([fake[1], fake[2], boxes[3]]), tmp_path / "pred" / "b", labels,
                   extra={"scores": {"1": 0.6, "2": 0.5, "3": 0.3}})
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False, surface=False)
    paths = report.write(tmp_path / "report.csv")
    assert tmp_path / "report_froc.csv" in paths and (tmp_path / "report_froc.png").stat().st_size > 1000
    rows = list(csv.reader(open(tmp_path / "report_froc.csv")))
    assert rows[0] == ["fp_per_scan", "sensitivity"]
    assert {float(f): float(s) for f, s in rows[1:-1]} == EXPECTED
    assert rows[-1][0] == "cpm" and float(rows[-1][1]) == pytest.approx(3.75 / 7, abs=1e-5)
    instances = list(csv.DictReader(open(tmp_path / "report_instances.csv")))
    assert sorted(float(r["score"]) for r in instances if r["status"] != "FN") == [0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    _check_report_page(tmp_path / "report.html")


def _check_report_page(page) -> None:
    """The evaluation page embeds the FROC and the PQ-per-case bar chart, each a PNG that decodes."""
    import base64
    import io
    import re

    from PIL import Image

    images = dict(re.findall(r'<img alt="([^"]*)" title="[^"]*" src="data:image/png;base64,([^"]*)"', page.read_text()))
    assert set(images) == {"FROC", "PQ per case"}
    for data in images.values():
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.format == "PNG" and picture.size[0] >= 400
