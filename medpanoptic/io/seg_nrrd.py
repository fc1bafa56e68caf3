"""3D Slicer segmentations (.seg.nrrd): every segment in one label layer, written from the voxel array.

Each segment has its name, colour, SNOMED CT terminology entry and tags carrying the class id
and instance id (`medpanoptic.class_id`, `medpanoptic.instance_id`), so the file opens in
Slicer as a list of named, coloured, coded segments and comes back as the same pair.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import slicerio

from ..errors import InputError
from ..labels import Code, LabelSet
from .atomic import atomic_paths
from .geometry import LPS_TO_RAS
from .nifti import nifti_order
from .scan import make_meta_tensor
from .segments import class_of_segment, instance_from_name, pair_from_segments, segment_map

CONTEXT = "Segmentation category and type - medpanoptic"
CLASS_TAG, INSTANCE_TAG = "medpanoptic.class_id", "medpanoptic.instance_id"


def write_seg_nrrd(pair, label_set: LabelSet, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write a pair as a Slicer segmentation (one layer; segment numbers as label values)."""
    numbers, segments = segment_map(pair, label_set)
    ijk_to_lps = LPS_TO_RAS @ np.asarray(pair.affine, dtype=float)
    if numbers.ndim == 2:
        numbers = numbers[:, :, None]
    document = {
        # NRRD stores the first index fastest: hand over an array already in that layout
        "voxels": nifti_order(numbers).T,
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": [
            {
                "id": f"Segment_{s.number}", "labelValue": s.number, "layer": 0, "name": s.name,
                "color": [v / 255.0 for v in s.color],
                "terminology": {"contextName": CONTEXT,
                                "category": [s.category.scheme, s.category.value, s.category.meaning],
                                "type": [s.type.scheme, s.type.value, s.type.meaning]},
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
    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as e:  # slicerio/pynrrd raise many types on damaged files
        raise InputError(path, f"cannot read as a Slicer segmentation ({e})") from None
    voxels = np.asarray(seg["voxels"])
    layers = {s.get("layer", 0) for s in seg["segments"]}
    if voxels.ndim == 4 or len(layers) > 1:
        raise InputError(path, "overlapping segments (several layers) cannot form one panoptic result")
    specs = []
    for s in seg["segments"]:
        tags = s.get("tags", {})
        terminology = s.get("terminology") or {}
        type_code = Code(*_code(terminology.get("type"))) if terminology.get("type") else None
        category = Code(*_code(terminology.get("category"))) if terminology.get("category") else None
        if CLASS_TAG in tags and int(tags[CLASS_TAG]) in label_set:
            cls = label_set[int(tags[CLASS_TAG])]
        else:
            cls = class_of_segment(label_set, s["name"], type_code, category, mapping, str(path))
        instance = int(tags[INSTANCE_TAG]) if INSTANCE_TAG in tags else instance_from_name(cls, s["name"])
        specs.append((int(s["labelValue"]), cls, instance))
    pair = pair_from_segments(voxels.astype(np.int64), specs)
    affine = LPS_TO_RAS @ np.asarray(seg["ijkToLPS"], dtype=float)
    return make_meta_tensor(pair.astype(np.int32), affine, {"filename_or_obj": str(path), "source_format": "seg.nrrd"})


def _code(triple) -> tuple[str, str, str]:
    scheme, value, meaning = (list(triple) + ["", "", ""])[:3]
    return str(value), str(scheme), str(meaning)
