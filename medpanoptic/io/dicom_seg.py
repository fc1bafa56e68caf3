"""DICOM Segmentation objects (highdicom): one segment per thing instance and per stuff class.

Written frames are aligned with the source slices and reference them; every segment carries
its SNOMED CT category and type from the label set, a display colour, a TrackingID
('lesion 3') and a TrackingUID, and the algorithm identification (medpanoptic and bundle).
BINARY is the default (what every viewer opens); LABELMAP (one frame per slice, RLE) is the
compact option. Reading maps segments back to (label, instance) through the label set.
"""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import pydicom
from monai.data import MetaTensor
from pydicom.sr.codedict import codes
from pydicom.uid import RLELossless, generate_uid

from ..errors import GeometryError, InputError
from ..labels import Code, LabelSet
from .atomic import atomic_paths
from .geometry import LPS_TO_RAS
from .nifti import nifti_order
from .scan import make_meta_tensor, read_scan
from .segments import TRAILING_NUMBER, FoundSegment, Segment, classes_of_segments, label_set_of_segments, pair_from_segments, segment_map

SegmentationType = Literal["BINARY", "LABELMAP"]
SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _code_of(item) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def segment_description(s: Segment, algorithm: hd.AlgorithmIdentificationSequence) -> hd.seg.SegmentDescription:
    """A segment's DICOM description: label, category, type with its modifier (0062,0011), anatomic
    region with its modifier (0008,2220), tracking identity and colour. highdicom's constructor
    has no modifier arguments, so the modifiers go into the code items it made."""
    description = hd.seg.SegmentDescription(
        segment_number=s.number, segment_label=s.name,
        segmented_property_category=_coded(s.category), segmented_property_type=_coded(s.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=generate_uid(), tracking_id=s.tracking_id,
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
) -> Path:
    """Write `pair` (on the source scan's grid) as a DICOM SEG referencing the source series.

    `source` is the scan from `read_scan` (its meta knows the files) or its DICOM folder/file.
    """
    from .. import __version__

    scan = source if isinstance(source, MetaTensor) else read_scan(source)
    where = str(scan.meta.get("filename_or_obj", source if not isinstance(source, MetaTensor) else "source"))
    if str(scan.meta.get("source_format", "")).split("-")[0] != "dicom":
        raise InputError(where, f"a DICOM SEG needs a DICOM source scan; this one is {scan.meta.get('source_format', 'unknown')}")
    if tuple(pair.shape[1:]) != tuple(scan.shape[1:]) or not np.allclose(np.asarray(pair.affine), np.asarray(scan.affine), atol=1e-3):
        raise GeometryError(where, f"the result {tuple(pair.shape[1:])} is not on the source scan's grid {tuple(scan.shape[1:])}")
    with ThreadPoolExecutor(max_workers=1) as pool:  # the segment map (no GIL) while the headers are parsed
        numbering = pool.submit(segment_map, pair, label_set)
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in scan.meta["source_files"]]
        numbers, segments = numbering.result()
    if not segments:
        raise InputError(where, "the result is empty: a DICOM SEG needs at least one segment")
    frames = nifti_order(numbers)  # (slice, row, column), slices in source order
    if scan.meta.get("source_format") == "dicom-enhanced":
        frames = frames[np.argsort(scan.meta["frame_numbers"])]  # back to the source's own frame order
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version or __version__)
    descriptions = [segment_description(s, algorithm) for s in segments]
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
            transfer_syntax_uid=RLELossless if segmentation_type == "LABELMAP" else pydicom.uid.ExplicitVRLittleEndian,
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


def _as_source_grid(array: np.ndarray, lps_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """highdicom's (slice, row, column) volume as (column, row, slice) with slices ascending along
    the plane normal — the grid `read_scan` gives the source series."""
    array = array.transpose(2, 1, 0)
    lps = np.asarray(lps_affine, dtype=float)[:, [2, 1, 0, 3]]
    if np.dot(lps[:3, 2], np.cross(lps[:3, 0], lps[:3, 1])) < 0:
        array = array[:, :, ::-1]
        lps[:3, 3] += lps[:3, 2] * (array.shape[2] - 1)
        lps[:3, 2] *= -1
    return np.ascontiguousarray(array), LPS_TO_RAS @ lps


def is_dicom_seg(path: Path) -> bool:
    from .dicom_read import is_dicom_file

    if not path.is_file() or not is_dicom_file(path):
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return False
    return str(header.get("SOPClassUID", "")) in SEG_SOP_CLASSES


def read_dicom_seg(
    path: str | os.PathLike, label_set: LabelSet, mapping: dict[str, int] | None = None,
) -> MetaTensor:
    """A DICOM SEG (ours or another tool's) as a pair on the SEG's own volume grid.

    Segments become classes by `mapping` (segment label -> class id), else by coded type,
    else by name; thing instances keep the number in their TrackingID ('lesion 3') when
    there is one, else get fresh ids.
    """
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as e:  # highdicom raises many types on invalid or overlapping objects
        raise InputError(path, f"cannot read this DICOM SEG as one non-overlapping volume ({e})") from None
    specs = classes_of_segments(_found_segments(seg, path), label_set, mapping, str(path))
    numbers, affine = _as_source_grid(volume.array, volume.affine)
    pair = pair_from_segments(numbers.astype(np.int64), specs)
    return make_meta_tensor(pair.astype(np.int32), affine, {"filename_or_obj": str(path), "source_format": "dicom-seg"})


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
