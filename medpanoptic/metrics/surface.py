"""Surface distances between two masks, in mm, computed on their joint bounding box only.

Definitions follow MONAI's `compute_hausdorff_distance` and `compute_average_surface_distance`:
a mask's surface is the mask minus its erosion (face connectivity); the distance from each
surface voxel of one mask to the nearest surface voxel of the other comes from a Euclidean
distance transform with the voxel spacing. HD95 is the larger of the two directed 95th
percentiles; ASSD the mean of both directions' distances together.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def joint_box(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding both masks, grown by `margin` voxels (clipped)."""
    both = a | b
    if not both.any():
        return None
    box = ndimage.find_objects(both.astype(np.uint8))[0]
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, both.shape))


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from a's surface voxels to b's surface, and from b's to a's. Both masks non-empty."""
    box = joint_box(a, b)
    a, b = a[box], b[box]
    edge_a = a & ~ndimage.binary_erosion(a)
    edge_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~edge_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~edge_a, sampling=spacing)
    return to_b[edge_a], to_a[edge_b]


def hd95_assd(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(HD95, ASSD) in mm; NaN when either mask is empty."""
    if not a.any() or not b.any():
        return float("nan"), float("nan")
    d_ab, d_ba = surface_distances(a, b, spacing)
    hd95 = max(float(np.percentile(d_ab, 95)), float(np.percentile(d_ba, 95)))
    assd = float(np.concatenate([d_ab, d_ba]).mean())
    return hd95, assd
