"""DICOM scans: classic single-frame series (a folder or a file) and Enhanced multi-frame files.

One pydicom header pass groups a folder's files by series, sorts the slices along their
normal and validates the geometry; GDCM (through SimpleITK) then decodes the pixels of
exactly those files in exactly that order, so every transfer syntax GDCM knows is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import GeometryError, InputError
from .geometry import affine_from_plane_stack, check_spacing, to_ijk_order
from .limits import check_scan_size, truncated

HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription",
    "SeriesNumber", "Modality", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns", "NumberOfFrames",
    "SamplesPerPixel", "InstanceNumber", "RescaleSlope", "RescaleIntercept", "BitsAllocated",
    "PixelRepresentation", "BitsStored", "PhotometricInterpretation", "PatientID", "PixelData",
]
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
SEG_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
"""Segmentation Storage and Label Map Segmentation Storage: results, never scans."""
IDENTIFYING_TAGS = ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID", "SeriesInstanceUID")
"""A file without the 'DICM' preamble counts as DICOM only if pydicom finds one of these in it."""

NON_IMAGE_OBJECTS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a DICOM Segmentation (a result, not a scan): read it with read_panoptic",
    "1.2.840.10008.5.1.4.1.1.66.7": "a DICOM Label Map Segmentation (a result, not a scan): read it with read_panoptic",
    "1.2.840.10008.5.1.4.1.1.66.5": "a DICOM Surface Segmentation (a result, not a scan)",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set (RTSTRUCT contours, not a scan)",
    "1.2.840.10008.5.1.4.1.1.88.": "a DICOM Structured Report (SR, not a scan)",
    "1.2.840.10008.5.1.4.1.1.11.": "a DICOM Presentation State (PR, display settings, not a scan)",
}
"""SOP classes (or class prefixes) that may carry Rows or pixels but are not scans, and what each one is."""

NON_IMAGE_MODALITIES = {"SEG": "a DICOM Segmentation (a result, not a scan): read it with read_panoptic",
                        "RTSTRUCT": "an RT Structure Set (RTSTRUCT contours, not a scan)",
                        "SR": "a DICOM Structured Report (SR, not a scan)", "PR": "a DICOM Presentation State (PR, not a scan)",
                        "KO": "a DICOM Key Object Selection (KO, not a scan)"}

logger = logging.getLogger("medpanoptic")


@dataclass
class SeriesInfo:
    """The headers of one series found in a folder (what `medpanoptic info` lists)."""

    series_uid: str
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)
    headers: list[pydicom.Dataset] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.files)

    @property
    def is_image(self) -> bool:
        """True when at least one file of the series holds a scan's pixels."""
        return any(is_image_header(h) for h in self.headers)

    def images_only(self) -> SeriesInfo:
        """The same series without its non-image objects (a SEG or SR that shares the series UID)."""
        kept = [(f, h) for f, h in zip(self.files, self.headers) if is_image_header(h)]
        for f, h in zip(self.files, self.headers):
            if not is_image_header(h):
                logger.info("%s: ignored inside series %s: %s", f, self.series_uid, non_image_kind(h))
        return SeriesInfo(self.series_uid, self.description, self.modality, [f for f, _ in kept], [h for _, h in kept])

    def summary(self) -> str:
        return f"{self.series_uid}  {self.modality or '?':<4} {self.n_files:>4} file(s)  {self.description!r}"


DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def is_dicom_file(path: Path) -> bool:
    """DICOM by content: 'DICM' at byte 128 (Part 10), else a bare dataset that parses and has a SOP Class UID.

    The suffix is only a hint (`.dcm` files are tried first as DICOM); dcmqi's `label.seg` and
    PACS exports without a suffix are recognised by what they hold.
    """
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return _is_bare_dataset(path, head)


