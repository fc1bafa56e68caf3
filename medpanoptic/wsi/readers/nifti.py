"""Large uncompressed NIfTI volumes, memory-mapped and read by region (level 0 only).

The header goes through the same checks as `read_scan` (`io.nifti`): voxel sizes, geometry
codes, truncation and an orthonormal direction. The slide's axes are the file's (i, j, k);
its pixel size is the length of each affine column, in mm.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import GeometryError, InputError
from ..slide import Box, Level
from ._base import LazySlide, resolve_pixel_size


class NiftiSlide(LazySlide):
    """A 3D NIfTI-1/2 file read through nibabel's array proxy (a memory map, never the whole volume)."""

    format_name = "nifti"

    def __init__(self, path: str | os.PathLike, pixel_size_mm=None, allow_guessed_geometry: bool = False) -> None:
        import nibabel as nib

        from ...io.geometry import check_orthonormal
        from ...io.nifti import (
            _check_nifti_geometry,
            _check_nifti_length,
            _quiet_nibabel,
            _raw_header,
        )

        self.path = Path(path)
        if self.path.name.lower().endswith(".gz"):
            raise InputError(self.path, "a compressed NIfTI cannot be read by region: decompress it (gunzip) first")
        try:
            with _quiet_nibabel():
                image = nib.load(os.fspath(self.path), mmap=True)
        except Exception as e:  # nibabel raises many types on damaged files
            raise InputError(self.path, f"cannot read as NIfTI: {type(e).__name__}: {e}") from None
        header = _raw_header(self.path, image)
        _check_nifti_geometry(self.path, header, allow_guessed_geometry)
        _check_nifti_length(self.path, header)
        shape = tuple(int(n) for n in image.shape)
        if len(shape) > 3 and any(n != 1 for n in shape[3:]):
            raise InputError(self.path, f"a 4D image of shape {shape}: only one 3D volume per file can be read by region")
        if len(shape) < 3 or image.get_data_dtype().names:
            raise InputError(self.path, f"a volume of shape {shape} ({image.get_data_dtype()}): a 3D scalar volume is needed")
        affine = np.asarray(image.affine, dtype=float)
        if not np.isfinite(affine).all():
            raise GeometryError(self.path, "the qform/sform holds non-finite numbers")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing == 0):
            raise GeometryError(self.path, "the affine has a zero-length axis")
        check_orthonormal(affine[:3, :3] / spacing, os.fspath(self.path))
        self.affine = affine
        self._proxy = image.dataobj
        self._extra = len(shape) - 3
        self.levels = (Level(shape[:3], (1.0, 1.0, 1.0)),)
        self.channels = 1
        self.dtype = np.dtype(np.float32) if _scaled(header) else image.get_data_dtype().newbyteorder("=")
        self.pixel_size_mm = resolve_pixel_size(self.path, tuple(float(s) for s in spacing), pixel_size_mm, 3)

    def _read(self, box: Box, level: int) -> np.ndarray:
        pixels = np.asanyarray(self._proxy[tuple(box) + (0,) * self._extra])
        return np.ascontiguousarray(pixels.astype(self.dtype, copy=False))[..., None]


def _scaled(header) -> bool:
    slope, inter = header["scl_slope"], header["scl_inter"]
    return bool(np.isfinite(slope) and slope not in (0, 1)) or bool(np.isfinite(inter) and inter != 0)
