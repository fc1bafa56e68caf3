"""The network's levels, kernel sizes and strides from the voxel spacing and the patch, as nnU-Net plans DynUNet.

At each level an axis is downsampled (stride 2) only while its spacing is within 2x of the
finest axis and its feature map still has room (`MIN_FEATURE_MAP` voxels after halving); an
axis still more than 2x coarser than the finest gets kernel 1 (no mixing across thick slices).
On 0.7x0.7x5 mm data the first downsamplings are in-plane only, with kernels (3, 3, 1), until
the in-plane spacing has caught up with the slices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_FEATURE_MAP = 4
MIN_LEVELS = 3
"""MONAI's DynUNet needs at least three levels (the input level and two downsamplings)."""
MAX_DOWNSAMPLINGS = {2: 6, 3: 5}
MAX_FILTERS = {2: 512, 3: 320}


def plan_topology(spacing: Sequence[float], patch: Sequence[int], base_filters: int = 32,
                  max_filters: int | None = None) -> dict:
    """{"backbone", "filters", "kernel_size", "strides"} for a patch of `patch` voxels at `spacing` mm
    (`max_filters`: the widest level, nnU-Net's 320 in 3D and 512 in 2D by default)."""
    dims = len(spacing)
    current = np.asarray(spacing, dtype=float)
    size = np.asarray(patch, dtype=float)
    kernels = [_kernel(current)]
    strides = [[1] * dims]
    for _ in range(MAX_DOWNSAMPLINGS[dims]):
        finest = current.min()
        can = (current <= 2 * finest) & (size / 2 >= MIN_FEATURE_MAP)
        if not can.any():
            break
        stride = np.where(can, 2, 1)
        current = current * stride
        size = size / stride
        strides.append(stride.astype(int).tolist())
        kernels.append(np.maximum(_kernel(current), kernels[-1]).tolist())
    widest = MAX_FILTERS[dims] if max_filters is None else max_filters
    filters = [min(base_filters * 2**level, widest) for level in range(len(strides))]
    return {"backbone": "dynunet", "filters": filters, "kernel_size": [list(map(int, k)) for k in kernels],
            "strides": strides}


def levels(spacing: Sequence[float], patch: Sequence[int]) -> int:
    """How many levels `plan_topology` gives a patch (the filters do not change it)."""
    return len(plan_topology(spacing, patch, base_filters=1)["strides"])


def smallest_patch(spacing: Sequence[float], patch: Sequence[int]) -> list[int]:
    """`patch`, grown along the finest axes (those within 2x of the finest spacing) until it has `MIN_LEVELS` levels.

    A tiny image gets a patch larger than itself (the crops are padded): fewer levels is no
    network MONAI can build.
    """
    spacing_ = np.asarray(spacing, dtype=float)
    fine = spacing_ <= 2 * spacing_.min()
    grown = [int(p) for p in patch]
    need = MIN_FEATURE_MAP * 2 ** (MIN_LEVELS - 1)
    while levels(spacing, grown) < MIN_LEVELS:
        short = [i for i in range(len(grown)) if fine[i] and grown[i] < need]
        if not short:  # every fine axis is long enough: lengthen the next coarser ones too
            fine = spacing_ <= 2 * spacing_[~fine].min() if (~fine).any() else fine
            need *= 2
            continue
        for i in short:
            grown[i] = need
    return grown


def _kernel(spacing: np.ndarray) -> list[int]:
    return np.where(spacing / spacing.min() < 2, 3, 1).astype(int).tolist()


def divisor(strides: Sequence[Sequence[int]]) -> list[int]:
    """What each patch axis must be a multiple of: the product of its strides."""
    return np.prod(np.asarray(strides, dtype=int), axis=0).astype(int).tolist()


def fit_patch(patch: Sequence[int], strides: Sequence[Sequence[int]]) -> list[int]:
    """`patch` rounded down to multiples of the strides' product per axis (at least one multiple)."""
    return [max(d, int(p) // d * d) for p, d in zip(patch, divisor(strides))]
