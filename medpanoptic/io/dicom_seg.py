"""DICOM Segmentation objects (highdicom): one segment per thing instance and per stuff class.

Written frames are aligned with the source slices and reference them; every segment carries
its SNOMED CT category and type from the label set, a display colour, a TrackingID
('lesion 3') and a TrackingUID, and the algorithm identification (medpanoptic and bundle).
BINARY is the default (what every viewer opens); LABELMAP (one frame per slice, RLE) is the
compact option. Reading places every frame by its patient position on the full grid of the
segmented series and maps segments back to (label, instance) through the label set.
"""

from __future__ import annotations

import gc
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import highdicom as hd
import numpy as np
import pydicom
from monai.data import MetaTensor
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from .._version import __version__
from ..errors import GeometryError, InputError
from ..labels import Code, LabelSet
from .atomic import atomic_paths
from .dicom_read import SEG_SOP_CLASSES, is_dicom_file
from .geometry import SLICE_SPACING_TOLERANCE, affine_from_plane_stack, from_ijk_order, lps_to_ras, ras_to_lps, same_grid, to_ijk_order
from .scan import make_meta_tensor, read_scan
from .segments import (TRAILING_NUMBER, FoundSegment, Numbering, Segment, classes_of_segments, label_set_of_segments,
                       pair_from_segments, segment_map)

log = logging.getLogger(__name__)

SegmentationType = Literal["BINARY", "LABELMAP"]
Overlap = Literal["error", "first", "largest"]


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _code_of(item) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def segment_description(s: Segment, algorithm: hd.AlgorithmIdentificationSequence,
                        tracking_uid: str | None = None, tracking_id: str | None = None) -> hd.seg.SegmentDescription:
    """A segment's DICOM description: label, category, type with its modifier (0062,0011), anatomic
    region with its modifier (0008,2220), tracking identity (a new TrackingUID unless given: a
    follow-up keeps one per lesion) and colour. highdicom's constructor has no modifier
    arguments, so the modifiers go into the code items it made."""
    description = hd.seg.SegmentDescription(
        segment_number=s.number, segment_label=s.name,
        segmented_property_category=_coded(s.category), segmented_property_type=_coded(s.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=tracking_uid or generate_uid(), tracking_id=tracking_id or s.tracking_id,
        anatomic_regions=[_coded(s.anatomic_region)] if s.anatomic_region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*s.color),
    )
    if s.type_modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_coded(s.type_modifier)]
    if s.anatomic_region is not None and s.anatomic_region_modifier is not None:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(s.anatomic_region_modifier)]
    return description


def found_segment(number: int, item) -> FoundSegment:
    """What one SegmentSequence item says: label, colour and every code (type/region modifiers included)."""
    type_item = item.SegmentedPropertyTypeCodeSequence[0]
    codes = {"category": _code_of(item.SegmentedPropertyCategoryCodeSequence[0]), "type": _code_of(type_item)}
    if type_item.get("SegmentedPropertyTypeModifierCodeSequence"):
        codes["type_modifier"] = _code_of(type_item.SegmentedPropertyTypeModifierCodeSequence[0])
    region = item.get("AnatomicRegionSequence") or item.get("PrimaryAnatomicStructureSequence")
    if region:
        codes["anatomic_region"] = _code_of(region[0])
        if region[0].get("AnatomicRegionModifierSequence"):
            codes["anatomic_region_modifier"] = _code_of(region[0].AnatomicRegionModifierSequence[0])
    color = (128, 128, 128)
    if "RecommendedDisplayCIELabValue" in item:
        color = tuple(int(v) for v in hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb())
    match = TRAILING_NUMBER.search(str(item.get("TrackingID", "") or ""))  # 'lesion 3': the thing's instance id
    instance = int(match.group(1)) if match else None
    return FoundSegment(int(number), str(item.SegmentLabel), color, codes, None, instance)  # type: ignore[arg-type]


