"""3D Slicer segmentations (.seg.nrrd): every segment in one label layer, written from the voxel array.

Each segment has its name, colour, SNOMED CT terminology entry and tags carrying the class id
and instance id (`medpanoptic.class_id`, `medpanoptic.instance_id`), so the file opens in
Slicer as a list of named, coloured, coded segments and comes back as the same pair.

A NRRD header is ASCII (pynrrd refuses anything else on writing and drops it on reading), so
a name or code meaning with other characters is written with those characters (and `%`)
percent-encoded as UTF-8 ('Läsion' -> 'L%C3%A4sion'); reading one of our files decodes them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import slicerio

from ..errors import InputError
from ..labels import Code, LabelSet
from .atomic import atomic_paths
from .geometry import from_ijk_order, lps_to_ras, ras_to_lps, to_ijk_order
from .scan import make_meta_tensor
from .segments import (FoundSegment, Numbering, Segment, classes_of_segments, label_set_of_segments, pair_from_segments,
                       segment_map)

CONTEXT = "Segmentation category and type - medpanoptic"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
CLASS_TAG, INSTANCE_TAG = "medpanoptic.class_id", "medpanoptic.instance_id"
TERMINOLOGY_KEYS = {"category": "category", "type": "type", "type_modifier": "typeModifier",
                    "anatomic_region": "anatomicRegion", "anatomic_region_modifier": "anatomicRegionModifier"}
"""Our code fields -> the keys of slicerio's terminology entry (Slicer's `TerminologyEntry` tag:
context~category~type~type modifier~anatomic context~region~region modifier, each scheme^value^meaning)."""


_NOT_ASCII = re.compile(r"[^\x20-\x7e]|%")


def header_text(text: str) -> str:
    """`text` as printable ASCII for a NRRD header: other characters (and '%') percent-encoded."""
    return _NOT_ASCII.sub(lambda m: quote(m.group(0), safe=""), text)


def terminology(segment: Segment) -> dict:
    """The Slicer terminology entry of a segment: every code it has, as [scheme, value, meaning]."""
    entry: dict = {"contextName": CONTEXT}
    for field, key in TERMINOLOGY_KEYS.items():
        code = getattr(segment, field)
        if code is not None:
            entry[key] = [header_text(code.scheme), header_text(code.value), header_text(code.meaning)]
    if segment.anatomic_region is not None:
        entry["anatomicContextName"] = ANATOMIC_CONTEXT
    return entry


def codes_of_terminology(entry: dict | None, decode=str) -> dict[str, Code]:
    """Our code fields from a parsed Slicer terminology entry; empty triples (`^^`) are absent codes."""
    codes = {}
    for field, key in TERMINOLOGY_KEYS.items():
        triple = (entry or {}).get(key)
        if triple and any(str(part) for part in triple):
            codes[field] = Code(*(decode(part) for part in _code(triple)))
    return codes


def write_seg_nrrd(pair, label_set: LabelSet, path: str | os.PathLike, compression_level: int = 1,
                   numbering: Numbering | None = None) -> Path:
    """Write a pair as a Slicer segmentation (one layer; segment numbers as label values).

    `numbering` is the pair's `segment_map`, when already made."""
    numbers, segments = numbering or segment_map(pair, label_set)
    ijk_to_lps = ras_to_lps(pair.affine)
    if numbers.ndim == 2:
        numbers = numbers[:, :, None]
    document = {
        # NRRD stores the first index fastest: hand over an (i, j, k) view of planes-first voxels
        "voxels": to_ijk_order(from_ijk_order(numbers)),
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": [
            {
                "id": f"Segment_{s.number}", "labelValue": s.number, "layer": 0, "name": header_text(s.name),
                "color": [v / 255.0 for v in s.color],
                "terminology": terminology(s),
                "tags": {CLASS_TAG: str(s.label), INSTANCE_TAG: str(s.instance)},
            }
            for s in segments
        ],
    }
    path = Path(path)
    with atomic_paths(path) as (tmp,):
        slicerio.write_segmentation(str(tmp), document, compression_level=compression_level)
    return path


def read_seg_nrrd(path: str | os.PathLike, label_set: LabelSet, mapping: dict[str, int] | None = None):
    """A .seg.nrrd (ours or Slicer's) as a pair MetaTensor; segments map to classes by tag, code or name."""
    path = Path(path)
    seg = _read(path)
    voxels = np.asarray(seg["voxels"])
    layers = {s.get("layer", 0) for s in seg["segments"]}
    if voxels.ndim == 4 or len(layers) > 1:
        raise InputError(path, "overlapping segments (several layers) cannot form one panoptic result")
    specs = classes_of_segments(_found(seg, path), label_set, mapping, str(path))
    pair = pair_from_segments(voxels.astype(np.int64), specs)
    affine = lps_to_ras(seg["ijkToLPS"])
    return make_meta_tensor(pair.astype(np.int32), affine, {"filename_or_obj": str(path), "source_format": "seg.nrrd"})


def seg_nrrd_label_set(path: str | os.PathLike) -> LabelSet:
    """The label set a .seg.nrrd's segments describe (names, colours, terminology codes, our tags);
    see `label_set_of_segments`. Reads the header only."""
    path = Path(path)
    return label_set_of_segments(_found(_read(path, skip_voxels=True), path), str(path))


def _read(path: Path, skip_voxels: bool = False) -> dict:
    try:
        return slicerio.read_segmentation(str(path), skip_voxels=skip_voxels)
    except Exception as e:  # slicerio/pynrrd raise many types on damaged files
        raise InputError(path, f"cannot read as a Slicer segmentation ({e})") from None


def _found(seg: dict, path: Path) -> list[FoundSegment]:
    ours = any(CLASS_TAG in s.get("tags", {}) for s in seg["segments"])
    decode = unquote if ours else str  # only our writer percent-encodes; another tool's '%' is literal
    found = []
    for s in seg["segments"]:
        tags = s.get("tags", {})
        try:
            number = int(s["labelValue"])
            class_id = int(tags[CLASS_TAG]) if CLASS_TAG in tags else None
            instance = int(tags[INSTANCE_TAG]) if INSTANCE_TAG in tags else None
        except (KeyError, ValueError) as e:
            raise InputError(path, f"segment '{s.get('name', s.get('id'))}' has no usable label value or id tag ({e})") from None
        color = tuple(int(round(255 * float(v))) for v in s.get("color", (0.5, 0.5, 0.5))[:3])
        name = decode(str(s.get("name", s.get("id", number))))
        found.append(FoundSegment(number, name, color, codes_of_terminology(s.get("terminology"), decode),  # type: ignore[arg-type]
                                  class_id, instance))
    return found


def _code(triple) -> tuple[str, str, str]:
    scheme, value, meaning = (list(triple) + ["", "", ""])[:3]
    return str(value), str(scheme), str(meaning)
