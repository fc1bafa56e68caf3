"""The scale of a 2D image without a pixel size, estimated from the objects in it.

PNG, JPEG and most TIFFs say nothing of their pixel size, and a network trained at one
magnification cuts nuclei twice its size in two. Cellpose's answer, taken here: measure the
typical object diameter in pixels from the network's own output, rescale the image so that
objects have the size the network was trained on (the bundle fingerprint's typical diameter),
segment it, and carry the result back onto the source grid (same shape, same affine).

The diameter is measured on the thing mask (semantic), not on the instances: a pass that cuts
large nuclei in two gives halves, but its mask still covers the whole nucleus. It is twice the
median, over the mask's connected components, of the largest distance from a component's pixel
to the background (the diameter of the largest inscribed disc): touching objects merged into
one component still give the size of one of them. Far from its training scale a network's
mask cannot be trusted either, so the measurement is made at a few scales and taken where the
network sees objects of its training size (`estimate_factor`).
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
LADDER = (0.5, 2 ** -0.5, 1.0, 2 ** 0.5, 2.0)
"""The factors the estimate tries first (`estimate_factor`): a half to twice the size, by steps of
sqrt(2), within which the best step's error is at most 19% before its refinement."""
ESTIMATE_CROP_PX = 384  # the estimate segments at most this many central pixels per axis, at each factor
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


def to_source_grid(pair: torch.Tensor, shape: Sequence[int], scores: dict[int, float],
                   thing_ids: Sequence[int]) -> tuple[torch.Tensor, dict[int, float], list[int]]:
    """A pair on a rescaled grid carried back onto the source grid of `shape` (pixel centres
    matched as `rescale_image` placed them): ids renumbered 1..N, scores re-keyed, and the ids
    that have no pixel left (objects smaller than a source pixel).

    Nearest neighbour alone would draw every outline in blocks of the rescaled grid's pixels;
    instead the classes are resampled smoothly (bilinear on their one-hot maps), and near an
    object's edge a source pixel joins the nearest instance when its class there is a thing
    class (`thing_ids`), or leaves it when it is not."""
    pair = torch.as_tensor(pair).as_subclass(torch.Tensor).cpu()
    nearest = torch.nn.functional.interpolate(pair[None].double(), size=tuple(shape), mode="nearest-exact")[0]
    label, instance = nearest[0].long().numpy(), nearest[1].long().numpy()
    smooth = _smooth_labels(pair[0].long(), tuple(shape))
    reach = max(1.0, max(n / m for n, m in zip(shape, pair.shape[1:]))) + 0.5  # source px from a rescaled pixel's edge
    if instance.any():
        distance, (rows, cols) = ndimage.distance_transform_edt(instance == 0, return_indices=True)
    else:  # no instance to join
        distance, rows, cols = np.full(instance.shape, np.inf), np.zeros_like(instance), np.zeros_like(instance)
    thing = np.isin(smooth, list(thing_ids))
    keeps = (instance > 0) & thing  # inside an object: its class and instance, as found
    joins = (instance == 0) & thing & (distance <= reach)  # just outside one: joins the nearest
    orphans = (instance == 0) & thing & (distance > reach)  # a thing class far from any instance: as found
    out_label, out_instance = smooth.copy(), np.zeros_like(instance)
    out_label[keeps | orphans], out_instance[keeps] = label[keeps | orphans], instance[keeps]
    out_label[joins], out_instance[joins] = label[rows, cols][joins], instance[rows, cols][joins]
    label, instance = out_label, out_instance
    values = torch.from_numpy(np.stack([label, instance]).astype(np.int32))
    lost = sorted(set(instance_ids(pair[1]).tolist()) - set(instance_ids(values[1]).tolist()))
    if lost:
        log.warning("%d instance(s) found on the rescaled grid have no pixel on the source grid", len(lost))
    renumbered, new_ids = consecutive_ids(values[1])
    return (torch.stack([values[0], renumbered.to(torch.int32)]),
            {new_ids[old]: s for old, s in scores.items() if old in new_ids}, lost)