def write_dicom_seg(
    pair,
    label_set: LabelSet,
    source: MetaTensor | str | os.PathLike,
    path: str | os.PathLike,
    *,
    segmentation_type: SegmentationType = "BINARY",
    series_description: str = "medpanoptic panoptic segmentation",
    series_number: int = 900,
    algorithm_name: str = "medpanoptic",
    algorithm_version: str | None = None,
    numbering: Numbering | None = None,
    tracking_uids: Mapping[int, str] | None = None,
    tracking_ids: Mapping[int, str] | None = None,
) -> Path:
    """Write `pair` (on the source scan's grid) as a DICOM SEG referencing the source series.

    `source` is the scan from `read_scan` (its meta knows the files) or its DICOM folder/file;
    `numbering` is the pair's `segment_map`, when already made; `tracking_uids` (instance id ->
    UID) gives lesions the TrackingUID of their identity across time points, `tracking_ids` (instance
    id -> 'lesion 4') its TrackingID.
    """
    scan = source if isinstance(source, MetaTensor) else read_scan(source)
    where = str(scan.meta.get("filename_or_obj", source if not isinstance(source, MetaTensor) else "source"))
    if str(scan.meta.get("source_format", "")).split("-")[0] != "dicom":
        raise InputError(where, f"a DICOM SEG needs a DICOM source scan; this one is {scan.meta.get('source_format', 'unknown')}")
    if not same_grid(pair.shape[1:], np.asarray(pair.affine), scan.shape[1:], np.asarray(scan.affine)):
        raise GeometryError(where, f"the result {tuple(pair.shape[1:])} is not on the source scan's grid {tuple(scan.shape[1:])}")
    with ThreadPoolExecutor(max_workers=1) as pool:  # segment map and frame order (no GIL) while the headers are parsed
        made = pool.submit(_frames_and_segments, pair, label_set, numbering)
        datasets = [_as_highdicom_source(pydicom.dcmread(f, stop_before_pixels=True), f) for f in scan.meta["source_files"]]
        frames, segments = made.result()
    if not segments:
        raise InputError(where, "the result is empty: a DICOM SEG needs at least one segment")
    if scan.meta.get("source_format") == "dicom-enhanced":
        frames = frames[np.argsort(scan.meta["frame_numbers"])]  # back to the source's own frame order
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version or __version__)
    descriptions = [segment_description(s, algorithm, *((tracking_uids or {}).get(s.instance), (tracking_ids or {}).get(s.instance))
                                        if s.instance else (None, None)) for s in segments]
    # highdicom and pydicom build tens of thousands of small objects (one functional-group
    # item per frame); pausing the cyclic garbage collector meanwhile saves a quarter of the time
    collecting = gc.isenabled()
    gc.disable()
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=segmentation_type,
            segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medpanoptic",
            manufacturer_model_name=algorithm_name, software_versions=__version__, device_serial_number="0",
            series_description=series_description, content_label="PANOPTIC",
            transfer_syntax_uid=RLELossless if segmentation_type == "LABELMAP" else ExplicitVRLittleEndian,
            omit_empty_frames=segmentation_type == "BINARY",
        )
        if not all(s.name.isascii() for s in segments):  # segment labels beyond the source's character set
            seg.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: every value is re-encoded on saving
        path = Path(path)
        with atomic_paths(path) as (tmp,):
            seg.save_as(tmp)
    finally:
        if collecting:
            gc.enable()
    return path


def _frames_and_segments(pair, label_set: LabelSet, numbering: Numbering | None) -> tuple[np.ndarray, list[Segment]]:
    """Segment numbers as (slice, row, column) frames, slices in source order, and the segments
    (from `numbering`, the pair's `segment_map`, when already made)."""
    numbers, segments = numbering or segment_map(pair, label_set)
    return from_ijk_order(numbers), segments


def _as_highdicom_source(ds: pydicom.Dataset, path: str | os.PathLike) -> pydicom.Dataset:
    """A source header in the shape highdicom expects, meaning the same thing.

    An empty SpecificCharacterSet is the default repertoire (as if absent); an Enhanced image's
    pixel measures given per frame (Philips does) are the shared ones when every frame agrees.
    """
    if "SpecificCharacterSet" in ds and not any(str(v).strip() for v in _values(ds.SpecificCharacterSet)):
        del ds.SpecificCharacterSet
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:
        shared = ds.setdefault("SharedFunctionalGroupsSequence", [pydicom.Dataset()]).value
        if not shared:
            shared.append(pydicom.Dataset())
        if "PixelMeasuresSequence" not in shared[0]:
            measures = [f.PixelMeasuresSequence[0] for f in per_frame if "PixelMeasuresSequence" in f]
            if len(measures) != len(per_frame) or len({_pixel_size(m) for m in measures}) > 1:
                raise GeometryError(path, "the frames do not share one PixelMeasuresSequence (pixel size per frame differs or is missing)")
            shared[0].PixelMeasuresSequence = [measures[0]]
    return ds


