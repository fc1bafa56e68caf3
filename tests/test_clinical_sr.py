"""DICOM SR (TID 1500) of the lesions: dciodvfy-clean, read back by highdicom with the table's values."""

from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest

from medpanoptic.cli import main
from medpanoptic.io.dicom_sr import read_sr
from medpanoptic.io import read_scan, write_panoptic
from medpanoptic.io.dicom_write import write_dicom_series
from medpanoptic.io.table import instance_table

from .clinical_phantoms import Ellipsoid, lesion_phantom, rotation_z

LESIONS = [Ellipsoid((-10.0, 6.0, 4.0), (10.0, 6.0, 4.0), rotation_z(30.0)), Ellipsoid((14.0, 8.0, -4.0), (6.0, 4.0, 9.0))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A DICOM series of a two-lesion phantom, its result, and `medpanoptic export --to sr` run on them."""
    tmp = tmp_path_factory.mktemp("sr")
    phantom = lesion_phantom(LESIONS, shape=(56, 56, 24))
    write_dicom_series(phantom.image, tmp / "dicom")
    scan = read_scan(tmp / "dicom")
    pair = phantom.pair.clone()
    pair.affine = scan.affine
    write_panoptic(pair, tmp / "case", phantom.label_set)
    assert main(["export", str(tmp / "case"), "--source", str(tmp / "dicom"), "--to", "sr"]) == 0
    return tmp, scan, instance_table(pair, phantom.label_set, scan)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy is not installed (.ci/run installs it)")
def test_sr_passes_dciodvfy(exported):
    tmp, _, _ = exported
    out = subprocess.run(["dciodvfy", str(tmp / "case_sr.dcm")], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_sr_reads_back_with_the_tables_values_and_references(exported):
    tmp, scan, rows = exported
    seg = pydicom.dcmread(tmp / "case_seg.dcm")
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    lesions = read_sr(tmp / "case_sr.dcm")
    assert len(lesions) == len(rows) == 2
    for lesion, row in zip(lesions, rows):
        segment = segments[lesion["segment_number"]]
        assert segment.TrackingID == f"lesion {row['instance']}"
        assert lesion["tracking_uid"] == segment.TrackingUID and lesion["tracking_id"] == segment.TrackingID
        assert lesion["seg_sop_instance_uid"] == seg.SOPInstanceUID
        assert lesion["source_series_uid"] == scan.meta["series_instance_uid"]
        for key in ("volume_mm3", "recist_long_mm", "recist_short_mm", "max_diameter_3d_mm"):
            assert lesion[key] == pytest.approx(row[key], rel=1e-6)
    assert [lesion["finding_sites"] for lesion in lesions] == [["10200004"], ["87784001"]]  # liver, soft tissue
