"""A corpus of hostile and broken inputs, each run through the command line as a user would.

Every case must end with a non-zero exit, exactly one line on stderr that starts with
`medpanoptic: error:` and names the offending file (or argument), and no new file anywhere
but where the case put its inputs.
"""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medpanoptic.io.dicom_write import write_dicom_series
from medpanoptic.io.panoptic import write_panoptic
from medpanoptic.synthetic import ct_phantom, oblique_direction

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
Case = Callable[[Path], tuple[list[str], str]]  # builds the inputs in a folder; returns (argv, the name to see)
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """A small oblique, anisotropic CT phantom series, copied by the cases that break it."""
    folder = tmp_path_factory.mktemp("series") / "ct"
    ph = ct_phantom(shape=(56, 48, 14), spacing=(0.8, 0.9, 2.0), direction=oblique_direction().ravel(), n_lesions=2, seed=3)
    write_dicom_series(ph.image, folder, patient_id="P1")
    return folder


@pytest.fixture(scope="module")
def result(tmp_path_factory, series) -> Path:
    """A panoptic result of the phantom above, as `write_panoptic` writes it."""
    from medpanoptic.io import read_scan

    scan = read_scan(series)
    stem = tmp_path_factory.mktemp("result") / "case"
    ph = ct_phantom(shape=(56, 48, 14), spacing=(0.8, 0.9, 2.0), direction=oblique_direction().ravel(), n_lesions=2, seed=3)
    pair = ph.pair.clone()
    pair.affine = scan.affine
    pair.meta.update({k: v for k, v in scan.meta.items() if k not in ("affine", "original_affine")})
    write_panoptic(pair, stem, ph.label_set)
    return stem


def _copy_series(series: Path, where: Path, edit: Callable[[pydicom.Dataset, int], None] | None = None) -> Path:
    folder = where / "series"
    shutil.copytree(series, folder)
    if edit is not None:
        for k, path in enumerate(sorted(folder.glob("*.dcm"))):
            ds = pydicom.dcmread(path)
            edit(ds, k)
            ds.save_as(path)
    return folder


def _nifti(where: Path, data: np.ndarray, name: str = "scan.nii.gz", edit=None) -> Path:
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    if edit is not None:
        edit(image.header)
    path = where / name
    nib.save(image, path)
    return path


# -- files that are not what they claim ----------------------------------------------------------------------------
@case
def empty_dcm(d):
    (d / "x.dcm").write_bytes(b"")
    return ["info", d / "x.dcm"], "x.dcm"


