"""evaluate_folders reads every case with the label set given or stored with it, and never guesses one (#13)."""

import csv

import numpy as np
import pytest

from medpanoptic.cli import main
from medpanoptic.errors import LabelSetError
from medpanoptic.io import write_panoptic
from medpanoptic.io.atomic import atomic_write_json
from medpanoptic.io.nifti import write_nifti
from medpanoptic.labels import LabelSet
from medpanoptic.metrics.evaluate import evaluate_folders
from medpanoptic.synthetic import ct_phantom


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(shape=(32, 32, 16), n_lesions=2, seed=1)


def _label_map(folder, name, ph):
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(folder / f"{name}.nii.gz", ph.pair[0].numpy().astype(np.uint8), ph.pair.affine.numpy())


def test_cases_with_different_stored_label_sets_are_refused_by_name(phantom, tmp_path):
    renamed = LabelSet.from_dict({**phantom.label_set.to_dict(), "name": "renamed"})
    for folder in ("gt", "pred"):
        write_panoptic(phantom.pair, tmp_path / folder / "a", phantom.label_set)
        write_panoptic(phantom.pair, tmp_path / folder / "b", renamed)
    with pytest.raises(LabelSetError, match=r"cases 'a' \(.*gt/a\) and 'b' \(.*gt/b\) store different label sets .*"
                                            r"pass the dataset's label set \(label_set=\.\.\., --labels labels.json\)"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False, surface=False)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", phantom.label_set, progress=False, surface=False)
    assert [r["case"] for r in report.cases] == ["a", "b"] and all(r["pq"] == 1.0 for r in report.cases)
    assert report.label_set == phantom.label_set


def test_a_label_map_case_without_a_label_set_is_an_error_row_not_an_unknown_class(phantom, tmp_path, capsys):
    _label_map(tmp_path / "gt", "a", phantom)
    write_panoptic(phantom.pair, tmp_path / "pred" / "a", phantom.label_set)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False, surface=False)
    assert report.cases == [] and report.label_set is None
    assert [e["case"] for e in report.errors] == ["a"]
    assert "a.nii.gz: a label map without a label set" in report.errors[0]["error"]
    assert "--labels labels.json" in report.errors[0]["error"]
    atomic_write_json(tmp_path / "labels.json", phantom.label_set.to_dict())
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--labels", str(tmp_path / "labels.json"), "--out", str(tmp_path / "r.csv")])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [(r["case"], float(r["pq"])) for r in rows] == [("a", 1.0)]


def test_each_case_is_read_with_its_own_stored_label_set(phantom, tmp_path):
    """Without a given label set, a later case is not read with the first case's: a prediction that is a
    label map takes its case's ground-truth label set; a ground truth that stores none is an error row."""
    write_panoptic(phantom.pair, tmp_path / "gt" / "a", phantom.label_set)
    _label_map(tmp_path / "pred", "a", phantom)
    _label_map(tmp_path / "gt", "b", phantom)
    write_panoptic(phantom.pair, tmp_path / "pred" / "b", phantom.label_set)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False, surface=False)
    assert [(r["case"], r["pq"]) for r in report.cases] == [("a", 1.0)]
    assert [e["case"] for e in report.errors] == ["b"] and "a label map without a label set" in report.errors[0]["error"]
    assert report.label_set == phantom.label_set
