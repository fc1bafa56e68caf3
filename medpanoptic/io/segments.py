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
    """The compact segment-number map (uint16, spatial) of a pair, and its segments in number order."""
    arr = np.asarray(pair.detach().cpu() if isinstance(pair, torch.Tensor) else pair)
    label, instance = arr[0], arr[1]
    stuff_present = [c for c in label_set if not c.is_thing and np.any(label == c.id)] if label_set.stuff_ids else []
    fg = instance > 0
    ids = np.unique(instance[fg]) if fg.any() else np.zeros(0, instance.dtype)
    thing_labels = np.zeros(int(instance.max(initial=0)) + 1, np.int64)
    thing_labels[instance[fg]] = label[fg]
    n = len(stuff_present) + len(ids)
    if n > MAX_SEGMENTS:
        raise PanopticError(f"{n} segments do not fit a 16-bit viewer label map (at most {MAX_SEGMENTS})")
    segments: list[Segment] = []
    stuff_lut = np.zeros(max(int(label.max(initial=0)), label_set.max_id) + 1, np.uint16)
    for c in stuff_present:
        segments.append(Segment(len(segments) + 1, c.id, 0, segment_name(c, 0), c.color, c.category, c.type))
        stuff_lut[c.id] = len(segments)
    thing_lut = np.zeros(len(thing_labels), np.uint16)
    order = sorted(ids.tolist(), key=lambda i: (int(thing_labels[i]), i))
    for inst in order:
        c = label_set[int(thing_labels[inst])]
        segments.append(Segment(len(segments) + 1, c.id, int(inst), segment_name(c, int(inst)), c.color, c.category, c.type))
        thing_lut[inst] = len(segments)
    numbers = np.where(fg, thing_lut[instance], stuff_lut[label])
    return numbers.astype(np.uint16, copy=False), segments


TRAILING_NUMBER = re.compile(r"(\d+)\s*$")


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
