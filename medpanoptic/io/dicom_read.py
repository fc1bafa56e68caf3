"""DICOM scans: classic single-frame series (a folder or a file) and Enhanced multi-frame files.

One pydicom header pass groups a folder's files by series, sorts the slices along their
normal and validates the geometry; GDCM (through SimpleITK) then decodes the pixels of
exactly those files in exactly that order, so every transfer syntax GDCM knows is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import GeometryError, InputError
from .geometry import affine_from_plane_stack

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


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        # PixelData is listed but deferred: its value is never read here, only its offset kept
        return pydicom.dcmread(path, specific_tags=HEADER_TAGS, defer_size=1024, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as e:
        raise InputError(path, f"not a readable DICOM file ({e})") from None


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
    images = {uid: s for uid, s in series.items() if any("Rows" in h and not _is_seg(h) for h in s.headers)}
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


def decimals(h: pydicom.Dataset, keyword: str) -> list[float]:
    """A DS attribute as floats, parsed straight from the raw bytes when pydicom has not converted it.

    pydicom's DS objects validate each value on creation; over a few thousand slices that is
    most of the header-reading time, and the geometry needs only the numbers.
    """
    element = h.get_item(keyword)
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        return [float(v) for v in value.split(b"\\") if v.strip(b" \x00")]
    return [float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])]


def _pixel_spacing(h: pydicom.Dataset, source: Path) -> list[float]:
    if "PixelSpacing" not in h:
        raise GeometryError(source, "no PixelSpacing: the pixel size in the patient is unknown")
    return decimals(h, "PixelSpacing")


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


def read_classic_series(info: SeriesInfo, source: Path) -> DicomVolume:
    """A validated volume from single-frame image files of one series."""
    headers, files = info.headers, info.files
    for h, f in zip(headers, files):
        if "Rows" not in h:
            raise InputError(f, f"no image in this file (a {h.get('Modality', 'non-image')} object) inside series {info.series_uid}")
        if not _has_geometry(h):
            raise GeometryError(f, "no ImagePositionPatient/ImageOrientationPatient/PixelSpacing: not a 3D-placeable slice")
        if int(h.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f, "a multi-frame file inside a single-frame series; read that file on its own")
    shapes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(shapes) > 1:
        raise InputError(source, f"slices of different sizes in one series: {sorted(shapes)}")
    spacings = {tuple(round(v, 4) for v in _pixel_spacing(h, source)) for h in headers}
    if len(spacings) > 1:
        raise GeometryError(source, f"slices with different PixelSpacing in one series: {sorted(spacings)}")
    positions = np.array([decimals(h, "ImagePositionPatient") for h in headers])
    orientations = np.array([decimals(h, "ImageOrientationPatient") for h in headers])
    thickness = headers[0].get("SpacingBetweenSlices") or headers[0].get("SliceThickness")
    affine, order = affine_from_plane_stack(
        positions, orientations, _pixel_spacing(headers[0], source), source,
        single_slice_thickness=float(thickness) if thickness else None,
    )
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    layouts = [_native_layout(h) for h in headers]
    if all(layouts) and len({dtype for _, dtype, _ in layouts}) == 1:
        array = _read_native_series(files, headers, layouts)
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


def _read_native_series(files: Sequence[Path], headers: Sequence[pydicom.Dataset], layouts) -> np.ndarray:
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
            raise InputError(f, f"truncated file: the pixel data needs {count * dtype.itemsize} bytes, "
                                f"{plane.size * dtype.itemsize} are present")
        stored[k] = plane.reshape(rows, cols)
        if mask:
            stored[k] &= mask
    slopes = np.array([float(h.get("RescaleSlope", 1) or 1) for h in headers])
    intercepts = np.array([float(h.get("RescaleIntercept", 0) or 0) for h in headers])
    return _rescale(stored, slopes, intercepts).transpose(2, 1, 0)


def _rescale(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Modality LUT (value = stored * slope + intercept per slice), in the smallest exact dtype."""
    if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)):
        if np.all(intercepts == 0):
            return stored
        low = float(stored.min()) + intercepts.min()
        high = float(stored.max()) + intercepts.max()
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                break
        out = stored.astype(dtype, copy=stored.dtype != dtype)
        if np.all(intercepts == intercepts[0]):
            out += dtype(intercepts[0])
        else:
            out += intercepts.astype(dtype)[:, None, None]
        return out
    return stored.astype(np.float32) * slopes.astype(np.float32)[:, None, None] + intercepts.astype(np.float32)[:, None, None]


