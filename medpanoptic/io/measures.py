"""Per-lesion clinical measures and per-organ lesion burden.

For every thing instance of a 3D pair:

- `recist_long_mm`, `recist_short_mm`: RECIST 1.1 longest diameter and the longest diameter
  perpendicular to it, in the axial plane of *patient* space (constant patient z), on the
  axial plane where the long axis is largest; `recist_z_mm` is that plane's patient z.
  Oblique grids are resampled (nearest neighbour) onto a patient-aligned grid first, so a
  tilted acquisition measures what a radiologist measures on an axial reformat.
- `max_diameter_3d_mm`: the largest distance between two voxel centres of the lesion.
- `host_organ`, `host_fraction`: the stuff class holding most of the shell of `shell_mm`
  around the lesion, and the share of the shell's voxels it holds (background and other
  lesions count in the shell, so a lesion on a border gets a fraction near one half).

Distances are between sample centres in mm; they are exact to within one voxel diagonal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from .geometry import spacing_from_affine, voxel_to_ras
from ..labels import LabelSet

SHELL_MM = 3.0
"""Thickness of the shell around a lesion in which its host organ is counted (mm)."""

NO_HOST = ""
"""`host_organ` of a lesion whose shell holds no stuff class at all."""

MEASURE_COLUMNS = ("recist_long_mm", "recist_short_mm", "recist_z_mm", "max_diameter_3d_mm", "host_organ", "host_fraction")


def add_clinical_measures(rows: list[dict], pair: np.ndarray, label_set: LabelSet | None, affine: np.ndarray,
                          shell_mm: float = SHELL_MM) -> list[dict]:
    """The instance-table `rows` of `pair` ((2, i, j, k) array on the grid of `affine`), each with the
    measures of the module docstring, measured on its bounding box grown by the shell.

    2D pairs (cells, nuclei) are returned unchanged: RECIST speaks of axial planes of a body.
    Without a label set there is no stuff class to name, so the host columns stay empty.
    """
    if not rows or pair.ndim != 4:
        return rows
    for row in rows:
        box = tuple(slice(int(a), int(b)) for a, b in zip(row["bbox_min_voxel"], row["bbox_stop_voxel"]))
        row.update(lesion_measures(pair[0], pair[1], affine, row["instance"], box, label_set, shell_mm))
    return rows


def lesion_measures(label: np.ndarray, instance: np.ndarray, affine: np.ndarray, instance_id: int,
                    box: tuple[slice, ...], label_set: LabelSet | None, shell_mm: float = SHELL_MM) -> dict:
    """The measures of one lesion (see the module docstring), computed on its box grown by the shell."""
    spacing = spacing_from_affine(affine, 3)
    margin = np.ceil(shell_mm / spacing).astype(int) + 1
    low = np.maximum([s.start for s in box] - margin, 0)
    high = np.minimum([s.stop for s in box] + margin, instance.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    mask = instance[crop] == instance_id
    sub_affine = affine.copy()
    sub_affine[:3, 3] = voxel_to_ras(affine, low.astype(float))
    long_mm, short_mm, z_mm = axial_diameters(mask, sub_affine)
    host, fraction = host_organ(mask, label[crop], label_set, spacing, shell_mm) if label_set is not None else (NO_HOST, 0.0)
    return {"recist_long_mm": long_mm, "recist_short_mm": short_mm, "recist_z_mm": z_mm,
            "max_diameter_3d_mm": max_diameter(voxel_to_ras(sub_affine, np.argwhere(mask).astype(float))),
            "host_organ": host, "host_fraction": fraction}


def max_diameter(points: np.ndarray) -> float:
    """Largest distance (mm) between two of `points` (n, d): over the convex hull's vertices."""
    if len(points) < 2:
        return 0.0
    try:
        points = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # flat or too few points: every point is a candidate
        pass
    return float(pdist(points).max())


