"""Training targets of the panoptic network from a ground-truth pair (Panoptic-DeepLab style, in mm).

- semantic: the label channel (class ids, 0 = background);
- center: a heatmap with a Gaussian at each thing instance's centroid, its width given in mm
  (`sigma_mm`), so a lesion on 5 mm slices gets the same physical blob as on 1 mm slices;
  with `sigma_fraction`, a large instance gets a blob of that fraction of its own equivalent
  radius (never narrower than `sigma_mm`): a narrow peak in a big nucleus is far from most of
  its pixels, and the network learns several local peaks there and cuts the nucleus in two;
- offset: for every thing voxel, the vector (in voxels, one channel per axis) to its
  instance's centroid;
- offset_weight: 1 on thing voxels, 0 elsewhere (offsets are learnt only where they mean something).

Computed after spatial augmentation (crops and flips change centroids), so the targets
always agree with the image the network sees.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .labels import LabelSet
from .errors import PanopticError
from .pair import pair_stats


def panoptic_targets(
    pair,
    label_set: LabelSet,
    spacing: Sequence[float],
    sigma_mm: float,
    sigma_fraction: float | None = None,
) -> dict[str, torch.Tensor]:
    """Targets of one (2, *spatial) pair: `semantic` (1, *sp) int64, `center` (1, *sp) float32,
    `offset` (ndim, *sp) float32 and `offset_weight` (1, *sp) float32."""
    arr = np.asarray(pair.detach().cpu() if torch.is_tensor(pair) else pair)
    label, instance = arr[0].astype(np.int64), arr[1].astype(np.int64)
    shape = label.shape
    ndim = label.ndim
    spacing = np.asarray(spacing, dtype=np.float64)[:ndim]
    fixed_sigma = sigma_mm / spacing  # in voxels, per axis
    things = np.isin(label, label_set.thing_ids) & (instance > 0)
    instance = np.where(things, instance, 0)

    center = np.zeros(shape, np.float32)
    offset = np.zeros((ndim,) + shape, np.float32)
    stats = pair_stats(np.stack([label, instance]))  # centroids and boxes in one pass
    if stats is None:
        raise PanopticError("negative label or instance ids in the ground truth")
    for inst in stats.ids.tolist():
        c = stats.coordinate_sums[inst, :ndim] / stats.instance_voxels[inst]
        sigma = fixed_sigma
        if sigma_fraction:
            radius_mm = equivalent_radius_mm(int(stats.instance_voxels[inst]), spacing)
            sigma = np.maximum(fixed_sigma, sigma_fraction * radius_mm / spacing)
        lo = np.maximum(np.floor(c - 3 * sigma).astype(int), 0)
        hi = np.minimum(np.ceil(c + 3 * sigma).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        axes = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij")
        blob = np.exp(-0.5 * sum(((x - ci) / si) ** 2 for x, ci, si in zip(axes, c, sigma))).astype(np.float32)
        np.maximum(center[box], blob, out=center[box])
        own = tuple(slice(a, b + 1) for a, b in zip(stats.box_low[inst, :ndim], stats.box_high[inst, :ndim]))
        where = np.nonzero(instance[own] == inst)
        voxels = tuple(w + s.start for w, s in zip(where, own))
        for axis in range(ndim):
            offset[axis][voxels] = c[axis] - voxels[axis]
    return {
        "semantic": torch.from_numpy(label[None]),
        "center": torch.from_numpy(center[None]),
        "offset": torch.from_numpy(offset),
        "offset_weight": torch.from_numpy(things[None].astype(np.float32)),
    }


def equivalent_radius_mm(voxels: int, spacing: Sequence[float]) -> float:
    """The radius of the disc (2D) or ball (3D) with the physical size of `voxels` voxels."""
    size = voxels * float(np.prod(spacing))
    if len(spacing) == 2:
        return float(np.sqrt(size / np.pi))
    return float((3.0 * size / (4.0 * np.pi)) ** (1.0 / 3.0))


TARGET_ORDER = ("semantic", "center", "offset", "offset_weight")


def pack_targets(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """The targets as one float tensor (semantic | center | offsets | weight), channel first.

    One tensor is what MONAI's engines pass to a loss as the label; class ids are small
    integers, exact in float32.
    """
    return torch.cat([targets[k].float() for k in TARGET_ORDER], dim=0)


def unpack_targets(packed: torch.Tensor, spatial_dims: int) -> dict[str, torch.Tensor]:
    """Views of a packed (B, 3 + ndim, *spatial) target; `semantic` comes back as integers."""
    sizes = (1, 1, spatial_dims, 1)
    if packed.shape[1] != sum(sizes):
        raise ValueError(f"a packed {spatial_dims}D target has {sum(sizes)} channels, got {packed.shape[1]}")
    parts = dict(zip(TARGET_ORDER, torch.split(packed, sizes, dim=1)))
    parts["semantic"] = parts["semantic"].round().long()
    return parts
