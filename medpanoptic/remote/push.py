"""Results back to a node: a case's DICOM SEG stored into its source study, once.

Idempotent: the SEG's Series and SOP Instance UIDs are derived from the case's fingerprint
(same input, bundle and formats: same UIDs), the node is asked whether it already holds that
instance before storing, and `done.json` records the node (never its credentials) and the UID.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from ..errors import InputError, MedPanopticError, RemoteError
from ..io.atomic import atomic_paths, atomic_write_text
from ..io.formats import WRITERS
from ..io.paths import inside
from .node import Node, open_node
from .urls import parse_node

log = logging.getLogger(__name__)
DONE = "done.json"
STORED_FORMAT = "dicom-seg"
"""The format whose file goes back to the node (a name of `io.formats.WRITERS`)."""
SEG_SUFFIX = WRITERS[STORED_FORMAT].suffixes[0]


def _record(case_dir: Path) -> dict:
    try:
        return json.loads((case_dir / DONE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise InputError(case_dir / DONE, "missing or unreadable: the case was not written completely") from None


def _seg_file(case_dir: Path, record: dict) -> Path:
    segs = [name for name in record.get("files", []) if str(name).endswith(SEG_SUFFIX)]
    if not segs:
        raise InputError(case_dir, "nothing to store: the case has no DICOM SEG (its source is not DICOM, "
                                   "or dicom-seg is not among the formats)")
    return inside(case_dir, case_dir / segs[0])


def stamped_seg(path: Path, fingerprint: str) -> pydicom.Dataset:
    """The SEG at `path` with Series/SOP Instance UIDs derived from `fingerprint` (rewritten in place if needed)."""
    ds = pydicom.dcmread(path)
    series_uid = generate_uid(entropy_srcs=[fingerprint, "series"])
    sop_uid = generate_uid(entropy_srcs=[fingerprint, "instance"])
    if ds.SOPInstanceUID != sop_uid or ds.SeriesInstanceUID != series_uid:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        with atomic_paths(path) as (tmp,):
            ds.save_as(tmp, enforce_file_format=True)
    return ds


def store_case(case_dir: Path, node: Node) -> str:
    """Store the case's SEG on `node` unless it is already there; return its SOP Instance UID."""
    record = _record(case_dir)
    key = node.address.key
    ds = stamped_seg(_seg_file(case_dir, record), str(record.get("fingerprint", "")))
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    if not node.has_instance(study, series, sop):
        node.store(ds)
        if not node.has_instance(study, series, sop):
            raise RemoteError(key, f"the node accepted SEG {sop} but does not list it in study {study}")
    record.setdefault("stored", {})[key] = sop
    atomic_write_text(case_dir / DONE, json.dumps(record, indent=1) + "\n")
    log.info("%s: SEG %s stored in study %s", key, sop, study)
    return sop


def store_cases(out: Path, report, target: str):
    """Store the SEG of every case done or skipped in `report` on `target`; a case that cannot be
    stored moves to `report.failed` with its one-line reason. Returns the report."""
    address = parse_node(target, require_query=False)
    try:
        node = open_node(address)
    except MedPanopticError as e:
        for case in report.done + report.skipped:
            report.failed.append({"case": case, "input": str(out / case), "error": str(e)})
        report.done, report.skipped = [], []
        return report
    try:
        return _store_all(out, report, node)
    finally:
        node.close()


def _store_all(out: Path, report, node: Node):
    kept: dict[str, list[str]] = {"done": [], "skipped": []}
    for which in kept:
        for case in getattr(report, which):
            try:
                store_case(out / case, node)
                kept[which].append(case)
            except MedPanopticError as e:
                record = {}
                try:
                    record = _record(out / case)
                except InputError:
                    pass
                report.failed.append({"case": case, "input": record.get("input", ""),
                                      "error": " ".join(f"storing: {e}".split())})
    report.done, report.skipped = kept["done"], kept["skipped"]
    return report