def axial_diameters(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    """(long axis, perpendicular short axis, patient z of the plane), mm, in the axial planes of patient space.

    The mask is sampled on a patient-aligned grid of the finest voxel size, so that the
    planes are true axial planes whatever the direction of the acquisition.
    """
    step = float(spacing_from_affine(affine, 3).min())
    points = voxel_to_ras(affine, np.argwhere(mask).astype(float))
    if len(points) == 0:
        return 0.0, 0.0, float("nan")
    low, high = points.min(0) - step, points.max(0) + step
    axes = [np.arange(a, b + step / 2, step) for a, b in zip(low, high)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    ijk = (grid - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    inside = ndimage.map_coordinates(mask.astype(np.uint8), np.moveaxis(ijk, -1, 0), order=0, mode="constant") > 0
    planes = [grid[:, :, k, :2][inside[:, :, k]] for k in range(len(axes[2]))]
    # a plane's long axis is at most twice its points' largest distance from their mean: measure
    # the planes in order of that bound and stop once no plane left can beat the best (the first
    # plane of the longest axis wins, as in a plane-by-plane scan)
    bound = np.array([2.0 * np.sqrt(((p - p.mean(0)) ** 2).sum(1).max()) if len(p) > 1 else 0.0 for p in planes])
    best_long, best_k = 0.0, None
    for k in np.argsort(-bound, kind="stable").tolist():
        if bound[k] < best_long or bound[k] == 0.0:
            break
        long_mm = longest_chord(planes[k])[0]
        if long_mm > best_long or (long_mm == best_long and best_k is not None and k < best_k):
            best_long, best_k = long_mm, k
    if best_k is None:
        return 0.0, 0.0, float(points[:, 2].mean())
    long_mm, short_mm = planar_diameters(planes[best_k], step)
    return long_mm, short_mm, float(axes[2][best_k])


def longest_chord(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(length, one end, other end) of the longest segment between two of `points` (n, 2), over their hull."""
    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        hull = points
    distances = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
    a, b = np.unravel_index(int(np.argmax(distances)), distances.shape)
    return float(distances[a, b]), hull[a], hull[b]


def planar_diameters(points: np.ndarray, step: float) -> tuple[float, float]:
    """Longest diameter of a planar region (points (n, 2) on a grid of `step` mm) and the longest
    chord perpendicular to it: RECIST's long and short axis."""
    if len(points) < 2:
        return 0.0, 0.0
    long_mm, a, b = longest_chord(points)
    if long_mm == 0:
        return 0.0, 0.0
    along = (b - a) / long_mm
    across = np.array([-along[1], along[0]])
    position = np.round(points @ along / step).astype(np.int64)  # chords perpendicular to the long axis
    offset = points @ across
    chords, which = np.unique(position, return_inverse=True)
    top = np.full(len(chords), -np.inf)
    bottom = np.full(len(chords), np.inf)
    np.maximum.at(top, which, offset)
    np.minimum.at(bottom, which, offset)
    return long_mm, float((top - bottom).max())


def host_organ(mask: np.ndarray, label: np.ndarray, label_set: LabelSet, spacing: Sequence[float],
               shell_mm: float = SHELL_MM) -> tuple[str, float]:
    """(name of the stuff class holding most of the lesion's shell, its share of the shell's voxels)."""
    distance = ndimage.distance_transform_edt(~mask, sampling=[float(s) for s in spacing])
    shell = (distance > 0) & (distance <= shell_mm)
    counts = np.bincount(label[shell].ravel().astype(np.int64), minlength=label_set.max_id + 1)
    total = int(counts.sum())
    stuff = [c for c in label_set.stuff_ids if counts[c] > 0]
    if not total or not stuff:
        return NO_HOST, 0.0
    host = max(stuff, key=lambda c: counts[c])
    return label_set[host].name, float(counts[host]) / total


def organ_burden(rows: list[dict]) -> list[dict]:
    """Per host organ: number of lesions, their total volume (mm³) and the sum of their long axes (mm)."""
    burden: dict[str, dict] = {}
    for row in rows:
        if "host_organ" not in row:
            continue
        organ = row["host_organ"] or "(none)"
        entry = burden.setdefault(organ, {"host_organ": organ, "n_lesions": 0, "volume_mm3": 0.0,
                                          "sum_long_axis_mm": 0.0})
        entry["n_lesions"] += 1
        entry["volume_mm3"] += float(row["volume_mm3"])
        entry["sum_long_axis_mm"] += float(row["recist_long_mm"])
    return sorted(burden.values(), key=lambda e: -e["volume_mm3"])
