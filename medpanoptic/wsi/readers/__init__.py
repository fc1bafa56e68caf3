"""`open_slide`: one lazy `Slide` for any whole slide or huge volume, the backend chosen by content.

| what | backend |
| --- | --- |
| pyramidal TIFF, OME-TIFF (`.tif`, `.tiff`, `.btf`, or TIFF magic bytes) | `TiffSlide` (tifffile + zarr) |
| SVS, NDPI, MRXS, SCN, VMS, BIF and whatever else OpenSlide detects | `OpenSlideSlide` |
| DICOM WSI: a folder of one series, or its files | `DicomSlide` (wsidicom) |
| OME-Zarr (NGFF 0.4 / 0.5 multiscales), 2D or 3D | `OmeZarrSlide` |
| uncompressed NIfTI (`.nii`), memory-mapped, 3D | `NiftiSlide` |
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ...errors import InputError
from ..slide import Slide

OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
READERS = ("tiff", "openslide", "dicom", "zarr", "nifti")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_slide(
    path: str | os.PathLike, pixel_size_mm: float | Sequence[float] | None = None, reader: str | None = None,
) -> Slide:
    """A lazily read `Slide` over `path`; `pixel_size_mm` (one value or one per axis) overrides the file's.

    `reader` forces a backend (one of `READERS`); by default it is chosen from the file's
    content and suffix. Anything that is not a slide is refused with an `InputError`.
    """
    from .._malloc import share_malloc_arenas

    share_malloc_arenas()  # before the readers' threads allocate (see `wsi._malloc`)
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    name = reader or _detect(path)
    if name not in READERS:
        raise InputError(path, f"unknown slide reader {name!r} (choose from {', '.join(READERS)})")
    return _backend(name)(path, pixel_size_mm=pixel_size_mm)


def _backend(name: str):
    if name == "tiff":
        from .tiff import TiffSlide
        return TiffSlide
    if name == "openslide":
        from .openslide import OpenSlideSlide
        return OpenSlideSlide
    if name == "dicom":
        from .dicom import DicomSlide
        return DicomSlide
    if name == "zarr":
        from .zarr import OmeZarrSlide
        return OmeZarrSlide
    from .nifti import NiftiSlide
    return NiftiSlide


def _detect(path: Path) -> str:
    """The backend for `path`, from what the file holds first and its suffix second."""
    lower = path.name.lower()
    if path.is_dir():
        if any((path / marker).exists() for marker in ("zarr.json", ".zattrs", ".zgroup")):
            return "zarr"
        if any(_is_dicom(p) for p in sorted(path.iterdir())[:64] if p.is_file()):
            return "dicom"
        raise InputError(path, "not a slide: a folder that is neither OME-Zarr nor a DICOM series")
    if lower.endswith(".nii"):
        return "nifti"
    if lower.endswith(".nii.gz"):
        raise InputError(path, "a compressed NIfTI cannot be read by region: decompress it (gunzip) first")
    if lower.endswith(OPENSLIDE_SUFFIXES):
        return "openslide"
    head = _head(path, 132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in _TIFF_MAGIC:
        return "tiff" if lower.endswith(TIFF_SUFFIXES) or _openslide_vendor(path) in (None, "generic-tiff") else "openslide"
    if _openslide_vendor(path) is not None:
        return "openslide"
    raise InputError(path, "not a slide: neither a TIFF, a DICOM file, OME-Zarr, NIfTI nor a format OpenSlide reads")


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None


def _is_dicom(path: Path) -> bool:
    return _head(path, 132)[128:132] == b"DICM"


def _openslide_vendor(path: Path) -> str | None:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(os.fspath(path))
    except Exception:  # no OpenSlide, or it cannot tell: not an OpenSlide file
        return None


__all__ = ["open_slide", "READERS"]
