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
from .segments import class_of_segment, instance_from_name, pair_from_segments, segment_map

SegmentationType = Literal["BINARY", "LABELMAP"]
SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


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
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.number, segment_label=s.name,
            segmented_property_category=_coded(s.category), segmented_property_type=_coded(s.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=generate_uid(), tracking_id=s.tracking_id,
            display_color=hd.color.CIELabColor.from_rgb(*s.color),
        )
        for s in segments
    ]
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
    specs = []
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        type_code = Code(description.segmented_property_type.value, description.segmented_property_type.scheme_designator,
                         description.segmented_property_type.meaning)
        category = Code(description.segmented_property_category.value,
                        description.segmented_property_category.scheme_designator,
                        description.segmented_property_category.meaning)
        cls = class_of_segment(label_set, description.segment_label, type_code, category, mapping, str(path))
        instance = instance_from_name(cls, description.tracking_id or description.segment_label)
        specs.append((int(number), cls, instance))
    numbers, affine = _as_source_grid(volume.array, volume.affine)
    pair = pair_from_segments(numbers.astype(np.int64), specs)
    return make_meta_tensor(pair.astype(np.int32), affine, {"filename_or_obj": str(path), "source_format": "dicom-seg"})
