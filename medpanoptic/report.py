"""The instance table: one row per thing instance, in patient coordinates, ready for a spreadsheet.

Columns: instance id, class, voxel count, volume (mm³), centroid in voxel indices and in
patient LPS mm (DICOM's frame) and RAS mm, bounding box (voxel indices, inclusive-exclusive),
mean and max image intensity inside the instance (when the image is given), and the model's
confidence score (when there is one).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy import ndimage

from .io.atomic import atomic_paths
from .labels import LabelSet
from .pair import instance_summary


def instance_table(pair, label_set: LabelSet, image=None, scores: Mapping[int, float] | None = None) -> list[dict]:
    """Rows of the instance table (see the module docstring); `image` is (C, *spatial) on the pair's grid."""
    arr = np.asarray(pair.detach().cpu() if hasattr(pair, "detach") else pair)
    affine = np.asarray(pair.affine, dtype=float)
    rows = instance_summary(arr, affine, label_set)
    if not rows:
        return []
    instance = arr[1]
    boxes = ndimage.find_objects(instance)
    ids = [r["instance"] for r in rows]
    if image is not None:
        values = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)[0]
        if values.shape != instance.shape:
            raise ValueError(f"image {values.shape} and result {instance.shape} are not on one grid")
        means = ndimage.mean(values, labels=instance, index=ids)
        maxima = ndimage.maximum(values, labels=instance, index=ids)
    for k, row in enumerate(rows):
        box = boxes[row["instance"] - 1]
        row["bbox_min_voxel"] = [s.start for s in box]
        row["bbox_max_voxel"] = [s.stop for s in box]
        if image is not None:
            row["mean_intensity"] = float(means[k])
            row["max_intensity"] = float(maxima[k])
        if scores is not None:
            row["score"] = float(scores.get(row["instance"], float("nan")))
    return rows


def write_instance_table(rows: list[dict], stem: str | os.PathLike) -> dict[str, Path]:
    """`<stem>_instances.csv` (vectors split into x/y/z columns) and `<stem>_instances.json`."""
    paths = {"csv": Path(f"{stem}_instances.csv"), "json": Path(f"{stem}_instances.json")}
    flat = [_flatten(r) for r in rows]
    columns = list(flat[0]) if flat else ["instance", "label", "class", "voxels", "volume_mm3"]
    with atomic_paths(paths["csv"], paths["json"]) as (tmp_csv, tmp_json):
        with open(tmp_csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
        tmp_json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return paths


def _flatten(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, (list, tuple)):
            for axis, v in zip("xyz" if "mm" in key else "ijk", value):
                out[f"{key}_{axis}"] = v
        else:
            out[key] = value
    return out
