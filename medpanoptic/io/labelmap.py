"""A viewer label map: segment numbers 1..N as NIfTI, with an ITK-SNAP label description and a Slicer colour table.

ITK-SNAP (File > Load label descriptions) and 3D Slicer (colour table beside the volume)
then show every stuff class and every thing instance by name and colour.

Names follow each viewer's own rules. ITK-SNAP reads the label between the first two double
quotes (a class name never holds one: `LabelSet` refuses it). Slicer reads a colour table as
whitespace-separated fields, so a space in a name is written as `_` (Slicer's convention) and
`read_slicer_color_table` turns it back; a name that itself holds `_` comes back with a
space there, and Slicer trims apostrophes at either end of a name. The ITK-SNAP file is the
exact one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..labels import LabelSet
from .atomic import atomic_paths
from .nifti import write_nifti
from .segments import Numbering, Segment, segment_map


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


ViewerLabels = dict[int, tuple[str, tuple[int, int, int]]]
"""Segment number -> (name, RGB colour), as a viewer's label file lists them (0, the clear label, left out)."""

_ITKSNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+[-+.\deE]+\s+\d+\s+\d+\s+"([^"]*)"')
_ASCII_SPACE = re.compile(r"[ \t\r\n\v\f]+")  # what C++ streams split on; a non-breaking space is part of a name


def read_itksnap_labels(path: str | os.PathLike) -> ViewerLabels:
    """An ITK-SNAP label description file, read as ITK-SNAP does (the label ends at the next quote)."""
    labels: ViewerLabels = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _ITKSNAP_LINE.match(line)
        if match is None:
            raise InputError(path, f"line {number} is not 'IDX R G B A VIS MSH \"LABEL\"'")
        idx, r, g, b, name = match.groups()
        if int(idx):
            labels[int(idx)] = (name, (int(r), int(g), int(b)))
    return labels


def read_slicer_color_table(path: str | os.PathLike) -> ViewerLabels:
    """A Slicer colour table (.ctbl), read as Slicer does; `_` in a name becomes a space again."""
    labels: ViewerLabels = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = _ASCII_SPACE.split(line.strip())
        try:
            idx, name, rgb = int(fields[0]), fields[1].strip("'"), tuple(int(float(v)) for v in fields[2:5])
        except (IndexError, ValueError):
            raise InputError(path, f"line {number} is not 'index name R G B A'") from None
        if idx and len(rgb) == 3:
            labels[idx] = (name.replace("_", " "), rgb)  # type: ignore[assignment]
        elif idx:
            raise InputError(path, f"line {number} has no R G B values")
    return labels


def _lines(path: str | os.PathLike) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read as a UTF-8 label file ({e})") from None


def write_labelmap(pair, label_set: LabelSet, stem: str | os.PathLike, numbering: Numbering | None = None) -> dict[str, Path]:
    """`<stem>_segments.nii.gz` (uint16 segment numbers), `<stem>_segments.itksnap.txt`, `<stem>_segments.ctbl`.

    `numbering` is the pair's `segment_map`, when already made."""
    numbers, segments = numbering or segment_map(pair, label_set)
    paths = {"labelmap": Path(f"{stem}_segments.nii.gz"), "itksnap": Path(f"{stem}_segments.itksnap.txt"),
             "slicer": Path(f"{stem}_segments.ctbl")}
    with atomic_paths(*paths.values()) as (nifti, itksnap, slicer):
        write_nifti(nifti, numbers, np.asarray(pair.affine, dtype=float))
        itksnap.write_text(itksnap_labels(segments), encoding="utf-8")
        slicer.write_text(slicer_color_table(segments), encoding="utf-8")
    return paths
