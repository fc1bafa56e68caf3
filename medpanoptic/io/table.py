"""The instance table: one row per thing instance, in patient coordinates, ready for a spreadsheet.

The one schema of every instance listing: `<stem>_instances.csv` / `.json` (the `table`
format) and the `instances` of `<stem>_panoptic.json`. Units are in the column names:

| column | meaning |
| --- | --- |
| `instance`, `label`, `class` | instance id, class id, class name |
| `voxels` | voxel count |
| `volume_mm3` | voxel count x voxel volume, mm³ (mm² for a 2D image) |
| `centroid_voxel` | mean voxel index (i, j[, k]) |
| `centroid_ras_mm`, `centroid_lps_mm` | that centroid in patient mm, RAS and LPS (DICOM's frame) |
| `bbox_min_voxel`, `bbox_stop_voxel` | bounding box in voxel indices of the result's grid, as a Python slice: `min` is the first index inside the instance (inclusive), `stop` one past the last (exclusive), so `array[i0:i1, j0:j1, k0:k1]` holds the instance and `stop - min` is its extent in voxels |
| `mean_intensity`, `max_intensity` | image values inside the instance, in the image's units (HU for CT), when the image is given |
| `score` | the model's confidence (NaN when it gave none), when the result has scores |
| `recist_long_mm`, `recist_short_mm`, `recist_z_mm` | 3D only: RECIST 1.1 long axis and perpendicular short axis in the patient axial plane where the long axis is largest, and that plane's patient z (see `io.measures`) |
| `max_diameter_3d_mm` | 3D only: largest distance between two voxel centres of the instance |
| `host_organ`, `host_fraction` | 3D only: the stuff class holding most of a 3 mm shell around the instance, and its share of the shell |

In the CSV the vectors are split into `_i`, `_j`, `_k` (voxel) or `_x`, `_y`, `_z` (mm) columns.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import PanopticError
from ..labels import LabelSet
from ..pair import INSTANCE, PairStats, pair_stats
from .atomic import atomic_paths
from .geometry import spacing_from_affine, voxel_to_lps, voxel_to_ras
from .measures import add_clinical_measures

TABLE_SUFFIXES = {"csv": "_instances.csv", "json": "_instances.json"}
BASE_COLUMNS = ["instance", "label", "class", "voxels", "volume_mm3"]


def instance_table(
    pair,
    label_set: LabelSet | None = None,
    image=None,
    scores: Mapping[int, float] | None = None,
    *,
    stats: PairStats | None = None,
    affine: np.ndarray | None = None,
) -> list[dict]:
    """Rows of the instance table (see the module docstring), ascending by instance id.

    `image` is (C, *spatial) on the pair's grid; `affine` defaults to the pair's. Counts,
    centroids and boxes come from `stats` when given (`pair_stats` of this pair), else from
    one pass over the pair; intensities are reductions over the thing voxels only.
    """
    arr = np.asarray(pair.detach().cpu() if torch.is_tensor(pair) else pair)
    affine = np.asarray(pair.affine if affine is None else affine, dtype=float)
    stats = stats if stats is not None else pair_stats(arr)
    if stats is None:
        raise PanopticError("negative label or instance ids")
    present = stats.ids
    if present.size == 0:
        return []
    ndim = arr.ndim - 1
    counts = stats.instance_voxels[present]
    centroid = stats.coordinate_sums[present, :ndim] / counts[:, None]
    ras, lps = voxel_to_ras(affine, centroid), voxel_to_lps(affine, centroid)
    voxel_volume = float(np.prod(spacing_from_affine(affine, ndim)))
    intensity = _intensities(arr[INSTANCE], image, len(stats.instance_voxels)) if image is not None else None
    rows = []
    for row, inst in enumerate(present.tolist()):
        cls = int(stats.label_low[inst])
        entry = {
            "instance": inst,
            "label": cls,
            "class": label_set[cls].name if label_set is not None and cls in label_set else str(cls),
            "voxels": int(counts[row]),
            "volume_mm3": float(counts[row] * voxel_volume),
            "centroid_voxel": [float(v) for v in centroid[row]],
            "centroid_ras_mm": [float(v) for v in ras[row]],
            "centroid_lps_mm": [float(v) for v in lps[row]],
            "bbox_min_voxel": stats.box_low[inst, :ndim].tolist(),
            "bbox_stop_voxel": (stats.box_high[inst, :ndim] + 1).tolist(),  # exclusive: a slice stop
        }
        if intensity is not None:
            entry["mean_intensity"] = float(intensity[0][inst]) / entry["voxels"]
            entry["max_intensity"] = float(intensity[1][inst])
        if scores is not None:
            entry["score"] = float(scores.get(inst, float("nan")))
        rows.append(entry)
    return add_clinical_measures(rows, arr, label_set, affine)


def _intensities(instance: np.ndarray, image, n_ids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per instance id, the sum and the maximum of the image's first channel over its voxels."""
    values_all = np.asarray(image.detach().cpu() if torch.is_tensor(image) else image)[0]
    if values_all.shape != instance.shape:
        raise PanopticError(f"image {values_all.shape} and result {instance.shape} are not on one grid")
    flat = torch.from_numpy(np.ascontiguousarray(instance).reshape(-1))
    fg = torch.nonzero(flat).flatten()
    ids = flat[fg].long()
    values = torch.from_numpy(np.ascontiguousarray(values_all).reshape(-1))[fg].double()
    sums = torch.zeros(n_ids, dtype=torch.double).index_add_(0, ids, values)
    maxima = torch.full((n_ids,), -np.inf, dtype=torch.double).scatter_reduce(0, ids, values, "amax")
    return sums, maxima


def table_paths(stem: str | os.PathLike) -> dict[str, Path]:
    """The file names of the instance table with this stem."""
    return {key: Path(os.fspath(stem) + suffix) for key, suffix in TABLE_SUFFIXES.items()}


def write_instance_table(rows: list[dict], stem: str | os.PathLike) -> dict[str, Path]:
    """`<stem>_instances.csv` (vectors split into per-axis columns) and `<stem>_instances.json`."""
    paths = table_paths(stem)
    flat = [_flatten(r) for r in rows]
    columns = list(flat[0]) if flat else BASE_COLUMNS
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
