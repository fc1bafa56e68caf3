"""FROC: lesion sensitivity against false positives per scan, as the model's score threshold falls.

Detections are the predicted thing instances of an evaluation, each marked TP or FP by the
panoptic matching (IoU > 0.5) and carrying its score from the prediction's `_panoptic.json`.
Lowering the threshold admits detections in score order; the curve is a step function and the
sensitivity at a false-positive rate f is the best one reached with at most f FP per scan.
The competition performance metric (CPM, LUNA16) is the mean sensitivity at 1/8 ... 8 FP per scan.
A detection without a score counts as score 1 (ranked with all others), so a model without
scores gives a single operating point.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.atomic import atomic_paths

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which the FROC is read (LUNA16)."""


@dataclass(frozen=True)
class Froc:
    """The FROC curve (one point per distinct score) and its operating points."""

    thresholds: np.ndarray
    fp_per_scan: np.ndarray
    sensitivity: np.ndarray
    n_lesions: int
    n_scans: int
    fp_rates: tuple[float, ...] = FP_RATES

    def sensitivity_at(self, fp_rate: float) -> float:
        """Best sensitivity with at most `fp_rate` false positives per scan (0 when no point qualifies)."""
        reached = self.sensitivity[self.fp_per_scan <= fp_rate + 1e-12]
        return float(reached.max()) if reached.size else 0.0

    @property
    def operating_points(self) -> list[dict]:
        return [{"fp_per_scan": f, "sensitivity": self.sensitivity_at(f)} for f in self.fp_rates]

    @property
    def cpm(self) -> float:
        """Mean sensitivity over `fp_rates` (NaN without ground-truth lesions)."""
        return float(np.mean([p["sensitivity"] for p in self.operating_points])) if self.n_lesions else float("nan")


def froc(rows: Sequence[dict], n_scans: int, fp_rates: Sequence[float] = FP_RATES) -> Froc:
    """The FROC of lesion rows (`status` TP/FP/FN, `score` on TP and FP rows) over `n_scans` scans."""
    if n_scans < 1:
        raise ValueError(f"FROC needs at least one scan, got {n_scans}")
    n_lesions = sum(r["status"] in ("TP", "FN") for r in rows)
    detections = [r for r in rows if r["status"] in ("TP", "FP")]
    scores = np.array([_score(r) for r in detections], dtype=float)
    hits = np.array([r["status"] == "TP" for r in detections], dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    true_positives, false_positives = np.cumsum(hits), np.cumsum(~hits)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True] if scores.size else np.zeros(0, dtype=bool)
    sensitivity = true_positives[last_of_tie] / n_lesions if n_lesions else np.zeros(int(last_of_tie.sum()))
    return Froc(np.r_[np.inf, scores[last_of_tie]], np.r_[0.0, false_positives[last_of_tie] / n_scans],
                np.r_[0.0, sensitivity], n_lesions, n_scans, tuple(fp_rates))


def _score(row: dict) -> float:
    value = row.get("score")
    return 1.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def scores_beside(path: str | os.PathLike) -> dict[int, float]:
    """Instance scores a result stem's `_panoptic.json` records (empty when it has none or is no stem)."""
    from ..io.panoptic import panoptic_paths

    json_path = panoptic_paths(path)["json"]
    if not json_path.is_file():
        return {}
    try:
        recorded = json.loads(json_path.read_text(encoding="utf-8")).get("scores") or {}
        return {int(k): float(v) for k, v in recorded.items()}
    except (ValueError, TypeError, AttributeError, OSError):
        return {}  # unreadable scores: every detection ranks alike (the pair itself was checked elsewhere)


def write_froc(curve: Froc, stem: str | os.PathLike) -> list[Path]:
    """`<stem>_froc.csv` (sensitivity at each FP rate, then the CPM) and `<stem>_froc.png` (the curve)."""
    paths = [Path(f"{stem}_froc.csv"), Path(f"{stem}_froc.png")]
    figure = froc_figure(curve)
    with atomic_paths(*paths) as (tmp_csv, tmp_png):
        with open(tmp_csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["fp_per_scan", "sensitivity"])
            for point in curve.operating_points:
                writer.writerow([f"{point['fp_per_scan']:g}", f"{point['sensitivity']:.6g}"])
            writer.writerow(["cpm", "" if math.isnan(curve.cpm) else f"{curve.cpm:.6g}"])
        figure.savefig(tmp_png, format="png")
    return paths


def froc_figure(curve: Froc):
    """The FROC curve on a log2 FP axis, its operating points marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    low = min(curve.fp_rates) / 2
    ax.step(np.maximum(curve.fp_per_scan, low), curve.sensitivity, where="post", color="#4c72b0")
    points = curve.operating_points
    ax.plot([p["fp_per_scan"] for p in points], [p["sensitivity"] for p in points], "o", color="#dd8452")
    ax.set_xscale("log", base=2)
    ax.set_xlim(low, max(curve.fp_rates) * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(f"FROC: CPM {curve.cpm:.3f} ({curve.n_lesions} lesions, {curve.n_scans} scans)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