def _pixel_size(measures: pydicom.Dataset) -> tuple:
    return tuple(round(float(v), 4) for v in _values(measures.get("PixelSpacing", []))), \
        round(float(measures.get("SliceThickness") or 0), 4)


def _values(value) -> list:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


@dataclass(frozen=True)
class _Grid:
    """A voxel grid: its shape (column, row, slice) and the affine from (i, j, k) to LPS mm."""

    shape: tuple[int, int, int]
    lps: np.ndarray

    @property
    def ras(self) -> np.ndarray:
        return lps_to_ras(self.lps)


@dataclass(frozen=True)
class _Frames:
    """What each stored frame of a SEG is: its patient position and segment, plus the shared plane geometry."""

    positions: np.ndarray  # (n, 3) ImagePositionPatient, LPS mm
    segments: np.ndarray | None  # (n,) segment number of each BINARY/FRACTIONAL frame; None for LABELMAP
    orientation: np.ndarray  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slice_spacing: float | None  # SpacingBetweenSlices when the SEG records it


def is_dicom_seg(path: Path) -> bool:
    """Whether `path` is a DICOM Segmentation, known by its content (any name: `.dcm`, dcmqi's `.seg`, none)."""
    if not path.is_file() or not is_dicom_file(path):
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"], force=True)
    except Exception:  # pydicom raises many types on files that are not DICOM after all
        return False
    return str(header.get("SOPClassUID", "")) in SEG_SOP_CLASSES


def read_dicom_seg(
    path: str | os.PathLike,
    label_set: LabelSet,
    mapping: dict[str, int] | None = None,
    *,
    reference: MetaTensor | str | os.PathLike | None = None,
    fractional_threshold: float | None = None,
    overlap: Overlap = "error",
) -> MetaTensor:
    """A DICOM SEG (ours or another tool's) as a pair on the full grid of the series it segments.

    The grid is the `reference` scan's (the source series, a `read_scan` result or its path)
    when given; otherwise the SEG's own record of it, which is complete only when it has a
    frame on every slice of the series it references. Frames are placed by their patient
    position, never by their count, so omitted empty frames and gaps land where they belong.
    Segments become classes by `mapping` (segment label -> class id, 0 = background), else by
    coded type, else by name; thing instances keep the number in their TrackingID ('lesion 3').
    A FRACTIONAL SEG needs `fractional_threshold` (a voxel belongs to a segment where its
    fraction is at least this, e.g. 0.5). Overlapping segments are refused by default
    (`overlap="error"`), or given to the lower-numbered (`"first"`) or larger (`"largest"`) one.
    """
    path = Path(path)
    seg = _open(path)
    frames = _frame_geometry(seg, path)
    grid = _reference_grid(seg, reference, path) if reference is not None else _own_grid(seg, frames, path)
    slices = _slice_of_each_frame(frames, grid, (int(seg.Rows), int(seg.Columns)), path)
    background, specs = _segment_classes(seg, label_set, mapping, path)
    numbers = _place_frames(seg, frames, slices, grid, fractional_threshold, overlap, path)
    if background:
        numbers[np.isin(numbers, background)] = 0
    pair = pair_from_segments(numbers.astype(np.int64), specs)
    return make_meta_tensor(pair.astype(np.int32), grid.ras, {
        "filename_or_obj": str(path), "source_format": "dicom-seg",
        "frame_of_reference_uid": str(seg.get("FrameOfReferenceUID", "")),
        "patient_id": str(seg.get("PatientID", "")), "study_instance_uid": str(seg.get("StudyInstanceUID", "")),
    })


