"""`read_scan`: any supported scan -> channel-first MetaTensor with a RAS affine and its source remembered.

`load_scan` does the reading without PyTorch (arrays, affine, meta), for tools that only look.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import GeometryError, InputError
from .dicom_read import is_dicom_file, read_dicom
from .formats import SCAN_SUFFIXES, ScanFormat, scan_format, scan_suffix
from .geometry import check_spacing, same_grid, spacing_from_affine
from .itk import array_from_sitk
from .itk_header import check_header_geometry, check_payload, read_text_header
from .limits import check_scan_size
from .nifti import read_nifti

if TYPE_CHECKING:
    from monai.data import MetaTensor

FILENAME_KEY = "filename_or_obj"  # MONAI's ImageMetaKey.FILENAME_OR_OBJ, without importing MONAI
PIXEL_SIZE_KNOWN = "pixel_size_known"
"""Meta key of PNG/JPEG/BMP/TIFF images: False when the file states no pixel size (its spacing is then a
nominal 1 mm); absent for formats that always carry one."""

def make_meta_tensor(array: np.ndarray, affine: np.ndarray, meta: dict) -> MetaTensor:
    """Wrap a channel-first array as a MetaTensor whose affine (RAS) is also its original affine."""
    import torch
    from monai.data import MetaTensor
    from monai.utils import MetaKeys, SpaceKeys

    if array.dtype in (np.uint16, np.uint32):  # torch has few kernels for these: widen losslessly
        array = array.astype(np.int32 if array.dtype == np.uint16 else np.int64)
    affine_t = torch.as_tensor(affine, dtype=torch.float64)
    full = {
        **meta,
        MetaKeys.AFFINE: affine_t,
        MetaKeys.ORIGINAL_AFFINE: affine_t.clone(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[1:]),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
    }
    return MetaTensor(torch.from_numpy(array), meta=full)


def read_scan(
    path: str | os.PathLike,
    series_uid: str | None = None,
    *,
    allow_guessed_geometry: bool = False,
    max_bytes: int | None = None,
) -> MetaTensor:
    """Read a scan into a (C, *spatial) MetaTensor in the scan's own voxel grid.

    Accepts a DICOM folder (one image series, or the one named by `series_uid`), a single
    classic or Enhanced multi-frame DICOM file, NIfTI, NRRD/NHDR, MHA/MHD, and 2D PNG/TIFF/JPEG.
    Nothing is resampled or reoriented: the affine maps voxel (i, j, k) to RAS mm. The meta
    remembers the source: `filename_or_obj`, `source_format`, and for DICOM the Study, Series
    and SOP Instance UIDs in slice order (what a DICOM SEG needs to reference its source);
    for PNG/JPEG/BMP/TIFF, `pixel_size_known` (False: the file states none, the spacing is 1 mm).
    Refuses, with the file and the reason, anything that would not be a faithful volume:
    geometry that is missing or impossible (unless `allow_guessed_geometry`, for NIfTI,
    NRRD and MetaImage files that give no geometry, which logs the guess), a volume whose
    float32 size would exceed `max_bytes` (default `limits.MAX_SCAN_BYTES`, or the
    environment's MEDPANOPTIC_MAX_SCAN_BYTES; checked from the header before reading), and
    voxels that are not finite once rescaled and converted to float32. float64 images come
    back as float32, the dtype the network gets.
    """
    return make_meta_tensor(*load_scan(path, series_uid, allow_guessed_geometry=allow_guessed_geometry,
                                       max_bytes=max_bytes))


def read_scan_channels(paths: Sequence[str | os.PathLike], case: str | None = None, *,
                       max_bytes: int | None = None) -> MetaTensor:
    """Read a case stored one file per channel (nnU-Net's `<case>_0000.nii.gz`, `_0001`...) as one
    (C, *spatial) MetaTensor, channels in the order given.

    Every file must lie on the first one's grid: a channel elsewhere would pair the wrong voxels,
    so it is refused (GeometryError naming both files), never resampled. The meta is the first
    file's, with `source_files` listing all of them and `case` the case id, when given.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError(None, "a case needs at least one image file")
    arrays, first = [], None
    for path in paths:
        array, affine, meta = load_scan(path, max_bytes=max_bytes)
        if first is None:
            first = (array.shape[1:], affine, meta)
        elif not same_grid(first[0], first[1], array.shape[1:], affine):
            shape = "same shape, but shifted, rotated or of another spacing" if array.shape[1:] == first[0] \
                else f"shape {tuple(array.shape[1:])} vs {tuple(first[0])}"
            raise GeometryError(path, f"not on the grid of the case's first channel {paths[0]} ({shape})")
        arrays.append(array.astype(np.float32, copy=False))
    meta = {**first[2], "source_files": [str(p) for p in paths]}
    if case:
        meta["case"] = case
    return make_meta_tensor(np.concatenate(arrays), first[1], meta)


def load_scan(
    path: str | os.PathLike,
    series_uid: str | None = None,
    *,
    allow_guessed_geometry: bool = False,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(channel-first array, RAS affine, meta) of a scan: what `read_scan` wraps, read without PyTorch."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(path, "the file is empty")
    if path.is_dir() or is_dicom_file(path):
        volume = read_dicom(path, series_uid, max_bytes)
        meta = {**volume.meta, FILENAME_KEY: str(path)}
        return _network_ready(volume.array[None], path, "dicom"), volume.affine, meta
    fmt, suffix = scan_format(path), scan_suffix(path)
    if fmt is None or suffix is None:
        raise InputError(path, f"unsupported file type '{path.suffix.lower() or path.name}' "
                               f"(expected a DICOM file or folder, or one of {', '.join(sorted(SCAN_SUFFIXES))})")
    if fmt.reader == "nifti":
        array, affine = read_nifti(path, allow_guessed_geometry, max_bytes)
        return _finish(array, affine, path, suffix)
    image = _read_itk(path, fmt, suffix, allow_guessed_geometry, max_bytes)
    if image.GetDimension() > 3 or (image.GetDimension() == 3 and image.GetSize()[2] == 1 and fmt.picture):
        image = _squeeze(image, path)
    array, affine = array_from_sitk(image, str(path))
    return _finish(array, affine, path, suffix)


def _read_itk(path: Path, fmt: ScanFormat, suffix: str, allow_guessed_geometry: bool, max_bytes: int | None) -> sitk.Image:
    """A SimpleITK image, read only after its header (for `fmt.text_header` formats) passed the
    geometry, size and length checks."""
    header = read_text_header(path, suffix) if fmt.text_header else None
    if header is not None:
        check_header_geometry(header, suffix, allow_guessed_geometry)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size, components = reader.GetSize(), reader.GetNumberOfComponents()
        check_scan_size(path, size, components, max_bytes)
        if header is not None:
            check_spacing(reader.GetSpacing(), str(path), "the voxel spacing")
            item = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), components).GetSizeOfPixelComponent()
            check_payload(header, int(np.prod(size, dtype=np.int64)) * components * item)
        return reader.Execute()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise InputError(path, f"cannot read as {suffix}: {reason}") from None


def _network_ready(array: np.ndarray, path: Path, source_format: str) -> np.ndarray:
    """float64 as float32 (the network's dtype), refused if any voxel is then NaN or infinite.

    The check runs after the rescale and the cast: a finite 1e300 becomes inf in float32, and
    an infinite voxel would look like a lesion.
    """
    if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize > 4:
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        scaled = " after RescaleSlope/RescaleIntercept" if source_format == "dicom" else ""
        raise InputError(path, f"the image contains NaN or infinite voxels{scaled} as float32 (the network's dtype)")
    return array


def _finish(array: np.ndarray, affine: np.ndarray, path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if array.ndim == 4 and array.shape[0] > 1:
        raise InputError(
            path, f"a 3D image with {array.shape[0]} components per voxel (colour or vector): "
            "only single-channel 3D scans are supported (colour is read for 2D images)"
        )
    array = _network_ready(array, path, suffix.lstrip("."))
    meta = {FILENAME_KEY: str(path), "source_format": suffix.lstrip("."), "source_files": [str(path)]}
    fmt = scan_format(path)
    if fmt is not None and (fmt.picture or fmt.name == "tiff"):
        meta[PIXEL_SIZE_KNOWN] = not _default_spacing(affine, array.ndim - 1)
    return array, affine, meta


def _default_spacing(affine: np.ndarray, ndim: int) -> bool:
    """Whether a picture's pixel size is the 1 mm readers give when the file states none (no PNG pHYs,
    no TIFF resolution; ITK's TIFF writer stores that 1 mm as 25.4 dpi). No microscope or camera
    image has 1 mm pixels, so 1 mm on every axis is taken as "not stated"."""
    return bool(np.allclose(spacing_from_affine(affine, ndim), 1.0, rtol=1e-6, atol=0.0))


def _squeeze(image: sitk.Image, path: Path) -> sitk.Image:
    size = list(image.GetSize())
    if all(s == 1 for s in size[3:]) and image.GetDimension() > 3:
        return image[(slice(None),) * 3 + (0,) * (len(size) - 3)]
    if image.GetDimension() == 3 and size[2] == 1:
        return image[:, :, 0]
    raise InputError(path, f"a {image.GetDimension()}D image of size {size}: only one 2D or 3D volume per file is supported (4D series are not)")
