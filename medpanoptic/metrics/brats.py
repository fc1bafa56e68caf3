"""Lesion-wise Dice and HD95 as defined by the BraTS 2023 challenge (binary masks of one class).

The published definition (BraTS 2023 "lesion-wise performance metrics"), step by step:

1. ground-truth and predicted lesions are the 26-connected components of each mask;
   components smaller than `min_voxels` (50) are removed from both ("small lesions");
2. the ground-truth mask is dilated (`dilation` = 3 iterations of the 18-connected 3D
   structuring element) and ground-truth components that fall into one dilated component
   are merged into one lesion;
3. each ground-truth lesion, dilated the same way, collects every predicted component it
   touches (any overlap): it is detected (TP) if there is at least one; its Dice and HD95
   are taken between the undilated lesion and the union of those predicted components; a
   missed lesion scores Dice 0 and HD95 = `missed_hd95` (374 mm, the largest distance in
   the BraTS field of view);
4. predicted components touched by no dilated ground-truth lesion are false positives;
5. lesion-wise Dice = Σ Dice / (#GT lesions + #FP); lesion-wise HD95 = (Σ HD95 + #FP x 374)
   / (#GT lesions + #FP). With no lesions on either side both are perfect (1 and 0).

Here every step runs on the lesion's bounding box, not the whole volume, and HD95 uses the
surface definition of `medpanoptic.metrics.surface` (MONAI's) rather than the DeepMind
surface-distance package the challenge used; the two differ slightly on voxel surfaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cc3d
import numpy as np
from scipy import ndimage

from .surface import hd95_assd

MIN_VOXELS = 50
DILATION = 3
MISSED_HD95_MM = 374.0


@dataclass(frozen=True)
class BratsLesionResult:
    lesion_dice: float
    lesion_hd95: float
    tp: int
    fp: int
    fn: int
    lesions: list[dict]  # per ground-truth lesion: volume (voxels), detected, dice, hd95


def _struct(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim - 1 if ndim == 3 else ndim)


def brats_lesion_metrics(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    spacing: Sequence[float],
    dilation: int = DILATION,
    min_voxels: int = MIN_VOXELS,
    missed_hd95: float = MISSED_HD95_MM,
) -> BratsLesionResult:
    """BraTS-2023 lesion-wise figures of one class's binary prediction against its binary truth."""
    pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
    connectivity = 26 if gt_mask.ndim == 3 else 8
    struct = _struct(gt_mask.ndim)
    gt_cc = cc3d.dust(cc3d.connected_components(gt_mask, connectivity=connectivity), min_voxels, connectivity=connectivity)
    pred_cc = cc3d.dust(cc3d.connected_components(pred_mask, connectivity=connectivity), min_voxels, connectivity=connectivity)
    # merge ground-truth components that share a dilated component
    dilated = ndimage.binary_dilation(gt_cc > 0, structure=struct, iterations=dilation)
    dilated_cc = cc3d.connected_components(dilated, connectivity=connectivity)
    lesions = np.where(gt_cc > 0, dilated_cc, 0)

    pred_boxes = ndimage.find_objects(pred_cc)
    margin = dilation + 1
    touched: set[int] = set()
    rows = []
    for index, box in enumerate(ndimage.find_objects(lesions), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, gt_mask.shape))
        lesion = lesions[box] == index
        grown = ndimage.binary_dilation(lesion, structure=struct, iterations=dilation)
        hits = np.unique(pred_cc[box][grown])
        hits = hits[hits != 0]
        touched.update(int(h) for h in hits)
        if hits.size == 0:
            rows.append({"voxels": int(lesion.sum()), "detected": False, "dice": 0.0, "hd95_mm": missed_hd95})
            continue
        # the union of the touched predicted components, in full (it may reach beyond the box)
        hit_box = _union_box([pred_boxes[h - 1] for h in hits] + [box])
        predicted = np.isin(pred_cc[hit_box], hits)
        truth = lesions[hit_box] == index
        dice = 2.0 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        hd95, _ = hd95_assd(truth, predicted, spacing)
        rows.append({"voxels": int(truth.sum()), "detected": True, "dice": float(dice), "hd95_mm": hd95})
    fp = len(set(np.unique(pred_cc).tolist()) - {0} - touched)
    tp = sum(r["detected"] for r in rows)
    fn = len(rows) - tp
    denominator = len(rows) + fp
    if denominator == 0:
        return BratsLesionResult(1.0, 0.0, 0, 0, 0, [])
    lesion_dice = sum(r["dice"] for r in rows) / denominator
    lesion_hd95 = (sum(r["hd95_mm"] for r in rows) + fp * missed_hd95) / denominator
    return BratsLesionResult(float(lesion_dice), float(lesion_hd95), tp, fp, fn, rows)


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(len(boxes[0])))
