"""Viewer exports proven by real readers: dciodvfy/dcentvfy, dcmqi, highdicom, slicerio, SimpleITK."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medpanoptic.errors import InputError
from medpanoptic.export import export
from medpanoptic.io import read_panoptic, read_scan, write_dicom_series
from medpanoptic.io.dicom_seg import write_dicom_seg
from medpanoptic.io.itk import sitk_from_array
from medpanoptic.io.segments import segment_map
from medpanoptic.io.seg_nrrd import write_seg_nrrd
from medpanoptic.io.table import instance_table

from .conftest import lps_geometry
from .dcmqi import dcmqi_seg

needs = {tool: shutil.which(tool) for tool in ("dciodvfy", "dcentvfy", "segimage2itkimage", "itkimage2segimage")}


def requires(tool):
    return pytest.mark.skipif(needs[tool] is None, reason=f"{tool} is not installed (.ci/run installs it)")


@pytest.fixture(scope="module", params=["sorted", "reversed"])
def dicom_case(request, oblique_ct, tmp_path_factory):
    """The oblique phantom as a CT series (files and instance numbers in slice order, or reversed), and its truth on that grid."""
    folder = tmp_path_factory.mktemp(f"ct_{request.param}")
    files = write_dicom_series(oblique_ct.image, folder)
    if request.param == "reversed":
        n = len(files)
        for k, f in enumerate(files):
            ds = pydicom.dcmread(f)
            ds.InstanceNumber = n - k
            f.unlink()
            ds.save_as(folder / f"IM{n - k:04d}.dcm")
    scan = read_scan(folder)
    truth = oblique_ct.pair.clone()
    truth.affine = scan.affine
    return folder, scan, truth, oblique_ct.label_set


def _dciodvfy_errors(path):
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return out.returncode, [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _dcmqi_on_source_grid(seg_path, scan, tmp_path):
    """dcmqi's segimage2itkimage, merged, resampled (nearest) onto the source grid: segment numbers per voxel."""
    out = tmp_path / "dcmqi"
    out.mkdir(exist_ok=True)
    run = subprocess.run(["segimage2itkimage", "--inputDICOM", str(seg_path), "--outputDirectory", str(out),
                          "-t", "nii", "--mergeSegments"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    image = sitk.ReadImage(str(out / "1.nii.gz"))
    meta = json.loads((out / "meta.json").read_text())
    reference = sitk_from_array(np.zeros(scan.shape[1:], np.uint8), scan.affine.numpy())
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0), meta


@requires("dciodvfy")
@requires("dcentvfy")
@requires("segimage2itkimage")
def test_binary_seg_is_valid_and_read_right_by_dcmqi_and_highdicom(dicom_case, tmp_path):
    folder, scan, truth, labels = dicom_case
    seg = write_dicom_seg(truth, labels, scan, tmp_path / "seg.dcm")
    code, errors = _dciodvfy_errors(seg)
    assert code == 0 and errors == []
    entity = subprocess.run(["dcentvfy", *scan.meta["source_files"], str(seg)], capture_output=True, text=True)
    assert entity.returncode == 0, entity.stdout + entity.stderr
    numbers, segments = segment_map(truth, labels)
    dcmqi_numbers, meta = _dcmqi_on_source_grid(seg, scan, tmp_path)
    np.testing.assert_array_equal(dcmqi_numbers, numbers)
    names = {a["labelID"]: a["SegmentLabel"] for group in meta["segmentAttributes"] for a in group}
    assert names == {s.number: s.name for s in segments}
    back, _ = read_panoptic(seg, label_set=labels)  # highdicom underneath
    np.testing.assert_array_equal(back.numpy(), truth.numpy())
    np.testing.assert_allclose(back.affine.numpy(), scan.affine.numpy(), atol=1e-4)
    # the frames reference the source slices
    ds = pydicom.dcmread(seg)
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(scan.meta["sop_instance_uids"])
    lesion = next(item for item in ds.SegmentSequence if item.SegmentLabel == "Lesion 1")
    assert lesion.TrackingID == "lesion 1" and lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medpanoptic"


@requires("segimage2itkimage")
def test_labelmap_seg_round_trips(dicom_case, tmp_path):
    folder, scan, truth, labels = dicom_case
    seg = write_dicom_seg(truth, labels, scan, tmp_path / "labelmap.dcm", segmentation_type="LABELMAP")
    assert pydicom.dcmread(seg, stop_before_pixels=True).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    numbers, _ = segment_map(truth, labels)
    dcmqi_numbers, _ = _dcmqi_on_source_grid(seg, scan, tmp_path)
    np.testing.assert_array_equal(dcmqi_numbers, numbers)
    back, _ = read_panoptic(seg, label_set=labels)
    np.testing.assert_array_equal(back.numpy(), truth.numpy())


@requires("dciodvfy")
@requires("dcentvfy")
@requires("segimage2itkimage")
def test_damaged_seg_is_caught_by_the_same_checks(dicom_case, tmp_path):
    folder, scan, truth, labels = dicom_case
    seg = write_dicom_seg(truth, labels, scan, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(seg)
    del ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence
    ds.save_as(tmp_path / "no_type.dcm")
    code, errors = _dciodvfy_errors(tmp_path / "no_type.dcm")
    assert code != 0 and any("SegmentedPropertyTypeCodeSequence" in e for e in errors)
    ds = pydicom.dcmread(seg)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(tmp_path / "other_patient.dcm")
    entity = subprocess.run(["dcentvfy", *scan.meta["source_files"], str(tmp_path / "other_patient.dcm")],
                            capture_output=True, text=True)
    assert entity.returncode != 0 or "Error" in entity.stdout + entity.stderr
    raw = seg.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) // 2])
    run = subprocess.run(["segimage2itkimage", "--inputDICOM", str(tmp_path / "cut.dcm"), "--outputDirectory",
                          str(tmp_path), "-t", "nii", "--mergeSegments"], capture_output=True, text=True)
    assert run.returncode != 0
    with pytest.raises(InputError, match="cut.dcm: not a (readable|valid) DICOM SEG|cut.dcm: the SEG's pixel data cannot be decoded"):
        read_panoptic(tmp_path / "cut.dcm", label_set=labels)


@requires("itkimage2segimage")
def test_seg_made_by_dcmqi_maps_back(dicom_case, tmp_path):
    folder, scan, truth, labels = dicom_case
    out, _ = dcmqi_seg(truth, labels, scan, folder, tmp_path / "dcmqi_seg.dcm")
    back, _ = read_panoptic(out, label_set=labels)
    np.testing.assert_array_equal(back.numpy(), truth.numpy())


def test_seg_nrrd_read_by_slicerio_and_sitk(oblique_ct, tmp_path):
    import slicerio

    path = write_seg_nrrd(oblique_ct.pair, oblique_ct.label_set, tmp_path / "case.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    numbers, segments = segment_map(oblique_ct.pair, oblique_ct.label_set)
    np.testing.assert_array_equal(seg["voxels"], numbers)
    origin, spacing, direction = lps_geometry(oblique_ct.pair.affine)
    np.testing.assert_allclose(seg["ijkToLPS"][:3, 3], origin, atol=1e-5)
    np.testing.assert_allclose(seg["ijkToLPS"][:3, :3], direction * spacing, atol=1e-5)
    by_name = {s["name"]: s for s in seg["segments"]}
    lesion = by_name["Lesion 2"]
    assert lesion["tags"]["medpanoptic.instance_id"] == "2" and lesion["tags"]["medpanoptic.class_id"] == "3"
    assert lesion["terminology"]["type"] == ["SCT", "52988006", "Lesion"]
    np.testing.assert_array_equal(slicerio.extract_segments(seg, [("Lesion 2", 1)])["voxels"], (oblique_ct.pair[1].numpy() == 2).astype(np.uint8))
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), direction.ravel(), atol=1e-5)
    back, _ = read_panoptic(path, label_set=oblique_ct.label_set)
    np.testing.assert_array_equal(back.numpy(), oblique_ct.pair.numpy())


