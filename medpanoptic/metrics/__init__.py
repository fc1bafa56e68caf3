"""Evaluation: panoptic quality for stuff and things, and lesion-wise detection and segmentation figures.

- `panoptic_quality(pred, gt, label_set)`: PQ/SQ/RQ per class, things and stuff (COCO definition);
- `lesion_metrics(...)`: lesion-wise detection and per-lesion Dice, IoU, volume error, HD95, ASSD;
- `brats_lesion_metrics(...)`: the BraTS 2023 lesion-wise Dice and HD95;
- `CumulativePanopticQuality`: the same PQ as a MONAI cumulative metric;
- `contingency(pred, gt)`: the one-pass table everything above is computed from.
"""

from .brats import BratsLesionResult, brats_lesion_metrics
from .contingency import Contingency, contingency
from .cumulative import CumulativePanopticQuality
from .lesions import DEFAULT_SIZE_BINS_MM3, LesionEvaluation, lesion_metrics
from .quality import Match, PanopticQuality, match_segments, mean_over_images, panoptic_quality
from .surface import hd95_assd

__all__ = [
    "BratsLesionResult", "brats_lesion_metrics", "Contingency", "contingency", "CumulativePanopticQuality",
    "DEFAULT_SIZE_BINS_MM3", "LesionEvaluation", "lesion_metrics", "Match", "PanopticQuality", "match_segments",
    "mean_over_images", "panoptic_quality", "hd95_assd",
]
