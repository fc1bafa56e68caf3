"""The scale of a 2D image without a pixel size, estimated from the objects in it.

PNG, JPEG and most TIFFs say nothing of their pixel size, and a network trained at one
magnification cuts nuclei twice its size in two. Cellpose's answer, taken here: segment once
at the bundle's native scale, measure the typical object diameter in pixels, rescale the image
so that objects have the size the network was trained on (the bundle fingerprint's
`instances.typical_diameter_px`), segment again, and carry the result back onto the source
grid (same shape, same affine).

The diameter is measured on the thing mask (semantic), not on the instances: a first pass that
cuts large nuclei in two gives halves, but its mask still covers the whole nucleus. It is twice
the median, over the mask's connected components, of the largest distance from a component's
pixel to the background (the diameter of the largest inscribed disc): touching objects merged
into one component still give the size of one of them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from .pair import consecutive_ids, instance_ids

log = logging.getLogger(__name__)

FACTOR_LIMITS = (0.25, 4.0)
"""Rescaling beyond these factors is clamped: a 4x change of magnification is far out of the
training domain whatever the network, and 16x the pixels would exhaust memory before it helps."""
CLOSE_ENOUGH = 1.2
"""No rescaling when the estimated factor is within 1/1.2-1.2. One image's typical object differs by
chance from the training median by about that much (30 nuclei whose sizes span 2x), and a
network trained on that spread copes with it; rescaling on such noise costs more than it gives."""
ITERATE_BEYOND = 1.2
"""After rescaling, a second estimate still off by more than this is applied once more."""
MIN_COMPONENT_PX = 9  # components of fewer pixels are noise, not objects, for the size estimate
MEASURE = "2 x the median, over the thing-mask components, of the largest distance to the background"

Segment = Callable[[MetaTensor], dict]  # an image -> the bundle's inference output (`Segmenter.infer`)


@dataclass(frozen=True)
class ScaleEstimate:
    """How an image was rescaled before the network saw it: `factor` (new size / source size),
    and how it was found: "estimated" (from the objects), "file" (the file's pixel size) or
    "given" (a pixel size given by the user)."""

    factor: float
    method: str
    estimated_diameter_px: float | None = None  # the objects' typical diameter on the source grid
    pixel_size_mm: float | None = None

    def to_dict(self) -> dict:
        out = {"method": self.method, "factor": round(self.factor, 4)}
        if self.estimated_diameter_px is not None:
            out["estimated_diameter_px"] = round(self.estimated_diameter_px, 2)
        if self.pixel_size_mm is not None:
            out["pixel_size_mm"] = self.pixel_size_mm
        return out


def typical_diameter_px(thing_mask: np.ndarray, sampling: Sequence[float] | None = None) -> float | None:
    """The typical object diameter of a boolean mask (see the module docstring), in pixels, or in
    mm with `sampling` (the pixel size per axis); None when it holds no object of at least
    `MIN_COMPONENT_PX` pixels."""
    mask = np.asarray(thing_mask, dtype=bool)
    components, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_COMPONENT_PX) + 1
    if keep.size == 0:
        return None
    depth = ndimage.distance_transform_edt(mask, sampling=sampling)
    return 2.0 * float(np.median(ndimage.maximum(depth, components, keep)))


def thing_mask(pair: torch.Tensor, thing_ids: Sequence[int]) -> np.ndarray:
    """The pixels of a pair whose label is a thing class."""
    labels = torch.as_tensor(pair[0]).as_subclass(torch.Tensor).cpu()
    return torch.isin(labels.long(), torch.as_tensor(list(thing_ids), dtype=torch.long)).numpy()


def _stats(values: Sequence[float], digits: int = 6) -> dict:
    v = np.asarray(values, dtype=float)
    return {"min": round(float(v.min()), digits), "median": round(float(np.median(v)), digits),
            "max": round(float(v.max()), digits)}


def instance_sizes(pairs: Sequence[torch.Tensor], thing_ids: Sequence[int], spacing: Sequence[float]) -> dict:
    """The `instances` entry of a bundle fingerprint, for pairs on grids of `spacing` (mm per axis,
    the bundle's own): the things' equivalent diameters in mm (min/median/max over every instance)
    and the typical diameter as the scale estimate measures it (`typical_diameter_px`, median over
    the pairs), in mm and in pixels of `spacing` per axis."""
    spacing = [float(s) for s in spacing]
    equivalent, typical = [], []
    for pair in pairs:
        mask = thing_mask(pair, thing_ids)
        instance = np.asarray(torch.as_tensor(pair[1]).as_subclass(torch.Tensor).cpu())
        counts = np.bincount(instance[mask].ravel())[1:]
        ndim = instance.ndim
        unit = math.pi if ndim == 2 else 4.0 * math.pi / 3.0
        size = counts[counts > 0] * float(np.prod(spacing))  # mm^2 or mm^3
        equivalent += (2.0 * (size / unit) ** (1.0 / ndim)).tolist()
        d = typical_diameter_px(mask, spacing)
        if d is not None:
            typical.append(d)
    if not equivalent:
        return {}
    typical_mm = float(np.median(typical))
    return {
        "n_instances": len(equivalent),
        "equivalent_diameter_mm": _stats(equivalent),
        "typical_diameter_mm": round(typical_mm, 6),
        "typical_diameter_px": [round(typical_mm / s, 3) for s in spacing],
        "pixel_size_mm": spacing,
        "typical_diameter_measure": MEASURE,
    }


def clamp_factor(factor: float) -> float:
    lo, hi = FACTOR_LIMITS
    clamped = min(max(factor, lo), hi)
    if clamped != factor:
        log.warning("rescaling by %.3g is beyond the %.3g-%.3g this toolkit does: clamped to %.3g", factor, lo, hi, clamped)
    return clamped


def scaled_shape(shape: Sequence[int], factor: float) -> tuple[int, ...]:
    return tuple(max(2, int(round(n * factor))) for n in shape)


def rescale_image(image: MetaTensor, factor: float) -> MetaTensor:
    """The image resampled by `factor` (bilinear, antialiased when shrinking), covering the same
    field: the affine's pixel size grows by the inverse factor, pixel centres stay centred."""
    shape = tuple(image.shape[1:])
    new = scaled_shape(shape, factor)
    values = torch.nn.functional.interpolate(image.as_tensor()[None].float(), size=new, mode="bilinear",
                                             align_corners=False, antialias=factor < 1)[0]
    step = np.asarray(shape, dtype=float) / np.asarray(new, dtype=float)  # source pixels per new pixel
    grid = np.eye(4)
    for axis, s in enumerate(step):
        grid[axis, axis] = s
        grid[axis, 3] = 0.5 * s - 0.5  # the new pixel 0's centre, in source pixel indices
    affine = np.asarray(image.affine, dtype=float) @ grid
    meta = {k: v for k, v in image.meta.items() if k not in ("affine", "original_affine", "spatial_shape")}
    from .io.scan import make_meta_tensor

    return make_meta_tensor(values.numpy(), affine, meta)


def to_source_grid(pair: torch.Tensor, shape: Sequence[int], scores: dict[int, float]) -> tuple[torch.Tensor, dict[int, float], list[int]]:
    """A pair on a rescaled grid carried back onto the source grid of `shape` by nearest
    neighbour (pixel centres matched as `rescale_image` placed them); ids renumbered 1..N,
    scores re-keyed, and the ids that have no pixel left (objects smaller than a source pixel)."""
    values = torch.nn.functional.interpolate(torch.as_tensor(pair).as_subclass(torch.Tensor)[None].double(),
                                             size=tuple(shape), mode="nearest-exact")[0].to(torch.int32)
    lost = sorted(set(instance_ids(pair[1]).tolist()) - set(instance_ids(values[1]).tolist()))
    if lost:
        log.warning("%d instance(s) found on the rescaled grid have no pixel on the source grid", len(lost))
    instance, new_ids = consecutive_ids(values[1])
    return (torch.stack([values[0], instance.to(torch.int32)]),
            {new_ids[old]: s for old, s in scores.items() if old in new_ids}, lost)


def segment_scaled(segment: Segment, image: MetaTensor, factor: float):
    """Segment `image` rescaled by `factor`: (pair on the source grid, scores, dropped ids,
    pair on the rescaled grid)."""
    from .transforms import source_grid_pair

    work = image if factor == 1.0 else rescale_image(image, factor)
    values, scores, dropped = source_grid_pair(segment(work), "pred", work.affine)
    if factor == 1.0:
        return values, scores, dropped, values
    back, scores, lost = to_source_grid(values, image.shape[1:], scores)
    return back, scores, dropped + lost, values


def estimate_and_segment(segment: Segment, image: MetaTensor, thing_ids: Sequence[int], target_px: float):
    """Segment `image` at the scale where its objects look `target_px` wide (the estimate of the
    module docstring): (pair on the source grid, scores, dropped ids, ScaleEstimate)."""
    result = segment_scaled(segment, image, 1.0)
    measured = typical_diameter_px(thing_mask(result[3], thing_ids))
    if measured is None:
        log.warning("%s: no objects found to estimate the scale from; segmented at the bundle's native scale",
                    image.meta.get("filename_or_obj", "image"))
        return (*result[:3], ScaleEstimate(1.0, "estimated"))
    factor = clamp_factor(target_px / measured)
    if abs(math.log(factor)) <= math.log(CLOSE_ENOUGH):
        return (*result[:3], ScaleEstimate(1.0, "estimated", measured))
    result = segment_scaled(segment, image, factor)
    again = typical_diameter_px(thing_mask(result[3], thing_ids))
    if again is not None and abs(math.log(target_px / again)) > math.log(ITERATE_BEYOND):
        factor = clamp_factor(factor * target_px / again)
        result = segment_scaled(segment, image, factor)
    return (*result[:3], ScaleEstimate(factor, "estimated", target_px / factor))


__all__ = ["ScaleEstimate", "typical_diameter_px", "thing_mask", "instance_sizes", "rescale_image", "to_source_grid",
           "segment_scaled", "estimate_and_segment", "FACTOR_LIMITS", "CLOSE_ENOUGH", "ITERATE_BEYOND"]
