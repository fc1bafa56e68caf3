"""Lazy slide readers: the same pixels at the same positions as each format's own library, pixel sizes, bad input.

Real slides no one here wrote: none ships inside an installed or PyPI package. OpenSlide's
wheels (openslide-python, openslide-bin) carry only the library; tifffile and imagecodecs
carry no images; `wsidicom-data` (PyPI) holds codec test frames and one 240x240 PNG tile, not
a slide; skimage's TIFFs are untiled multipage images. So every file here is written by the
libraries themselves in the vendors' layouts (`wsi_files.py`) and read back by both sides.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from medpanoptic.errors import GeometryError, InputError
from medpanoptic.wsi.readers import open_slide
from medpanoptic.wsi.readers.openslide import rgba_on_background
from medpanoptic.wsi.slide import Slide

from .wsi_files import write_dicom_wsi, write_ome_pyramid, write_svs_like

BOXES = [(slice(0, 37), slice(0, 53)), (slice(100, 357), slice(250, 290)), (slice(255, 257), slice(255, 513))]


def _rgb(shape, seed=0):
    """Smooth-ish RGB content, so that a misplaced region cannot match by chance."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = np.stack([(y * 3 + x) % 251, (x * 5 + 7 * y) % 253, (y * x) % 255], -1)
    return (base + rng.integers(0, 4, size=base.shape)).astype(np.uint8)


def _inside(box, shape):
    return all(s.stop <= n for s, n in zip(box, shape))


# -- pyramidal TIFF / OME-TIFF ---------------------------------------------------------------
def test_ome_tiff_regions_match_tifffile_at_every_level(tmp_path):
    import tifffile

    image = _rgb((700, 900))
    path = tmp_path / "slide.ome.tif"
    write_ome_pyramid(path, image, pixel_um=0.25)
    with open_slide(path) as slide:
        assert isinstance(slide, Slide) and type(slide).__name__ == "TiffSlide"
        assert slide.pixel_size_mm == (0.00025, 0.00025)
        assert [lv.shape for lv in slide.levels] == [(700, 900), (350, 450), (175, 225)]
        assert [lv.downsample for lv in slide.levels] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
        assert slide.channels == 3 and slide.dtype == np.uint8
        for k in range(3):
            reference = tifffile.imread(path, level=k)
            for box in BOXES:
                if _inside(box, slide.levels[k].shape):
                    np.testing.assert_array_equal(slide.read(box, k), reference[box])


def test_ome_tiff_3d_pixel_size_in_its_units(tmp_path):
    import tifffile

    volume = (np.arange(6 * 64 * 80, dtype=np.uint16).reshape(6, 64, 80) * 7) % 4093
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, volume, tile=(32, 32), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "µm", "PhysicalSizeY": 350.0,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeX": 0.4, "PhysicalSizeXUnit": "µm"})
    with open_slide(path) as slide:
        assert slide.shape == (6, 64, 80) and slide.channels == 1
        np.testing.assert_allclose(slide.pixel_size_mm, (0.002, 0.00035, 0.0004))
        box = (slice(2, 5), slice(10, 41), slice(33, 80))
        np.testing.assert_array_equal(slide.read(box)[..., 0], volume[box])


def test_svs_read_by_openslide_matches_openslide_and_tifffile(tmp_path):
    import openslide

    image = _rgb((600, 760), seed=3)
    path = tmp_path / "slide.svs"
    levels = write_svs_like(path, image, mpp=0.2527)
    reference = openslide.OpenSlide(str(path))
    with open_slide(path) as slide, open_slide(path, reader="tiff") as by_tifffile:
        assert type(slide).__name__ == "OpenSlideSlide"
        assert slide.pixel_size_mm == pytest.approx((0.0002527, 0.0002527))
        assert by_tifffile.pixel_size_mm == pytest.approx(slide.pixel_size_mm)
        assert [lv.shape for lv in slide.levels] == [lv.shape[:2] for lv in levels] == [lv.shape for lv in by_tifffile.levels]
        for k in range(3):
            for box in BOXES:
                if not _inside(box, slide.levels[k].shape):
                    continue
                ours = slide.read(box, k)
                x0, y0 = box[1].start * 2**k, box[0].start * 2**k
                size = (box[1].stop - box[1].start, box[0].stop - box[0].start)
                theirs = np.asarray(reference.read_region((x0, y0), k, size))
                assert theirs[..., 3].min() == 255
                np.testing.assert_array_equal(ours, theirs[..., :3])
                np.testing.assert_array_equal(by_tifffile.read(box, k), ours)
                np.testing.assert_array_equal(ours, levels[k][box])
    reference.close()


