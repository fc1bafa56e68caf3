"""A small, exact and fast NIfTI-1 writer (label, instance and viewer maps, phantom images), and a reader.

nibabel builds the header (qform and sform both set to the affine, scanner-anatomical,
millimetres). Unlike a generic writer it stores `scl_slope = 1, scl_inter = 0` explicitly:
integer ids are never scaled, and every reader agrees on that. Speed: the voxels are put in
NIfTI order (i fastest) by a plane-by-plane transpose that stays in cache, and compressed by
ISA-L's gzip (standard gzip output, several times faster than zlib at a better ratio).
No PyTorch here: reading a header must not wait for it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel import imageglobals

from .geometry import from_ijk_order

NIFTI_INTENT_LABEL = 1002
NIFTI_INTENT_VECTOR = 1007
VOX_OFFSET = 352  # 348-byte header + 4-byte empty extension flag
GZIP_LEVEL = 1


def nifti_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray, intent: int | None = None) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header["vox_offset"] = VOX_OFFSET
    if intent is not None:
        header["intent_code"] = intent
    header["scl_slope"] = 1.0
    header["scl_inter"] = 0.0
    return header


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, vector: bool = False, compress: bool = True) -> None:
    """Write a spatial integer array (i, j[, k]), or with `vector` a channel-first one, on a RAS affine.

    Vector images follow the NIfTI convention: components on the fifth axis, vector intent.
    """
    array = np.asarray(array)
    if vector:
        spatial = array.shape[1:]
        shape = tuple(spatial) + (1,) * (3 - len(spatial)) + (1, array.shape[0])
        intent = NIFTI_INTENT_VECTOR
    else:
        spatial = array.shape
        shape = tuple(spatial)
        intent = NIFTI_INTENT_LABEL
    header = nifti_header(shape, array.dtype, np.asarray(affine, dtype=float), intent)
    opener = igzip.open(path, "wb", compresslevel=GZIP_LEVEL) if compress else open(path, "wb")
    with opener as f:
        f.write(header.binaryblock)
        f.write(b"\x00" * (VOX_OFFSET - len(header.binaryblock)))
        for component in ([array[c] for c in range(array.shape[0])] if vector else [array]):
            f.write(memoryview(from_ijk_order(component)).cast("B"))


def read_nifti(
    path: str | os.PathLike, allow_guessed_geometry: bool = False, max_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Channel-first array and RAS affine of a NIfTI file, read by nibabel.

    nibabel rather than ITK: ITK's reader silently turns NaN voxels into 0, and nibabel's
    choice between sform and qform is the one MONAI uses. Vector images (components on the
    fifth axis) and RGB datatypes become channels; other non-spatial axes must have length 1.
    The header is checked before any voxel is read: its size against `max_bytes` (see
    `limits`), its voxel sizes and its geometry codes. A file that does not say where its
    voxels are is refused unless `allow_guessed_geometry`, which logs nibabel's guess.
    """
    from ..errors import GeometryError, InputError
    from .geometry import check_orthonormal
    from .limits import check_scan_size

    try:
        with _quiet_nibabel():
            image = nib.load(os.fspath(path))
    except Exception as e:  # nibabel raises many types on damaged files
        raise InputError(path, f"cannot read as NIfTI: {e}") from None
    header = _raw_header(path, image)
    check_scan_size(path, header.get_data_shape(), max_bytes=max_bytes)
    _check_nifti_geometry(path, header, allow_guessed_geometry)
    _check_nifti_length(path, header)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel raises many types on damaged files
        _diagnose_nifti_data(path, header)
        raise InputError(path, f"cannot read as NIfTI: {e}") from None
    affine = np.asarray(image.affine, dtype=float)
    if not np.isfinite(affine).all():
        raise GeometryError(path, "the qform/sform holds non-finite numbers")
    array = _channel_first(path, _colour_as_last_axis(data))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise GeometryError(path, "the affine has a zero-length axis")
    check_orthonormal(affine[:3, :3] / spacing, os.fspath(path))
    return array, affine


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs the header problems it "fixes" on load; we refuse them, or warn, ourselves."""
    was_disabled = imageglobals.logger.disabled
    imageglobals.logger.disabled = True
    try:
        yield
    finally:
        imageglobals.logger.disabled = was_disabled


def _raw_header(path, image) -> nib.Nifti1Header:
    """The header as written: nibabel's loaded copy has zero or negative pixdims already "fixed"."""
    from nibabel.openers import ImageOpener

    with ImageOpener(os.fspath(path)) as f:
        return type(image.header).from_fileobj(f, check=False)


