"""A follow-up of DICOM time points: each gets a SEG and an SR, and a lesion has one TrackingUID in all of them."""

from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest

from medpanoptic.cli import main
from medpanoptic.io import read_scan, write_panoptic
from medpanoptic.io.dicom_sr import read_sr
from medpanoptic.io.dicom_write import write_dicom_series

from .clinical_phantoms import Ellipsoid, lesion_phantom

KEPT = Ellipsoid((-10.0, 4.0, 2.0), (6.0, 6.0, 4.0))
GONE = Ellipsoid((12.0, 6.0, 0.0), (5.0, 5.0, 4.0))
NEW = Ellipsoid((8.0, -10.0, 0.0), (5.0, 5.0, 4.0))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("track_dicom")
    for name, lesions in (("baseline", [KEPT, GONE]), ("followup", [NEW, KEPT])):
        phantom = lesion_phantom(lesions, shape=(64, 64, 20))
        write_dicom_series(phantom.image, tmp / f"{name}_dicom")
        pair = phantom.pair.clone()
        pair.affine = read_scan(tmp / f"{name}_dicom").affine
        write_panoptic(pair, tmp / name / name, phantom.label_set)
    assert main(["track", str(tmp / "baseline"), str(tmp / "followup"), "--registered", "--out", str(tmp / "out"),
                 "--scans", str(tmp / "baseline_dicom"), str(tmp / "followup_dicom")]) == 0
    return tmp / "out"


def _segments(path) -> dict[str, str]:
    return {str(s.TrackingID): str(s.TrackingUID) for s in pydicom.dcmread(path).SegmentSequence
            if str(s.TrackingID).startswith("lesion")}


def test_a_lesion_has_one_tracking_uid_in_every_seg_and_sr(tracked):
    segs = [_segments(tracked / f"{k:02d}_{name}_seg.dcm") for k, name in enumerate(["baseline", "followup"])]
    srs = [{r["tracking_id"]: r["tracking_uid"] for r in read_sr(tracked / f"{k:02d}_{name}_sr.dcm")}
           for k, name in enumerate(["baseline", "followup"])]
    assert set(segs[0]) == set(srs[0]) == {"lesion 1", "lesion 2"}
    assert set(segs[1]) == set(srs[1]) == {"lesion 1", "lesion 3"}  # lesion 2 vanished, lesion 3 is new
    kept = {d["lesion 1"] for d in segs + srs}
    assert len(kept) == 1
    assert len({segs[0]["lesion 2"], segs[1]["lesion 3"], *kept}) == 3
    assert srs[0]["lesion 2"] == segs[0]["lesion 2"] and srs[1]["lesion 3"] == segs[1]["lesion 3"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy is not installed (.ci/run installs it)")
@pytest.mark.parametrize("name", ["00_baseline_seg.dcm", "00_baseline_sr.dcm", "01_followup_seg.dcm", "01_followup_sr.dcm"])
def test_follow_up_seg_and_sr_pass_dciodvfy(tracked, name):
    out = subprocess.run(["dciodvfy", str(tracked / name)], capture_output=True, text=True)
    assert [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")] == []
