"""Export a panoptic result for viewers: DICOM SEG, Slicer .seg.nrrd, a label map with colour tables, the instance table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from monai.data import MetaTensor

from ..errors import GeometryError, InputError
from ..labels import LabelSet
from .panoptic import source_identity

FORMATS = ("dicom-seg", "dicom-seg-labelmap", "seg-nrrd", "labelmap", "table", "tiff", "sr")


def export(
    pair: MetaTensor,
    label_set: LabelSet,
    stem: str | os.PathLike,
    formats: Iterable[str] = ("seg-nrrd", "labelmap", "table"),
    source: MetaTensor | None = None,
    scores: dict[int, float] | None = None,
) -> dict[str, Path]:
    """Write the requested formats beside `stem`; returns every written path by name.

    `source` is the scan from `read_scan`: DICOM SEG needs it (to reference its slices), the
    table uses its intensities. A DICOM SEG is refused when the result records another
    patient or frame of reference than the source's (`check_same_source`).
    """
    from ..report import instance_table, write_instance_table
    from .dicom_seg import write_dicom_seg
    from .labelmap import write_labelmap
    from .panoptic import write_tiff_maps
    from .seg_nrrd import write_seg_nrrd

    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InputError(None, f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if "sr" in formats and "dicom-seg" not in formats:  # the SR references the lesions' segments
        formats.insert(formats.index("sr"), "dicom-seg")
    if any(f.startswith("dicom-seg") for f in formats) and source is None:
        raise InputError(None, "DICOM SEG export needs the source DICOM scan (--source)")
    if any(f.startswith("dicom-seg") for f in formats):
        check_same_source(pair, source)
    written: dict[str, Path] = {}
    for fmt in formats:
        if fmt == "dicom-seg":
            written[fmt] = write_dicom_seg(pair, label_set, source, f"{stem}_seg.dcm")
        elif fmt == "dicom-seg-labelmap":
            written[fmt] = write_dicom_seg(pair, label_set, source, f"{stem}_seg_labelmap.dcm", segmentation_type="LABELMAP")
        elif fmt == "seg-nrrd":
            written[fmt] = write_seg_nrrd(pair, label_set, f"{stem}.seg.nrrd")
        elif fmt == "labelmap":
            written.update(write_labelmap(pair, label_set, stem))
        elif fmt == "tiff":
            written.update({f"tiff_{k}": v for k, v in write_tiff_maps(pair, stem).items()})
        elif fmt == "sr":
            from ..clinical.sr import write_sr

            written[fmt] = write_sr(pair, label_set, source, written["dicom-seg"], f"{stem}_sr.dcm")
        elif fmt == "table":
            image = source if source is not None and tuple(source.shape[1:]) == tuple(pair.shape[1:]) else None
            paths = write_instance_table(instance_table(pair, label_set, image, scores), stem)
            written.update({f"table_{k}": v for k, v in paths.items()})
    return written


def check_same_source(pair: MetaTensor, source: MetaTensor) -> None:
    """Refuse a source scan of another patient or frame of reference than the one the result was made on.

    Two series of one grid size can belong to different patients; a DICOM SEG written against
    the wrong one would carry that patient's identity. Results that record no identity pass.
    """
    made_on, given = source_identity(pair.meta), source_identity(source.meta)
    where = source.meta.get("filename_or_obj", "the source scan")
    for key, what, error in (("patient_id", "patient", InputError), ("frame_of_reference_uid", "frame of reference", GeometryError)):
        if key in made_on and key in given and made_on[key] != given[key]:
            raise error(where, f"the result was made on {what} {made_on[key]!r}, this source belongs to {given[key]!r}: "
                               "refusing to write a DICOM SEG against another series' patient")