def test_foreign_segments_need_a_mapping(oblique_ct, tmp_path):
    import slicerio

    path = write_seg_nrrd(oblique_ct.pair, oblique_ct.label_set, tmp_path / "case.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    for s in seg["segments"]:  # as if drawn in Slicer by hand: no tags, no terminology, free names
        s.pop("tags", None)
        s.pop("terminology", None)
        s["name"] = "Tumour" if s["name"].startswith("Lesion") else s["name"]
    slicerio.write_segmentation(str(tmp_path / "hand.seg.nrrd"), seg)
    with pytest.raises(Exception, match="matches no class.*mapping"):
        read_panoptic(tmp_path / "hand.seg.nrrd", label_set=oblique_ct.label_set)
    back, _ = read_panoptic(tmp_path / "hand.seg.nrrd", label_set=oblique_ct.label_set, segment_mapping={"Tumour": 3})
    np.testing.assert_array_equal(back[0].numpy(), oblique_ct.pair[0].numpy())
    assert int(back[1].max()) == oblique_ct.n_instances  # fresh instance ids, one per segment


def test_instance_table_and_labelmap(oblique_ct, tmp_path):
    written = export(oblique_ct.pair, oblique_ct.label_set, tmp_path / "case", ["labelmap", "table"], source=oblique_ct.image,
                     scores={1: 0.9})
    rows = list(csv.DictReader(open(written["table_csv"])))
    assert len(rows) == oblique_ct.n_instances
    first = instance_table(oblique_ct.pair, oblique_ct.label_set, oblique_ct.image)[0]
    mask = oblique_ct.pair[1].numpy() == 1
    assert first["mean_intensity"] == pytest.approx(float(oblique_ct.image[0].numpy()[mask].mean()), rel=1e-5)
    ijk = np.argwhere(mask)
    assert first["bbox_min_voxel"] == ijk.min(0).tolist() and first["bbox_stop_voxel"] == (ijk.max(0) + 1).tolist()
    assert "bbox_max_voxel" not in first and {"bbox_stop_voxel_i", "bbox_stop_voxel_k"} <= set(rows[0])
    assert float(rows[0]["score"]) == 0.9 and rows[1]["score"] == "nan"
    numbers = read_scan(written["labelmap"])
    expected, segments = segment_map(oblique_ct.pair, oblique_ct.label_set)
    np.testing.assert_array_equal(numbers[0].numpy(), expected)
    lines = written["itksnap"].read_text().splitlines()
    assert any('"Lesion 1"' in line for line in lines) and len([l for l in lines if not l.startswith("#")]) == len(segments) + 1
    assert written["slicer"].read_text().count("\n") == len(segments) + 3


def test_dicom_seg_refuses_a_non_dicom_source(oblique_ct, tmp_path):
    with pytest.raises(InputError, match="a DICOM SEG needs a DICOM source scan; this one is "):
        write_dicom_seg(oblique_ct.pair, oblique_ct.label_set, oblique_ct.image, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_export_cli(dicom_case, tmp_path):
    from medpanoptic.cli import main
    from medpanoptic.io import write_panoptic

    folder, scan, truth, labels = dicom_case
    write_panoptic(truth, tmp_path / "case", labels)
    assert main(["export", str(tmp_path / "case"), "--source", str(folder), "--to", "dicom-seg,seg-nrrd,labelmap,table"]) == 0
    # every file read back holds the truth: the pair on the scan's grid, segment numbers, one row per lesion
    for name in ("case_seg.dcm", "case.seg.nrrd"):
        back, back_labels = read_panoptic(tmp_path / name, label_set=labels)
        np.testing.assert_array_equal(back.numpy(), truth.numpy())
        np.testing.assert_allclose(back.affine.numpy(), scan.affine.numpy(), atol=1e-4)
    numbers = read_scan(tmp_path / "case_segments.nii.gz")
    np.testing.assert_array_equal(numbers[0].numpy(), segment_map(truth, labels)[0])
    np.testing.assert_allclose(numbers.affine.numpy(), scan.affine.numpy(), atol=1e-4)
    with open(tmp_path / "case_instances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["instance"]) for r in rows) == sorted(set(truth[1].unique().tolist()) - {0})
    assert main(["export", str(tmp_path / "case"), "--to", "dicom-seg"]) == 2


def test_segment_numbers_skip_absent_stuff():
    from medpanoptic.labels import ct_lesion_labels

    labels = ct_lesion_labels()  # soft tissue 1, liver 2 (stuff), lesion 3 (thing)
    pair = np.stack([np.array([[0, 1, 3, 3, 1]]), np.array([[0, 0, 7, 7, 0]])])  # no liver
    numbers, segments = segment_map(pair, labels)
    assert [(s.number, s.label, s.instance, s.name) for s in segments] == [(1, 1, 0, "Soft tissue"), (2, 3, 7, "Lesion 7")]
    assert numbers.tolist() == [[0, 1, 2, 2, 1]]
