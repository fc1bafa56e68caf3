"""A follow-up study: lesions matched across time points, labelled, measured, and the RECIST response.

Each later time point is registered to the baseline (`register`, unless the results are
already on one frame), both its and the previous time point's lesions are brought onto the
baseline grid, and `match.match_lesions` says which are one finding. A lesion keeps its
`lesion_id` (and TrackingUID) from time point to time point; it is labelled

- `new` / `vanished`: present only later / only earlier;
- `merged` / `split`: several earlier lesions became one (it keeps the lowest of their ids), or
  one became several (the largest fragment keeps its id, the others get new ones);
- `grown` / `shrunk` / `stable`: by the change of its long axis (RECIST by default: grown at
  +20 % and at least +5 mm, so that a small lesion's voxel-sized change is not growth; shrunk
  at -30 %).

RECIST 1.1 at each later time point: target lesions are the baseline's measurable ones (long
axis >= 10 mm), largest first, at most 2 per organ and 5 in all; their sum of diameters (a
split target counts all its fragments, a merged one once) gives PD (a new lesion, or +20 % and
+5 mm over the nadir), CR (no lesion left), PR (-30 % from baseline) or SD, with the rule that
decided it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.uid import generate_uid

from ..errors import InputError
from ..io.atomic import atomic_paths
from ..labels import LabelSet
from .match import MAX_DISTANCE_MM, MIN_OVERLAP, match_lesions
from .register import IDENTITY, register, stuff_guide, to_baseline_grid

MEASURABLE_MM = 10.0
MAX_TARGETS, MAX_TARGETS_PER_ORGAN = 5, 2


@dataclass(frozen=True)
class Thresholds:
    """When a lesion counts as grown (a fraction and mm of its long axis) or shrunk (a fraction), and how lesions match."""

    grown: float = 0.2
    grown_mm: float = 5.0
    shrunk: float = 0.3
    min_overlap: float = MIN_OVERLAP
    max_distance_mm: float = MAX_DISTANCE_MM


@dataclass
class TimePoint:
    """One time point: its name, panoptic pair with label set, optional scan and its instance-table rows."""

    name: str
    pair: object
    label_set: LabelSet
    scan: object = None
    rows: list[dict] = field(default_factory=list)
    transform: np.ndarray = field(default_factory=lambda: IDENTITY.copy())


@dataclass
class FollowUp:
    """The lesion rows (one per lesion and time point) and time-point rows (sum of diameters, response)."""

    lesions: list[dict]
    timepoints: list[dict]


def load_timepoint(path: str | os.PathLike, scan: str | os.PathLike | None = None) -> TimePoint:
    """A result (stem, or a folder holding one `<case>_label.nii.gz`) and optionally its scan."""
    from ..io import read_panoptic, read_scan
    from ..io.table import instance_table

    stem = _stem_of(Path(path))
    pair, label_set = read_panoptic(stem)
    image = read_scan(scan) if scan is not None else None
    same_grid = image is not None and tuple(image.shape[1:]) == tuple(pair.shape[1:])
    rows = instance_table(pair, label_set, image if same_grid else None)
    return TimePoint(stem.name, pair, label_set, image, rows)


def _stem_of(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*_label.nii.gz"))
        if len(found) != 1:
            raise InputError(path, f"a time point folder must hold one result (*_label.nii.gz), found {len(found)}")
        return Path(str(found[0])[: -len("_label.nii.gz")])
    return Path(str(path).removesuffix("_label.nii.gz"))


def follow_up(timepoints: Sequence[TimePoint], registered: bool = False, thresholds: Thresholds = Thresholds()) -> FollowUp:
    """Register, match and label the time points (the first is the baseline); see the module docstring."""
    if len(timepoints) < 2:
        raise InputError(None, "a follow-up needs a baseline and at least one later time point")
    baseline = timepoints[0]
    for tp in timepoints[1:]:
        tp.transform = IDENTITY.copy() if registered else _registration(baseline, tp)
    uid_seed = f"medpanoptic-track:{baseline.name}"
    lesions = [_row(baseline, 0, r, i, "baseline", (i,)) for i, r in enumerate(baseline.rows, start=1)]
    identity = {r["instance"]: (i, (i,)) for i, r in enumerate(baseline.rows, start=1)}
    next_id = len(baseline.rows) + 1
    previous, previous_map = baseline, _on_baseline(baseline, baseline)
    for k, tp in enumerate(timepoints[1:], start=1):
        current_map = _on_baseline(tp, baseline)
        groups = match_lesions(previous_map, current_map, np.asarray(baseline.pair.affine, dtype=float),
                               thresholds.min_overlap, thresholds.max_distance_mm)
        earlier = {r["instance"]: r for r in previous.rows}
        later = {r["instance"]: r for r in tp.rows}
        assigned = {}
        for group in groups:
            rows, next_id = _label_group(group, earlier, later, identity, next_id, thresholds)
            for instance, (row_status, lesion_id, lineage) in rows.items():
                if instance < 0:  # vanished: a row without an instance
                    lesions.append(_row(tp, k, None, lesion_id, row_status, lineage))
                else:
                    assigned[instance] = (lesion_id, lineage)
                    lesions.append(_row(tp, k, later[instance], lesion_id, row_status, lineage))
        identity, previous, previous_map = assigned, tp, current_map
    for row in lesions:
        row["tracking_uid"] = generate_uid(entropy_srcs=[uid_seed, str(row["lesion_id"])])
    return FollowUp(sorted(lesions, key=lambda r: (r["timepoint"], r["lesion_id"])), recist(lesions, timepoints))


def _registration(baseline: TimePoint, tp: TimePoint) -> np.ndarray:
    """Follow-up scans register on their intensities; results without scans on their stuff classes."""
    if baseline.scan is not None and tp.scan is not None:
        return register(np.asarray(baseline.scan[0]), np.asarray(baseline.scan.affine, dtype=float),
                        np.asarray(tp.scan[0]), np.asarray(tp.scan.affine, dtype=float))
    return register(stuff_guide(np.asarray(baseline.pair[0]), baseline.label_set),
                    np.asarray(baseline.pair.affine, dtype=float),
                    stuff_guide(np.asarray(tp.pair[0]), tp.label_set), np.asarray(tp.pair.affine, dtype=float))


def _on_baseline(tp: TimePoint, baseline: TimePoint) -> np.ndarray:
    return to_baseline_grid(np.asarray(tp.pair[1]), np.asarray(tp.pair.affine, dtype=float), tuple(baseline.pair.shape[1:]),
                            np.asarray(baseline.pair.affine, dtype=float), tp.transform).astype(np.int64)


def _label_group(group, earlier, later, identity, next_id, thresholds: Thresholds):
    """{later instance (or -earlier instance for a vanished one): (status, lesion_id, lineage)}, and the next free id."""
    kind = group.kind
    if kind == "vanished":
        lesion_id, lineage = identity[group.earlier[0]]
        return {-group.earlier[0]: ("vanished", lesion_id, lineage)}, next_id
    if kind == "new":
        return {group.later[0]: ("new", next_id, ())}, next_id + 1
    parents = sorted(group.earlier, key=lambda i: identity[i][0])  # a merged lesion keeps the oldest id
    children = sorted(group.later, key=lambda i: -later[i]["volume_mm3"])
    lineage = tuple(sorted({b for p in parents for b in identity[p][1]}))
    out = {}
    for n, child in enumerate(children):
        lesion_id = identity[parents[0]][0] if n == 0 else next_id
        next_id += n > 0
        status = kind if kind != "same" else _size_change(earlier[parents[0]], later[child], thresholds)
        out[child] = (status, lesion_id, lineage)
    return out, next_id


def _size_change(before: dict, after: dict, thresholds: Thresholds) -> str:
    old, new = float(before.get("recist_long_mm", 0.0)), float(after.get("recist_long_mm", 0.0))
    if old > 0 and new >= old * (1 + thresholds.grown) and new - old >= thresholds.grown_mm:
        return "grown"
    if old > 0 and new <= old * (1 - thresholds.shrunk):
        return "shrunk"
    return "stable"


def _row(tp: TimePoint, k: int, row: dict | None, lesion_id: int, status: str, lineage: tuple[int, ...]) -> dict:
    row = row or {}
    return {"timepoint": k, "timepoint_name": tp.name, "lesion_id": lesion_id, "status": status,
            "instance": row.get("instance", 0), "from_baseline_lesions": ";".join(map(str, lineage)),
            "volume_mm3": float(row.get("volume_mm3", 0.0)), "recist_long_mm": float(row.get("recist_long_mm", 0.0)),
            "recist_short_mm": float(row.get("recist_short_mm", 0.0)), "host_organ": row.get("host_organ", "")}


def recist_targets(baseline_rows: Sequence[dict]) -> list[int]:
    """Lesion ids of the target lesions: measurable, largest first, at most 2 per organ and 5 in all."""
    chosen, per_organ = [], {}
    for row in sorted(baseline_rows, key=lambda r: -r["recist_long_mm"]):
        organ = row["host_organ"]
        if row["recist_long_mm"] >= MEASURABLE_MM and per_organ.get(organ, 0) < MAX_TARGETS_PER_ORGAN:
            chosen.append(row["lesion_id"])
            per_organ[organ] = per_organ.get(organ, 0) + 1
        if len(chosen) == MAX_TARGETS:
            break
    return chosen


def recist(lesions: list[dict], timepoints: Sequence[TimePoint]) -> list[dict]:
    """One row per time point: lesion count, target sum of diameters, nadir, RECIST response and its rule."""
    targets = set(recist_targets([r for r in lesions if r["timepoint"] == 0]))
    sums, out = [], []
    for k, tp in enumerate(timepoints):
        rows = [r for r in lesions if r["timepoint"] == k]
        present = [r for r in rows if r["status"] != "vanished"]
        on_target = [r for r in present if targets & {int(b) for b in r["from_baseline_lesions"].split(";") if b}]
        sums.append(sum(r["recist_long_mm"] for r in on_target))
        response, rule = ("baseline", f"{len(targets)} target lesion(s)") if k == 0 else recist_response(
            sums, sum(r["status"] == "new" for r in rows), len(present))
        out.append({"timepoint": k, "timepoint_name": tp.name, "n_lesions": len(present),
                    "sum_of_diameters_mm": sums[-1], "nadir_mm": min(sums), "response": response, "rule": rule})
    return out


def recist_response(sums: Sequence[float], new_lesions: int, lesions_present: int) -> tuple[str, str]:
    """(CR/PR/SD/PD, the rule that decided it) for the last of `sums` (target sums of diameters, baseline first)."""
    current, baseline, nadir = sums[-1], sums[0], min(sums[:-1])
    if new_lesions:
        return "PD", f"PD: {new_lesions} new lesion(s)"
    if current >= 1.2 * nadir and current - nadir >= 5.0:
        return "PD", (f"PD: sum of diameters {current:.1f} mm is {_percent(current, nadir)} and "
                      f"{current - nadir:+.1f} mm over the nadir {nadir:.1f} mm (>= +20% and >= +5 mm)")
    if lesions_present == 0:
        return "CR", "CR: every lesion has disappeared"
    if baseline > 0 and current <= 0.7 * baseline:
        return "PR", f"PR: sum of diameters {current:.1f} mm is {_percent(current, baseline)} from baseline {baseline:.1f} mm (<= -30%)"
    return "SD", (f"SD: sum of diameters {current:.1f} mm is {_percent(current, baseline)} from baseline and "
                  f"{_percent(current, nadir)} from the nadir: neither PR (-30%) nor PD (+20% and +5 mm)")


def _percent(value: float, reference: float) -> str:
    return f"{100.0 * (value - reference) / reference:+.0f}%" if reference else "n/a"


def write_follow_up(result: FollowUp, timepoints: Sequence[TimePoint], out: str | os.PathLike) -> dict[str, Path]:
    """`lesions.csv`, `timepoints.csv`, `volumes.png`, each time point's instance table with `lesion_id` and, for
    a DICOM scan, its SEG and SR carrying each lesion's TrackingUID."""
    from ..io.paths import inside, unique_components
    from ..io.table import write_instance_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"lesions": out / "lesions.csv", "timepoints": out / "timepoints.csv", "volumes": out / "volumes.png"}
    _write_csv(written["lesions"], result.lesions)
    _write_csv(written["timepoints"], result.timepoints)
    volume_plot(result.lesions, [tp.name for tp in timepoints], written["volumes"])
    for k, (tp, name) in enumerate(zip(timepoints, unique_components([tp.name for tp in timepoints], "timepoint"))):
        by_instance = {r["instance"]: r for r in result.lesions if r["timepoint"] == k and r["instance"]}
        rows = [{**r, "lesion_id": by_instance[r["instance"]]["lesion_id"], "status": by_instance[r["instance"]]["status"],
                 "tracking_uid": by_instance[r["instance"]]["tracking_uid"]} for r in tp.rows if r["instance"] in by_instance]
        stem = inside(out, out / f"{k:02d}_{name}")
        written.update({f"{k:02d}_{name}_{key}": p for key, p in write_instance_table(rows, stem).items()})
        if is_dicom(tp.scan):
            written.update({f"{k:02d}_{name}_{key}": p for key, p in write_dicom_timepoint(tp, rows, stem).items()})
    from .html import write_report_page

    written["report"] = write_report_page(out, "medpanoptic follow-up", {"Time points (RECIST 1.1)": result.timepoints,
                                          "Lesions": result.lesions}, {"lesion volume over time": written["volumes"]})
    return written


