"""DICOM SEGs from highdicom, dcmqi and ourselves read onto the full grid of the series they segment.

Every reading is compared voxel for voxel with highdicom's own (`get_pixels_by_source_instance`,
which places frames by the source instances they reference, not by geometry).
"""

import copy
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medpanoptic.errors import GeometryError, InputError
from medpanoptic.io import read_panoptic, read_scan, write_dicom_series, write_panoptic
from medpanoptic.io.dicom_seg import write_dicom_seg
from medpanoptic.export import export
from medpanoptic.io.panoptic import source_identity
from medpanoptic.io.scan import make_meta_tensor
from medpanoptic.io.segments import segment_map
from medpanoptic.synthetic import ct_phantom

from .conftest import ANISOTROPIC, OBLIQUE
from .dcmqi import dcmqi_seg

SHAPE = (40, 36, 12)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A small oblique, anisotropic CT series and a result on it: a one-slice lesion (slice 2),
    a lesion on slices 6-7 and liver on 5-8 — the other 6 slices hold nothing."""
    phantom = ct_phantom(shape=SHAPE, spacing=ANISOTROPIC, direction=OBLIQUE, n_lesions=1, seed=3,
                         lesion_radius_mm=(2.0, 4.0))
    folder = tmp_path_factory.mktemp("ct")
    write_dicom_series(phantom.image, folder, patient_id="PATIENT-A")
    scan = read_scan(folder)
    values = np.zeros((2, *SHAPE), np.int32)
    values[0, 10:30, 4:30, 5:9] = 2
    values[:, 5:9, 6:10, 2] = [[[3]], [[1]]]
    values[:, 20:25, 10:14, 6:8] = [[[[3]]], [[[2]]]]
    truth = make_meta_tensor(values, scan.affine.numpy(), source_identity(scan.meta))
    return folder, scan, truth, phantom.label_set


def _highdicom_numbers(seg_path, scan):
    """highdicom's own reading: segment numbers on the source slices, as (column, row, slice)."""
    seg = hd.seg.segread(seg_path)
    pixels = seg.get_pixels_by_source_instance(scan.meta["sop_instance_uids"], combine_segments=True, relabel=False,
                                               assert_missing_frames_are_empty=True, ignore_spatial_locations=True)  # dcmqi references only slices it has frames on
    return pixels.transpose(2, 1, 0)


