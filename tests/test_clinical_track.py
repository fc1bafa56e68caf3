"""Follow-up: a phantom baseline and a follow-up with known motion and changes get exactly those labels."""

from __future__ import annotations

import csv

import pytest

from medpanoptic.cli import main
from medpanoptic.clinical.track import recist_response
from medpanoptic.io import write_panoptic

from .clinical_phantoms import Ellipsoid, lesion_phantom, rotation_z

GROWING = Ellipsoid((-12.0, 4.0, 10.0), (6.0, 6.0, 6.0))
VANISHING = Ellipsoid((14.0, 6.0, 10.0), (6.0, 6.0, 6.0))
MERGING = [Ellipsoid((-10.0, -8.0, -12.0), (4.0, 4.0, 4.0)), Ellipsoid((0.0, -8.0, -12.0), (4.0, 4.0, 4.0))]
SPLITTING = Ellipsoid((8.0, -6.0, 0.0), (4.5, 10.0, 4.5))
STABLE = Ellipsoid((-6.0, 12.0, -2.0), (6.0, 6.0, 6.0))
BASELINE = [GROWING, VANISHING, *MERGING, SPLITTING, STABLE]  # lesion ids 1..6
FOLLOW_UP = [GROWING.scaled(1.3), Ellipsoid((-5.0, -8.0, -12.0), (9.0, 4.5, 4.5)),
             Ellipsoid((8.0, -13.0, 0.0), (4.0, 4.0, 4.0)), Ellipsoid((8.0, 1.0, 0.0), (4.0, 4.0, 4.0)),
             STABLE, Ellipsoid((14.0, 10.0, -12.0), (5.0, 5.0, 5.0))]
EXPECTED = {1: "grown", 2: "vanished", 3: "merged", 5: "split", 6: "stable", 7: "split", 8: "new"}
GRID = dict(shape=(80, 80, 40))


def _track(tmp_path, motion: dict, extra: list[str], baseline=BASELINE, follow=FOLLOW_UP) -> tuple[list[dict], list[dict]]:
    labels = None
    for name, lesions, move in (("baseline", baseline, {}), ("followup", follow, motion)):
        phantom = lesion_phantom(lesions, **GRID, **move)
        labels = phantom.label_set
        write_panoptic(phantom.pair, tmp_path / name / name, labels)
    code = main(["track", str(tmp_path / "baseline"), str(tmp_path / "followup"), "--out", str(tmp_path / "out"),
                 *(["--grown-mm", "3"] if baseline is BASELINE else []), *extra])  # BASELINE's lesion 1 grows by 3.6 mm
    assert code == 0
    read = lambda name: list(csv.DictReader(open(tmp_path / "out" / name)))  # noqa: E731
    return read("lesions.csv"), read("timepoints.csv")


def _check(lesions: list[dict], timepoints: list[dict]) -> None:
    later = [r for r in lesions if r["timepoint"] == "1"]
    assert {int(r["lesion_id"]): r["status"] for r in later} == EXPECTED
    assert next(r for r in later if r["status"] == "merged")["from_baseline_lesions"] == "3;4"
    assert {r["from_baseline_lesions"] for r in later if r["status"] == "split"} == {"5"}
    grown = next(r for r in later if r["lesion_id"] == "1")
    base = next(r for r in lesions if r["timepoint"] == "0" and r["lesion_id"] == "1")
    assert float(grown["recist_long_mm"]) / float(base["recist_long_mm"]) == pytest.approx(1.3, abs=0.12)
    uids = {(r["lesion_id"], r["tracking_uid"]) for r in lesions}
    assert len({u for _, u in uids}) == len({i for i, _ in uids}) == 8  # one TrackingUID per lesion, at every time point
    assert [r["response"] for r in timepoints] == ["baseline", "PD"]
    assert timepoints[1]["rule"] == "PD: 1 new lesion(s)"


def test_track_registered_results(tmp_path):
    _check(*_track(tmp_path, {}, ["--registered"]))
    table = list(csv.DictReader(open(tmp_path / "out" / "01_followup_instances.csv")))
    assert sorted(int(r["lesion_id"]) for r in table) == [1, 3, 5, 6, 7, 8]
    assert (tmp_path / "out" / "volumes.png").stat().st_size > 1000


def test_track_registers_a_moved_follow_up(tmp_path):
    motion = {"rotation": rotation_z(6.0), "translation": (4.0, -3.0, 2.0)}
    _check(*_track(tmp_path, motion, []))


def test_track_without_registration_of_a_moved_follow_up_mislabels(tmp_path):
    motion = {"rotation": rotation_z(6.0), "translation": (9.0, -7.0, 4.0)}
    lesions, _ = _track(tmp_path, motion, ["--registered", "--max-distance-mm", "0"])
    later = {int(r["lesion_id"]): r["status"] for r in lesions if r["timepoint"] == "1"}
    assert later != EXPECTED  # the registration is what makes the labels right


SMALL = Ellipsoid((-10.0, 4.0, 4.0), (4.0, 4.0, 4.0))  # long axis 8 mm


@pytest.mark.parametrize("extra, status", [([], "stable"), (["--grown-mm", "0"], "grown")])
def test_small_lesion_growing_by_a_fifth_but_under_5_mm_is_stable(tmp_path, extra, status):
    lesions, _ = _track(tmp_path, {}, ["--registered", *extra], baseline=[SMALL], follow=[SMALL.scaled(1.4)])
    before, after = (next(r for r in lesions if r["timepoint"] == t) for t in ("0", "1"))
    long_before, long_after = float(before["recist_long_mm"]), float(after["recist_long_mm"])
    assert long_after >= 1.2 * long_before and long_after - long_before < 5.0  # grown by RECIST's fraction only
    assert after["status"] == status


@pytest.mark.parametrize("sums, new, present, response, rule", [
    ([50.0, 30.0], 0, 2, "PR", "PR: sum of diameters 30.0 mm is -40% from baseline 50.0 mm (<= -30%)"),
    ([50.0, 40.0], 0, 2, "SD", "SD: sum of diameters 40.0 mm is -20% from baseline"),
    ([50.0, 30.0, 37.0], 0, 2, "PD", "PD: sum of diameters 37.0 mm is +23% and +7.0 mm over the nadir 30.0 mm"),
    ([20.0, 16.0, 19.5], 0, 1, "SD", "SD: sum of diameters 19.5 mm"),  # +22% over the nadir but only +3.5 mm
    ([50.0, 0.0], 0, 0, "CR", "CR: every lesion has disappeared"),
    ([50.0, 20.0], 2, 3, "PD", "PD: 2 new lesion(s)"),
])
def test_recist_response_rules(sums, new, present, response, rule):
    got, why = recist_response(sums, new, present)
    assert got == response and why.startswith(rule)


def test_track_refuses_a_single_time_point(tmp_path, capsys):
    phantom = lesion_phantom([STABLE], shape=(40, 40, 20))
    write_panoptic(phantom.pair, tmp_path / "only", phantom.label_set)
    assert main(["track", str(tmp_path / "only"), "--out", str(tmp_path / "out")]) == 2
    assert "track needs a baseline and at least one follow-up result" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
