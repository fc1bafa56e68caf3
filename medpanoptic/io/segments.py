"""Viewer segments: one per stuff class present and one per thing instance, numbered 1..N.

Every viewer export (DICOM SEG, Slicer .seg.nrrd, ITK-SNAP/Slicer label maps) shares this
numbering, so "segment 7" is the same object in each. Reading back goes the other way:
segments (with their coded type, tracking id or name) become (label, instance) again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError, PanopticError
from ..labels import Code, LabelClass, LabelSet

MAX_SEGMENTS = 65535


@dataclass(frozen=True)
class Segment:
    """One viewer segment: its number, the (label, instance) it stands for and how it is shown."""

    number: int
    label: int
    instance: int
    name: str
    color: tuple[int, int, int]
    category: Code
    type: Code

    @property
    def tracking_id(self) -> str:
        """Human-readable identity kept across time points: 'lesion 3', or the stuff class name."""
        return self.name.lower()


def segment_name(cls: LabelClass, instance: int) -> str:
    return f"{cls.name.capitalize()} {instance}" if cls.is_thing else cls.name.capitalize()


def segment_map(pair, label_set: LabelSet) -> tuple[np.ndarray, list[Segment]]:
    """The compact segment-number map (uint16, spatial) of a pair, and its segments in number order.

    The thing voxels are found once to number the instances; one compiled pass then writes
    every voxel's number (stuff by class, things by instance) and counts the stuff classes.
    """
    from .._kernels import segment_numbers

    arr = np.asarray(pair.detach().cpu() if isinstance(pair, torch.Tensor) else pair)
    label, instance = np.ascontiguousarray(arr[0]), np.ascontiguousarray(arr[1])
    if label.size and (int(label.min()) < 0 or int(label.max()) > label_set.max_id):
        raise PanopticError(f"labels outside the label set's ids 0..{label_set.max_id}")
    flat = torch.from_numpy(instance.reshape(-1))
    fg = torch.nonzero(flat).flatten()
    fg_instance = flat[fg].long()
    fg_label = torch.from_numpy(label.reshape(-1))[fg].long()
    ids = torch.unique(fg_instance).tolist()
    thing_labels = np.zeros(max(ids, default=0) + 1, np.int64)
    thing_labels[fg_instance.numpy()] = fg_label.numpy()
    stuff = [c for c in label_set if not c.is_thing]
    if len(stuff) + len(ids) > MAX_SEGMENTS:
        raise PanopticError(f"{len(stuff) + len(ids)} segments do not fit a 16-bit viewer label map (at most {MAX_SEGMENTS})")
    # provisional numbers: every stuff class, then the things; absent stuff classes are dropped after
    stuff_lut = np.zeros(label_set.max_id + 1, np.uint16)
    for k, c in enumerate(stuff, start=1):
        stuff_lut[c.id] = k
    order = sorted(ids, key=lambda i: (int(thing_labels[i]), i))
    thing_lut = np.zeros(len(thing_labels), np.uint16)
    thing_lut[order] = np.arange(len(stuff) + 1, len(stuff) + len(order) + 1)
    numbers, counts = segment_numbers(label, instance, stuff_lut, thing_lut)
    present = [c for c in stuff if counts[c.id]]
    if len(present) < len(stuff):  # renumber without the absent stuff classes
        keep = np.zeros(len(stuff) + len(order) + 1, np.uint16)
        kept = [stuff_lut[c.id] for c in present] + list(range(len(stuff) + 1, len(stuff) + len(order) + 1))
        keep[kept] = np.arange(1, len(kept) + 1)
        numbers = keep[numbers]
    segments = [Segment(k, c.id, 0, segment_name(c, 0), c.color, c.category, c.type) for k, c in enumerate(present, start=1)]
    for inst in order:
        c = label_set[int(thing_labels[inst])]
        segments.append(Segment(len(segments) + 1, c.id, int(inst), segment_name(c, int(inst)), c.color, c.category, c.type))
    return numbers, segments


TRAILING_NUMBER = re.compile(r"(\d+)\s*$")


def instance_from_name(cls: LabelClass, text: str | None) -> int | None:
    """The instance id a thing segment's TrackingID or name carries ('lesion 3' -> 3), if any."""
    match = TRAILING_NUMBER.search(text or "") if cls.is_thing else None
    return int(match.group(1)) if match else None


def class_of_segment(label_set: LabelSet, name: str, type_code: Code | None, category_code: Code | None,
                     mapping: dict[str, int] | None = None, source: str | None = None) -> LabelClass:
    """The class a foreign segment stands for: an explicit mapping by name, then the coded type
    (and category), then the segment name; a clear error when nothing fits."""
    if mapping and name in mapping:
        return label_set[mapping[name]]
    if type_code is not None:
        by_type = [c for c in label_set if (c.type.value, c.type.scheme) == (type_code.value, type_code.scheme)]
        if len(by_type) > 1 and category_code is not None:
            by_type = [c for c in by_type if c.category.value == category_code.value] or by_type
        if len(by_type) == 1:
            return by_type[0]
    stripped = TRAILING_NUMBER.sub("", name).strip().lower()
    for c in label_set:
        if c.name.lower() in (name.lower(), stripped):
            return c
    raise InputError(source, f"segment '{name}' (type {type_code.meaning if type_code else 'none'}) matches no class of the "
                             f"label set {[c.name for c in label_set]}: pass a mapping from segment name to class id")


def pair_from_segments(numbers: np.ndarray, segments: list[tuple[int, LabelClass, int | None]]) -> np.ndarray:
    """(2, *spatial) int32 pair from a segment-number map and (number, class, instance or None) per segment.

    Things without a usable instance id get fresh ids after the largest one given.
    """
    label_lut = np.zeros(max([s[0] for s in segments], default=0) + 1, np.int32)
    instance_lut = np.zeros_like(label_lut)
    fresh = max((s[2] or 0 for s in segments if s[1].is_thing), default=0)
    used: set[int] = set()
    for number, cls, instance in segments:
        label_lut[number] = cls.id
        if cls.is_thing:
            if not instance or instance in used:
                fresh += 1
                instance = fresh
            used.add(instance)
            instance_lut[number] = instance
    return np.stack([label_lut[numbers], instance_lut[numbers]])