def _channel_first(path, data: np.ndarray) -> np.ndarray:
    from ..errors import InputError

    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    shape = data.shape
    if len(shape) == 5 and shape[3] == 1:
        # a vector image; a single slice means a 2D image (how 2D RGB images are stored in NIfTI)
        array = np.moveaxis(data[:, :, :, 0, :], -1, 0)
        if array.shape[3] == 1:
            array = array[..., 0]
        return array
    if len(shape) > 3:
        if any(s != 1 for s in shape[3:]):
            raise InputError(path, f"a 4D image of shape {shape}: only one 2D or 3D volume per file is supported")
        return data.reshape(shape[:3])[None]
    return data[None]


def _colour_as_last_axis(data: np.ndarray) -> np.ndarray:
    """RGB24/RGBA32 voxels (a structured dtype, one field per colour) as a vector image (x, y, z, 1, colour)."""
    if not data.dtype.names:
        return data
    colours = np.stack([data[name] for name in data.dtype.names], axis=-1)
    spatial = colours.shape[:-1]
    if len(spatial) > 3 and all(s == 1 for s in spatial[3:]):
        spatial = spatial[:3]
    if len(spatial) > 3:
        return colours  # a colour time series: refused as 4D
    spatial = spatial + (1,) * (3 - len(spatial))
    return colours.reshape(spatial + (1, colours.shape[-1]))


def _check_nifti_geometry(path, header: nib.Nifti1Header, allow_guessed_geometry: bool) -> None:
    """Refuse non-positive voxel sizes and a file with neither qform nor sform, unless guessing is allowed."""
    import logging

    from ..errors import GeometryError

    spatial = min(3, int(header["dim"][0]))
    pixdim = [float(v) for v in header["pixdim"][1:1 + spatial]]
    problems = [f"pixdim[{i + 1}] is {v:g}" for i, v in enumerate(pixdim) if not (np.isfinite(v) and v > 0)]
    if problems:
        problems[-1] += ": voxel sizes must be finite and positive"
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        problems.append("qform_code and sform_code are both 0: the file does not say where its voxels lie in the patient")
    if not problems:
        return
    problem = "; ".join(problems)
    if not allow_guessed_geometry:
        raise GeometryError(path, f"{problem} (pass allow_guessed_geometry=True to accept nibabel's guess)")
    logging.getLogger("medpanoptic").warning(
        "%s: %s; accepting nibabel's guessed geometry because allow_guessed_geometry=True", os.fspath(path), problem)


def _data_bytes(header: nib.Nifti1Header) -> int:
    return int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize


def _check_nifti_length(path, header: nib.Nifti1Header) -> None:
    """An uncompressed file shorter than its header's offset plus voxel data is truncated."""
    from .limits import truncated

    if os.fspath(path).lower().endswith(".gz"):
        return  # the length is known only after unpacking: `_diagnose_nifti_data` tells
    offset = int(header["vox_offset"])
    present = max(0, os.path.getsize(path) - offset)
    if present < _data_bytes(header):
        raise truncated(path, _data_bytes(header), present)


def _diagnose_nifti_data(path, header: nib.Nifti1Header) -> None:
    """After a failed read of a .nii.gz: name truncation (or a broken gzip stream) as the reason."""
    from ..errors import InputError
    from .limits import truncated

    needed = int(header["vox_offset"]) + _data_bytes(header)
    total = 0
    try:
        with igzip.open(os.fspath(path), "rb") as f:
            while total < needed:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, OSError, ValueError) as e:
        raise InputError(path, f"truncated or corrupt gzip stream after {total} unpacked bytes ({e})") from None
    if total < needed:
        raise truncated(path, _data_bytes(header), max(0, total - int(header["vox_offset"])))
