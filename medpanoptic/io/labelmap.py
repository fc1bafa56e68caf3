"""A viewer label map: segment numbers 1..N as NIfTI, with an ITK-SNAP label description and a Slicer colour table.

ITK-SNAP (File > Load label descriptions) and 3D Slicer (colour table beside the volume)
then show every stuff class and every thing instance by name and colour.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..labels import LabelSet
from .atomic import atomic_paths
from .nifti import write_nifti
from .segments import Segment, segment_map


def itksnap_labels(segments: list[Segment]) -> str:
    lines = ["# ITK-SNAP Label Description File (written by medpanoptic)",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             '    0     0    0    0     0   0   0    "Clear Label"']
    lines += [f'{s.number:5d} {s.color[0]:5d}{s.color[1]:5d}{s.color[2]:5d}        1   1   1    "{s.name}"' for s in segments]
    return "\n".join(lines) + "\n"


def slicer_color_table(segments: list[Segment]) -> str:
    lines = ["# Color table file written by medpanoptic", f"# {len(segments) + 1} values", "0 Background 0 0 0 0"]
    lines += [f"{s.number} {s.name.replace(' ', '_')} {s.color[0]} {s.color[1]} {s.color[2]} 255" for s in segments]
    return "\n".join(lines) + "\n"


def write_labelmap(pair, label_set: LabelSet, stem: str | os.PathLike) -> dict[str, Path]:
    """`<stem>_segments.nii.gz` (uint16 segment numbers), `<stem>_segments.itksnap.txt`, `<stem>_segments.ctbl`."""
    numbers, segments = segment_map(pair, label_set)
    paths = {"labelmap": Path(f"{stem}_segments.nii.gz"), "itksnap": Path(f"{stem}_segments.itksnap.txt"),
             "slicer": Path(f"{stem}_segments.ctbl")}
    with atomic_paths(*paths.values()) as (nifti, itksnap, slicer):
        write_nifti(nifti, numbers, np.asarray(pair.affine, dtype=float))
        itksnap.write_text(itksnap_labels(segments), encoding="utf-8")
        slicer.write_text(slicer_color_table(segments), encoding="utf-8")
    return paths
