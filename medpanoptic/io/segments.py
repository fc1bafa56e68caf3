"""Viewer segments: one per stuff class present and one per thing instance, numbered 1..N.

Every viewer export (DICOM SEG, Slicer .seg.nrrd, ITK-SNAP/Slicer label maps) shares this
numbering, so "segment 7" is the same object in each. Reading back goes the other way:
segments (with their coded type, tracking id or name) become (label, instance) again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError, LabelSetError, PanopticError
from ..labels import (OPTIONAL_CODE_FIELDS, SCT_ANATOMICAL_STRUCTURE, SCT_MORPHOLOGICALLY_ABNORMAL, SCT_TISSUE, Code,
                      LabelClass, LabelSet)
from ..pair import PairStats

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
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None

    @property
    def tracking_id(self) -> str:
        """Human-readable identity kept across time points: 'lesion 3', or the stuff class name."""
        return self.name.lower()


def segment_name(cls: LabelClass, instance: int) -> str:
    """'Lesion 3' for a thing, 'Liver' for stuff: the class name as given, only its first letter raised."""
    name = cls.name[:1].upper() + cls.name[1:]
    return f"{name} {instance}" if cls.is_thing else name


def _segment(number: int, cls: LabelClass, instance: int) -> Segment:
    return Segment(number, cls.id, instance, segment_name(cls, instance), cls.color, cls.category, cls.type,
                   cls.type_modifier, cls.anatomic_region, cls.anatomic_region_modifier)


Numbering = tuple[np.ndarray, list[Segment]]
"""What `segment_map` gives: the segment-number map and the segments in number order."""


def segment_map(pair, label_set: LabelSet, stats: PairStats | None = None) -> Numbering:
    """The compact segment-number map (uint16, spatial) of a pair, and its segments in number order.

    The instances and their classes come from `stats` (the pair's `pair_stats`) when given,
    else from one gather over the thing voxels; one compiled pass then writes every voxel's
    number (stuff by class, things by instance) and counts the stuff classes.
    """
    from .._kernels import segment_numbers

    arr = np.asarray(pair.detach().cpu() if isinstance(pair, torch.Tensor) else pair)
    label, instance = np.ascontiguousarray(arr[0]), np.ascontiguousarray(arr[1])
    low_high = _label_range(label, stats)
    if low_high is not None and not (low_high[0] >= 0 and low_high[1] <= label_set.max_id):
        raise PanopticError(f"labels outside the label set's ids 0..{label_set.max_id}")
    ids, thing_labels = _things(label, instance) if stats is None else (stats.ids.tolist(), stats.label_low)
    stuff = [c for c in label_set if not c.is_thing]
    if len(stuff) + len(ids) > MAX_SEGMENTS:
        raise PanopticError(f"{len(stuff) + len(ids)} segments do not fit a 16-bit viewer label map (at most {MAX_SEGMENTS})")
    # provisional numbers: every stuff class, then the things; absent stuff classes are dropped after
    stuff_lut = np.zeros(label_set.max_id + 1, np.uint16)
    for k, c in enumerate(stuff, start=1):
        stuff_lut[c.id] = k
    order = sorted(ids, key=lambda i: (int(thing_labels[i]), i))
    thing_lut = np.zeros(max(ids, default=0) + 1, np.uint16)
    thing_lut[order] = np.arange(len(stuff) + 1, len(stuff) + len(order) + 1)
    numbers, counts = segment_numbers(label, instance, stuff_lut, thing_lut)
    present = [c for c in stuff if counts[c.id]]
    if len(present) < len(stuff):  # renumber without the absent stuff classes
        keep = np.zeros(len(stuff) + len(order) + 1, np.uint16)
        kept = [stuff_lut[c.id] for c in present] + list(range(len(stuff) + 1, len(stuff) + len(order) + 1))
        keep[kept] = np.arange(1, len(kept) + 1)
        numbers = keep[numbers]
    segments = [_segment(k, c, 0) for k, c in enumerate(present, start=1)]
    for inst in order:
        segments.append(_segment(len(segments) + 1, label_set[int(thing_labels[inst])], int(inst)))
    return numbers, segments


def _label_range(label: np.ndarray, stats: PairStats | None) -> tuple[int, int] | None:
    """The smallest and largest label present (None for an empty map); read off `stats` when given."""
    if stats is not None:
        present = np.flatnonzero(stats.label_voxels.sum(axis=0))
        return (int(present[0]), int(present[-1])) if present.size else None
    return (int(label.min()), int(label.max())) if label.size else None


def _things(label: np.ndarray, instance: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The instance ids present, and per id its class (from one gather over the thing voxels)."""
    flat = torch.from_numpy(instance.reshape(-1))
    fg = torch.nonzero(flat).flatten()
    fg_instance = flat[fg].long()
    fg_label = torch.from_numpy(label.reshape(-1))[fg].long()
    ids = torch.unique(fg_instance).tolist()
    thing_labels = np.zeros(max(ids, default=0) + 1, np.int64)
    thing_labels[fg_instance.numpy()] = fg_label.numpy()
    return ids, thing_labels


TRAILING_NUMBER = re.compile(r"(\d+)\s*$")
INSTANCE_SUFFIX = re.compile(r"\s+(\d+)\s*$")
"""' 3' at the end of 'Lesion 3': how a segment name says it is one instance of a thing class."""


@dataclass(frozen=True)
class FoundSegment:
    """What a reader found about one segment of a viewer file: its number, name, colour and codes,
    and the class id / instance id where the file carries them (our own tags)."""

    number: int
    name: str
    color: tuple[int, int, int] = (128, 128, 128)
    codes: dict[str, Code] = field(default_factory=dict)
    class_id: int | None = None
    instance: int | None = None

    def code(self, key: str) -> Code | None:
        return self.codes.get(key)


def instance_from_name(cls: LabelClass, text: str | None) -> int | None:
    """The instance id a thing segment's TrackingID or name carries ('lesion 3' -> 3), if any."""
    match = TRAILING_NUMBER.search(text or "") if cls.is_thing else None
    return int(match.group(1)) if match else None


def _same(a: Code | None, b: Code | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and (a.value, a.scheme) == (b.value, b.scheme))


def class_of_segment(label_set: LabelSet, name: str, type_code: Code | None, category_code: Code | None,
                     mapping: dict[str, int] | None = None, source: str | None = None,
                     type_modifier: Code | None = None) -> LabelClass:
    """The class a foreign segment stands for: an explicit mapping by name, then the coded type
    (narrowed by category, then by type modifier: left and right kidney share a type), then
    the segment name; a clear error when nothing fits."""
    if mapping and name in mapping:
        return label_set[mapping[name]]
    if type_code is not None:
        by_type = [c for c in label_set if _same(c.type, type_code)]
        if len(by_type) > 1 and category_code is not None:
            by_type = [c for c in by_type if c.category.value == category_code.value] or by_type
        if len(by_type) > 1:
            by_type = [c for c in by_type if _same(c.type_modifier, type_modifier)] or by_type
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


def classes_of_segments(found: list[FoundSegment], label_set: LabelSet, mapping: dict[str, int] | None = None,
                        source: str | None = None) -> list[tuple[int, LabelClass, int | None]]:
    """(number, class, instance or None) per segment, for `pair_from_segments`: by our class-id
    tag when the label set has that id, else as `class_of_segment` decides."""
    specs = []
    for s in found:
        if s.class_id is not None and s.class_id in label_set:
            cls = label_set[s.class_id]
        else:
            cls = class_of_segment(label_set, s.name, s.code("type"), s.code("category"), mapping, source,
                                   s.code("type_modifier"))
        instance = s.instance if s.instance is not None else instance_from_name(cls, s.name)
        specs.append((s.number, cls, instance))
    return specs


_THING_CATEGORIES = {SCT_MORPHOLOGICALLY_ABNORMAL.value}
_STUFF_CATEGORIES = {SCT_TISSUE.value, SCT_ANATOMICAL_STRUCTURE.value, "123037004"}  # 123037004: DICOM's newer code


def _is_thing(members: list[FoundSegment], source: str | None) -> bool:
    """Stuff or thing from what the file states: our instance tags, else the SCT category code."""
    if any(m.instance is not None for m in members):
        return any((m.instance or 0) > 0 for m in members)
    category = members[0].code("category")
    if category is not None and category.scheme in ("SCT", "SRT"):
        if category.value in _THING_CATEGORIES:
            return True
        if category.value in _STUFF_CATEGORIES:
            return False
    stated = f"{category.meaning} ({category.scheme} {category.value})" if category is not None else "no category"
    raise InputError(source, f"segment '{members[0].name}' has {stated}, which does not say whether it is stuff or "
                             "a countable thing: pass a label set (label_set=, or --labels labels.json)")


def label_set_of_segments(found: list[FoundSegment], source: str | None = None) -> LabelSet:
    """A label set that a viewer file's segments describe, for reading one without a label set.

    Segments with our class-id tag keep that id. Others are grouped by their codes and by
    their name without an instance suffix ('Lesion 1', 'Lesion 2' -> 'Lesion'). Whether a class
    is stuff or thing is never guessed from names or counts: our instance tags say it, else the
    coded category does (Morphologically Abnormal Structure: thing; Tissue or Anatomical
    Structure: stuff); any other segment is refused with a request for a label set. Each class
    takes the codes and colour of its first segment.
    """
    groups: dict[tuple, list[FoundSegment]] = {}
    for s in found:
        base = INSTANCE_SUFFIX.sub("", s.name).strip() or s.name
        codes = tuple((k, c.value, c.scheme) for k, c in sorted(s.codes.items()))
        key = ("id", s.class_id) if s.class_id is not None else ("codes", base.lower(), codes)
        groups.setdefault(key, []).append(s)
    taken = {s.class_id for s in found if s.class_id is not None}
    fresh = (i for i in range(1, 65536) if i not in taken)
    classes = []
    for key, members in groups.items():
        first = members[0]
        thing = _is_thing(members, source)
        name = (INSTANCE_SUFFIX.sub("", first.name).strip() or first.name) if thing else first.name
        codes = {k: c for k, c in first.codes.items() if k in ("category", "type", *OPTIONAL_CODE_FIELDS)}
        class_id = first.class_id if first.class_id is not None else next(fresh)
        classes.append(LabelClass(class_id, name, "thing" if thing else "stuff", first.color, **codes))
    try:
        return LabelSet(tuple(classes))
    except LabelSetError as e:
        raise InputError(source, f"its segments do not form a label set ({e}): pass one") from None