def is_dicom(scan) -> bool:
    """Whether a time point's scan came from DICOM (so a SEG and SR can reference it)."""
    return scan is not None and str(scan.meta.get("source_format", "")).split("-")[0] == "dicom"


def write_dicom_timepoint(tp: TimePoint, rows: list[dict], stem: Path) -> dict[str, Path]:
    """`<stem>_seg.dcm` and `<stem>_sr.dcm`: every lesion with its follow-up TrackingUID and TrackingID 'lesion <id>',
    so that a viewer sees one lesion as one finding at every time point."""
    from ..io.dicom_seg import write_dicom_seg
    from ..io.dicom_sr import write_sr

    seg = write_dicom_seg(tp.pair, tp.label_set, tp.scan, f"{stem}_seg.dcm", series_description="medpanoptic follow-up",
                          tracking_uids={r["instance"]: r["tracking_uid"] for r in rows},
                          tracking_ids={r["instance"]: f"lesion {r['lesion_id']}" for r in rows})
    if not rows:  # no lesion left: nothing to measure
        return {"seg": seg}
    return {"seg": seg, "sr": write_sr(tp.pair, tp.label_set, tp.scan, seg, f"{stem}_sr.dcm", rows=rows)}


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with atomic_paths(path) as (tmp,):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns or ["timepoint"])
            writer.writeheader()
            writer.writerows(rows)


def volume_plot(lesions: list[dict], names: Sequence[str], path: Path) -> Path:
    """Each lesion's volume (mL) over the time points, one line per lesion_id."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for lesion_id in sorted({r["lesion_id"] for r in lesions}):
        points = sorted((r["timepoint"], r["volume_mm3"] / 1000.0) for r in lesions if r["lesion_id"] == lesion_id)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"lesion {lesion_id}")
    ax.set_xticks(range(len(names)), list(names), fontsize=8)
    ax.set_ylabel("volume (mL)")
    ax.set_title("lesion volume over time")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_paths(path) as (tmp,):
        fig.savefig(tmp, format="png")
    return path
