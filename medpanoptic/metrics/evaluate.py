"""Evaluate a folder of predictions against a folder of ground truth, case by case, and report.

Cases are paired by name. A folder may hold panoptic results (`<case>_label.nii.gz` with its
instance map and JSON), two-component pair files (`<case>_pair.nii.gz`), plain label maps
(`<case>.nii.gz`, instances from connected components of the thing classes), DICOM SEGs
(`<case>_seg.dcm`, `<case>.dcm`, `<case>.seg` or any name, known by content), or be a
Decathlon-layout dataset (`labelsTr/` with `instancesTr/` beside it). A DICOM SEG is read
onto the grid of its source series (`sources/<case>`) when given, else onto the grid of the
other side of the comparison.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


from ..errors import GeometryError, InputError, LabelSetError, MedPanopticError
from ..io.geometry import same_grid, spacing_from_affine
from ..io.formats import LABEL_MAP_SUFFIXES, SEG_NAME_SUFFIXES
from ..io.panoptic import SUFFIXES, read_panoptic
from ..labels import LabelSet
from .froc import froc, scores_beside, write_froc
from .lesions import LesionEvaluation, lesion_metrics
from .quality import PanopticQuality, mean_over_images, panoptic_quality



@dataclass(frozen=True)
class CaseFiles:
    """Where one case's pair is: a stem or map path, and an instance map beside a label map."""

    path: Path
    instance: Path | None = None


