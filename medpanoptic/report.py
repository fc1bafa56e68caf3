"""The instance table: one row per thing instance, in patient coordinates, ready for a spreadsheet.

Columns: instance id, class, voxel count, volume (mm³), centroid in voxel indices and in
patient LPS mm (DICOM's frame) and RAS mm, bounding box, mean and max image intensity inside
the instance (when the image is given), and the model's confidence score (when there is one).

The bounding box is in voxel indices of the result's grid, as a Python slice: `bbox_min_voxel`
is the first index inside the instance (inclusive), `bbox_stop_voxel` one past the last
(exclusive), so `array[i0:i1, j0:j1, k0:k1]` holds the instance and `stop - min` is its extent
in voxels. In the CSV they are split into `_i`, `_j`, `_k` columns.

3D thing rows also carry the clinical measures of `medpanoptic.clinical.measures`: RECIST long
and short axis, maximal 3D diameter, host organ and its fraction of the lesion's shell.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .io.atomic import atomic_paths
from .labels import LabelSet
from .pair import instance_summary, pair_stats


def instance_table(pair, label_set: LabelSet, image=None, scores: Mapping[int, float] | None = None) -> list[dict]:
    """Rows of the instance table (see the module docstring); `image` is (C, *spatial) on the pair's grid.

    Counts, centroids and boxes come from one pass over the pair (`pair_stats`); intensity
    statistics are reductions over the thing voxels only.
    """
    arr = np.asarray(pair.detach().cpu() if hasattr(pair, "detach") else pair)
    affine = np.asarray(pair.affine, dtype=float)
    stats = pair_stats(arr)
    rows = instance_summary(arr, affine, label_set, stats=stats)
    if not rows:
        return []
    ndim = arr.ndim - 1
    if image is not None:
        values_all = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)[0]
        if values_all.shape != arr.shape[1:]:
            raise ValueError(f"image {values_all.shape} and result {arr.shape[1:]} are not on one grid")
        flat = torch.from_numpy(np.ascontiguousarray(arr[1]).reshape(-1))
        fg = torch.nonzero(flat).flatten()
        ids = flat[fg].long()
        n = len(stats.instance_voxels)
        values = torch.from_numpy(np.ascontiguousarray(values_all).reshape(-1))[fg].double()
        sums = torch.zeros(n, dtype=torch.double).index_add_(0, ids, values)
        maxima = torch.full((n,), -np.inf, dtype=torch.double).scatter_reduce(0, ids, values, "amax")
    for row in rows:
        i = row["instance"]
        row["bbox_min_voxel"] = stats.box_low[i, :ndim].tolist()
        row["bbox_stop_voxel"] = (stats.box_high[i, :ndim] + 1).tolist()  # exclusive: a slice stop
        if image is not None:
            row["mean_intensity"] = float(sums[i]) / row["voxels"]
            row["max_intensity"] = float(maxima[i])
        if scores is not None:
            row["score"] = float(scores.get(i, float("nan")))
    from .clinical.measures import add_clinical_measures

    return add_clinical_measures(rows, pair, label_set, image)


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