def _decode_series(files: Sequence[Path], source: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError:
        _diagnose_pixels(files)
        raise InputError(source, "GDCM could not decode the pixel data of this series") from None
    voxels = sitk.GetArrayFromImage(image)  # (k, j, i)
    if voxels.ndim != 3 or voxels.shape[0] != len(files):
        _diagnose_pixels(files)
        raise InputError(source, f"decoded {voxels.shape} voxels from {len(files)} files")
    return voxels.transpose(2, 1, 0)


def _diagnose_pixels(files: Sequence[Path]) -> None:
    """Find the file whose pixel data is missing or truncated, and name it."""
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:  # pydicom raises many types on damaged files
            raise InputError(f, f"damaged DICOM file ({e})") from None
        if "PixelData" not in ds:
            raise InputError(f, "the file has no pixel data")
        try:
            ds.pixel_array
        except Exception as e:
            raise InputError(f, f"pixel data cannot be decoded, the file may be truncated ({e})") from None


def check_complete(path: Path) -> None:
    """Refuse a file without pixel data, or whose uncompressed pixel data is shorter than its header promises."""
    try:
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
            raise InputError(path, f"truncated file: the pixel data needs {expected} bytes, {present} are present")


def read_enhanced(path: Path, header: pydicom.Dataset | None = None) -> DicomVolume:
    """A validated volume from an Enhanced (multi-frame) image file, frames ordered along the normal."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise InputError(path, f"damaged DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise InputError(path, "the file has no pixel data")
    n = int(ds.get("NumberOfFrames", 1))
    shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n:
        raise GeometryError(path, "multi-frame file without one PerFrameFunctionalGroupsSequence item per frame")

    def attr(frame: pydicom.Dataset, sequence: str, name: str):
        for group in (frame, shared):
            if sequence in group and name in group[sequence][0]:
                return group[sequence][0][name].value
        return None

    positions, orientations, slopes, intercepts = [], [], [], []
    for i, frame in enumerate(per_frame):
        pos = attr(frame, "PlanePositionSequence", "ImagePositionPatient")
        ori = attr(frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        if pos is None or ori is None:
            raise GeometryError(path, f"frame {i + 1} has no plane position or orientation")
        positions.append([float(v) for v in pos])
        orientations.append([float(v) for v in ori])
        slope = attr(frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = attr(frame, "PixelValueTransformationSequence", "RescaleIntercept")
        slopes.append(float(slope) if slope is not None else float(ds.get("RescaleSlope", 1)))
        intercepts.append(float(intercept) if intercept is not None else float(ds.get("RescaleIntercept", 0)))
    spacing = attr(per_frame[0], "PixelMeasuresSequence", "PixelSpacing")
    if spacing is None:
        raise GeometryError(path, "no PixelSpacing in the PixelMeasuresSequence")
    spacings = {tuple(round(float(v), 4) for v in attr(f, "PixelMeasuresSequence", "PixelSpacing")) for f in per_frame}
    if len(spacings) > 1:
        raise GeometryError(path, f"frames with different PixelSpacing: {sorted(spacings)}")
    thickness = attr(per_frame[0], "PixelMeasuresSequence", "SpacingBetweenSlices") or attr(
        per_frame[0], "PixelMeasuresSequence", "SliceThickness")
    affine, order = affine_from_plane_stack(
        np.array(positions), np.array(orientations), [float(v) for v in spacing], path,
        single_slice_thickness=float(thickness) if thickness else None,
    )
    try:
        frames = ds.pixel_array
    except Exception as e:
        raise InputError(path, f"pixel data cannot be decoded, the file may be truncated ({e})") from None
    if frames.ndim != 3 or frames.shape[0] != n:
        raise InputError(path, f"expected {n} single-channel frames, decoded an array of shape {frames.shape}")
    slopes_a = np.asarray(slopes)[order, None, None]
    intercepts_a = np.asarray(intercepts)[order, None, None]
    frames = frames[order]
    if np.all(slopes_a == 1) and np.all(intercepts_a == np.round(intercepts_a)):
        values = frames.astype(np.int32 if frames.dtype.itemsize >= 2 else np.int16) + intercepts_a.astype(np.int32)
        if values.min() >= -32768 and values.max() <= 32767:
            values = values.astype(np.int16)
    else:
        values = frames.astype(np.float32) * slopes_a.astype(np.float32) + intercepts_a.astype(np.float32)
    meta = _source_meta([ds], [path], "dicom-enhanced")
    meta["frame_numbers"] = [int(i) + 1 for i in order]  # 1-based frame of each slice k
    return DicomVolume(values.transpose(2, 1, 0), affine, meta)


def _is_seg(header: pydicom.Dataset) -> bool:
    return str(header.get("SOPClassUID", "")) in SEG_SOP_CLASSES


def _refuse_seg(path: Path) -> None:
    raise InputError(path, "a DICOM Segmentation (SEG) is a result, not a scan: read it with read_panoptic "
                           "(label_set=..., reference=<the series it segments>)")


def read_dicom(path: str | os.PathLike, series_uid: str | None = None) -> DicomVolume:
    """Read a DICOM folder (one series, or the one named) or a single DICOM file."""
    path = Path(path)
    if path.is_dir():
        series = scan_folder(path)
        info = choose_series(path, series, series_uid)
        if any(_is_seg(h) for h in info.headers):
            _refuse_seg(info.files[0])
        if len(info.files) == 1 and int(info.headers[0].get("NumberOfFrames", 1) or 1) > 1:
            return read_enhanced(info.files[0])
        return read_classic_series(info, path)
    header = _read_header(path)
    if _is_seg(header):
        _refuse_seg(path)
    if "Rows" not in header:
        raise InputError(path, f"not an image: a {header.get('Modality', 'non-image')} object without pixel data")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return read_enhanced(path, header)
    check_complete(path)
    info = SeriesInfo(str(header.get("SeriesInstanceUID", "")), "", "", [path], [header])
    return read_classic_series(info, path)
