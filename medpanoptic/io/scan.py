"""`read_scan`: any supported scan -> channel-first MetaTensor with a RAS affine and its source remembered.

`load_scan` does the reading without PyTorch (arrays, affine, meta), for tools that only look.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .dicom_read import is_dicom_file, read_dicom
from .itk import array_from_sitk
from .nifti import read_nifti

if TYPE_CHECKING:
    from monai.data import MetaTensor

FILENAME_KEY = "filename_or_obj"  # MONAI's ImageMetaKey.FILENAME_OR_OBJ, without importing MONAI

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
"""Single-file formats read through SimpleITK. DICOM is recognised by content, not name."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(ITK_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


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


def read_scan(path: str | os.PathLike, series_uid: str | None = None) -> MetaTensor:
    """Read a scan into a (C, *spatial) MetaTensor in the scan's own voxel grid.

    Accepts a DICOM folder (one image series, or the one named by `series_uid`), a single
    classic or Enhanced multi-frame DICOM file, NIfTI, NRRD/NHDR, MHA/MHD, and 2D PNG/TIFF/JPEG.
    Nothing is resampled or reoriented: the affine maps voxel (i, j, k) to RAS mm. The meta
    remembers the source: `filename_or_obj`, `source_format`, and for DICOM the Study, Series
    and SOP Instance UIDs in slice order (what a DICOM SEG needs to reference its source).
    Refuses, with the file and the reason, anything that would not be a faithful volume.
    """
    return make_meta_tensor(*load_scan(path, series_uid))


def load_scan(path: str | os.PathLike, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(channel-first array, RAS affine, meta) of a scan: what `read_scan` wraps, read without PyTorch."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")
    if path.is_dir() or is_dicom_file(path):
        volume = read_dicom(path, series_uid)
        meta = {**volume.meta, FILENAME_KEY: str(path)}
        return volume.array[None], volume.affine, meta
    suffix = _suffix(path)
    if suffix not in ITK_SUFFIXES:
        raise InputError(path, f"unsupported file type '{suffix or path.name}' (expected a DICOM file or folder, or one of {', '.join(ITK_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise InputError(path, "the file is empty")
    if suffix in (".nii", ".nii.gz"):
        array, affine = read_nifti(path)
        return _finish(array, affine, path, suffix)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise InputError(path, f"cannot read as {suffix}: {reason}") from None
    if image.GetDimension() > 3 or (image.GetDimension() == 3 and image.GetSize()[2] == 1 and suffix in (".png", ".jpg", ".jpeg", ".bmp")):
        image = _squeeze(image, path)
    array, affine = array_from_sitk(image, str(path))
    return _finish(array, affine, path, suffix)


def _finish(array: np.ndarray, affine: np.ndarray, path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(path, "the image contains NaN or infinite voxels")
    meta = {FILENAME_KEY: str(path), "source_format": suffix.lstrip("."), "source_files": [str(path)]}
    return array, affine, meta


def _squeeze(image: sitk.Image, path: Path) -> sitk.Image:
    size = list(image.GetSize())
    if all(s == 1 for s in size[3:]) and image.GetDimension() > 3:
        return image[(slice(None),) * 3 + (0,) * (len(size) - 3)]
    if image.GetDimension() == 3 and size[2] == 1:
        return image[:, :, 0]
    raise InputError(path, f"a {image.GetDimension()}D image of size {size}: only one 2D or 3D volume per file is supported (4D series are not)")
