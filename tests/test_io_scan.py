"""read_scan: geometry against SimpleITK/GDCM and nibabel, refusals on real damaged files."""

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medpanoptic.errors import GeometryError, InputError
from medpanoptic.io import read_scan, write_dicom_series
from medpanoptic.io.nifti import write_nifti

from .conftest import lps_geometry


def _hu(phantom):
    return np.rint(phantom.image[0].numpy() + 1024) - 1024  # as stored with RescaleIntercept -1024


@pytest.fixture(scope="module")
def oblique_series(oblique_ct, tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    write_dicom_series(oblique_ct.image, folder)
    return folder


def test_dicom_series_geometry_matches_source_and_gdcm(oblique_ct, oblique_series):
    scan = read_scan(oblique_series)
    assert scan.shape == oblique_ct.image.shape
    np.testing.assert_array_equal(scan[0].numpy(), _hu(oblique_ct))
    np.testing.assert_allclose(scan.affine.numpy(), oblique_ct.image.affine.numpy(), atol=1e-5)
    # SimpleITK's own series reader (GDCM sorting) as the independent reference
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(oblique_series)))
    ref = reader.Execute()
    origin, spacing, direction = lps_geometry(scan.affine.numpy())
    np.testing.assert_allclose(origin, ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(spacing, ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(direction.ravel(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(scan[0].numpy(), sitk.GetArrayFromImage(ref).transpose(2, 1, 0))


def test_dicom_meta_remembers_the_source(oblique_series):
    scan = read_scan(oblique_series)
    files = scan.meta["source_files"]
    uids = scan.meta["sop_instance_uids"]
    assert len(files) == len(uids) == scan.shape[-1]
    positions = []
    for f, uid in zip(files, uids):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.SOPInstanceUID == uid
        assert ds.SeriesInstanceUID == scan.meta["series_instance_uid"]
        positions.append([float(v) for v in ds.ImagePositionPatient])
    # slice k of the volume is the file at the patient position of voxel (0, 0, k)
    affine = scan.affine.numpy()
    for k, p in enumerate(positions):
        ras = affine @ np.array([0, 0, k, 1.0])
        np.testing.assert_allclose(p, ras[:3] * [-1, -1, 1], atol=1e-4)


def test_file_order_does_not_matter(oblique_ct, oblique_series, tmp_path):
    """Files named in reverse slice order give the same volume."""
    files = sorted(oblique_series.iterdir())
    for i, f in enumerate(reversed(files)):
        shutil.copy(f, tmp_path / f"IM{i:04d}")
    scan = read_scan(tmp_path)
    np.testing.assert_array_equal(scan[0].numpy(), _hu(oblique_ct))
    np.testing.assert_allclose(scan.affine.numpy(), oblique_ct.image.affine.numpy(), atol=1e-5)


def test_enhanced_multiframe_matches_series(oblique_series, tmp_path):
    """An Enhanced (legacy-converted) CT made by highdicom reads back as the same volume."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import generate_uid

    datasets = [pydicom.dcmread(f) for f in sorted(oblique_series.iterdir())]
    datasets = datasets[::2] + datasets[1::2]  # frames out of order on purpose
    enhanced = LegacyConvertedEnhancedCTImage(datasets, generate_uid(), 2, generate_uid(), 1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    series = read_scan(oblique_series)
    multi = read_scan(path)
    assert multi.meta["source_format"] == "dicom-enhanced"
    np.testing.assert_array_equal(multi.numpy(), series.numpy())
    np.testing.assert_allclose(multi.affine.numpy(), series.affine.numpy(), atol=1e-5)
    assert sorted(multi.meta["frame_numbers"]) == list(range(1, len(datasets) + 1))


def _edit_series(src, dst, edit):
    dst.mkdir()
    files = sorted(src.iterdir())
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if edit(k, ds) is not False:
            ds.save_as(dst / f.name)


def test_missing_slice_is_refused(oblique_series, tmp_path):
    _edit_series(oblique_series, tmp_path / "gap", lambda k, ds: k != 10 and None)
    with pytest.raises(GeometryError, match="1 missing slice"):
        read_scan(tmp_path / "gap")


def test_gantry_tilt_is_refused(oblique_series, tmp_path):
    def tilt(k, ds):
        p = [float(v) for v in ds.ImagePositionPatient]
        row = [float(v) for v in ds.ImageOrientationPatient[3:]]
        ds.ImagePositionPatient = [f"{p[i] + 0.4 * k * row[i]:.6f}" for i in range(3)]
    _edit_series(oblique_series, tmp_path / "tilt", tilt)
    with pytest.raises(GeometryError, match="gantry tilt"):
        read_scan(tmp_path / "tilt")


def test_non_uniform_spacing_is_refused(oblique_series, tmp_path):
    def shift(k, ds):
        if k == 7:
            p = np.array([float(v) for v in ds.ImagePositionPatient])
            o = np.array([float(v) for v in ds.ImageOrientationPatient])
            p += 0.5 * np.cross(o[:3], o[3:])
            ds.ImagePositionPatient = [f"{v:.6f}" for v in p]
    _edit_series(oblique_series, tmp_path / "uneven", shift)
    with pytest.raises(GeometryError, match="non-uniform slice spacing"):
        read_scan(tmp_path / "uneven")


def test_duplicate_positions_are_refused(oblique_series, tmp_path):
    def dup(k, ds):
        if k == 3:
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
    _edit_series(oblique_series, tmp_path / "dup", dup)
    shutil.copy(tmp_path / "dup" / "slice_0003.dcm", tmp_path / "dup" / "slice_0003b.dcm")
    ds = pydicom.dcmread(tmp_path / "dup" / "slice_0003b.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "dup" / "slice_0003b.dcm")
    with pytest.raises(GeometryError, match="same position"):
        read_scan(tmp_path / "dup")


# -- real files shipped inside pydicom ----------------------------------------------------
def test_pydicom_folder_with_several_series_lists_them(pydicom_files):
    folder = pydicom_files / "dicomdirtests" / "98892003" / "MR1"
    with pytest.raises(InputError) as err:
        read_scan(folder)
    message = str(err.value)
    assert "3 image series" in message and "FAST LOCALIZER" in message
    for f in folder.iterdir():
        assert pydicom.dcmread(f).SeriesInstanceUID in message
    uid = pydicom.dcmread(folder / "4919").SeriesInstanceUID
    one = read_scan(folder, series_uid=uid)
    assert one.shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(one[0, :, :, 0].numpy(), pydicom.dcmread(folder / "4919").pixel_array.T)


def test_pydicom_series_with_a_slice_gap_is_refused(pydicom_files):
    with pytest.raises(GeometryError, match="missing slice"):
        read_scan(pydicom_files / "dicomdirtests" / "77654033" / "CT2")


def test_pydicom_ct_series_is_read_right(pydicom_files):
    folder = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    scan = read_scan(folder)
    datasets = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets], -1)
    np.testing.assert_array_equal(scan[0].numpy(), expected.transpose(1, 0, 2))
    origin, spacing, _ = lps_geometry(scan.affine.numpy())
    np.testing.assert_allclose(origin, [float(v) for v in datasets[0].ImagePositionPatient], atol=1e-5)
    np.testing.assert_allclose(spacing, [*map(float, datasets[0].PixelSpacing), 2.5], atol=1e-5)


@pytest.mark.parametrize(
    "relative, message",
    [
        ("MR_truncated.dcm", "truncated"),
        ("dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000", "no DICOM image series"),
        ("rtstruct.dcm", "RTSTRUCT"),
        ("dicomdirtests/98892003/MR700", "different orientations"),
    ],
)
def test_pydicom_bad_inputs(pydicom_files, relative, message):
    with pytest.raises(InputError, match=message) as err:
        read_scan(pydicom_files / relative)
    assert str(pydicom_files / relative) in str(err.value)


# -- NIfTI and 2D images --------------------------------------------------------------------
def test_nibabel_nifti_matches_nibabel(nibabel_data):
    path = nibabel_data / "anatomical.nii"
    scan = read_scan(path)
    ref = nib.load(path)
    np.testing.assert_allclose(scan.affine.numpy(), ref.affine, atol=1e-5)
    np.testing.assert_allclose(scan[0].numpy(), np.asanyarray(ref.dataobj).squeeze(), atol=1e-6)


def test_nibabel_4d_is_refused(nibabel_data):
    with pytest.raises(InputError, match="4D"):
        read_scan(nibabel_data / "example4d.nii.gz")


def test_nifti_round_trip_oblique(oblique_ct, tmp_path):
    path = tmp_path / "ct.nii.gz"
    write_nifti(path, oblique_ct.image[0].numpy(), oblique_ct.image.affine.numpy())
    scan = read_scan(path)
    np.testing.assert_allclose(scan.affine.numpy(), oblique_ct.image.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(scan.numpy(), oblique_ct.image.numpy())


def test_nan_voxels_are_refused(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="NaN"):
        read_scan(tmp_path / "nan.nii.gz")


def test_png_is_2d_channel_first(tmp_path):
    from PIL import Image

    pixels = np.arange(12 * 7, dtype=np.uint8).reshape(7, 12)  # 7 rows, 12 columns
    Image.fromarray(pixels).save(tmp_path / "cells.png")
    scan = read_scan(tmp_path / "cells.png")
    assert scan.shape == (1, 12, 7)
    np.testing.assert_array_equal(scan[0].numpy(), pixels.T)
    rgb = np.stack([pixels, pixels // 2, pixels // 3], -1)
    Image.fromarray(rgb).save(tmp_path / "he.png")
    scan = read_scan(tmp_path / "he.png")
    assert scan.shape == (3, 12, 7)
    np.testing.assert_array_equal(scan[1].numpy(), (pixels // 2).T)


@pytest.mark.parametrize(
    "name, content, message",
    [("empty.nii.gz", b"", "empty"), ("scan.txt", b"hello", "unsupported file type"),
     ("broken.nii.gz", b"not a nifti at all", "cannot read")],
)
def test_bad_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_scan(path)
    assert str(path) in str(err.value)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_scan(tmp_path / "nope.nii.gz")


def test_compressed_series_is_decoded_by_gdcm(oblique_ct, oblique_series, tmp_path):
    """RLE-compressed slices take the GDCM path and give the same volume as the uncompressed ones."""
    from pydicom.uid import RLELossless

    def compress(k, ds):
        ds.compress(RLELossless)
    _edit_series(oblique_series, tmp_path / "rle", compress)
    assert pydicom.dcmread(next((tmp_path / "rle").iterdir())).file_meta.TransferSyntaxUID == RLELossless
    scan = read_scan(tmp_path / "rle")
    np.testing.assert_array_equal(scan[0].numpy(), _hu(oblique_ct))
    np.testing.assert_allclose(scan.affine.numpy(), oblique_ct.image.affine.numpy(), atol=1e-5)


def test_truncated_slice_in_a_series_is_named(oblique_series, tmp_path):
    shutil.copytree(oblique_series, tmp_path / "cut")
    victim = tmp_path / "cut" / "slice_0005.dcm"
    victim.write_bytes(victim.read_bytes()[:-1000])
    with pytest.raises(InputError, match="truncated") as err:
        read_scan(tmp_path / "cut")
    assert "slice_0005.dcm" in str(err.value)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_itk_formats_keep_oblique_geometry(oblique_ct, tmp_path, suffix):
    """NRRD/NHDR and MHA/MHD written by SimpleITK come back on the same grid, same values."""
    from medpanoptic.io.itk import sitk_from_array

    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk_from_array(oblique_ct.image[0].numpy(), oblique_ct.image.affine.numpy()), str(path))
    scan = read_scan(path)
    np.testing.assert_allclose(scan.affine.numpy(), oblique_ct.image.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(scan.numpy(), oblique_ct.image.numpy())
    assert scan.meta["source_format"] == suffix.lstrip(".")


def test_tiff_microscopy_is_2d(tmp_path):
    from PIL import Image

    pixels = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 7) % 4096
    Image.fromarray(pixels).save(tmp_path / "cells.tif")
    scan = read_scan(tmp_path / "cells.tif")
    assert scan.shape == (1, 30, 20)
    np.testing.assert_array_equal(scan[0].numpy(), pixels.T)
