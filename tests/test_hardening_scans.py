"""Hardening of read_scan (#12): every bad scan is refused by name, built here as a real file."""

import gzip
import logging
import shutil
import subprocess
import sys
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from pydicom.dataelem import DataElement

from medpanoptic.errors import GeometryError, InputError
from medpanoptic.io import read_scan, write_dicom_series
from medpanoptic.io.itk import sitk_from_array
from medpanoptic.synthetic import ct_phantom

from .conftest import ANISOTROPIC, OBLIQUE
from .test_export import _dciodvfy_errors, requires

RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(shape=(20, 18, 6), spacing=ANISOTROPIC, direction=OBLIQUE, n_lesions=0, seed=3)


@pytest.fixture(scope="module")
def series(phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    write_dicom_series(phantom.image, folder)
    return folder


def edited_series(src, dst, edit):
    """A copy of a series with `edit(k, dataset)` applied to every slice."""
    dst.mkdir()
    for k, f in enumerate(sorted(src.iterdir())):
        ds = pydicom.dcmread(f)
        edit(k, ds)
        ds.save_as(dst / f.name)
    return dst


def raw_nifti(path, data, affine=np.diag([0.8, 0.9, 2.0, 1.0]), shape=None, payload=None, **fields):
    """A NIfTI-1 file written byte by byte, so header fields nibabel would "fix" on save stay as given."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape or data.shape)
    header.set_data_dtype(data.dtype)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    for key, value in fields.items():
        if key.startswith("pixdim"):
            header["pixdim"][int(key[len("pixdim"):])] = value
        else:
            header[key] = value
    body = header.binaryblock + b"\0" * 4 + (payload if payload is not None else data.tobytes(order="F"))
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(body)
    return path


VOXELS = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)


def text_image(path, fields, payload=VOXELS.tobytes(order="F"), size="4 5 3", kind=None):
    """A NRRD or MetaImage file written as text, with exactly the header fields given."""
    if kind or path.suffix in (".nrrd", ".nhdr"):
        head = f"NRRD0004\ntype: short\ndimension: 3\nsizes: {size}\nendian: little\n{fields}\n"
    else:
        head = f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = MET_SHORT\n{fields}"
    path.write_bytes(head.encode() + payload)
    return path


# -- 1. DICOM spacing -----------------------------------------------------------------------
@pytest.mark.parametrize("spacing", [["-1", "0.9"], ["0", "0.9"], ["0.8", "nan"]])
def test_dicom_bad_pixel_spacing_is_refused(series, tmp_path, spacing):
    folder = edited_series(series, tmp_path / "bad", lambda k, ds: setattr(ds, "PixelSpacing", spacing))
    for target in (folder, folder / "slice_0000.dcm"):
        with pytest.raises(GeometryError, match=r"PixelSpacing is \[.*\]: voxel sizes must be finite and positive") as err:
            read_scan(target)
        assert str(folder / "slice_0000.dcm") in str(err.value)


def test_single_slice_with_negative_thickness_is_refused(series, tmp_path):
    folder = edited_series(series, tmp_path / "thin", lambda k, ds: setattr(ds, "SliceThickness", "-2"))
    with pytest.raises(GeometryError, match="SliceThickness is -2: voxel sizes must be finite") as err:
        read_scan(folder / "slice_0003.dcm")
    assert "slice_0003.dcm" in str(err.value)
    assert read_scan(folder).shape[-1] == 6  # a series takes its third axis from the positions


@pytest.fixture(scope="module")
def enhanced(series, tmp_path_factory):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    datasets = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    path = tmp_path_factory.mktemp("enhanced") / "enhanced.dcm"
    LegacyConvertedEnhancedCTImage(datasets, pydicom.uid.generate_uid(), 2, pydicom.uid.generate_uid(), 1).save_as(path)
    return path


def _edit_enhanced(src, dst, edit):
    ds = pydicom.dcmread(src)
    edit(ds)
    ds.save_as(dst)
    return dst


def test_enhanced_bad_shared_pixel_spacing_is_refused(enhanced, tmp_path):
    def zero(ds):
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = ["0", "0.9"]
    path = _edit_enhanced(enhanced, tmp_path / "zero.dcm", zero)
    with pytest.raises(GeometryError, match=r"zero.dcm: PixelSpacing in the PixelMeasuresSequence \(frame 1\) is \[0, 0.9\]"):
        read_scan(path)


def test_enhanced_bad_per_frame_pixel_spacing_is_refused(enhanced, tmp_path):
    def negative(ds):
        measures = pydicom.Dataset()
        measures.PixelSpacing = ["-0.8", "0.9"]
        ds.PerFrameFunctionalGroupsSequence[2].PixelMeasuresSequence = [measures]
    path = _edit_enhanced(enhanced, tmp_path / "neg.dcm", negative)
    with pytest.raises(GeometryError, match=r"neg.dcm: PixelSpacing in the PixelMeasuresSequence \(frame 3\) is \[-0.8, 0.9\]"):
        read_scan(path)


# -- 2. NIfTI / NRRD / MetaImage geometry ---------------------------------------------------
@pytest.mark.parametrize("codes", [dict(sform_code=0), dict()])
@pytest.mark.parametrize("value, shown", [(0.0, "0"), (-0.9, "-0.9"), (np.nan, "nan")])
def test_nifti_bad_pixdim_is_refused(tmp_path, codes, value, shown):
    path = raw_nifti(tmp_path / "pix.nii", VOXELS, pixdim2=value, **codes)
    with pytest.raises(GeometryError, match=rf"pix.nii: pixdim\[2\] is {shown}: voxel sizes must be finite and positive"):
        read_scan(path)


def test_nifti_without_qform_or_sform_is_refused_or_guessed_with_a_warning(tmp_path, caplog):
    path = raw_nifti(tmp_path / "nowhere.nii.gz", VOXELS, qform_code=0, sform_code=0)
    with pytest.raises(GeometryError, match="nowhere.nii.gz: qform_code and sform_code are both 0"):
        read_scan(path)
    with caplog.at_level(logging.WARNING, logger="medpanoptic"):
        scan = read_scan(path, allow_guessed_geometry=True)
    np.testing.assert_allclose(scan.affine.numpy(), nib.load(path).affine)
    np.testing.assert_array_equal(scan[0].numpy(), VOXELS)
    [record] = [r for r in caplog.records if r.name == "medpanoptic"]
    assert record.levelno == logging.WARNING and "nowhere.nii.gz" in record.getMessage()
    assert "allow_guessed_geometry" in record.getMessage()


@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("zero.nrrd", "encoding: raw\nspacings: 0 0.9 2\n", r"spacings is \[0, 0.9, 2\]"),
        ("neg.nrrd", "encoding: raw\nspacings: -0.8 0.9 2\n", r"spacings is \[-0.8, 0.9, 2\]"),
        ("nan.nrrd", "encoding: raw\nspacings: nan 0.9 2\n", r"spacings is \[nan, 0.9, 2\]"),
        ("flat.nrrd", "encoding: raw\nspace: left-posterior-superior\nspace directions: (0,0,0) (0,0.9,0) (0,0,2)\n",
         r"space directions is \[0, 0.9, 2\]"),
        ("zero.mha", "ElementSpacing = 0 0.9 2\nElementDataFile = LOCAL\n", r"ElementSpacing is \[0, 0.9, 2\]"),
        ("neg.mha", "ElementSpacing = -0.8 0.9 2\nElementDataFile = LOCAL\n", r"ElementSpacing is \[-0.8, 0.9, 2\]"),
    ],
    ids=["nrrd-zero", "nrrd-negative", "nrrd-nan", "nrrd-zero-direction", "mha-zero", "mha-negative"],
)
def test_itk_bad_spacing_is_refused(tmp_path, name, fields, message):
    path = text_image(tmp_path / name, fields)
    with pytest.raises(GeometryError, match=f"{name}: {message}: voxel sizes must be finite and positive"):
        read_scan(path)


@pytest.mark.parametrize("name, fields", [("bare.nrrd", "encoding: raw\n"), ("bare.mha", "ElementDataFile = LOCAL\n")],
                         ids=["nrrd", "mha"])
def test_itk_missing_spacing_is_refused_or_guessed_with_a_warning(tmp_path, caplog, name, fields):
    path = text_image(tmp_path / name, fields)
    with pytest.raises(GeometryError, match=f"{name}: the header gives no voxel size .*ITK would guess 1 mm"):
        read_scan(path)
    with caplog.at_level(logging.WARNING, logger="medpanoptic"):
        scan = read_scan(path, allow_guessed_geometry=True)
    np.testing.assert_allclose(np.linalg.norm(scan.affine.numpy()[:3, :3], axis=0), [1, 1, 1])
    np.testing.assert_array_equal(scan[0].numpy(), VOXELS)
    assert any(name in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records if r.name == "medpanoptic")


# -- 3. rescale and float32 -----------------------------------------------------------------
def test_rescale_slope_zero_is_refused(series, tmp_path, enhanced):
    folder = edited_series(series, tmp_path / "slope0", lambda k, ds: setattr(ds, "RescaleSlope", "0") if k == 2 else None)
    with pytest.raises(InputError, match="slice_0002.dcm: RescaleSlope is 0"):
        read_scan(folder)

    def zero(ds):
        ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope = "0"
    with pytest.raises(InputError, match=r"slope0.dcm: RescaleSlope \(frame 1\) is 0"):
        read_scan(_edit_enhanced(enhanced, tmp_path / "slope0.dcm", zero))


@pytest.mark.parametrize("keyword, raw", [("RescaleSlope", b"inf "), ("RescaleIntercept", b"nan ")])
def test_non_finite_rescale_is_refused(series, tmp_path, keyword, raw):
    def edit(k, ds):
        ds[keyword] = DataElement(pydicom.datadict.tag_for_keyword(keyword), "DS", raw)
    folder = edited_series(series, tmp_path / "nonfinite", edit)
    with pytest.raises(InputError, match=f"slice_0000.dcm: {keyword} is {raw.decode().strip()}: the voxel values would not be finite"):
        read_scan(folder / "slice_0000.dcm")


def test_rescale_overflowing_float32_is_refused(series, tmp_path):
    folder = edited_series(series, tmp_path / "huge", lambda k, ds: setattr(ds, "RescaleSlope", "1e38"))
    with pytest.raises(InputError, match="huge: the image contains NaN or infinite voxels after RescaleSlope/RescaleIntercept as float32"):
        read_scan(folder)


def test_float64_beyond_float32_is_refused_and_float64_becomes_float32(tmp_path):
    data = np.full((3, 4, 5), 2.5)
    data[1, 2, 3] = 1e300
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.0, 1.0])), tmp_path / "big.nii.gz")
    with pytest.raises(InputError, match="big.nii.gz: the image contains NaN or infinite voxels as float32"):
        read_scan(tmp_path / "big.nii.gz")
    data[1, 2, 3] = -7.25
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.0, 1.0])), tmp_path / "fine.nii.gz")
    scan = read_scan(tmp_path / "fine.nii.gz")
    assert scan.dtype == np.float32 or str(scan.dtype) == "torch.float32"
    np.testing.assert_array_equal(scan[0].numpy(), data.astype(np.float32))


# -- 4. size limits and truncation ----------------------------------------------------------
def test_declared_huge_nifti_is_refused_from_its_header(tmp_path):
    path = raw_nifti(tmp_path / "bomb.nii.gz", VOXELS, shape=(30000, 30000, 30000), payload=b"\0" * 1000)
    assert path.stat().st_size < 2000
    with pytest.raises(InputError, match=r"bomb.nii.gz: the header declares 30000 x 30000 x 30000 voxels, which would need "
                                         r"98.2 TiB as float32, above the limit of 2.0 GiB"):
        read_scan(path)


def test_gzip_bomb_is_refused_before_unpacking(tmp_path):
    """A real 400³ volume of zeros in a ~100 KB gzip: refused by the header under a 100 MiB limit."""
    data = np.zeros((400, 400, 400), np.uint8)
    path = raw_nifti(tmp_path / "zeros.nii.gz", data)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(InputError, match=r"zeros.nii.gz: the header declares 400 x 400 x 400 voxels, which would need "
                                         r"244.1 MiB as float32, above the limit of 100.0 MiB"):
        read_scan(path, max_bytes=100 * 2**20)


def test_limit_comes_from_the_environment(tmp_path, monkeypatch):
    path = raw_nifti(tmp_path / "small.nii", VOXELS)
    monkeypatch.setenv("MEDPANOPTIC_MAX_SCAN_BYTES", "100")
    with pytest.raises(InputError, match=r"small.nii: the header declares 4 x 5 x 3 voxels, which would need 240 bytes"):
        read_scan(path)
    assert read_scan(path, max_bytes=240).shape == (1, 4, 5, 3)
    monkeypatch.setenv("MEDPANOPTIC_MAX_SCAN_BYTES", "lots")
    with pytest.raises(InputError, match="MEDPANOPTIC_MAX_SCAN_BYTES='lots': must be a positive whole number of bytes"):
        read_scan(path)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_truncated_nifti_gets_its_own_reason(tmp_path, name):
    path = raw_nifti(tmp_path / name, VOXELS, shape=(100, 100, 100), payload=b"\0" * 1000)
    with pytest.raises(InputError, match=f"{name}: truncated file: the header declares 2000000 bytes of voxel data, "
                                         "only 1000 are present"):
        read_scan(path)


def _huge_slice(series, path, rows, columns):
    ds = pydicom.dcmread(series / "slice_0000.dcm")
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path)
    return path


def test_dicom_declaring_65535_squared_is_refused(series, tmp_path):
    path = _huge_slice(series, tmp_path / "wide.dcm", 65535, 65535)
    with pytest.raises(InputError, match=r"wide.dcm: the header declares 65535 x 65535 x 1 voxels, which would need 16.0 GiB"):
        read_scan(path)


def test_dicom_series_size_counts_every_file(series):
    with pytest.raises(InputError, match=r"the header declares 20 x 18 x 6 voxels, which would need 8.4 KiB as float32, "
                                         r"above the limit of 8.0 KiB") as err:
        read_scan(series, max_bytes=8192)
    assert str(series) in str(err.value)


def test_dicom_much_smaller_than_declared_is_truncated(series, tmp_path):
    path = _huge_slice(series, tmp_path / "short.dcm", 2000, 2000)
    with pytest.raises(InputError, match=r"short.dcm: truncated file: the header declares 8000000 bytes of voxel data, only 720"):
        read_scan(path)


@pytest.mark.parametrize("name, fields, payload", [
    ("huge.nrrd", "encoding: raw\nspacings: 1 1 1\n", b"\0" * 100),
    ("huge.mha", "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n", b"\0" * 100),
], ids=["nrrd", "mha"])
def test_declared_huge_itk_image_is_refused(tmp_path, name, fields, payload):
    path = text_image(tmp_path / name, fields, payload, size="30000 30000 30000")
    with pytest.raises(InputError, match=f"{name}: the header declares 30000 x 30000 x 30000 voxels, which would need 98.2 TiB"):
        read_scan(path)


@pytest.mark.parametrize("name, fields, payload", [
    ("cut.nrrd", "encoding: raw\nspacings: 1 1 1\n", b"\0" * 100),
    ("cut.mha", "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n", b"\0" * 100),
    ("cutz.nrrd", "encoding: gzip\nspacings: 1 1 1\n", gzip.compress(b"\0" * 100)),
    ("cutz.mha", "ElementSpacing = 1 1 1\nCompressedData = True\nElementDataFile = LOCAL\n", zlib.compress(b"\0" * 100)),
], ids=["nrrd-raw", "mha-raw", "nrrd-gzip", "mha-zlib"])
def test_truncated_itk_image_gets_its_own_reason(tmp_path, name, fields, payload):
    """Raw or compressed: a compressed MetaImage one short was read as zeros by ITK before."""
    path = text_image(tmp_path / name, fields, payload, size="40 30 20")
    with pytest.raises(InputError, match=f"{name}: truncated file: the header declares 48000 bytes of voxel data, only 100 are present"):
        read_scan(path)


def test_complete_compressed_itk_images_still_read(tmp_path, phantom):
    for name in ("ct.nrrd", "ct.mha"):
        image = sitk_from_array(phantom.image[0].numpy(), phantom.image.affine.numpy())
        sitk.WriteImage(image, str(tmp_path / name), useCompression=True)
        scan = read_scan(tmp_path / name)
        np.testing.assert_array_equal(scan.numpy(), phantom.image.numpy())
        np.testing.assert_allclose(scan.affine.numpy(), phantom.image.affine.numpy(), atol=1e-5)


def test_metaimage_data_file_outside_its_folder_is_refused(tmp_path):
    (tmp_path / "secret.raw").write_bytes(VOXELS.tobytes(order="F"))
    (tmp_path / "inner").mkdir()
    path = text_image(tmp_path / "inner" / "scan.mhd", "ElementSpacing = 1 1 1\nElementDataFile = ../secret.raw\n", b"")
    with pytest.raises(InputError, match="scan.mhd: ElementDataFile '../secret.raw' points outside the header's folder"):
        read_scan(path)


# -- 5. say what a file is ------------------------------------------------------------------
def test_empty_and_garbage_dicom_files_are_named_for_what_they_are(series, tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="empty.dcm: the file is empty"):
        read_scan(tmp_path / "empty.dcm")
    (tmp_path / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(InputError, match="garbage.dcm: this is not a DICOM file"):
        read_scan(tmp_path / "garbage.dcm")
    folder = tmp_path / "with_empty"
    shutil.copytree(series, folder)
    (folder / "zero.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="zero.dcm: the file is empty"):
        read_scan(folder)


def test_truncated_jpeg2000_is_named_as_undecodable(tmp_path):
    source = pydicom.data.get_testdata_file("MR_small_jp2klossless.dcm")
    data = open(source, "rb").read()
    path = tmp_path / "cut_j2k.dcm"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"cut_j2k.dcm: cannot decode its pixel data \(truncated or corrupt JPEG 2000"):
        read_scan(path)


@pytest.fixture(scope="module")
def seg_file(series, phantom, tmp_path_factory):
    from medpanoptic.io.dicom_seg import write_dicom_seg

    scan = read_scan(series)
    pair = phantom.pair.clone()
    pair.affine = scan.affine
    return write_dicom_seg(pair, phantom.label_set, scan, tmp_path_factory.mktemp("seg") / "result_seg.dcm")


def test_dicom_seg_given_to_read_scan_says_it_is_a_result(seg_file):
    with pytest.raises(InputError, match=r"result_seg.dcm: this is a DICOM Segmentation \(a result, not a scan\): "
                                         "read it with read_panoptic"):
        read_scan(seg_file)


@pytest.mark.parametrize("same_series", [False, True])
def test_non_image_objects_in_a_series_folder_are_ignored(series, seg_file, tmp_path, same_series):
    folder = tmp_path / "mixed"
    shutil.copytree(series, folder)
    seg = pydicom.dcmread(seg_file)
    if same_series:  # a SEG (wrongly) sharing the scan's SeriesInstanceUID
        seg.SeriesInstanceUID = pydicom.dcmread(series / "slice_0000.dcm").SeriesInstanceUID
    seg.save_as(folder / "seg.dcm")
    shutil.copy(pydicom.data.get_testdata_file("test-SR.dcm"), folder / "report.dcm")
    scan, clean = read_scan(folder), read_scan(series)
    np.testing.assert_array_equal(scan.numpy(), clean.numpy())
    np.testing.assert_allclose(scan.affine.numpy(), clean.affine.numpy())
    assert len(scan.meta["source_files"]) == 6 and not any("seg" in f or "report" in f for f in scan.meta["source_files"])


# -- 6. colour volumes ----------------------------------------------------------------------
def test_rgb_dicom_series_is_refused(series, tmp_path):
    def rgb(k, ds):
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = bytes(ds.Rows * ds.Columns * 3)
    folder = edited_series(series, tmp_path / "rgb", rgb)
    with pytest.raises(InputError, match=r"slice_0000.dcm: SamplesPerPixel is 3 \(RGB\): a colour DICOM image"):
        read_scan(folder)


def test_rgb_3d_nifti_is_refused_and_2d_becomes_channels(tmp_path):
    colours = np.zeros((4, 5, 3), RGB24)
    colours["G"] = 7
    with pytest.raises(InputError, match=r"rgb3d.nii: a 3D image with 3 components per voxel \(colour or vector\)"):
        read_scan(raw_nifti(tmp_path / "rgb3d.nii", colours))
    flat = np.zeros((4, 5, 1), RGB24)
    flat["B"] = np.arange(20, dtype=np.uint8).reshape(4, 5, 1)
    scan = read_scan(raw_nifti(tmp_path / "rgb2d.nii", flat))
    assert scan.shape == (3, 4, 5)
    np.testing.assert_array_equal(scan[2].numpy(), np.arange(20).reshape(4, 5))


def test_3d_vector_mha_is_refused(tmp_path, phantom):
    volume = np.stack([phantom.image[0].numpy()] * 3)
    sitk.WriteImage(sitk_from_array(volume, phantom.image.affine.numpy(), vector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match=r"rgb.mha: a 3D image with 3 components per voxel"):
        read_scan(tmp_path / "rgb.mha")


# -- 7. phantom series compliance -----------------------------------------------------------
@requires("dciodvfy")
def test_phantom_ct_slice_passes_dciodvfy(series):
    code, errors = _dciodvfy_errors(series / "slice_0002.dcm")
    assert errors == []
    ds = pydicom.dcmread(series / "slice_0002.dcm")
    assert ds.PatientPosition == "HFS" and ds.BodyPartExamined == "ABDOMEN"


# -- every refusal through `medpanoptic info` -----------------------------------------------
def _bad_files(series, tmp_path):
    """One real file or folder per refusal above, keyed by what is wrong with it."""
    cut = open(pydicom.data.get_testdata_file("MR_small_jp2klossless.dcm"), "rb").read()
    (tmp_path / "cut_j2k.dcm").write_bytes(cut[: len(cut) * 2 // 3])
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    return {
        "zero spacing": edited_series(series, tmp_path / "zero_spacing", lambda k, ds: setattr(ds, "PixelSpacing", ["0", "0.9"])),
        "negative spacing": edited_series(series, tmp_path / "neg_spacing", lambda k, ds: setattr(ds, "PixelSpacing", ["-1", "0.9"])),
        "slope 0": edited_series(series, tmp_path / "slope0", lambda k, ds: setattr(ds, "RescaleSlope", "0")),
        "65535 rows": _huge_slice(series, tmp_path / "wide.dcm", 65535, 65535),
        "truncated dicom": _huge_slice(series, tmp_path / "short.dcm", 2000, 2000),
        "empty": tmp_path / "empty.dcm",
        "garbage": tmp_path / "garbage.dcm",
        "truncated j2k": tmp_path / "cut_j2k.dcm",
        "pixdim 0": raw_nifti(tmp_path / "pix0.nii", VOXELS, pixdim2=0.0),
        "no qform/sform": raw_nifti(tmp_path / "nowhere.nii.gz", VOXELS, qform_code=0, sform_code=0),
        "nifti bomb": raw_nifti(tmp_path / "bomb.nii.gz", VOXELS, shape=(30000, 30000, 30000), payload=b"\0" * 1000),
        "truncated nifti": raw_nifti(tmp_path / "cut.nii.gz", VOXELS, shape=(100, 100, 100), payload=b"\0" * 1000),
        "rgb 3d nifti": raw_nifti(tmp_path / "rgb3d.nii", np.zeros((4, 5, 3), RGB24)),
        "nrrd without spacing": text_image(tmp_path / "bare.nrrd", "encoding: raw\n"),
        "mha zero spacing": text_image(tmp_path / "zero.mha", "ElementSpacing = 0 1 1\nElementDataFile = LOCAL\n"),
        "truncated zlib mha": text_image(tmp_path / "cutz.mha", "ElementSpacing = 1 1 1\nCompressedData = True\n"
                                         "ElementDataFile = LOCAL\n", zlib.compress(b"\0" * 100), size="40 30 20"),
    }


@pytest.fixture(scope="module")
def bad_files(series, tmp_path_factory):
    return _bad_files(series, tmp_path_factory.mktemp("bad"))


BAD_CASES = ["zero spacing", "negative spacing", "slope 0", "65535 rows", "truncated dicom", "empty", "garbage",
             "truncated j2k", "pixdim 0", "no qform/sform", "nifti bomb", "truncated nifti", "rgb 3d nifti",
             "nrrd without spacing", "mha zero spacing", "truncated zlib mha"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_info_refuses_in_one_line_naming_the_file(bad_files, capsys, case):
    from medpanoptic.cli import main

    path = bad_files[case]
    code = main(["info", str(path)])
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medpanoptic: error: ") and path.name in lines[0], err


@pytest.mark.parametrize("case", ["truncated j2k", "garbage", "pixdim 0", "truncated zlib mha"])
def test_info_process_prints_one_error_line(bad_files, case):
    """As a user runs it: no library warning or traceback besides our one line."""
    path = bad_files[case]
    out = subprocess.run([sys.executable, "-m", "medpanoptic", "info", str(path)], capture_output=True, text=True)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medpanoptic: error: ") and path.name in lines[0], out.stderr
