"""Geometry in one place (#13): every LPS/RAS and (k, j, i)/(i, j, k) crossing goes through `io.geometry`,
one `same_grid` with one tolerance, one DICOM rescale for classic series and Enhanced files."""

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.data import MetaTensor

import medpanoptic
from medpanoptic.io import read_scan, write_dicom_series, write_panoptic
from medpanoptic.io.dicom_read import rescale
from medpanoptic.io.geometry import (
    GRID_TOLERANCE, from_ijk_order, lps_to_ras, ras_to_lps, same_grid, to_ijk_order, voxel_to_lps, voxel_to_ras,
)
from medpanoptic.io.itk import array_from_sitk, sitk_from_array
from medpanoptic.synthetic import ct_phantom, nuclei_phantom

from .conftest import ANISOTROPIC, OBLIQUE

PACKAGE = Path(medpanoptic.__file__).parent
HAND_WRITTEN_FLIPS = {
    "an LPS/RAS sign flip": re.compile(r"\[\s*-1(\.0*)?\s*,\s*-1(\.0*)?\s*[,\]]"),
    "a reversed axis order": re.compile(r"::-1\]"),
    "the LPS/RAS matrix": re.compile(r"\bLPS_TO_RAS\b"),
    "a hand-written (k, j, i) transpose": re.compile(r"transpose\(2, 1, 0\)"),
    "the old misleading name": re.compile(r"\bnifti_order\b"),
}