def test_transparent_openslide_pixels_become_the_background():
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255], [100, 100, 100, 128]]], dtype=np.uint8)
    rgb = rgba_on_background(rgba)
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(rgb[0, 1], [200, 100, 50])
    np.testing.assert_array_equal(rgb[0, 2], [(100 * 128 + 255 * 127 + 127) // 255] * 3)
    np.testing.assert_array_equal(rgba_on_background(rgba, (0, 0, 0))[0, 0], [0, 0, 0])


# -- DICOM WSI -------------------------------------------------------------------------------
def test_dicom_wsi_matches_wsidicom(tmp_path):
    from wsidicom import WsiDicom

    image = _rgb((300, 520), seed=5)
    folder = tmp_path / "wsi"
    levels = write_dicom_wsi(folder, image, spacing_mm=0.00049, n_levels=2)
    reference = WsiDicom.open(folder)
    for source in (folder, sorted(folder.glob("*.dcm"))):
        slide = open_slide(folder) if source is folder else _open_files(source)
        with slide:
            assert type(slide).__name__ == "DicomSlide"
            assert slide.pixel_size_mm == pytest.approx((0.00049, 0.00049))
            assert [lv.shape for lv in slide.levels] == [(300, 520), (150, 260)]
            for k in range(2):
                for box in BOXES:
                    if not _inside(box, slide.levels[k].shape):
                        continue
                    size = (box[1].stop - box[1].start, box[0].stop - box[0].start)
                    theirs = reference.read_region((box[1].start, box[0].start), k, size, as_array=True)
                    np.testing.assert_array_equal(slide.read(box, k), theirs)
                    np.testing.assert_array_equal(slide.read(box, k), levels[k][box])
    reference.close()


def _open_files(files):
    from medpanoptic.wsi.readers.dicom import DicomSlide

    return DicomSlide(files)


def test_one_dicom_file_of_a_series_opens_as_dicom(tmp_path):
    write_dicom_wsi(tmp_path / "wsi", _rgb((200, 200)), n_levels=1)
    with open_slide(tmp_path / "wsi" / "level0.dcm") as slide:
        assert type(slide).__name__ == "DicomSlide" and slide.shape == (200, 200)


# -- OME-Zarr --------------------------------------------------------------------------------
def test_ome_zarr_2d_written_by_ome_zarr_matches_its_reader(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    image = np.moveaxis(_rgb((420, 300), seed=2), -1, 0)
    path = tmp_path / "image.ome.zarr"
    write_image(image, str(path), scale_factors=(2, 4), axes="cyx", scale={"c": 1.0, "y": 0.5, "x": 0.5},
                axes_units={"y": "micrometer", "x": "micrometer"})
    node = list(Reader(parse_url(str(path)))())[0]
    with open_slide(path) as slide:
        assert type(slide).__name__ == "OmeZarrSlide"
        assert slide.pixel_size_mm == (0.0005, 0.0005) and slide.channels == 3
        assert [lv.shape for lv in slide.levels] == [d.shape[1:] for d in node.data]
        assert [lv.downsample for lv in slide.levels] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
        for k in range(3):
            for box in BOXES:
                if _inside(box, slide.levels[k].shape):
                    theirs = np.moveaxis(np.asarray(node.data[k][(slice(None),) + box]), 0, -1)
                    np.testing.assert_array_equal(slide.read(box, k), theirs)


def test_ome_zarr_3d_anisotropic(tmp_path):
    from ome_zarr.writer import write_image

    volume = (np.arange(20 * 64 * 48, dtype=np.uint16).reshape(20, 64, 48) * 13) % 1021
    path = tmp_path / "volume.ome.zarr"
    write_image(volume, str(path), scale_factors=(2,), axes="zyx", scale={"z": 2.5, "y": 0.8, "x": 0.8},
                axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
                storage_options={"chunks": (8, 32, 32)})
    with open_slide(path) as slide:
        np.testing.assert_allclose(slide.pixel_size_mm, (0.0025, 0.0008, 0.0008))
        assert slide.shape == (20, 64, 48) and slide.channels == 1
        box = (slice(3, 17), slice(30, 64), slice(0, 47))
        np.testing.assert_array_equal(slide.read(box)[..., 0], volume[box])


def test_ome_zarr_without_units_needs_a_pixel_size(tmp_path, caplog):
    from ome_zarr.writer import write_image

    path = tmp_path / "nounits.ome.zarr"
    write_image(np.zeros((64, 64), np.uint8), str(path), scale_factors=(), axes="yx")
    with pytest.raises(InputError, match=r"nounits\.ome\.zarr: no pixel size in the file; give --pixel-size"):
        open_slide(path)
    with caplog.at_level(logging.INFO, logger="medpanoptic"):
        with open_slide(path, pixel_size_mm=0.001) as slide:
            assert slide.pixel_size_mm == (0.001, 0.001)


# -- NIfTI -----------------------------------------------------------------------------------
def test_nifti_is_memory_mapped_and_keeps_its_spacing(tmp_path):
    from medpanoptic.synthetic import grid_affine, oblique_direction

    volume = (np.arange(30 * 40 * 24, dtype=np.int16).reshape(30, 40, 24) % 997).astype(np.int16)
    affine = grid_affine(volume.shape, (0.8, 0.9, 2.0), oblique_direction().ravel())
    path = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(volume, affine), path)
    with open_slide(path) as slide:
        assert type(slide).__name__ == "NiftiSlide"
        assert isinstance(slide._proxy, nib.arrayproxy.ArrayProxy)  # voxels stay on disk until a region is read
        np.testing.assert_allclose(slide.pixel_size_mm, (0.8, 0.9, 2.0))
        np.testing.assert_allclose(slide.affine, affine)
        box = (slice(5, 25), slice(0, 40), slice(10, 11))
        np.testing.assert_array_equal(slide.read(box)[..., 0], volume[box])
        assert slide.levels[0].shape == (30, 40, 24) and len(slide.levels) == 1


def test_nifti_refusals(tmp_path):
    volume = np.zeros((8, 8, 8), np.uint8)
    gz = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), gz)
    with pytest.raises(InputError, match=r"v\.nii\.gz: a compressed NIfTI cannot be read by region"):
        open_slide(gz)
    four = tmp_path / "t.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.uint8), np.eye(4)), four)
    with pytest.raises(InputError, match=r"t\.nii: a 4D image of shape \(8, 8, 8, 3\)"):
        open_slide(four)
    nowhere = tmp_path / "nowhere.nii"
    nib.save(nib.Nifti1Image(volume, None), nowhere)
    with pytest.raises(GeometryError, match=r"nowhere\.nii: qform_code and sform_code are both 0"):
        open_slide(nowhere)