def _numbers_of(pair, seg_path):
    """Our reading as segment numbers, through the segment labels the SEG gives each (label, instance)."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    out = np.zeros(pair.shape[1:], np.int64)
    numbers, segments = segment_map(pair, _labels_of(pair))
    by_name = {str(s.SegmentLabel): int(s.SegmentNumber) for s in ds.SegmentSequence}
    for s in segments:
        out[numbers == s.number] = by_name[s.name]
    return out


def _labels_of(pair):
    from medpanoptic.labels import ct_lesion_labels

    return ct_lesion_labels()


def _our_seg(series, tmp_path, name="seg.dcm", **kwargs):
    folder, scan, truth, labels = series
    return write_dicom_seg(truth, labels, scan, tmp_path / name, **kwargs)


def test_binary_seg_omitting_empty_frames_reads_onto_the_full_grid(series, tmp_path):
    folder, scan, truth, labels = series
    seg = _our_seg(series, tmp_path)
    assert pydicom.dcmread(seg, stop_before_pixels=True).NumberOfFrames == 1 + 2 + 4  # empty frames omitted
    for reference in (folder, scan):
        back, _ = read_panoptic(seg, label_set=labels, reference=reference)
        assert tuple(back.shape[1:]) == SHAPE
        np.testing.assert_array_equal(back.numpy(), truth.numpy())
        np.testing.assert_allclose(back.affine.numpy(), scan.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(_numbers_of(back, seg), _highdicom_numbers(seg, scan))
    with pytest.raises(InputError, match=r"frames on 5 of the 12 slices .* pass the source series"):
        read_panoptic(seg, label_set=labels)


def test_reference_of_another_frame_of_reference_is_refused(series, tmp_path):
    folder, scan, truth, labels = series
    seg = _our_seg(series, tmp_path)
    other = scan.clone()
    other.meta["frame_of_reference_uid"] = "1.2.3.4"
    with pytest.raises(GeometryError, match="frame of reference .* is not that of the reference scan"):
        read_panoptic(seg, label_set=labels, reference=other)


def test_evaluate_accepts_the_seg_we_write(series, tmp_path):
    from medpanoptic.cli import main
    from medpanoptic.metrics.evaluate import evaluate_folders

    folder, scan, truth, labels = series
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write_panoptic(truth, tmp_path / "gt" / "case1", labels)
    write_dicom_seg(truth, labels, scan, tmp_path / "pred" / "case1_seg.dcm")
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels, progress=False, surface=False)
    assert report.errors == [] and report.quality.summary()["pq"] == pytest.approx(1.0)
    (tmp_path / "sources").mkdir()
    shutil.copytree(folder, tmp_path / "sources" / "case1")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--no-surface",
                 "--source", str(tmp_path / "sources"), "--out", str(tmp_path / "report.csv")]) == 0


def test_seg_without_spacing_between_slices_takes_the_series_spacing(series, tmp_path):
    """Frames on slices 2 and 6-7 only: guessing the step from the frames present gave 4 x 2 mm."""
    folder, scan, truth, labels = series
    lesions = truth.clone()
    lesions[:, lesions[1] == 0] = 0
    seg = write_dicom_seg(lesions, labels, scan, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(seg)
    del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices
    ds.save_as(tmp_path / "no_spacing.dcm")
    back, _ = read_panoptic(tmp_path / "no_spacing.dcm", label_set=labels, reference=folder)
    np.testing.assert_array_equal(back.numpy(), lesions.numpy())
    np.testing.assert_array_equal(_numbers_of(back, seg), _highdicom_numbers(tmp_path / "no_spacing.dcm", scan))
    with pytest.raises(InputError, match="frames on 3 of the 12 slices"):
        read_panoptic(tmp_path / "no_spacing.dcm", label_set=labels)


def test_seg_with_every_frame_records_its_own_grid(series, tmp_path):
    folder, scan, truth, labels = series
    full = truth.clone()
    full[0][full[0] == 0] = 1  # soft tissue everywhere else: every slice has a frame
    seg = write_dicom_seg(full, labels, scan, tmp_path / "seg.dcm")
    back, _ = read_panoptic(seg, label_set=labels)
    np.testing.assert_array_equal(back.numpy(), full.numpy())
    np.testing.assert_allclose(back.affine.numpy(), scan.affine.numpy(), atol=1e-4)


def test_seg_recognised_by_content_whatever_its_name(series, tmp_path):
    folder, scan, truth, labels = series
    seg = _our_seg(series, tmp_path)
    shutil.copy(seg, tmp_path / "SEGEXPORT")  # PACS export: no suffix
    shutil.copy(seg, tmp_path / "label.seg")  # dcmqi's name
    ds = pydicom.dcmread(seg)
    bare = tmp_path / "bare"  # no preamble, no file meta: a dataset as some archives store it
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    pydicom.dcmwrite(bare, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert bare.read_bytes()[:2] == b"\x08\x00" and bare.read_bytes()[128:132] != b"DICM"
    for path in (tmp_path / "SEGEXPORT", tmp_path / "label.seg", bare):
        back, _ = read_panoptic(path, label_set=labels, reference=folder)
        np.testing.assert_array_equal(back.numpy(), truth.numpy())
        with pytest.raises(InputError, match=r"this is a DICOM Segmentation \(a result, not a scan\): read it with read_panoptic"):
            read_scan(path)


def test_labelmap_background_segment_maps_to_zero(series, tmp_path):
    folder, scan, truth, labels = series
    seg = _our_seg(series, tmp_path, "labelmap.dcm", segmentation_type="LABELMAP")
    names = [str(s.SegmentLabel) for s in pydicom.dcmread(seg, stop_before_pixels=True).SegmentSequence]
    assert names[0] == "Background"
    back, _ = read_panoptic(seg, label_set=labels, reference=folder, segment_mapping={"Background": 0})
    np.testing.assert_array_equal(back.numpy(), truth.numpy())
    np.testing.assert_array_equal(_numbers_of(back, seg), _highdicom_numbers(seg, scan))
    lesion_free, _ = read_panoptic(seg, label_set=labels, reference=folder, segment_mapping={"Lesion 1": 0})
    assert not (lesion_free[1].numpy() == 1).any() and (lesion_free[1].numpy() == 2).any()


def _highdicom_seg(scan, pixels, kind, names, path, **kwargs):
    """A SEG made by highdicom directly: `pixels` (slice, row, column[, segment]) on the source slices."""
    algorithm = hd.AlgorithmIdentificationSequence(name="test", family=codes.cid7162.ArtificialIntelligence, version="1")
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_id=name.lower(), tracking_uid=generate_uid())
        for n, name in enumerate(names, start=1)]
    sources = [pydicom.dcmread(f) for f in scan.meta["source_files"]]
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels, segmentation_type=kind,
                              segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=5,
                              sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test",
                              manufacturer_model_name="test", software_versions="1", device_serial_number="1", **kwargs)
    seg.save_as(path)
    return path


def test_fractional_seg_needs_a_threshold(series, tmp_path):
    folder, scan, truth, labels = series
    rng = np.random.default_rng(0)
    fractions = np.zeros((SHAPE[2], SHAPE[1], SHAPE[0]), np.float32)
    fractions[6:8, 10:14, 20:25] = rng.uniform(0.0, 1.0, size=(2, 4, 5)).astype(np.float32)
    path = _highdicom_seg(scan, fractions, "FRACTIONAL", ["Lesion 4"], tmp_path / "fractional.dcm", max_fractional_value=255)
    with pytest.raises(InputError, match="a FRACTIONAL SEG .* pass fractional_threshold"):
        read_panoptic(path, label_set=labels, reference=folder)
    back, _ = read_panoptic(path, label_set=labels, reference=folder, fractional_threshold=0.5)
    theirs = hd.seg.segread(path).get_pixels_by_source_instance(scan.meta["sop_instance_uids"], rescale_fractional=True)
    expected = (theirs[..., 0] >= 0.5).transpose(2, 1, 0)
    assert expected.sum() > 0
    np.testing.assert_array_equal(back[1].numpy() == 4, expected)
    np.testing.assert_array_equal(back[0].numpy(), np.where(expected, 3, 0))


def test_overlapping_binary_segments_are_named_or_resolved(series, tmp_path):
    folder, scan, truth, labels = series
    masks = np.zeros((SHAPE[2], SHAPE[1], SHAPE[0], 2), np.uint8)
    masks[6:8, 10:14, 20:25, 0] = 1   # 40 voxels
    masks[7:9, 12:20, 22:30, 1] = 1   # 128 voxels, overlapping the first on slice 7
    path = _highdicom_seg(scan, masks, "BINARY", ["Lesion 1", "Lesion 2"], tmp_path / "overlap.dcm")
    with pytest.raises(InputError, match=r"segments 1 'Lesion 1' and 2 'Lesion 2' overlap .* overlap='first' or 'largest'"):
        read_panoptic(path, label_set=labels, reference=folder)
    both = (masks[..., 0] & masks[..., 1]).transpose(2, 1, 0).astype(bool)
    assert both.sum() == 1 * 2 * 3
    first, _ = read_panoptic(path, label_set=labels, reference=folder, overlap="first")
    largest, _ = read_panoptic(path, label_set=labels, reference=folder, overlap="largest")
    assert set(np.unique(first[1].numpy()[both])) == {1} and set(np.unique(largest[1].numpy()[both])) == {2}
    for pair in (first, largest):
        np.testing.assert_array_equal(pair[1].numpy() > 0, masks.any(axis=3).transpose(2, 1, 0))
        ours_1 = (pair[1].numpy() == 1) & ~both
        np.testing.assert_array_equal(ours_1, masks[..., 0].transpose(2, 1, 0).astype(bool) & ~both)


@pytest.mark.skipif(shutil.which("itkimage2segimage") is None, reason="dcmqi's itkimage2segimage is not installed")
def test_seg_made_by_dcmqi_named_dot_seg(series, tmp_path):
    folder, scan, truth, labels = series
    out, segments = dcmqi_seg(truth, labels, scan, folder, tmp_path / "label.seg")
    assert pydicom.dcmread(out, stop_before_pixels=True).NumberOfFrames < SHAPE[2] * len(segments)  # empty frames skipped
    back, _ = read_panoptic(out, label_set=labels, reference=folder)
    np.testing.assert_array_equal(back.numpy(), truth.numpy())
    np.testing.assert_array_equal(_numbers_of(back, out), _highdicom_numbers(out, scan))
    with pytest.raises(InputError, match="label.seg: the SEG's frames are not one complete stack .* pass the source series"):
        read_panoptic(out, label_set=labels)  # dcmqi references only the slices it has frames on (2 and 5-8)


def test_seg_without_patient_planes_or_on_a_slide_is_refused_by_name(series, tmp_path):
    folder, scan, truth, labels = series
    ds = pydicom.dcmread(_our_seg(series, tmp_path))
    projection = copy.deepcopy(ds)
    del projection.FrameOfReferenceUID
    for frame in projection.PerFrameFunctionalGroupsSequence:
        del frame.PlanePositionSequence
    projection.save_as(tmp_path / "cr_seg.dcm")
    with pytest.raises(InputError, match="cr_seg.dcm: a SEG without patient-space planes .* projection image"):
        read_panoptic(tmp_path / "cr_seg.dcm", label_set=labels, reference=folder)
    slide = copy.deepcopy(ds)
    slide.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    slide.save_as(tmp_path / "sm_seg.dcm")
    with pytest.raises(InputError, match="sm_seg.dcm: a slide-microscopy SEG: .* slide coordinates, not in patient space"):
        read_panoptic(tmp_path / "sm_seg.dcm", label_set=labels, reference=folder)


def test_enhanced_mr_with_per_frame_pixel_measures(series, tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    folder, scan, truth, labels = series
    slices = [pydicom.dcmread(f) for f in scan.meta["source_files"]]
    for ds in slices:  # the CT slices as MR ones
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
        ds.Modality = "MR"
        del ds.KVP, ds.RescaleType
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.MagneticFieldStrength = 10, 500, 1.5
    enhanced = LegacyConvertedEnhancedMRImage(slices, generate_uid(), 2, generate_uid(), 1)
    measures = enhanced.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    del enhanced.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    for frame in enhanced.PerFrameFunctionalGroupsSequence:  # as Philips writes them
        frame.PixelMeasuresSequence = copy.deepcopy(measures)
    enhanced.save_as(tmp_path / "enhanced_mr.dcm")
    mr = read_scan(tmp_path / "enhanced_mr.dcm")
    pair = make_meta_tensor(truth.numpy(), mr.affine.numpy(), {})
    written = export(pair, labels, tmp_path / "case", ["dicom-seg"], source=mr)
    back, _ = read_panoptic(written["dicom-seg"], label_set=labels, reference=mr)
    np.testing.assert_array_equal(back.numpy(), truth.numpy())


def test_empty_specific_character_set_is_the_default_repertoire(series, tmp_path):
    folder, scan, truth, labels = series
    copy_folder = tmp_path / "ct"
    copy_folder.mkdir()
    for f in scan.meta["source_files"]:
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = ""
        ds.save_as(copy_folder / Path(f).name)
    source = read_scan(copy_folder)
    written = export(truth, labels, tmp_path / "case", ["dicom-seg"], source=source)
    back, _ = read_panoptic(written["dicom-seg"], label_set=labels, reference=source)
    np.testing.assert_array_equal(back.numpy(), truth.numpy())


def test_export_refuses_another_patients_series(series, tmp_path, capsys):
    from medpanoptic.cli import main

    folder, scan, truth, labels = series
    other = tmp_path / "other"
    write_dicom_series(scan, other, patient_id="PATIENT-B")  # same grid, another patient and frame of reference
    written = write_panoptic(truth, tmp_path / "case", labels)
    recorded = json.loads(written["json"].read_text())["source_identity"]
    assert recorded == source_identity(scan.meta) and recorded["patient_id"] == "PATIENT-A"
    assert main(["export", str(tmp_path / "case"), "--source", str(other), "--to", "dicom-seg"]) == 2
    assert "the result was made on patient 'PATIENT-A', this source belongs to 'PATIENT-B'" in capsys.readouterr().err
    assert not (tmp_path / "case_seg.dcm").exists()
    assert main(["export", str(tmp_path / "case"), "--source", str(folder), "--to", "dicom-seg"]) == 0
    assert pydicom.dcmread(tmp_path / "case_seg.dcm", stop_before_pixels=True).PatientID == "PATIENT-A"