def test_geometry_flips_live_only_in_io_geometry():
    """A grep over the package: no module but `io/geometry.py` writes a flip of its own."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "io" / "geometry.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            found += [f"{path.relative_to(PACKAGE)}:{number}: {what}: {line.strip()}"
                      for what, pattern in HAND_WRITTEN_FLIPS.items() if pattern.search(line)]
    assert found == []
    geometry = (PACKAGE / "io" / "geometry.py").read_text(encoding="utf-8")
    assert HAND_WRITTEN_FLIPS["an LPS/RAS sign flip"].search(geometry)  # the pattern does find the real one


def _oblique_affine(spacing=ANISOTROPIC, origin=(-31.5, 12.25, 40.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(OBLIQUE).reshape(3, 3) * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def _in_plane_affine() -> np.ndarray:
    """A 2D grid turned 30 degrees in its plane, with 0.5 x 0.75 mm pixels."""
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    affine = np.eye(4)
    affine[:2, :2] = np.array([[c, -s], [s, c]]) * [0.5, 0.75]
    affine[:2, 3] = (4.0, -2.5)
    return affine


def test_lps_ras_conversions_agree_on_an_oblique_anisotropic_grid():
    ras = _oblique_affine()
    lps = ras_to_lps(ras)
    np.testing.assert_allclose(lps_to_ras(lps), ras)
    np.testing.assert_allclose(lps[:3, :], ras[:3, :] * np.array([[-1], [-1], [1]]))
    ijk = np.array([[0, 0, 0], [3, 7, 2], [19.5, 0.25, 11]])
    np.testing.assert_allclose(voxel_to_lps(ras, ijk), (lps @ np.c_[ijk, np.ones(3)].T).T[:, :3])
    np.testing.assert_allclose(voxel_to_lps(ras, ijk) * [-1, -1, 1], voxel_to_ras(ras, ijk))


@pytest.mark.parametrize("shape", [(5, 4), (5, 4, 3), (2, 5, 4, 3)])
def test_ijk_order_round_trips_and_matches_simpleitk(shape):
    array = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    planes_first = from_ijk_order(array)
    assert planes_first.flags.c_contiguous and planes_first.shape == shape[::-1]
    np.testing.assert_array_equal(to_ijk_order(planes_first), array)
    np.testing.assert_array_equal(from_ijk_order(array[:, ::2]), np.ascontiguousarray(array[:, ::2].T))
    vector = len(shape) == 4
    affine = _oblique_affine() if len(shape) > 2 else _in_plane_affine()
    image = sitk_from_array(array, affine, vector=vector)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), planes_first)
    assert image.GetPixel(1, 2, 0) == (tuple(array[:, 1, 2, 0]) if vector else array[1, 2] if len(shape) == 2 else array[1, 2, 0])
    back, back_affine = array_from_sitk(image)
    np.testing.assert_array_equal(back, array if vector else array[None])
    np.testing.assert_allclose(back_affine, affine, atol=1e-12)


def test_same_grid_tolerance_is_a_thousandth_of_a_voxel_over_the_whole_grid():
    shape = (40, 30, 12)
    affine = _oblique_affine()
    finest = min(ANISOTROPIC)
    assert same_grid(shape, affine, shape, affine.copy())
    nudged = affine.copy()
    nudged[:3, 3] += 0.4 * GRID_TOLERANCE * finest
    assert same_grid(shape, affine, shape, nudged)
    moved = affine.copy()
    moved[:3, 3] += 2 * GRID_TOLERANCE * finest
    assert not same_grid(shape, affine, shape, moved)
    # a tiny error per voxel step adds up over the grid: the far corner decides
    scaled = affine.copy()
    scaled[:3, 2] *= 1 + 3 * GRID_TOLERANCE / shape[2]
    assert not same_grid(shape, affine, shape, scaled)
    assert not same_grid(shape, affine, (40, 30, 13), affine)


def test_evaluate_refuses_a_prediction_one_pixel_off_on_a_microscopy_grid(tmp_path):
    """0.5 µm pixels: the old absolute 1e-3 mm tolerance let a one-pixel shift through as the same grid."""
    from medpanoptic.metrics.evaluate import evaluate_folders

    ph = nuclei_phantom(shape=(48, 40), n_nuclei=4, seed=1)
    shifted = ph.pair.affine.numpy().copy()
    shifted[0, 3] += 0.0005  # one pixel
    write_panoptic(ph.pair, tmp_path / "gt" / "case", ph.label_set)
    write_panoptic(MetaTensor(ph.pair.as_tensor(), affine=shifted), tmp_path / "pred" / "case", ph.label_set)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False, surface=False)
    assert report.cases == []
    assert [e["case"] for e in report.errors] == ["case"]
    assert "does not match the ground truth" in report.errors[0]["error"]


def _unsigned_series(series: Path, dst: Path) -> Path:
    """The series with unsigned stored pixels and no intercept."""
    dst.mkdir()
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        stored = np.frombuffer(ds.PixelData, dtype=np.int16)
        ds.PixelData = np.clip(stored, 0, None).astype(np.uint16).tobytes()
        ds.PixelRepresentation, ds.RescaleIntercept = 0, "0"
        ds.save_as(dst / f.name)
    return dst


def test_classic_series_and_enhanced_file_rescale_alike(tmp_path):
    """One modality LUT: the same pixels in a classic series and in an Enhanced file give the same
    values in the same dtype (the Enhanced reader used to turn unsigned pixels into int16)."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    ph = ct_phantom(shape=(20, 18, 6), spacing=ANISOTROPIC, direction=OBLIQUE, n_lesions=0, seed=3)
    write_dicom_series(ph.image, tmp_path / "ct")
    series = _unsigned_series(tmp_path / "ct", tmp_path / "unsigned")
    datasets = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    enhanced = tmp_path / "enhanced.dcm"
    LegacyConvertedEnhancedCTImage(datasets, pydicom.uid.generate_uid(), 2, pydicom.uid.generate_uid(), 1).save_as(enhanced)
    classic, multi = read_scan(series), read_scan(enhanced)
    assert multi.meta["source_format"] == "dicom-enhanced" and classic.meta["source_format"] == "dicom"
    assert multi.dtype == classic.dtype
    np.testing.assert_array_equal(multi.numpy(), classic.numpy())


def test_rescale_keeps_exact_integers_in_the_smallest_type():
    stored = np.array([[[0, 65535]], [[7, 9]]], dtype=np.uint16)
    assert rescale(stored, [1, 1], [0, 0]).dtype == np.uint16  # nothing added: the stored type
    shifted = rescale(stored.copy(), [1, 1], [-1024, -1024])
    assert shifted.dtype == np.int32 and shifted.ravel().tolist() == [-1024, 64511, -1017, -1015]
    small = rescale(np.array([[[0, 3000]]], np.uint16), [1], [-1024])
    assert small.dtype == np.int16 and small.ravel().tolist() == [-1024, 1976]
    per_frame = rescale(np.array([[[1]], [[1]]], np.int16), [1, 1], [0, 5])
    assert per_frame.ravel().tolist() == [1, 6]
    fractional = rescale(np.array([[[2]], [[4]]], np.int16), [0.5, 0.25], [0, 0.5])
    assert fractional.dtype == np.float32 and fractional.ravel().tolist() == [1.0, 1.5]
