"""Where the tissue is, from a low-resolution view of a slide: tiles on blank glass are skipped.

Brightfield (RGB) slides: tissue is coloured and absorbs light, glass is grey-white, so a pixel
is tissue where its saturation passes Otsu's threshold (kept within [0.05, 0.15]) and its
optical density a floor, so that a blank slide has no tissue. Grey (fluorescence) images and volumes: foreground is
brighter than background, thresholded by Otsu on a smoothed view. Specks smaller than
`min_object_um` across and holes smaller than `min_hole_um` are removed (squares, or cubes in
3D, capped at 1 % of the view).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from .slide import Slide

TARGET_UM = 10.0  # µm per pixel of the view tissue is detected on: within the usual 8-16
MIN_SIDE = 64  # px: a coarser level is too small to see tissue on
MAX_VIEW_PIXELS = 1 << 20  # a level larger than this is read strided, block by block (a 32k² slide: 16 µm/px)
MIN_SATURATION, MAX_SATURATION_THRESHOLD, MIN_DENSITY = 0.05, 0.15, 0.04


def detection_level(slide: Slide, target_um: float = TARGET_UM, min_side: int = MIN_SIDE) -> int:
    """The level whose pixel size is nearest `target_um` among those at least `min_side` px wide."""
    best, best_cost = 0, math.inf
    for k, level in enumerate(slide.levels):
        if min(level.shape) < min_side and k > 0:
            continue
        um = 1000.0 * float(np.mean([p * d for p, d in zip(slide.pixel_size_mm, level.downsample)]))
        cost = abs(math.log(um / target_um))
        if cost < best_cost:
            best, best_cost = k, cost
    return best


def read_view(slide: Slide, level: int, target_um: float = TARGET_UM) -> tuple[np.ndarray, tuple[float, ...]]:
    """All of `level`, strided down towards `target_um` if it is finer and large: `(view, downsample)`.

    Read in slabs along the first axis so that memory stays at the size of the view.
    """
    shape = slide.levels[level].shape
    level_um = [1000.0 * p * d for p, d in zip(slide.pixel_size_mm, slide.levels[level].downsample)]
    stride = 1
    if int(np.prod(shape)) > MAX_VIEW_PIXELS:
        stride = max(1, int(min(target_um / u for u in level_um)))
        while int(np.prod([-(-n // stride) for n in shape])) > MAX_VIEW_PIXELS:
            stride += 1
    slab = max(stride, (1 << 22) // max(1, int(np.prod(shape[1:]))) // stride * stride)
    parts = []
    for start in range(0, shape[0], slab):
        box = (slice(start, min(start + slab, shape[0])),) + tuple(slice(0, n) for n in shape[1:])
        parts.append(slide.read(box, level)[(slice(None, None, stride),) * len(shape)])
    down = tuple(d * stride for d in slide.levels[level].downsample)
    return np.concatenate(parts, axis=0), down


def tissue_mask(
    slide: Slide, level: int | None = None, target_um: float = TARGET_UM,
    min_object_um: float = 100.0, min_hole_um: float = 50.0,
) -> tuple[np.ndarray, tuple[float, ...]]:
    """`(mask, downsample)`: a boolean tissue map of a low-resolution view and its downsample against level 0.

    `mask[i, j]` covers level-0 pixels `[i * downsample[0], (i + 1) * downsample[0])` and so on.
    """
    level = detection_level(slide, target_um) if level is None else level
    view, down = read_view(slide, level, target_um)
    view_um = [1000.0 * p * d for p, d in zip(slide.pixel_size_mm, down)]
    if view.shape[-1] >= 3:
        mask = _brightfield(view[..., :3])
    else:
        mask = _fluorescence(view[..., 0].astype(np.float32))
    # sizes in physical units, but never more than 1 % of the view: a small view keeps its tissue
    pixel_area = float(np.prod(view_um))
    min_object = min(min_object_um ** mask.ndim / pixel_area, 0.01 * mask.size)
    min_hole = min(min_hole_um ** mask.ndim / pixel_area, 0.01 * mask.size)
    mask = _drop_small(mask, min_object)
    mask = ~_drop_small(~mask, min_hole)
    return mask, down


def tile_has_tissue(mask: np.ndarray, downsample: Sequence[float], box_level0: Sequence[slice], min_fraction: float = 0.0) -> bool:
    """Whether the level-0 box covers tissue in `mask` (more than `min_fraction` of its mask pixels)."""
    region = tuple(
        slice(max(0, int(math.floor(s.start / d))), min(n, max(int(math.ceil(s.stop / d)), int(math.floor(s.start / d)) + 1)))
        for s, d, n in zip(box_level0, downsample, mask.shape)
    )
    covered = mask[region]
    if covered.size == 0:
        return False
    return bool(covered.mean() > min_fraction) if min_fraction > 0 else bool(covered.any())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values` (the split maximising the between-class variance)."""
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(counts * centres) / np.maximum(weight0, 1)
    mean1 = ((counts * centres).sum() - np.cumsum(counts * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:][np.argmax(between)])


def _brightfield(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    if rgb.max() > 255:
        rgb = rgb * (255.0 / rgb.max())
    high, low = rgb.max(-1), rgb.min(-1)
    saturation = (high - low) / np.maximum(high, 1.0)
    density = -np.log10((rgb + 1.0) / 256.0).mean(-1)
    saturation = ndimage.gaussian_filter(saturation, 1.0)
    density = ndimage.gaussian_filter(density, 1.0)
    # Otsu splits glass from stain; clipped, so that a slide of mostly tissue is not split
    # between pale and dark stain instead, and a blank slide keeps no speck of glass.
    threshold = min(max(otsu_threshold(saturation), MIN_SATURATION), MAX_SATURATION_THRESHOLD)
    return (saturation > threshold) & (density > MIN_DENSITY)


def _fluorescence(grey: np.ndarray) -> np.ndarray:
    smooth = ndimage.gaussian_filter(grey, 1.5)
    lo, hi = np.percentile(smooth, (1, 99))
    if hi - lo <= 1e-6 * max(abs(hi), 1.0):
        return np.zeros(grey.shape, dtype=bool)  # a flat image: nothing stands out
    return smooth > otsu_threshold(smooth)


def _drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """`mask` without its connected components smaller than `min_pixels`."""
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]