def _open(path: Path) -> hd.seg.Segmentation:
    """The SEG, after checking that its frames are planes in patient space (before highdicom indexes them)."""
    try:
        ds = pydicom.dcmread(path, force=True)  # a bare dataset (no preamble, no file meta) is DICOM too
    except Exception as e:  # pydicom raises many types on damaged files
        raise InputError(path, f"not a readable DICOM SEG ({e})") from None
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare dataset is little endian; its VR encoding was detected
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
    if "ImageOrientationSlide" in ds or "TotalPixelMatrixOriginSequence" in ds:
        raise InputError(path, "a slide-microscopy SEG: its frames are placed in slide coordinates, not in patient "
                               "space, and medpanoptic reads patient-space SEGs only")
    first = (ds.get("PerFrameFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
    if "FrameOfReferenceUID" not in ds or _functional(ds, first, "PlanePositionSequence", "ImagePositionPatient") is None:
        raise InputError(path, "a SEG without patient-space planes (no FrameOfReferenceUID or plane positions, e.g. "
                               "on a CR or other projection image): it cannot be placed on a 3D grid")
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as e:  # highdicom raises many types on invalid objects
        raise InputError(path, f"not a valid DICOM SEG ({e})") from None


def _functional(seg: pydicom.Dataset, frame: pydicom.Dataset, sequence: str, name: str):
    """An attribute of one frame's functional groups, or of the shared ones."""
    for group in (frame, seg.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]):
        if sequence in group and len(group[sequence].value) and name in group[sequence][0]:
            return group[sequence][0][name].value
    return None


def _frame_geometry(seg: hd.seg.Segmentation, path: Path) -> _Frames:
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != seg.number_of_frames:
        raise InputError(path, "a SEG without one PerFrameFunctionalGroupsSequence item per frame")
    positions, segments, orientations = [], [], set()
    labelmap = seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    for n, frame in enumerate(per_frame, start=1):
        position = _functional(seg, frame, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(seg, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        if position is None or orientation is None:
            raise InputError(path, f"frame {n} has no patient-space plane position or orientation: a SEG without "
                                   "patient-space planes cannot be placed on a 3D grid")
        positions.append([float(v) for v in position])
        orientations.add(tuple(round(float(v), 5) for v in orientation))
        if not labelmap:
            number = _functional(seg, frame, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
            if number is None:
                raise InputError(path, f"frame {n} does not say which segment it holds (SegmentIdentificationSequence)")
            segments.append(int(number))
    if len(orientations) > 1:
        raise GeometryError(path, f"the frames have {len(orientations)} different orientations; not one volume")
    spacing = _functional(seg, per_frame[0], "PixelMeasuresSequence", "PixelSpacing")
    if spacing is None:
        raise GeometryError(path, "no PixelSpacing in the PixelMeasuresSequence")
    between = _functional(seg, per_frame[0], "PixelMeasuresSequence", "SpacingBetweenSlices")
    return _Frames(np.array(positions, dtype=float).reshape(-1, 3), None if labelmap else np.array(segments),
                   np.array(next(iter(orientations)), dtype=float), (float(spacing[0]), float(spacing[1])),
                   float(between) if between else None)


def _reference_grid(seg: pydicom.Dataset, reference: MetaTensor | str | os.PathLike, path: Path) -> _Grid:
    """The source scan's grid, after checking that the SEG lies in its frame of reference."""
    scan = reference if isinstance(reference, MetaTensor) else read_scan(reference)
    ours, theirs = str(seg.get("FrameOfReferenceUID", "")), str(scan.meta.get("frame_of_reference_uid", ""))
    if theirs and ours != theirs:
        where = scan.meta.get("filename_or_obj", "the reference")
        raise GeometryError(path, f"the SEG's frame of reference {ours} is not that of the reference scan {where} ({theirs})")
    if scan.ndim != 4:
        raise GeometryError(path, f"the reference scan is not a 3D volume (shape {tuple(scan.shape)})")
    return _Grid(tuple(int(v) for v in scan.shape[1:]), ras_to_lps(scan.affine))


def _referenced_slices(seg: pydicom.Dataset, path: Path) -> int:
    """How many slices the SEG's source series has, by the instances it references."""
    series = seg.get("ReferencedSeriesSequence") or []
    instances = [i for s in series for i in (s.get("ReferencedInstanceSequence") or [])]
    multi_frame = any("ReferencedFrameNumber" in source
                      for frame in seg.get("PerFrameFunctionalGroupsSequence") or []
                      for derivation in frame.get("DerivationImageSequence") or []
                      for source in derivation.get("SourceImageSequence") or [])
    if not instances or multi_frame:
        why = "references a multi-frame source whose frame count it does not record" if instances else \
            "does not reference the instances of its source series"
        raise InputError(path, f"the full grid of this SEG cannot be known: it {why}; pass the source series "
                               "(reference=..., or --source)")
    return len(instances)


def _own_grid(seg: pydicom.Dataset, frames: _Frames, path: Path) -> _Grid:
    """The grid the SEG itself records: only when it has a frame on every slice it references.

    highdicom (and so medpanoptic) references every slice of the source series; dcmqi only
    those it has frames on, so a dcmqi SEG read without its source covers those slices only.
    """
    n = _referenced_slices(seg, path)
    normal = np.cross(frames.orientation[:3], frames.orientation[3:])
    depths = np.round(frames.positions @ normal, 3)
    _, first = np.unique(depths, return_index=True)
    planes = frames.positions[np.sort(first)]
    if len(planes) != n:
        raise InputError(path, f"the SEG has frames on {len(planes)} of the {n} slices of the series it references "
                               "(empty frames omitted) and does not record where the others lie: pass the source "
                               "series (reference=..., or --source) to read it onto the full grid")
    try:
        affine, _ = affine_from_plane_stack(planes, np.tile(frames.orientation, (n, 1)), frames.pixel_spacing, str(path),
                                            single_slice_thickness=frames.slice_spacing)
    except GeometryError as e:
        raise InputError(path, f"the SEG's frames are not one complete stack ({e.problem}): the full grid cannot be "
                               "known from the SEG; pass the source series (reference=..., or --source)") from None
    log.info("%s: grid taken from the SEG itself (%d referenced slices, each with a frame)", path, n)
    step = float(np.linalg.norm(affine[:3, 2]))
    if n > 1 and frames.slice_spacing and abs(step - frames.slice_spacing) > SLICE_SPACING_TOLERANCE * step + 1e-3:
        raise GeometryError(path, f"SpacingBetweenSlices is {frames.slice_spacing:g} mm but the frames lie {step:g} mm apart")
    shape = (int(seg.Columns), int(seg.Rows), n)
    return _Grid(shape, ras_to_lps(affine))


def _slice_of_each_frame(frames: _Frames, grid: _Grid, rows_columns: tuple[int, int], path: Path) -> np.ndarray:
    """The grid slice k of every frame; refused unless each frame is exactly one plane of the grid."""
    if rows_columns != (grid.shape[1], grid.shape[0]):
        raise GeometryError(path, f"the SEG's frames are {rows_columns[0]} x {rows_columns[1]} pixels, the grid's "
                                  f"planes {grid.shape[1]} x {grid.shape[0]}")
    axes = grid.lps[:3, :3]
    pixel = np.linalg.norm(axes[:, :2], axis=0)
    if not (np.allclose(frames.orientation[:3], axes[:, 0] / pixel[0], atol=1e-4)
            and np.allclose(frames.orientation[3:], axes[:, 1] / pixel[1], atol=1e-4)):
        raise GeometryError(path, "the SEG's frames are not oriented like the planes of the grid")
    if not np.allclose(frames.pixel_spacing, (pixel[1], pixel[0]), rtol=1e-4, atol=1e-5):
        raise GeometryError(path, f"the SEG's PixelSpacing {list(frames.pixel_spacing)} is not the grid's "
                                  f"{[round(float(pixel[1]), 6), round(float(pixel[0]), 6)]}")
    ijk = (frames.positions - grid.lps[:3, 3]) @ np.linalg.inv(axes).T
    k = np.round(ijk[:, 2])
    off = (np.abs(ijk[:, :2]).max(axis=1) > 0.01) | (np.abs(ijk[:, 2] - k) > 0.01) | (k < 0) | (k >= grid.shape[2])
    if off.any():
        n = int(np.flatnonzero(off)[0])
        raise GeometryError(path, f"frame {n + 1} (at {np.round(frames.positions[n], 3).tolist()} mm LPS) is not on a "
                                  f"slice of the grid: the SEG does not segment this series")
    return k.astype(int)


def _segment_classes(seg: pydicom.Dataset, label_set: LabelSet, mapping: dict[str, int] | None, path: Path):
    """(segment numbers that are background, (number, class, instance) of every other segment)."""
    found = _found_segments(seg, path)
    background = [0] + [s.number for s in found if mapping and mapping.get(s.name) == 0]  # LABELMAP's 0, or mapped to it
    kept = [s for s in found if s.number not in background]
    return background, classes_of_segments(kept, label_set, mapping, str(path))


def _place_frames(seg: hd.seg.Segmentation, frames: _Frames, slices: np.ndarray, grid: _Grid,
                  fractional_threshold: float | None, overlap: Overlap, path: Path) -> np.ndarray:
    """Segment numbers on the grid, (column, row, slice), from every frame at its slice."""
    if overlap not in ("error", "first", "largest"):
        raise InputError(path, f"overlap must be 'error', 'first' or 'largest', not {overlap!r}")
    pixels = _frame_values(seg, frames, fractional_threshold, path)  # (frames, rows, columns) segment numbers
    order = np.arange(len(pixels))
    if frames.segments is not None and overlap != "error":
        if overlap == "largest":
            sizes = np.bincount(frames.segments, weights=(pixels > 0).sum(axis=(1, 2)))
            order = np.lexsort((frames.segments, -sizes[frames.segments]))
        else:
            order = np.argsort(frames.segments, kind="stable")
    numbers = np.zeros((grid.shape[2], grid.shape[1], grid.shape[0]), np.uint16)
    for f in order:
        plane, values = numbers[slices[f]], pixels[f]
        clash = (values > 0) & (plane > 0) & (plane != values)
        if clash.any() and overlap == "error":
            a, b = int(plane[clash][0]), int(values[clash][0])
            raise InputError(path, f"segments {a} '{_label_of(seg, a)}' and {b} '{_label_of(seg, b)}' overlap "
                                   f"(slice {slices[f]}): pass overlap='first' or 'largest' to resolve them")
        np.copyto(plane, values, where=(values > 0) & (plane == 0))
    return np.ascontiguousarray(to_ijk_order(numbers))


def _frame_values(seg: hd.seg.Segmentation, frames: _Frames, fractional_threshold: float | None, path: Path) -> np.ndarray:
    """Each frame's pixels as segment numbers (0 outside its segment)."""
    try:
        stored = np.asarray(seg.get_stored_frames())
    except Exception as e:  # decoders raise many types on truncated or damaged pixel data
        raise InputError(path, f"the SEG's pixel data cannot be decoded ({e})") from None
    stored = stored.reshape(seg.number_of_frames, int(seg.Rows), int(seg.Columns))
    if frames.segments is None:  # LABELMAP: the pixel value is the segment number
        return stored.astype(np.uint16, copy=False)
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        if fractional_threshold is None:
            raise InputError(path, "a FRACTIONAL SEG (a probability or occupancy per segment and voxel): pass "
                                   "fractional_threshold (e.g. 0.5) to read it as one labelled volume")
        if not 0 < fractional_threshold <= 1:
            raise InputError(path, f"fractional_threshold must lie in (0, 1], got {fractional_threshold}")
        inside = stored >= fractional_threshold * float(seg.MaximumFractionalValue)
    else:
        inside = stored > 0
    return inside.astype(np.uint16) * frames.segments.astype(np.uint16)[:, None, None]


def _label_of(seg: pydicom.Dataset, number: int) -> str:
    return next((str(s.get("SegmentLabel", "")) for s in seg.SegmentSequence if int(s.SegmentNumber) == number), "?")


def dicom_seg_label_set(path: str | os.PathLike) -> LabelSet:
    """The label set a DICOM SEG's segment descriptions describe (labels, colours, codes with
    modifiers and anatomic regions); see `label_set_of_segments`. Reads the header only."""
    path = Path(path)
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types on damaged files
        raise InputError(path, f"cannot read as DICOM ({e})") from None
    return label_set_of_segments(_found_segments(header, path), str(path))


def _found_segments(dataset, path: Path) -> list[FoundSegment]:
    try:
        # a LABELMAP SEG may describe its background as segment 0: it is no segment of the result
        return [found_segment(item.SegmentNumber, item) for item in dataset.SegmentSequence if int(item.SegmentNumber) != 0]
    except (AttributeError, IndexError, KeyError, ValueError, TypeError) as e:
        raise InputError(path, f"a segment description lacks a required attribute or code ({e})") from None
