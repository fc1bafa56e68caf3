"""Lesion-wise figures for thing classes: detection (precision, recall, F1, false positives per
scan), per-lesion segmentation (Dice, IoU, volume error, HD95, ASSD in mm) and recall by size.

Detection uses the panoptic matching (same class, IoU > 0.5 unless told otherwise), so the
lesion counts and the PQ of a class always agree. Surface distances are computed on each
pair's joint bounding box, never on the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import PanopticError
from ..labels import LabelSet
from .quality import FN, FP, TP, PanopticQuality, panoptic_quality
from .surface import hd95_assd

DEFAULT_SIZE_BINS_MM3: tuple[float, ...] = (0.0, 100.0, 1000.0, 10000.0, float("inf"))
"""Ground-truth lesion volume bins (mm³) for recall by size: <0.1 ml, 0.1-1 ml, 1-10 ml, >10 ml."""


@dataclass
class LesionEvaluation:
    """Lesion-wise rows of one image (or of many, concatenated with `+`)."""

    label_set: LabelSet
    instances: list[dict] = field(default_factory=list)  # one row per GT lesion and per false positive
    n_images: int = 1
    size_bins_mm3: tuple[float, ...] = DEFAULT_SIZE_BINS_MM3

    def __add__(self, other: "LesionEvaluation") -> "LesionEvaluation":
        return LesionEvaluation(self.label_set, self.instances + other.instances, self.n_images + other.n_images,
                                self.size_bins_mm3)

    def per_class(self) -> list[dict]:
        """Per thing class: TP, FP, FN, precision, recall, F1, false positives per scan, mean lesion figures."""
        out = []
        for c in self.label_set:
            if not c.is_thing:
                continue
            rows = [r for r in self.instances if r["class_id"] == c.id]
            tp = sum(r["status"] == "TP" for r in rows)
            fp = sum(r["status"] == "FP" for r in rows)
            fn = sum(r["status"] == "FN" for r in rows)
            matched = [r for r in rows if r["status"] == "TP"]
            out.append({
                "class_id": c.id, "class": c.name, "tp": tp, "fp": fp, "fn": fn,
                "precision": tp / (tp + fp) if tp + fp else float("nan"),
                "recall": tp / (tp + fn) if tp + fn else float("nan"),
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
                "fp_per_scan": fp / self.n_images,
                **{f"mean_{k}": _mean([r[k] for r in matched]) for k in ("dice", "iou", "hd95_mm", "assd_mm", "volume_error_mm3")},
            })
        return out

    def recall_by_size(self) -> list[dict]:
        """Recall of ground-truth lesions per volume bin (mm³) and class."""
        out = []
        edges = self.size_bins_mm3
        for c in self.label_set:
            if not c.is_thing:
                continue
            gt_rows = [r for r in self.instances if r["class_id"] == c.id and r["status"] in ("TP", "FN")]
            for low, high in zip(edges[:-1], edges[1:]):
                inside = [r for r in gt_rows if low <= r["gt_volume_mm3"] < high]
                hits = sum(r["status"] == "TP" for r in inside)
                out.append({"class_id": c.id, "class": c.name, "min_mm3": low, "max_mm3": high,
                            "n_gt": len(inside), "detected": hits,
                            "recall": hits / len(inside) if inside else float("nan")})
        return out


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _boxes(instance: np.ndarray) -> list:
    """find_objects boxes indexed by instance id - 1 (one pass over the volume)."""
    return ndimage.find_objects(instance) if instance.any() else []


def _union(a: tuple[slice, ...], b: tuple[slice, ...], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, min(x.start, y.start) - 1), min(n, max(x.stop, y.stop) + 1)) for x, y, n in zip(a, b, shape))


def lesion_metrics(
    pred,
    gt,
    label_set: LabelSet,
    spacing: Sequence[float],
    quality: PanopticQuality | None = None,
    surface: bool = True,
    size_bins_mm3: Sequence[float] = DEFAULT_SIZE_BINS_MM3,
    **matching,
) -> LesionEvaluation:
    """Lesion-wise evaluation of one image's thing classes.

    `spacing` is the voxel size in mm along each array axis. Pass the `quality` already
    computed for these pairs to reuse its matching; otherwise `panoptic_quality` runs with
    `**matching` (void_label, iou_threshold, matching). With `surface=False` HD95/ASSD are
    skipped (they are the only part that looks at lesion shapes).
    """
    pred = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
    gt = np.asarray(gt.detach().cpu() if hasattr(gt, "detach") else gt)
    if quality is None:
        quality = panoptic_quality(pred, gt, label_set, **matching)
    _refuse_counts_without_segments(quality)
    spacing = [float(s) for s in spacing]
    voxel_mm3 = float(np.prod(spacing))
    things = set(label_set.thing_ids)
    gt_boxes = _boxes(gt[1]) if surface else []
    pred_boxes = _boxes(pred[1]) if surface else []
    rows = []
    for m in quality.matches:
        if m.label not in things:
            continue
        hd95 = assd = float("nan")
        if surface:
            box = _union(gt_boxes[m.gt_instance - 1], pred_boxes[m.pred_instance - 1], gt.shape[1:])
            hd95, assd = hd95_assd(gt[1][box] == m.gt_instance, pred[1][box] == m.pred_instance, spacing)
        gt_mm3, pred_mm3 = m.gt_voxels * voxel_mm3, m.pred_voxels * voxel_mm3
        rows.append(_row(label_set, m.label, "TP", m.gt_instance, m.pred_instance, gt_mm3, pred_mm3, m.dice, m.iou, hd95, assd))
    for label, instance, voxels in quality.unmatched_gt:
        if label in things:
            rows.append(_row(label_set, label, "FN", instance, 0, voxels * voxel_mm3, 0.0, 0.0, 0.0, float("nan"), float("nan")))
    for label, instance, voxels in quality.unmatched_pred:
        if label in things:
            rows.append(_row(label_set, label, "FP", 0, instance, 0.0, voxels * voxel_mm3, 0.0, 0.0, float("nan"), float("nan")))
    return LesionEvaluation(label_set, rows, 1, tuple(size_bins_mm3))


def _refuse_counts_without_segments(quality: PanopticQuality) -> None:
    """A quality whose thing counts its matched / unmatched lists do not account for (counts summed
    without them, as `CumulativePanopticQuality.result()` returns) would give zero lesions."""
    things = set(quality.label_set.thing_ids)
    rows = [r for c, r in zip(quality.label_set.ids, quality.counts) if c in things]
    counted = [int(sum(r[k] for r in rows)) for k in (TP, FN, FP)]
    listed = [sum(m.label in things for m in quality.matches), sum(u[0] in things for u in quality.unmatched_gt),
              sum(u[0] in things for u in quality.unmatched_pred)]
    if counted != listed:
        raise PanopticError(f"lesion_metrics: the quality given counts {counted[0]} TP, {counted[1]} FN, {counted[2]} FP "
                            f"things but lists {listed[0]}, {listed[1]}, {listed[2]} of them (counts without matches, e.g. "
                            "CumulativePanopticQuality.result()); pass this image's panoptic_quality(...) or none")


def _row(label_set, label, status, gt_instance, pred_instance, gt_mm3, pred_mm3, dice, iou, hd95, assd) -> dict:
    return {
        "class_id": label, "class": label_set[label].name, "status": status,
        "gt_instance": gt_instance, "pred_instance": pred_instance,
        "gt_volume_mm3": gt_mm3, "pred_volume_mm3": pred_mm3,
        "volume_error_mm3": pred_mm3 - gt_mm3 if status == "TP" else float("nan"),
        "relative_volume_error": (pred_mm3 - gt_mm3) / gt_mm3 if status == "TP" and gt_mm3 else float("nan"),
        "dice": dice, "iou": iou, "hd95_mm": hd95, "assd_mm": assd,
    }
