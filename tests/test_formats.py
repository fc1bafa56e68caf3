"""The formats registry and the one result object: every writer writes what it declares, from
statistics and a segment numbering made once per result; one instance table, one schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import medpanoptic._kernels as kernels
from medpanoptic.errors import InputError
from medpanoptic.io import read_scan, write_dicom_series
from medpanoptic.io.formats import FORMAT_NAMES, OUTPUT_SUFFIXES, SCAN_SUFFIXES, WRITERS, scan_format
from medpanoptic.io.inputs import find_scans
from medpanoptic.segment import PanopticResult


@pytest.fixture(scope="module")
def dicom_result(oblique_ct, tmp_path_factory):
    """The oblique phantom's truth as a result of its own DICOM series (oblique, anisotropic)."""
    folder = tmp_path_factory.mktemp("series") / "ct"
    write_dicom_series(oblique_ct.image, folder, patient_id="P1")
    scan = read_scan(folder)
    pair = oblique_ct.pair.clone()
    pair.affine = scan.affine
    return pair, scan


@pytest.fixture
def counted(monkeypatch):
    """How often the compiled passes over the voxels run (the real kernels, counted)."""
    calls = {"gather_stats": 0, "segment_numbers": 0}
    for name in calls:
        real = getattr(kernels, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counting)
    return calls


def test_every_writer_writes_the_files_it_declares_from_one_pass_each(oblique_ct, dicom_result, counted, tmp_path):
    pair, scan = dicom_result
    result = PanopticResult(pair, oblique_ct.label_set, {1: 0.75}, scan, "case")
    written = result.save(tmp_path / "case", FORMAT_NAMES)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"case{suffix}" for name in FORMAT_NAMES for suffix in WRITERS[name].suffixes
                           if 3 in WRITERS[name].spatial_dims)  # a CT: no GeoJSON
    assert sorted(p.name for p in written.values()) == files
    # statistics once (the checked pair_stats) and the segment numbering once, for all four viewer exports
    assert counted == {"gather_stats": 1, "segment_numbers": 1}
    assert result.n_instances == oblique_ct.n_instances and counted["gather_stats"] == 1


def test_one_instance_table_one_schema(oblique_ct, dicom_result, tmp_path):
    pair, scan = dicom_result
    result = PanopticResult(pair, oblique_ct.label_set, {1: 0.75}, scan, "case")
    written = result.save(tmp_path / "case", ["nifti", "table"])
    in_panoptic = json.loads(written["nifti_json"].read_text())["instances"]
    in_table = json.loads(written["table_json"].read_text())
    assert in_panoptic == in_table == json.loads(json.dumps(result.instance_table))
    first = in_table[0]
    assert list(first) == ["instance", "label", "class", "voxels", "volume_mm3", "centroid_voxel", "centroid_ras_mm",
                           "centroid_lps_mm", "bbox_min_voxel", "bbox_stop_voxel", "mean_intensity", "max_intensity",
                           "score", "recist_long_mm", "recist_short_mm", "recist_z_mm", "max_diameter_3d_mm",
                           "host_organ", "host_fraction"]
    mask = pair[1].numpy() == first["instance"]
    ijk = np.argwhere(mask)
    affine = scan.affine.numpy()
    ras = affine[:3, :3] @ ijk.mean(0) + affine[:3, 3]
    np.testing.assert_allclose(first["centroid_lps_mm"], ras * [-1, -1, 1], atol=1e-6)
    assert first["volume_mm3"] == pytest.approx(len(ijk) * abs(np.linalg.det(affine[:3, :3])))
    assert first["bbox_stop_voxel"] == (ijk.max(0) + 1).tolist() and first["score"] == 0.75


def test_rows_are_copies_of_the_cached_table(oblique_ct):
    result = PanopticResult(oblique_ct.pair, oblique_ct.label_set, source=oblique_ct.image)
    result.rows()[0]["class"] = "changed"
    assert result.instance_table[0]["class"] == "lesion" and result.instance_table is result.instance_table


def test_unknown_format_names_it_and_lists_the_registry(oblique_ct, tmp_path):
    result = PanopticResult(oblique_ct.pair, oblique_ct.label_set)
    with pytest.raises(InputError, match=r"unknown format\(s\) bogus; choose from nifti, dicom-seg, "):
        result.save(tmp_path / "x", ["table", "bogus"])
    assert list(tmp_path.iterdir()) == []


def test_dicom_seg_checks_run_before_any_file_is_written(oblique_ct, dicom_result, tmp_path):
    from medpanoptic.export import export

    pair, _ = dicom_result
    with pytest.raises(InputError, match=r"DICOM SEG export needs the source DICOM scan \(--source\)"):
        export(pair, oblique_ct.label_set, tmp_path / "x", ["seg-nrrd", "dicom-seg"])
    assert list(tmp_path.iterdir()) == []


def test_scan_suffixes_are_one_list(tmp_path):
    assert scan_format("a/B.NII.GZ").reader == "nifti" and scan_format("x.bmp").picture
    assert scan_format("seg.dcm") is None  # DICOM is known by content, not by name
    assert all(s == s.lower() and s.startswith(".") for s in SCAN_SUFFIXES)
    outputs_that_look_like_scans = [s for s in OUTPUT_SUFFIXES if s.endswith(SCAN_SUFFIXES)]
    assert {"_label.nii.gz", "_instance.nii.gz", "_segments.nii.gz", ".seg.nrrd", "_qc.png"} <= set(outputs_that_look_like_scans)


def test_a_folder_of_bmp_images_is_a_folder_of_cases(nuclei, tmp_path):
    """`read_scan` reads BMP; folder discovery took only the other picture suffixes, so a folder of
    BMPs became one case, the folder, which then failed with 'no DICOM files found'."""
    folder = tmp_path / "slides"
    folder.mkdir()
    grey = nuclei.image[0].numpy()
    pixels = np.round(255 * (grey - grey.min()) / np.ptp(grey)).astype(np.uint8)
    for name in ("a", "b"):
        Image.fromarray(pixels.T).save(folder / f"{name}.bmp")
    Image.fromarray(pixels.T).save(folder / "a_qc.png")  # a QC picture we wrote is not a scan
    cases = find_scans([folder])
    assert [(c.case, c.path.name) for c in cases] == [("a", "a.bmp"), ("b", "b.bmp")]
    image = read_scan(cases[0].path)
    assert image.shape[1:] == nuclei.image.shape[1:]  # (i, j) = (column, row), as every grid here
    for channel in image.numpy():  # a grey BMP comes back as its palette's equal R, G and B
        np.testing.assert_array_equal(channel, pixels)