def _smooth_labels(label: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A label map resampled onto `shape` through its classes' one-hot maps (bilinear, antialiased
    when shrinking): outlines follow the objects, not the rescaled grid's pixels."""
    classes = torch.unique(label)
    onehot = (label[None] == classes[:, None, None]).float()[None]
    shrink = any(n < m for n, m in zip(shape, label.shape))
    weights = torch.nn.functional.interpolate(onehot, size=shape, mode="bilinear", align_corners=False, antialias=shrink)[0]
    return classes[weights.argmax(0)].numpy()


def segment_scaled(segment: Segment, image: MetaTensor, factor: float, thing_ids: Sequence[int]):
    """Segment `image` rescaled by `factor`: (pair on the source grid, scores, dropped ids,
    pair on the rescaled grid); `thing_ids` as `to_source_grid` takes them."""
    from .transforms import source_grid_pair

    work = image if factor == 1.0 else rescale_image(image, factor)
    values, scores, dropped = source_grid_pair(segment(work), "pred", work.affine)
    if factor == 1.0:
        return values, scores, dropped, values
    back, scores, lost = to_source_grid(values, image.shape[1:], scores, thing_ids)
    return back, scores, dropped + lost, values


def central_crop(image: MetaTensor, size: int) -> MetaTensor:
    """The image's central `size` pixels per axis at most (the affine moved with it): enough
    objects to measure, at a bounded cost however large the image."""
    start = [max(0, (n - size) // 2) for n in image.shape[1:]]
    if not any(start):
        return image
    box = tuple(slice(a, a + min(size, n)) for a, n in zip(start, image.shape[1:]))
    shift = np.eye(4)
    shift[: len(start), 3] = start
    from .io.scan import make_meta_tensor

    meta = {k: v for k, v in image.meta.items() if k not in ("affine", "original_affine", "spatial_shape")}
    return make_meta_tensor(image.as_tensor()[(slice(None), *box)].numpy(), np.asarray(image.affine) @ shift, meta)


def estimate_factor(segment: Segment, image: MetaTensor, thing_ids: Sequence[int], target_px: float
                    ) -> tuple[float, float | None]:
    """(factor, typical object diameter in source pixels) that brings the objects of `image` to
    `target_px`, or (1, None) when no pass finds objects.

    A network far from its training scale gives no usable mask to measure (large bright nuclei
    come out as rings, a few pixels thick), so one pass at the native scale is not enough: the
    central crop is segmented at each factor of `LADDER`, the factor whose measured diameter is
    nearest `target_px` is taken (there the network works, and its mask can be trusted), and
    refined once by the ratio of the two."""
    sample = central_crop(image, ESTIMATE_CROP_PX)
    best: tuple[float, float, float] | None = None
    for factor in LADDER:
        measured = typical_diameter_px(thing_mask(segment_scaled(segment, sample, factor, thing_ids)[3], thing_ids))
        if measured is None:
            continue
        error = abs(math.log(measured / target_px))
        if best is None or error < best[0]:
            best = (error, factor, measured)
    if best is None:
        return 1.0, None
    _, factor, measured = best
    return clamp_factor(factor * target_px / measured), measured / factor


def estimate_and_segment(segment: Segment, image: MetaTensor, thing_ids: Sequence[int], target_px: float):
    """Segment `image` at the scale where its objects look `target_px` wide (`estimate_factor`):
    (pair on the source grid, scores, dropped ids, ScaleEstimate). A factor within `CLOSE_ENOUGH`
    of 1 is taken as 1: the image is segmented as it is."""
    factor, diameter = estimate_factor(segment, image, thing_ids, target_px)
    if diameter is None:
        log.warning("%s: no objects found to estimate the scale from; segmented at the bundle's native scale",
                    image.meta.get("filename_or_obj", "image"))
    if abs(math.log(factor)) <= math.log(CLOSE_ENOUGH):
        factor = 1.0
    return (*segment_scaled(segment, image, factor, thing_ids)[:3], ScaleEstimate(factor, "estimated", diameter))


__all__ = ["ScaleEstimate", "typical_diameter_px", "thing_mask", "instance_sizes", "rescale_image", "to_source_grid",
           "segment_scaled", "estimate_factor", "estimate_and_segment", "FACTOR_LIMITS", "CLOSE_ENOUGH", "LADDER"]
