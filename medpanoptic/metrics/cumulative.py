"""Panoptic quality as a MONAI cumulative metric, for bundle evaluators and handlers.

Each call on a batch buffers one (classes x [TP, FP, FN, Σ IoU, Σ Dice]) table per image;
`aggregate` turns the buffer into one number (dataset-level by default, as COCO sums), and
`result` into the full `PanopticQuality` object.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from ..labels import LabelSet
from .quality import Matching, PanopticQuality, panoptic_quality

METRIC_NAMES = ("pq", "sq", "rq", "pq_dsc", "sq_dsc", "pq_things", "pq_stuff", "sq_things", "rq_things")


def _integers(pairs: torch.Tensor) -> torch.Tensor:
    """Pairs as int32 on their device: nearest-neighbour resampling hands label maps back as floats."""
    pairs = pairs.as_subclass(torch.Tensor)
    return torch.round(pairs).to(torch.int32) if pairs.is_floating_point() else pairs


class CumulativePanopticQuality(CumulativeIterationMetric):
    """PQ over a dataset, fed batch by batch with (B, 2, *spatial) predicted and ground-truth pairs.

    Args:
        label_set: the classes (stuff and things) to evaluate.
        metric_name: what `aggregate` returns: one of "pq", "sq", "rq", "pq_dsc", "sq_dsc",
            "pq_things", "pq_stuff", "sq_things", "rq_things".
        reduction: "dataset" sums the counts over images before dividing (COCO); "mean"
            averages the per-image values (NaN images skipped).
        void_label, iou_threshold, matching: as in `panoptic_quality`.
    """

    def __init__(
        self,
        label_set: LabelSet,
        metric_name: str = "pq",
        reduction: str = "dataset",
        void_label: int | None = None,
        iou_threshold: float = 0.5,
        matching: Matching | None = None,
    ) -> None:
        super().__init__()
        if metric_name not in METRIC_NAMES:
            raise ValueError(f"metric_name must be one of {METRIC_NAMES}, got {metric_name!r}")
        if reduction not in ("dataset", "mean"):
            raise ValueError(f"reduction must be 'dataset' or 'mean', got {reduction!r}")
        self.label_set = label_set
        self.metric_name = metric_name
        self.reduction = reduction
        self.options = {"void_label": void_label, "iou_threshold": iou_threshold, "matching": matching}

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape or y_pred.ndim not in (4, 5) or y_pred.shape[1] != 2:
            raise ValueError(f"expected (B, 2, *spatial) pairs of one shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}")
        y_pred, y = _integers(y_pred), _integers(y)  # resampled labels (Spacingd, Invertd) come back as floats
        tables = [panoptic_quality(p, g, self.label_set, **self.options).counts for p, g in zip(y_pred, y)]
        return torch.as_tensor(np.stack(tables), dtype=torch.float64)

    def result(self) -> PanopticQuality:
        """The dataset-level result: counts summed over every buffered image, and no matches (the
        buffer keeps counts only), so `lesion_metrics` refuses it; per-image lesion figures need
        each image's own `panoptic_quality`."""
        buffer = self.get_buffer()
        counts = buffer.sum(0).cpu().numpy() if isinstance(buffer, torch.Tensor) and buffer.numel() else np.zeros((len(self.label_set), 5))
        return PanopticQuality(self.label_set, counts)

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:  # type: ignore[override]
        reduction = reduction or self.reduction
        if reduction == "dataset":
            return torch.tensor(self.result().summary()[self.metric_name])
        buffer = self.get_buffer()
        values = [PanopticQuality(self.label_set, row.cpu().numpy()).summary()[self.metric_name] for row in buffer]
        values = [v for v in values if not np.isnan(v)]
        return torch.tensor(float(np.mean(values)) if values else float("nan"))