def find_cases(folder: str | os.PathLike) -> dict[str, CaseFiles]:
    """Case name -> files, for every panoptic result, pair file or label map in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    if (folder / "labelsTr").is_dir():
        instances = folder / "instancesTr"
        return {name: CaseFiles(p, instances / p.name if (instances / p.name).exists() else None)
                for name, p in _maps(folder / "labelsTr").items()}
    cases: dict[str, CaseFiles] = {}
    for p in sorted(folder.iterdir()):
        name = p.name
        if name.endswith(SUFFIXES["label"]):
            cases[name[: -len(SUFFIXES["label"])]] = CaseFiles(Path(str(p)[: -len(SUFFIXES["label"])]))
    for p in sorted(folder.iterdir()):
        if p.name.endswith(SUFFIXES["pair"]):
            cases.setdefault(p.name[: -len(SUFFIXES["pair"])], CaseFiles(p))
    for name, p in _maps(folder).items():
        if not any(name.endswith(s[: -len(".nii.gz")]) for s in (SUFFIXES["label"], SUFFIXES["instance"], SUFFIXES["pair"])):
            cases.setdefault(name, CaseFiles(p))
    for name, p in _segs(folder).items():
        cases.setdefault(name, CaseFiles(p))
    return cases


def _segs(folder: Path) -> dict[str, Path]:
    """Case name -> DICOM SEG file, whatever the file is called."""
    from ..io.dicom_seg import is_dicom_seg

    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name.endswith(LABEL_MAP_SUFFIXES) or not is_dicom_seg(p):
            continue
        name = next((p.name[: -len(s)] for s in SEG_NAME_SUFFIXES if p.name.endswith(s)), p.name)
        out[name] = p
    return out


def _maps(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        for suffix in LABEL_MAP_SUFFIXES:
            if p.name.endswith(suffix) and not p.name.startswith("."):
                out[p.name[: -len(suffix)]] = p
                break
    return out


def _read(case: CaseFiles, label_set: LabelSet | None, reference=None):
    """A case's pair; `reference` (a scan, a path or the other side's pair) gives a DICOM SEG its full grid."""
    return read_panoptic(case.path, label_set=label_set, instance_path=case.instance, reference=reference)


@dataclass
class EvaluationReport:
    """Per-case rows, per-instance rows and dataset-level results of one evaluation run."""

    label_set: LabelSet | None  # None only when no case could be read
    cases: list[dict] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    missing_predictions: list[str] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)
    quality: PanopticQuality | None = None
    lesions: LesionEvaluation | None = None
    per_image: list[PanopticQuality] = field(default_factory=list)

    def summary_rows(self) -> list[dict]:
        """Dataset-level rows: per class (summed counts, as COCO) then the overall means."""
        rows = []
        if self.quality is None:
            return rows
        lesion_rows = {r["class_id"]: r for r in (self.lesions.per_class() if self.lesions else [])}
        for row in self.quality.per_class():
            extra = lesion_rows.get(row["class_id"], {})
            rows.append({"scope": "dataset", **row, **{k: v for k, v in extra.items() if k not in row}})
        for scope, values in (("dataset", self.quality.summary()), ("mean over images", mean_over_images(self.per_image))):
            rows.append({"scope": scope, "class": "all classes", **values})
        return rows

    def write(self, out: str | os.PathLike) -> list[Path]:
        """Write `<out>` (per case), `<out stem>_instances.csv`, `<out stem>_summary.csv` and, when
        there are lesions, the FROC (`<out stem>_froc.csv` and `.png`); `report.html` beside them shows the
        tables, the FROC and the PQ per case (`<out stem>_pq_per_case.png`)."""
        from ..io.atomic import atomic_paths

        paths = check_report_path(out)
        tables = [self.cases + self.errors, self.instances, self.summary_rows()]
        with atomic_paths(*paths) as temps:
            for tmp, rows in zip(temps, tables):
                _write_csv(tmp, rows)
        if self.instances and self.per_image:
            paths += write_froc(froc(self.instances, len(self.per_image)), Path(out).with_suffix(""))
        from ..clinical.html import write_report_page
        from ..io.qc import pq_per_case_plot

        plots = {"FROC": p for p in paths if p.suffix == ".png"}
        if self.cases:
            paths.append(pq_per_case_plot([str(r["case"]) for r in self.cases], [float(r["pq"]) for r in self.cases],
                                          Path(f"{Path(out).with_suffix('')}_pq_per_case.png")))
            plots["PQ per case"] = paths[-1]
        paths.append(write_report_page(Path(out).parent, "medpanoptic evaluation", {
            "Summary": self.summary_rows(), "Cases": self.cases + self.errors, "Instances": self.instances}, plots))
        return paths


def check_report_path(out: str | os.PathLike) -> list[Path]:
    """The three CSV paths of a report at `out`; refused early if one of them is a folder."""
    out = Path(out)
    stem = out.with_suffix("")
    paths = [out, Path(f"{stem}_instances.csv"), Path(f"{stem}_summary.csv")]
    for path in paths:
        if path.is_dir():
            raise InputError(path, "is a folder; the report needs a CSV file name (e.g. --out results/report.csv)")
    return paths


def _check_iou_threshold(value: float) -> None:
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise InputError(None, f"iou_threshold must be a finite number in (0, 1), got {value!r}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns or ["case"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    label_set: LabelSet | None = None,
    void_label: int | None = None,
    iou_threshold: float = 0.5,
    surface: bool = True,
    progress: bool = True,
    cases: Iterable[str] | None = None,
    sources: str | os.PathLike | None = None,
) -> EvaluationReport:
    """Evaluate every case present in both folders (or only `cases`); cases that fail to read become error rows.

    Every case is read with `label_set`, else the ground truth's `dataset.json` label set, else
    the one stored with that case (its result JSON or its segments): cases whose stored label
    sets differ are refused (`LabelSetError` naming both), and a label map that stores none is
    an error row that says how to give one.

    `sources` is a folder of the source scans, `<sources>/<case>` (a DICOM series folder or file):
    DICOM SEGs, which omit their empty frames, are read onto that scan's grid. Without it a
    predicted SEG is read onto the ground truth's grid.
    """
    from tqdm import tqdm

    _check_iou_threshold(iou_threshold)
    predictions, truths = find_cases(pred_dir), find_cases(gt_dir)
    if cases is not None:
        wanted = set(cases)
        truths = {k: v for k, v in truths.items() if k in wanted}
    if label_set is None and (Path(gt_dir) / "dataset.json").exists():
        from ..io.decathlon import load_datalist

        label_set = load_datalist(gt_dir)[1]
    if not truths:
        raise InputError(gt_dir, "no ground-truth cases found (expected *_label.nii.gz, *_pair.nii.gz, label maps or labelsTr/)")
    common = sorted(set(predictions) & set(truths))
    missing = sorted(set(truths) - set(predictions))
    extra = sorted(set(predictions) - set(truths))
    rows, instance_rows, errors, per_image = [], [], [], []
    total_quality = total_lesions = None
    stored_by: str | None = None  # without a given label set: the first case whose stored one the others must share
    for name in tqdm(common, desc="evaluating", unit="case", disable=not progress or None):
        source = Path(sources) / name if sources is not None and (Path(sources) / name).exists() else None
        try:
            gt, labels = _read(truths[name], label_set if stored_by is None else None, source)
        except MedPanopticError as e:
            errors.append({"case": name, "error": str(e)})
            continue
        if label_set is None or stored_by is not None:
            stored_by = stored_by or name
            label_set = _same_label_set(label_set, labels, truths[stored_by], stored_by, truths[name], name)
        try:
            pred, _ = _read(predictions[name], label_set, source if source is not None else gt)
            if not same_grid(pred.shape[1:], pred.affine.numpy(), gt.shape[1:], gt.affine.numpy()):
                raise GeometryError(predictions[name].path, f"prediction grid {tuple(pred.shape[1:])} does not match the ground truth's {tuple(gt.shape[1:])} (or its affine differs)")
            spacing = spacing_from_affine(gt.affine.numpy(), gt.ndim - 1)
            quality = panoptic_quality(pred, gt, label_set, void_label=void_label, iou_threshold=iou_threshold)
            lesions = lesion_metrics(pred, gt, label_set, spacing, quality=quality, surface=surface)
        except MedPanopticError as e:
            errors.append({"case": name, "error": str(e)})
            continue
        per_image.append(quality)
        total_quality = quality if total_quality is None else total_quality + quality
        total_lesions = lesions if total_lesions is None else total_lesions + lesions
        row = {"case": name, **quality.summary()}
        for c in quality.per_class():
            row[f"pq_{c['class']}"] = c["pq"]
        for c in lesions.per_class():
            row.update({f"{k}_{c['class']}": c[k] for k in ("tp", "fp", "fn", "f1")})
        rows.append(row)
        scores = scores_beside(predictions[name].path)
        instance_rows += [{"case": name, **r, "score": scores.get(r["pred_instance"], float("nan"))}
                          for r in lesions.instances]
    return EvaluationReport(label_set, rows, instance_rows, errors, missing, extra, total_quality, total_lesions, per_image)


def _same_label_set(first: LabelSet | None, this: LabelSet, first_case: CaseFiles, first_name: str,
                    case: CaseFiles, name: str) -> LabelSet:
    """The label set every case shares when none is given: each case's own must equal the first one's,
    since one dataset-level PQ cannot add up classes that mean different things in different cases."""
    if first is None or this == first:
        return this
    raise LabelSetError(
        f"cases '{first_name}' ({first_case.path}) and '{name}' ({case.path}) store different label sets "
        f"({_classes(first)} vs {_classes(this)}): pass the dataset's label set (label_set=..., --labels labels.json)"
    )


def _classes(label_set: LabelSet) -> str:
    return ", ".join(f"{c.id} {c.name} ({c.kind})" for c in label_set)


def format_summary(report: EvaluationReport) -> str:
    """A plain-text table of the dataset-level results."""
    lines = [f"{'class':<20}{'kind':<7}{'TP':>6}{'FP':>6}{'FN':>6}{'PQ':>8}{'SQ':>8}{'RQ':>8}"]
    if report.quality is not None:
        for r in report.quality.per_class():
            lines.append(f"{r['class']:<20}{r['kind']:<7}{r['tp']:>6}{r['fp']:>6}{r['fn']:>6}"
                         f"{_num(r['pq']):>8}{_num(r['sq']):>8}{_num(r['rq']):>8}")
        s = report.quality.summary()
        lines.append(f"PQ {_num(s['pq'])}   PQ_things {_num(s['pq_things'])}   PQ_stuff {_num(s['pq_stuff'])}   "
                     f"(dataset level, {len(report.cases)} case(s))")
    return "\n".join(lines)


def _num(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"