@case
def garbage_dcm(d):
    (d / "x.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    return ["info", d / "x.dcm"], "x.dcm"


@case
def truncated_dcm(d):
    data = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
    (d / "x.dcm").write_bytes(data[: len(data) // 2])
    return ["info", d / "x.dcm"], "x.dcm"


@case
def truncated_jpeg2000(d):
    data = (PYDICOM_FILES / "MR_small_jp2klossless.dcm").read_bytes()
    (d / "x.dcm").write_bytes(data[: len(data) - 2000])
    return ["info", d / "x.dcm"], "x.dcm"


@case
def garbage_nifti(d):
    (d / "x.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    return ["info", d / "x.nii.gz"], "x.nii.gz"


@case
def truncated_nifti(d):
    path = _nifti(d, np.zeros((32, 32, 16), np.float32), "x.nii")
    path.write_bytes(path.read_bytes()[:2000])
    return ["info", path], "x.nii"


@case
def garbage_png(d):
    (d / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    return ["info", d / "x.png"], "x.png"


@case
def empty_png(d):
    (d / "x.png").write_bytes(b"")
    return ["info", d / "x.png"], "x.png"


@case
def garbage_nrrd(d):
    (d / "x.nrrd").write_text("NRRD0004\ntype: nonsense\ndimension: 3\nsizes: 4 4\n\n")
    return ["info", d / "x.nrrd"], "x.nrrd"


@case
def unknown_suffix(d):
    (d / "x.xyz").write_bytes(b"hello")
    return ["info", d / "x.xyz"], "x.xyz"


@case
def missing_file(d):
    return ["info", d / "nothere.nii.gz"], "nothere.nii.gz"


@case
def empty_folder(d):
    (d / "empty").mkdir()
    return ["info", d / "empty"], "empty"


@case
def folder_without_dicom(d):
    (d / "docs").mkdir()
    (d / "docs" / "readme.txt").write_text("hello")
    return ["info", d / "docs"], "docs"


# -- geometry that would be guessed -------------------------------------------------------------------------------
@case
def negative_pixel_spacing(d, series):
    folder = _copy_series(series, d, lambda ds, k: setattr(ds, "PixelSpacing", ["-1", "-1"]))
    return ["info", folder], "series"


@case
def zero_pixel_spacing(d, series):
    folder = _copy_series(series, d, lambda ds, k: setattr(ds, "PixelSpacing", ["0", "0.9"]))
    return ["info", folder], "series"


@case
def rescale_slope_zero(d, series):
    folder = _copy_series(series, d, lambda ds, k: setattr(ds, "RescaleSlope", "0"))
    return ["info", folder], "series"


@case
def missing_slice(d, series):
    folder = _copy_series(series, d)
    sorted(folder.glob("*.dcm"))[3].unlink()
    return ["info", folder], "series"


@case
def duplicate_positions(d, series):
    first = pydicom.dcmread(sorted(series.glob("*.dcm"))[0]).ImagePositionPatient
    folder = _copy_series(series, d, lambda ds, k: setattr(ds, "ImagePositionPatient", first) if k == 2 else None)
    return ["info", folder], "series"


@case
def mixed_orientations(d, series):
    folder = _copy_series(series, d, lambda ds, k: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]) if k == 1 else None)
    return ["info", folder], "series"


@case
def huge_declared_rows(d):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.Rows = ds.Columns = 65535
    ds.save_as(d / "x.dcm")
    return ["info", d / "x.dcm"], "x.dcm"


@case
def seg_given_as_scan(d, result, series):
    from medpanoptic.cli import main

    assert main(["export", str(result), "--source", str(series), "--to", "dicom-seg", "--out", str(d / "seg")]) == 0
    return ["info", d / "seg_seg.dcm"], "seg_seg.dcm"


def _raw_nifti(path: Path, data: np.ndarray, edit) -> Path:
    """A NIfTI-1 file written byte by byte from a header we edit (nibabel's writer would fix what we broke)."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_qform(np.diag([0.8, 0.8, 2.5, 1.0]), code=1)
    header.set_sform(np.diag([0.8, 0.8, 2.5, 1.0]), code=1)
    header["vox_offset"] = 352
    edit(header)
    path.write_bytes(header.binaryblock + b"\x00" * 4 + data.tobytes(order="F"))
    return path


@case
def nifti_zero_pixdim(d):
    def zero(header):
        header["pixdim"][3] = 0.0

    return ["info", _raw_nifti(d / "scan.nii", np.zeros((8, 8, 4), np.float32), zero)], "scan.nii"


@case
def nifti_without_qform_or_sform(d):
    def drop(header):
        header["qform_code"] = 0
        header["sform_code"] = 0

    return ["info", _raw_nifti(d / "scan.nii", np.zeros((8, 8, 4), np.float32), drop)], "scan.nii"


@case
def nifti_nan(d):
    data = np.zeros((8, 8, 4), np.float32)
    data[2, 2, 2] = np.nan
    return ["info", _nifti(d, data)], "scan.nii.gz"


@case
def nifti_overflows_float32(d):
    data = np.zeros((8, 8, 4), np.float64)
    data[1, 1, 1] = 1e300
    return ["info", _nifti(d, data)], "scan.nii.gz"


@case
def nifti_declares_huge_volume(d):
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    path = d / "scan.nii"
    path.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 600)
    return ["info", path], "scan.nii"


@case
def nifti_gzip_bomb(d):
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 1000))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    path = d / "scan.nii.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header.binaryblock + b"\x00" * 4)
        block = b"\x00" * (1 << 20)
        for _ in range(200):  # 200 MB of zeros, declared as 1000 MB: a small file either way
            f.write(block)
    return ["info", path], "scan.nii.gz"


@case
def rgb_3d_nifti(d):
    rgb = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    image = nib.Nifti1Image(rgb, np.diag([0.8, 0.8, 2.5, 1.0]))
    nib.save(image, d / "rgb.nii.gz")
    return ["info", d / "rgb.nii.gz"], "rgb.nii.gz"


@case
def four_d_nifti(d):
    return ["info", _nifti(d, np.zeros((8, 8, 4, 3), np.float32))], "scan.nii.gz"


# -- results, exports and evaluation ---------------------------------------------------------------------------
@case
def export_missing_result(d):
    return ["export", d / "nothing", "--to", "table"], "nothing"


@case
def export_unknown_format(d, result):
    return ["export", result, "--to", "table,bogus", "--out", d / "x"], "bogus"


@case
def export_seg_without_source(d, result):
    return ["export", result, "--to", "dicom-seg", "--out", d / "x"], "--source"


@case
def export_seg_against_another_patient(d, result, series):
    other = _copy_series(series, d, lambda ds, k: (setattr(ds, "PatientID", "SOMEONE-ELSE"),
                                                   setattr(ds, "FrameOfReferenceUID", "1.2.3.4.5")))
    return ["export", result, "--source", other, "--to", "dicom-seg", "--out", d / "x"], "series"


@case
def export_source_on_another_grid(d, result):
    ph = ct_phantom(shape=(32, 30, 10), n_lesions=1, touching_fraction=0.0, seed=2)
    write_dicom_series(ph.image, d / "series")
    return ["export", result, "--source", d / "series", "--to", "dicom-seg", "--out", d / "x"], "series"


@case
def labels_with_control_characters(d, result):
    doc = json.loads(Path(f"{result}_panoptic.json").read_text())
    stem = d / "bad"
    for suffix in ("_label.nii.gz", "_instance.nii.gz"):
        shutil.copy(f"{result}{suffix}", f"{stem}{suffix}")
    labels = doc["label_set"] if "label_set" in doc else doc["labels"]
    classes = labels["classes"] if isinstance(labels, dict) else labels
    classes[0]["name"] = 'liver"\n[Segment]'
    Path(f"{stem}_panoptic.json").write_text(json.dumps(doc))
    return ["export", stem, "--to", "labelmap", "--out", d / "x"], "bad_panoptic.json"


@case
def evaluate_nan_threshold(d, result):
    return ["evaluate", "--pred", result.parent, "--gt", result.parent, "--iou-threshold", "nan",
            "--out", d / "r.csv"], "--iou-threshold"


@case
def evaluate_threshold_above_one(d, result):
    return ["evaluate", "--pred", result.parent, "--gt", result.parent, "--iou-threshold", "1.5",
            "--out", d / "r.csv"], "--iou-threshold"


@case
def evaluate_out_is_a_folder(d, result):
    (d / "taken").mkdir()
    return ["evaluate", "--pred", result.parent, "--gt", result.parent, "--out", d / "taken"], "taken"


@case
def evaluate_missing_pred(d, result):
    return ["evaluate", "--pred", d / "nopred", "--gt", result.parent, "--out", d / "r.csv"], "nopred"


@case
def evaluate_garbage_labels(d, result):
    (d / "labels.json").write_text("{not json")
    return ["evaluate", "--pred", result.parent, "--gt", result.parent, "--labels", d / "labels.json",
            "--out", d / "r.csv"], "labels.json"


# -- segment and phantom arguments -----------------------------------------------------------------------------
@case
def segment_device_absent(d, series):
    return ["segment", series, "--out", d / "out", "--device", "cuda:7"], "cuda:7"


@case
def segment_unknown_format(d, series):
    return ["segment", series, "--out", d / "out", "--to", "nifti,bogus"], "bogus"


@case
def segment_bundle_path_missing(d, series):
    return ["segment", series, "--out", d / "out", "--bundle", d / "nobundle"], "nobundle"


@case
def segment_bundle_without_configs(d, series):
    (d / "fake_bundle").mkdir()
    return ["segment", series, "--out", d / "out", "--bundle", d / "fake_bundle"], "fake_bundle"


@case
def segment_manifest_without_image_column(d):
    (d / "cohort.csv").write_text("path,case\nx.nii.gz,a\n")
    return ["segment", d / "cohort.csv", "--out", d / "out"], "cohort.csv"


@case
def segment_manifest_binary(d):
    (d / "cohort.csv").write_bytes(b"\xff\xfe\x00\x01" * 100)
    return ["segment", d / "cohort.csv", "--out", d / "out"], "cohort.csv"


@case
def phantom_zero_cases(d):
    return ["phantom", d / "ds", "--n", "0"], "--n"


@case
def phantom_dicom_in_2d(d):
    return ["phantom", d / "ds", "--dims", "2", "--dicom"], "--dicom"


def _tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_one_line_and_leaves_nothing(name, tmp_path, request, capsys):
    from medpanoptic.cli import main

    build = CASES[name]
    fixtures = [request.getfixturevalue(p) for p in build.__code__.co_varnames[1:build.__code__.co_argcount]]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv, named = build(inputs, *fixtures)
    capsys.readouterr()
    before = _tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse refusals
            code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), f"{name}: exit 0; stderr: {err}"
    assert len(lines) == 1, f"{name}: expected one line, got:\n{err}"
    assert lines[0].startswith("medpanoptic: error:"), lines[0]
    assert named in lines[0], f"{name}: the message does not name {named!r}: {lines[0]}"
    assert "Traceback" not in err
    assert _tree(tmp_path) == before, f"{name}: left behind {sorted(map(str, _tree(tmp_path) - before))}"


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
