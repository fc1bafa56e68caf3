"""DICOM WSI (VL Whole Slide Microscopy) read by region through wsidicom: a folder of one series, or its files.

Levels are the pyramid's instances, largest first; the pixel size is the base level's
PixelSpacing (mm, rows then columns) from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ...errors import InputError
from ..slide import Box
from ._base import LazySlide, downsamples, resolve_pixel_size


class DicomSlide(LazySlide):
    """The selected pyramid of a DICOM WSI series (one focal plane, the first optical path)."""

    format_name = "dicom"

    def __init__(self, path: str | os.PathLike | Iterable[str | os.PathLike], pixel_size_mm=None) -> None:
        from wsidicom import WsiDicom

        files = [Path(p) for p in path] if not isinstance(path, (str, os.PathLike)) else None
        self.path = Path(path) if files is None else files[0].parent
        try:
            self._wsi = WsiDicom.open(files if files is not None else self.path)
            pyramid = list(self._wsi.levels)
        except Exception as e:  # wsidicom raises its own and pydicom's types
            raise InputError(self.path, f"cannot read as DICOM WSI: {type(e).__name__}: {e}") from None
        try:
            if not pyramid:
                raise InputError(self.path, "no DICOM WSI pyramid level in the series")
            self._wsi_levels = [level.level for level in pyramid]
            self.levels = downsamples([(int(level.size.height), int(level.size.width)) for level in pyramid])
            probe = np.asarray(self._wsi.read_region((0, 0), self._wsi_levels[0], (1, 1), as_array=True))
            self.channels = int(probe.shape[2]) if probe.ndim == 3 else 1
            self.dtype = probe.dtype
            self.pixel_size_mm = resolve_pixel_size(self.path, _spacing(pyramid[0]), pixel_size_mm, 2)
        except InputError:
            self._wsi.close()
            raise
        except Exception as e:
            self._wsi.close()
            raise InputError(self.path, f"cannot read the DICOM WSI's levels: {type(e).__name__}: {e}") from None

    def _read(self, box: Box, level: int) -> np.ndarray:
        rows, cols = box
        region = self._wsi.read_region((cols.start, rows.start), self._wsi_levels[level],
                                       (cols.stop - cols.start, rows.stop - rows.start), as_array=True)
        region = np.asarray(region)
        return region if region.ndim == 3 else region[..., None]

    def close(self) -> None:
        self._wsi.close()


def _spacing(level) -> tuple[float, float] | None:
    try:
        spacing = level.pixel_spacing
    except Exception:  # WsiDicomNoResolutionError: the file has no PixelSpacing
        return None
    return (float(spacing.height), float(spacing.width))
