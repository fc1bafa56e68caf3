"""Evaluation: panoptic quality for stuff and things, and lesion-wise detection and segmentation figures."""

from .contingency import Contingency, contingency
from .quality import Match, PanopticQuality, match_segments, mean_over_images, panoptic_quality

__all__ = ["Contingency", "contingency", "Match", "PanopticQuality", "match_segments", "mean_over_images", "panoptic_quality"]
