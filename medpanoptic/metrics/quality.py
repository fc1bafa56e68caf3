"""Panoptic quality (PQ = SQ x RQ) for stuff and things, following the COCO panoptic definition.

Policy, in the words of Kirillov et al. (CVPR 2019) and the COCO panoptic evaluation:

- segments are matched only within a class; a stuff class is one segment per image;
- a match needs IoU > threshold (0.5 by default, strictly greater): above 0.5 matches are
  unique by construction; below 0.5 the pairs at or under the threshold are discarded first
  and a maximum-weight bipartite matching (Hungarian, on IoU) runs over those left, as
  panoptica's `MaxBipartiteMatching` does. MONAI's `compute_panoptic_quality` runs the
  assignment over all IoUs and filters afterwards, so a pair under the threshold can win the
  assignment and take the place of a valid match; a pair that can never be a true positive
  should not decide which pairs are, hence this order (it gives at least as many TPs);
- with a void label, void voxels leave the union of a pair, and an unmatched predicted
  segment lying more than half in void is ignored instead of counted as a false positive;
- PQ = Σ IoU(TP) / (TP + FP/2 + FN/2), SQ = Σ IoU / TP, RQ = TP / (TP + FP/2 + FN/2);
  the Dice variant replaces IoU by Dice in the sums (PQ_dsc = SQ_dsc x RQ, as panoptica);
- a class absent from both ground truth and prediction (TP + FP + FN = 0) has PQ = NaN
  ("not applicable"): it is excluded from every mean, never counted as 0 or 1.

Counts add up over images (`+`): dataset-level PQ sums TP/FP/FN/IoU over all images, as COCO
does; `mean_over_images` averages per-image values instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import PanopticError
from ..labels import LabelClass, LabelSet
from ..pair import check_layout, check_pair, check_segments
from .contingency import Contingency, contingency

Matching = Literal["unique", "hungarian"]
TP, FP, FN, IOU, DICE = range(5)


@dataclass(frozen=True)
class Match:
    """One matched (true positive) pair of segments of a class."""

    label: int
    gt_instance: int
    pred_instance: int
    iou: float
    dice: float
    gt_voxels: int
    pred_voxels: int


@dataclass
class PanopticQuality:
    """Per-class TP, FP, FN, Σ IoU and Σ Dice of one image (or of many, summed); PQ/SQ/RQ derived."""

    label_set: LabelSet
    counts: np.ndarray  # (n_classes, 5) in label_set order: tp, fp, fn, iou_sum, dice_sum
    matches: list[Match] = field(default_factory=list)
    unmatched_gt: list[tuple[int, int, int]] = field(default_factory=list)  # (label, instance, voxels)
    unmatched_pred: list[tuple[int, int, int]] = field(default_factory=list)

    def __add__(self, other: "PanopticQuality") -> "PanopticQuality":
        if other.label_set != self.label_set:
            raise ValueError("cannot add panoptic quality of different label sets")
        return PanopticQuality(self.label_set, self.counts + other.counts, self.matches + other.matches,
                               self.unmatched_gt + other.unmatched_gt, self.unmatched_pred + other.unmatched_pred)

    # -- per class ----------------------------------------------------------------------------
    def _row(self, class_id: int) -> np.ndarray:
        return self.counts[self.label_set.ids.index(class_id)]

    def tp(self, class_id: int) -> int:
        return int(self._row(class_id)[TP])

    def fp(self, class_id: int) -> int:
        return int(self._row(class_id)[FP])

    def fn(self, class_id: int) -> int:
        return int(self._row(class_id)[FN])

    def pq(self, class_id: int | None = None) -> float:
        return self._metric("pq", class_id)

    def sq(self, class_id: int | None = None) -> float:
        return self._metric("sq", class_id)

    def rq(self, class_id: int | None = None) -> float:
        return self._metric("rq", class_id)

    def _metric(self, name: str, class_id: int | None) -> float:
        if class_id is None:
            return _nanmean([self._metric(name, c) for c in self.label_set.ids])
        return _derive(self._row(class_id))[name]

    # -- summaries ----------------------------------------------------------------------------
    def per_class(self) -> list[dict]:
        """One row per class: counts and PQ, SQ, RQ, PQ_dsc, SQ_dsc (NaN where not applicable)."""
        out = []
        for c, row in zip(self.label_set, self.counts):
            out.append({"class_id": c.id, "class": c.name, "kind": c.kind,
                        "tp": int(row[TP]), "fp": int(row[FP]), "fn": int(row[FN]), **_derive(row)})
        return out

    def summary(self) -> dict[str, float]:
        """PQ, SQ, RQ (and Dice variants) averaged over all classes, over things and over stuff."""
        rows = self.per_class()
        out: dict[str, float] = {}
        for group, members in (("", rows), ("_things", [r for r in rows if r["kind"] == "thing"]),
                               ("_stuff", [r for r in rows if r["kind"] == "stuff"])):
            for name in ("pq", "sq", "rq", "pq_dsc", "sq_dsc"):
                out[f"{name}{group}"] = _nanmean([r[name] for r in members])
        return out


def _derive(row: np.ndarray) -> dict[str, float]:
    tp, fp, fn, iou, dice = (float(v) for v in row)
    denominator = tp + 0.5 * fp + 0.5 * fn
    nan = float("nan")
    return {
        "pq": iou / denominator if denominator else nan,
        "sq": iou / tp if tp else (nan if not denominator else 0.0),
        "rq": tp / denominator if denominator else nan,
        "pq_dsc": dice / denominator if denominator else nan,
        "sq_dsc": dice / tp if tp else (nan if not denominator else 0.0),
    }


def _nanmean(values: Iterable[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def mean_over_images(results: Iterable[PanopticQuality]) -> dict[str, float]:
    """Per-image summaries averaged over images (NaNs skipped), beside the dataset-level sums."""
    summaries = [r.summary() for r in results]
    if not summaries:
        return {}
    return {k: _nanmean(s[k] for s in summaries) for k in summaries[0]}


def match_segments(
    table: Contingency,
    label_set: LabelSet,
    void_label: int | None = None,
    iou_threshold: float = 0.5,
    matching: Matching | None = None,
) -> PanopticQuality:
    """Match the segments of a contingency table class by class and count TP, FP, FN."""
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    matching = matching or ("unique" if iou_threshold >= 0.5 else "hungarian")
    gt, pred, overlaps = table.gt_segments, table.pred_segments, table.overlaps
    pred_area = pred[:, 2].astype(np.float64)
    pred_void = np.zeros(len(pred))
    if void_label is not None:
        void_rows = np.flatnonzero(gt[:, 0] == void_label)
        in_void = np.isin(overlaps[:, 0], void_rows)
        np.add.at(pred_void, overlaps[in_void, 1], overlaps[in_void, 2])

    counts = np.zeros((len(label_set), 5))
    result = PanopticQuality(label_set, counts)
    for row, c in enumerate(label_set.ids):
        if c == void_label:
            continue
        g_rows = np.flatnonzero(gt[:, 0] == c)
        p_rows = np.flatnonzero(pred[:, 0] == c)
        same = overlaps[np.isin(overlaps[:, 0], g_rows) & np.isin(overlaps[:, 1], p_rows)]
        inter = same[:, 2].astype(np.float64)
        union = gt[same[:, 0], 2] + pred_area[same[:, 1]] - inter - pred_void[same[:, 1]]
        iou = inter / union
        dice = 2 * inter / (gt[same[:, 0], 2] + pred_area[same[:, 1]] - pred_void[same[:, 1]])
        chosen = _choose(same[:, 0], same[:, 1], iou, iou_threshold, matching)
        matched_g, matched_p = set(same[chosen, 0].tolist()), set(same[chosen, 1].tolist())
        for k in chosen:
            g, p = same[k, 0], same[k, 1]
            result.matches.append(Match(c, int(gt[g, 1]), int(pred[p, 1]), float(iou[k]), float(dice[k]),
                                        int(gt[g, 2]), int(pred[p, 2])))
        fn_rows = [g for g in g_rows.tolist() if g not in matched_g]
        fp_rows = [p for p in p_rows.tolist() if p not in matched_p and not pred_void[p] > 0.5 * pred_area[p]]
        result.unmatched_gt += [(c, int(gt[g, 1]), int(gt[g, 2])) for g in fn_rows]
        result.unmatched_pred += [(c, int(pred[p, 1]), int(pred[p, 2])) for p in fp_rows]
        counts[row] = (len(chosen), len(fp_rows), len(fn_rows), iou[chosen].sum(), dice[chosen].sum())
    return result


def _choose(g: np.ndarray, p: np.ndarray, iou: np.ndarray, threshold: float, matching: Matching) -> np.ndarray:
    """Indices of the matched candidate pairs."""
    above = np.flatnonzero(iou > threshold)
    if matching == "unique":
        if threshold < 0.5:
            raise ValueError("unique matching needs iou_threshold >= 0.5; use matching='hungarian'")
        return above
    if above.size == 0:
        return above
    g_ids, g_idx = np.unique(g[above], return_inverse=True)
    p_ids, p_idx = np.unique(p[above], return_inverse=True)
    weights = np.zeros((len(g_ids), len(p_ids)))
    weights[g_idx, p_idx] = iou[above]
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = weights[rows, cols] > threshold
    lookup = {(a, b): k for k, a, b in zip(above.tolist(), g_idx.tolist(), p_idx.tolist())}
    return np.array(sorted(lookup[(r, c)] for r, c in zip(rows[keep].tolist(), cols[keep].tolist())), dtype=np.int64)


def panoptic_quality(
    pred,
    gt,
    label_set: LabelSet,
    void_label: int | None = None,
    iou_threshold: float = 0.5,
    matching: Matching | None = None,
    check: bool = True,
) -> PanopticQuality:
    """PQ, SQ and RQ of a predicted pair against a ground-truth pair (2D or 3D, numpy or torch, any device).

    With `check` (the default) both pairs are held to the rules of `pair.check_pair`, judged
    from the segments the contingency table counted (no pass over the voxels of its own): a
    thing voxel without an instance, an instance on background or stuff, an id spanning two
    classes or a label outside the label set (and `void_label`) raises a `PanopticError`
    naming the prediction or the ground truth, instead of turning silently into extra false
    positives or negatives. `check=False` skips the rules for pairs already checked (e.g. just
    read by `read_panoptic`); malformed pairs then give undefined figures. Matching below IoU 0.5 filters first, then assigns (see the module notes).

    Example::

        result = panoptic_quality(pred_pair, gt_pair, label_set)
        result.pq(), result.summary()["pq_things"], result.per_class()
    """
    n_labels = max(label_set.max_id, void_label or 0) + 1
    if check:
        check_layout(pred, "prediction")
        check_layout(gt, "ground truth")
    try:
        table = contingency(pred, gt, n_labels)
    except PanopticError:
        if check:  # say which pair breaks which rule
            allowed = _with_void(label_set, void_label)
            check_pair(pred, allowed, source="prediction")
            check_pair(gt, allowed, source="ground truth")
        raise
    if check:  # the rules from the segments the table counted: no second pass over the voxels
        allowed = _with_void(label_set, void_label)
        check_segments(table.pred_segments, allowed, source="prediction")
        check_segments(table.gt_segments, allowed, source="ground truth")
    return match_segments(table, label_set, void_label, iou_threshold, matching)


def _with_void(label_set: LabelSet, void_label: int | None) -> LabelSet:
    """The label set the pairs are checked against: the void label counts as a known stuff id."""
    if void_label is None or void_label in label_set:
        return label_set
    if void_label <= 0:
        raise PanopticError(f"void_label must be a positive label id, got {void_label}")
    return LabelSet(label_set.classes + (LabelClass(int(void_label), "void", "stuff"),))