def _is_bare_dataset(path: Path, head: bytes) -> bool:
    """A dataset without preamble starts with a group 0002 or 0008 element; one that parses with a SOP Class UID is DICOM."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        header = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # pydicom raises many types on bytes that are not DICOM
        return False
    uid = str(header.get("SOPClassUID", ""))
    return bool(uid) and all(part.isdigit() for part in uid.split("."))


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom warns (and logs) about damaged files; our own error names the damage instead."""
    pydicom_logger = logging.getLogger("pydicom")
    was_disabled = pydicom_logger.disabled
    pydicom_logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_logger.disabled = was_disabled


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _syntax_name(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return syntax.name if syntax is not None else "unknown transfer syntax"


def _read_header(path: Path) -> pydicom.Dataset:
    """The header tags of one file, or an error saying what the file is instead: empty, not DICOM, damaged."""
    if path.stat().st_size == 0:
        raise InputError(path, "the file is empty")
    try:
        with _quiet_pydicom():
            # PixelData is listed but deferred: its value is never read here, only its offset kept
            header = pydicom.dcmread(path, specific_tags=HEADER_TAGS, defer_size=1024, force=True)
    except Exception as e:  # pydicom raises many types on damaged or foreign files
        raise InputError(path, f"this is not a readable DICOM file ({type(e).__name__}: {e})") from None
    preamble = _has_preamble(path)
    if len(header) == 0 and preamble:
        _refuse_damaged_dataset(path, header)
    if not preamble and not any(tag in header for tag in IDENTIFYING_TAGS):
        raise InputError(path, "this is not a DICOM file (no 'DICM' preamble and no DICOM attributes)")
    return header


def _refuse_damaged_dataset(path: Path, header: pydicom.Dataset) -> None:
    """A Part 10 file whose dataset pydicom drops as a whole: the pixel data ends early or is broken."""
    with _quiet_pydicom():
        try:
            before_pixels = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # pydicom raises many types on damaged files
            before_pixels = pydicom.Dataset()
    if len(before_pixels):
        raise InputError(path, f"cannot decode its pixel data (truncated or corrupt {_syntax_name(header)})")
    raise InputError(path, "a DICOM file without a readable dataset (truncated or corrupt)")


def non_image_kind(h: pydicom.Dataset) -> str | None:
    """What a non-image object is (a SEG, SR, RTSTRUCT, PR...), or None for an image."""
    sop_class = str(h.get("SOPClassUID", ""))
    for uid, kind in NON_IMAGE_OBJECTS.items():
        if sop_class == uid or (uid.endswith(".") and sop_class.startswith(uid)):
            return kind
    modality = str(h.get("Modality", ""))
    if modality in NON_IMAGE_MODALITIES:
        return NON_IMAGE_MODALITIES[modality]
    if "Rows" not in h:
        return f"a {modality or 'non-image'} object without pixel data, not a scan"
    return None


def is_image_header(h: pydicom.Dataset) -> bool:
    """True for a file that holds a scan's pixels (not a SEG, SR, RTSTRUCT, PR or other non-image object)."""
    return non_image_kind(h) is None


def scan_folder(folder: str | os.PathLike) -> dict[str, SeriesInfo]:
    """Headers of every DICOM file below `folder`, grouped by SeriesInstanceUID (one pass)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    series: dict[str, SeriesInfo] = {}
    for path in files:
        if path.name == "DICOMDIR" or not is_dicom_file(path):
            continue
        header = _read_header(path)
        uid = str(header.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        info = series.get(uid)
        if info is None:
            info = series[uid] = SeriesInfo(uid, str(header.get("SeriesDescription", "")), str(header.get("Modality", "")))
        info.files.append(path)
        info.headers.append(header)
    return series


def _has_geometry(h: pydicom.Dataset) -> bool:
    return "ImagePositionPatient" in h and "ImageOrientationPatient" in h and "PixelSpacing" in h


def choose_series(folder: Path, series: dict[str, SeriesInfo], series_uid: str | None) -> SeriesInfo:
    """The one image series to read, or a clear error listing the candidates."""
    if series_uid is not None:
        if series_uid not in series:
            listing = "\n  ".join(s.summary() for s in series.values()) or "(none)"
            raise InputError(folder, f"series {series_uid} is not in this folder; found:\n  {listing}")
        return series[series_uid]
    images = {uid: s for uid, s in series.items() if s.is_image}
    if not series:
        raise InputError(folder, "no DICOM files found")
    if not images:
        kinds = sorted({s.modality or "?" for s in series.values()})
        raise InputError(folder, f"no DICOM image series here, only non-image objects ({', '.join(kinds)})")
    if len(images) > 1:
        listing = "\n  ".join(s.summary() for s in images.values())
        raise InputError(
            folder, f"{len(images)} image series in one folder; pick one with series_uid (--series-uid):\n  {listing}"
        )
    return next(iter(images.values()))


@dataclass
class DicomVolume:
    """Voxels (i, j, k) with rescale applied, the RAS affine and the source identity for DICOM SEG."""

    array: np.ndarray
    affine: np.ndarray
    meta: dict


def decimals(h: pydicom.Dataset, keyword: str, source: Path | None = None) -> list[float]:
    """A DS attribute as floats, parsed straight from the raw bytes when pydicom has not converted it.

    pydicom's DS objects validate each value on creation; over a few thousand slices that is
    most of the header-reading time, and the geometry needs only the numbers.
    """
    value = h.get_item(keyword).value
    try:
        if isinstance(value, (bytes, bytearray)):
            return [float(v) for v in value.split(b"\\") if v.strip(b" \x00")]
        return [float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])]
    except (TypeError, ValueError):
        raise InputError(source, f"{keyword} is not a list of numbers: {value!r}") from None


def _pixel_spacing(h: pydicom.Dataset, source: Path, where: str = "") -> list[float]:
    """PixelSpacing (row, column) in mm, refused unless both values are finite and positive."""
    if "PixelSpacing" not in h:
        raise GeometryError(source, f"no PixelSpacing{where}: the pixel size in the patient is unknown")
    values = decimals(h, "PixelSpacing", source)
    if len(values) != 2:
        raise GeometryError(source, f"PixelSpacing{where} has {len(values)} value(s), needs 2 (row and column spacing)")
    return check_spacing(values, os.fspath(source), f"PixelSpacing{where}")


def _slice_thickness(h: pydicom.Dataset, source: Path, where: str = "") -> float | None:
    """SpacingBetweenSlices, else SliceThickness: the third axis of a single slice (None when neither is given)."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        if keyword in h and h[keyword].value not in (None, "", b""):
            values = decimals(h, keyword, source)
            if values:
                return check_spacing(values[:1], os.fspath(source), f"{keyword}{where}")[0]
    return None


def _rescale_tag(h: pydicom.Dataset, keyword: str, default: float, source: Path, where: str = "") -> float:
    """RescaleSlope or RescaleIntercept (absent or empty: the default), refused when not finite, or a zero slope."""
    if keyword not in h or h[keyword].value in (None, "", b""):
        return default
    values = decimals(h, keyword, source)
    value = values[0] if values else default
    if not np.isfinite(value):
        raise InputError(source, f"{keyword}{where} is {value:g}: the voxel values would not be finite")
    if keyword == "RescaleSlope" and value == 0:
        raise InputError(source, f"RescaleSlope{where} is 0: every voxel would have the same value")
    return value


def _check_samples(h: pydicom.Dataset, source: Path) -> None:
    samples = int(h.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        photometric = str(h.get("PhotometricInterpretation", "")) or "colour"
        raise InputError(
            source, f"SamplesPerPixel is {samples} ({photometric}): a colour DICOM image; "
            "only greyscale (SamplesPerPixel 1) DICOM scans are supported"
        )


def _source_meta(headers: Sequence[pydicom.Dataset], files: Sequence[Path], fmt: str) -> dict:
    first = headers[0]
    return {
        "source_format": fmt,
        "source_files": [str(f) for f in files],
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "patient_id": str(first.get("PatientID", "")),
        "sop_class_uid": str(first.get("SOPClassUID", "")),
        "modality": str(first.get("Modality", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "sop_instance_uids": [str(h.get("SOPInstanceUID", "")) for h in headers],
    }


def read_classic_series(info: SeriesInfo, source: Path, max_bytes: int | None = None) -> DicomVolume:
    """A validated volume from single-frame image files of one series (non-image objects in it are ignored)."""
    info = info.images_only()
    if not info.files:
        raise InputError(source, f"series {info.series_uid} holds no scan, only non-image objects")
    headers, files = info.headers, info.files
    for h, f in zip(headers, files):
        if not _has_geometry(h):
            raise GeometryError(f, "no ImagePositionPatient/ImageOrientationPatient/PixelSpacing: not a 3D-placeable slice")
        if int(h.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f, "a multi-frame file inside a single-frame series; read that file on its own")
        _check_samples(h, f)
    shapes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(shapes) > 1:
        raise InputError(source, f"slices of different sizes in one series: {sorted(shapes)}")
    rows, cols = shapes.pop()
    check_scan_size(source, (cols, rows, len(files)), max_bytes=max_bytes)
    spacings = {tuple(round(v, 4) for v in _pixel_spacing(h, f)) for h, f in zip(headers, files)}
    if len(spacings) > 1:
        raise GeometryError(source, f"slices with different PixelSpacing in one series: {sorted(spacings)}")
    positions = np.array([decimals(h, "ImagePositionPatient", f) for h, f in zip(headers, files)])
    orientations = np.array([decimals(h, "ImageOrientationPatient", f) for h, f in zip(headers, files)])
    if positions.shape != (len(files), 3) or orientations.shape != (len(files), 6) or not (
            np.isfinite(positions).all() and np.isfinite(orientations).all()):
        raise GeometryError(source, "ImagePositionPatient needs 3 and ImageOrientationPatient 6 finite numbers in every slice")
    affine, order = affine_from_plane_stack(
        positions, orientations, _pixel_spacing(headers[0], files[0]), source,
        single_slice_thickness=_slice_thickness(headers[0], files[0]) if len(files) == 1 else None,
    )
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    slopes = np.array([_rescale_tag(h, "RescaleSlope", 1.0, f) for h, f in zip(headers, files)])
    intercepts = np.array([_rescale_tag(h, "RescaleIntercept", 0.0, f) for h, f in zip(headers, files)])
    layouts = [_native_layout(h) for h in headers]
    if all(layouts) and len({dtype for _, dtype, _ in layouts}) == 1:
        array = _read_native_series(files, headers, layouts, slopes, intercepts)
    else:
        array = _decode_series(files, source)
    meta = _source_meta(headers, files, "dicom")
    return DicomVolume(array, affine, meta)


def _native_layout(h: pydicom.Dataset) -> tuple[int, np.dtype, int] | None:
    """(offset, stored dtype, bit mask) of uncompressed little-endian grey pixel data; None means: let GDCM decode."""
    meta = getattr(h, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in NATIVE_SYNTAXES or "PixelData" not in h:
        return None
    if int(h.get("SamplesPerPixel", 1)) != 1 or str(h.get("PhotometricInterpretation", "")) != "MONOCHROME2":
        return None
    allocated, stored, signed = int(h.get("BitsAllocated", 0)), int(h.get("BitsStored", 0)), int(h.get("PixelRepresentation", 0))
    if allocated not in (8, 16, 32) or not 0 < stored <= allocated or (signed and stored != allocated):
        return None
    element = h.get_item(0x7FE00010)
    offset = getattr(element, "value_tell", None) or getattr(element, "file_tell", None)
    if offset is None:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    return int(offset), dtype, (1 << stored) - 1 if stored < allocated else 0


def _read_native_series(files: Sequence[Path], headers: Sequence[pydicom.Dataset], layouts,
                        slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Voxels (i, j, k) of uncompressed slices, read straight from their byte offsets, rescaled.

    One read per file into a preallocated volume: no decoder, no second header parse.
    """
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    dtype = layouts[0][1]
    stored = np.empty((len(files), rows, cols), dtype=dtype)
    count = rows * cols
    for k, (f, (offset, _, mask)) in enumerate(zip(files, layouts)):
        plane = np.fromfile(f, dtype=dtype, count=count, offset=offset)
        if plane.size < count:
            raise truncated(f, count * dtype.itemsize, plane.size * dtype.itemsize)
        stored[k] = plane.reshape(rows, cols)
        if mask:
            stored[k] &= mask
    return to_ijk_order(rescale(stored, slopes, intercepts))


def rescale(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """DICOM's modality LUT for planes-first frames (n, rows, columns): value = stored * slope + intercept,
    one slope and intercept per frame, for classic series and Enhanced files alike.

    Whole-number results keep their exact integers in the smallest type that holds them (the
    stored type when nothing is added; else int16, int32 or int64 by the range they reach);
    any other slope or intercept gives float32, as a fraction of a Hounsfield unit needs.
    """
    slopes, intercepts = np.asarray(slopes, dtype=float).ravel(), np.asarray(intercepts, dtype=float).ravel()
    if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)):
        if np.all(intercepts == 0):
            return stored
        low = float(stored.min()) + intercepts.min() if stored.size else 0.0
        high = float(stored.max()) + intercepts.max() if stored.size else 0.0
        for dtype in (np.int16, np.int32, np.int64):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                break
        out = stored.astype(dtype, copy=stored.dtype != dtype)
        if np.all(intercepts == intercepts[0]):
            out += dtype(intercepts[0])
        else:
            out += intercepts.astype(dtype)[:, None, None]
        return out
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is refused by read_scan, by name
        return stored.astype(np.float32) * slopes.astype(np.float32)[:, None, None] + intercepts.astype(np.float32)[:, None, None]


def _decode_series(files: Sequence[Path], source: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError:
        _diagnose_pixels(files)
        raise InputError(source, "GDCM could not decode the pixel data of this series") from None
    voxels = sitk.GetArrayFromImage(image)  # (k, j, i): GDCM applied the rescale
    if voxels.ndim != 3 or voxels.shape[0] != len(files):
        _diagnose_pixels(files)
        raise InputError(source, f"decoded {voxels.shape} voxels from {len(files)} files")
    return to_ijk_order(voxels)


def _decode_error(path: Path, ds: pydicom.Dataset, error: Exception) -> InputError:
    return InputError(path, f"cannot decode its pixel data (truncated or corrupt {_syntax_name(ds)}: {error})")


def _diagnose_pixels(files: Sequence[Path]) -> None:
    """Find the file whose pixel data is missing or truncated, and name it."""
    for f in files:
        try:
            with _quiet_pydicom():
                ds = pydicom.dcmread(f)
        except Exception as e:  # pydicom raises many types on damaged files
            raise InputError(f, f"damaged DICOM file ({e})") from None
        if "PixelData" not in ds:
            raise InputError(f, "the file has no pixel data")
        try:
            with _quiet_pydicom():
                ds.pixel_array
        except Exception as e:  # decoders raise many types on damaged data
            raise _decode_error(f, ds, e) from None


def check_complete(path: Path) -> None:
    """Refuse a file without pixel data, or whose uncompressed pixel data is shorter than its header promises."""
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, force=True)
    except Exception as e:  # pydicom raises many types on damaged files
        raise InputError(path, f"damaged DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise InputError(path, "the file has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        present = len(ds.PixelData)
        if present < expected:
            raise truncated(path, expected, present)


def _frame_attr(frame: pydicom.Dataset, shared: pydicom.Dataset, sequence: str, name: str):
    """An attribute of a frame's functional group, falling back to the shared group (None when in neither)."""
    for group in (frame, shared):
        if sequence in group and len(group[sequence].value) and name in group[sequence][0]:
            return group[sequence][0][name].value
    return None


def _frame_number(frame: pydicom.Dataset, shared: pydicom.Dataset, sequence: str, name: str, default: float,
                  path: Path, where: str) -> float:
    value = _frame_attr(frame, shared, sequence, name)
    holder = pydicom.Dataset()
    if value is not None and value != "":
        setattr(holder, name, value)
    return _rescale_tag(holder, name, default, path, where)


def read_enhanced(path: Path, header: pydicom.Dataset | None = None, max_bytes: int | None = None) -> DicomVolume:
    """A validated volume from an Enhanced (multi-frame) image file, frames ordered along the normal."""
    header = header if header is not None else _read_header(path)
    _check_samples(header, path)
    n = int(header.get("NumberOfFrames", 1) or 1)
    check_scan_size(path, (int(header.Columns), int(header.Rows), n), max_bytes=max_bytes)
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types on damaged files
        raise InputError(path, f"damaged DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise InputError(path, "the file has no pixel data")
    shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n:
        raise GeometryError(path, "multi-frame file without one PerFrameFunctionalGroupsSequence item per frame")

    positions, orientations, slopes, intercepts, spacings = [], [], [], [], []
    for i, frame in enumerate(per_frame):
        where = f" (frame {i + 1})"
        pos = _frame_attr(frame, shared, "PlanePositionSequence", "ImagePositionPatient")
        ori = _frame_attr(frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        if pos is None or ori is None:
            raise GeometryError(path, f"frame {i + 1} has no plane position or orientation")
        positions.append([float(v) for v in pos])
        orientations.append([float(v) for v in ori])
        measures = pydicom.Dataset()
        spacing = _frame_attr(frame, shared, "PixelMeasuresSequence", "PixelSpacing")
        if spacing is not None:
            measures.PixelSpacing = spacing
        spacings.append(tuple(_pixel_spacing(measures, path, f" in the PixelMeasuresSequence{where}")))
        slopes.append(_frame_number(frame, shared, "PixelValueTransformationSequence", "RescaleSlope",
                                    _rescale_tag(ds, "RescaleSlope", 1.0, path), path, where))
        intercepts.append(_frame_number(frame, shared, "PixelValueTransformationSequence", "RescaleIntercept",
                                        _rescale_tag(ds, "RescaleIntercept", 0.0, path), path, where))
    if len({tuple(round(v, 4) for v in s) for s in spacings}) > 1:
        raise GeometryError(path, f"frames with different PixelSpacing: {sorted(set(spacings))}")
    thickness = None
    if n == 1:
        measures = pydicom.Dataset()
        for name in ("SpacingBetweenSlices", "SliceThickness"):
            value = _frame_attr(per_frame[0], shared, "PixelMeasuresSequence", name)
            if value is not None:
                setattr(measures, name, value)
        thickness = _slice_thickness(measures, path, " in the PixelMeasuresSequence")
    affine, order = affine_from_plane_stack(
        np.array(positions), np.array(orientations), list(spacings[0]), path, single_slice_thickness=thickness,
    )
    try:
        with _quiet_pydicom():
            frames = ds.pixel_array
    except Exception as e:  # decoders raise many types on damaged data
        raise _decode_error(path, ds, e) from None
    if n == 1 and frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] != n:
        raise InputError(path, f"expected {n} single-channel frames, decoded an array of shape {frames.shape}")
    values = rescale(frames[order], np.asarray(slopes)[order], np.asarray(intercepts)[order])
    meta = _source_meta([ds], [path], "dicom-enhanced")
    meta["frame_numbers"] = [int(i) + 1 for i in order]  # 1-based frame of each slice k
    return DicomVolume(to_ijk_order(values), affine, meta)


def read_dicom(path: str | os.PathLike, series_uid: str | None = None, max_bytes: int | None = None) -> DicomVolume:
    """Read a DICOM folder (one series, or the one named) or a single DICOM file.

    `max_bytes` limits the float32 size of the volume, checked from the headers before any
    pixel is read (see `limits`).
    """
    path = Path(path)
    if path.is_dir():
        series = scan_folder(path)
        info = choose_series(path, series, series_uid).images_only()
        if not info.files:
            raise InputError(path, f"series {info.series_uid} holds no scan, only non-image objects")
        if len(info.files) == 1 and int(info.headers[0].get("NumberOfFrames", 1) or 1) > 1:
            return read_enhanced(info.files[0], info.headers[0], max_bytes)
        return read_classic_series(info, path, max_bytes)
    header = _read_header(path)
    kind = non_image_kind(header)
    if kind is not None:
        raise InputError(path, f"this is {kind}")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return read_enhanced(path, header, max_bytes)
    _check_samples(header, path)
    check_scan_size(path, (int(header.Columns), int(header.Rows), 1), max_bytes=max_bytes)
    check_complete(path)
    info = SeriesInfo(str(header.get("SeriesInstanceUID", "")), "", "", [path], [header])
    return read_classic_series(info, path, max_bytes)