# -- bad input -------------------------------------------------------------------------------
@pytest.fixture()
def ome_slide(tmp_path):
    path = tmp_path / "slide.ome.tif"
    write_ome_pyramid(path, _rgb((600, 600)), n_levels=2, tile=128)
    return path


def test_truncated_tiff_is_refused_when_opened(ome_slide):
    data = ome_slide.read_bytes()
    ome_slide.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"slide\.ome\.tif: (truncated TIFF: level \d has tiles past the end|cannot read as TIFF)"):
        open_slide(ome_slide)


def test_unreadable_level_names_the_level_and_region(ome_slide):
    import tifffile

    with tifffile.TiffFile(ome_slide) as tif:
        page = tif.series[0].levels[1].pages[0]
        offset, count = int(page.dataoffsets[0]), int(page.databytecounts[0])
    data = bytearray(ome_slide.read_bytes())
    data[offset:offset + count] = b"\xff" * count  # not a deflate stream any more
    ome_slide.write_bytes(bytes(data))
    with open_slide(ome_slide) as slide:
        np.testing.assert_array_equal(slide.read((slice(0, 10), slice(0, 10)), 0).shape, (10, 10, 3))
        with pytest.raises(InputError, match=r"slide\.ome\.tif: cannot read level 1 region \[0:10, 0:10\]"):
            slide.read((slice(0, 10), slice(0, 10)), 1)


