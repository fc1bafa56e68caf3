"""Export a panoptic result read from disk for viewers: DICOM SEG, Slicer .seg.nrrd, a label map
with colour tables, the instance table, or any other registered format (`io.formats`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from monai.data import MetaTensor

from .io.formats import write_formats
from .labels import LabelSet
from .segment import PanopticResult


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
    patient or frame of reference than the source's (`io.formats.check_same_source`).
    """
    result = PanopticResult(pair, label_set, scores, source, case=Path(stem).name)
    return write_formats(result, stem, formats)
