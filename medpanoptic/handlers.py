"""Ignite handlers for bundle workflows."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .labels import LabelSet


class PanopticReportHandler:
    """When the evaluator completes, evaluate the predictions it wrote against the dataset's truth
    and write the per-case, per-instance and summary CSVs of `medpanoptic evaluate`."""

    def __init__(self, pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, output_csv: str | os.PathLike,
                 label_set: LabelSet | None = None) -> None:
        self.pred_dir, self.gt_dir, self.output_csv = Path(pred_dir), Path(gt_dir), Path(output_csv)
        self.label_set = label_set
        self.logger = logging.getLogger(__name__)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        from .metrics.evaluate import evaluate_folders, find_cases, format_summary

        cases = find_cases(self.pred_dir)
        report = evaluate_folders(self.pred_dir, self.gt_dir, self.label_set, progress=False, cases=cases)
        paths = report.write(self.output_csv)
        self.logger.info("panoptic evaluation of %d case(s):\n%s", len(report.cases), format_summary(report))
        self.logger.info("wrote %s", ", ".join(str(p) for p in paths))