def test_not_a_slide(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: not a slide: neither a TIFF"):
        open_slide(text)
    with pytest.raises(InputError, match=r"empty: not a slide: a folder that is neither OME-Zarr nor a DICOM series"):
        (tmp_path / "empty").mkdir()
        open_slide(tmp_path / "empty")
    with pytest.raises(InputError, match=r"missing\.tif: no such file or folder"):
        open_slide(tmp_path / "missing.tif")
    fake = tmp_path / "fake.svs"
    fake.write_bytes(b"not an svs at all")
    with pytest.raises(InputError, match=r"fake\.svs: cannot read with OpenSlide"):
        open_slide(fake)


def test_no_pixel_size_is_refused_unless_given(tmp_path, caplog):
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _rgb((256, 256)), tile=(128, 128), photometric="rgb")
    with pytest.raises(InputError, match=r"plain\.tif: no pixel size in the file; give --pixel-size"):
        open_slide(path)
    with open_slide(path, pixel_size_mm=(0.0005, 0.0004)) as slide:
        assert slide.pixel_size_mm == (0.0005, 0.0004)
    with pytest.raises(InputError, match=r"plain\.tif: pixel size must be finite and positive"):
        open_slide(path, pixel_size_mm=-1.0)


def test_given_pixel_size_overrides_the_files_and_is_logged(ome_slide, caplog):
    with caplog.at_level(logging.INFO, logger="medpanoptic"):
        with open_slide(ome_slide, pixel_size_mm=0.00025) as slide:
            assert slide.pixel_size_mm == (0.00025, 0.00025)
    assert "pixel size (0.00025, 0.00025) mm given, overriding the file's (0.0005, 0.0005) mm" in caplog.text


def test_region_outside_and_missing_level(ome_slide):
    with open_slide(ome_slide) as slide:
        with pytest.raises(InputError, match=r"region \[590:610, 0:10\] lies outside level 0 of shape \(600, 600\)"):
            slide.read((slice(590, 610), slice(0, 10)))
        with pytest.raises(InputError, match=r"slide\.ome\.tif: level 5 does not exist \(the slide has 2\)"):
            slide.read((slice(0, 10), slice(0, 10)), 5)


def test_unknown_reader_is_refused(ome_slide):
    with pytest.raises(InputError, match=r"unknown slide reader 'bioformats'"):
        open_slide(ome_slide, reader="bioformats")


def test_a_dicom_folder_that_is_not_a_slide(tmp_path, pydicom_files):
    import shutil

    (tmp_path / "ct").mkdir()
    shutil.copy(pydicom_files / "CT_small.dcm", tmp_path / "ct" / "CT_small.dcm")
    with pytest.raises(InputError, match=r"ct: cannot read as DICOM WSI"):
        open_slide(tmp_path / "ct")


@pytest.mark.parametrize(("resolution", "unit", "expected_mm"), [
    ((20000.0, 25000.0), "CENTIMETER", (0.0004, 0.0005)),  # (x, y) pixels per cm
    ((50800.0, 50800.0), "INCH", (0.0005, 0.0005)),
])
def test_pixel_size_from_the_resolution_tags(tmp_path, resolution, unit, expected_mm):
    import tifffile

    path = tmp_path / "tags.tif"
    tifffile.imwrite(path, _rgb((256, 256)), tile=(128, 128), photometric="rgb", resolution=resolution,
                     resolutionunit=unit, metadata=None)
    with open_slide(path) as slide:
        assert slide.pixel_size_mm == pytest.approx(expected_mm)
