"""The cache of retrieved series: `<root>/<study>/<series>/<instance>.dcm`, every name a checked UID.

A series folder is filled all at once (written beside it, then renamed) and only when the
node's list of instances says it is incomplete, so a re-run finds the same files and the
cohort's fingerprint (and resume) still holds. A series that could not be retrieved keeps a
note of why, which `raise_if_failed` turns back into that case's error.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from ..errors import RemoteError
from ..io.paths import inside, safe_component

FAILED = ".medpanoptic-fetch-error"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def checked_uid(value: object, what: str, where: str) -> str:
    """A UID from a server, refused unless it is one (digits and dots, at most 64 characters)."""
    text = str(value or "").strip().rstrip("\x00")
    if not _UID.match(text) or len(text) > 64:
        raise RemoteError(where, f"the node sent an invalid {what} {text[:80]!r}")
    return text


def series_folder(root: Path, study_uid: str, series_uid: str) -> Path:
    """Where a series is cached: inside `root`, named by its (checked, sanitised) UIDs."""
    folder = root / safe_component(study_uid, "study") / safe_component(series_uid, "series")
    root.mkdir(parents=True, exist_ok=True)
    inside(root, folder.parent)
    return folder


def instance_file(folder: Path, sop_uid: str) -> Path:
    return folder / f"{safe_component(sop_uid, 'instance')}.dcm"


def missing(folder: Path, sop_uids: Iterable[str]) -> list[str]:
    """The SOP Instance UIDs in `sop_uids` that have no file in `folder` yet."""
    return [uid for uid in sop_uids if not instance_file(folder, uid).is_file()]


def _save(dataset: pydicom.Dataset, path: Path) -> None:
    if not getattr(dataset, "file_meta", None):
        dataset.file_meta = pydicom.dataset.FileMetaDataset()
    meta = dataset.file_meta
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)


def fill_series(folder: Path, datasets: Iterable[pydicom.Dataset], study_uid: str, series_uid: str,
                expected: list[str], node: str) -> list[Path]:
    """Write a retrieved series into `folder` (replacing it whole), refusing instances of another series
    and a series that arrived with fewer instances than the node listed."""
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        seen = set()
        for ds in datasets:
            if str(ds.get("StudyInstanceUID", "")) != study_uid or str(ds.get("SeriesInstanceUID", "")) != series_uid:
                raise RemoteError(node, f"asked for series {series_uid}, the node sent an instance of another series")
            sop = checked_uid(ds.get("SOPInstanceUID"), "SOP Instance UID", node)
            if sop in seen:
                raise RemoteError(node, f"series {series_uid}: the node sent instance {sop} twice")
            seen.add(sop)
            _save(ds, inside(tmp, instance_file(tmp, sop)))
        lacking = missing(tmp, expected)
        if lacking or not seen:
            raise RemoteError(node, f"series {series_uid} arrived incomplete: {len(seen)} of {len(expected)} "
                                    f"instance(s) listed by the node")
        if folder.exists():
            shutil.rmtree(inside(folder.parent, folder))
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(folder.glob("*.dcm"))


def mark_failed(folder: Path, message: str) -> None:
    """Remember why a series could not be retrieved, for the cohort to report as that case's error."""
    from ..io.atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / FAILED, message + "\n")


def clear_failed(folder: Path) -> None:
    (folder / FAILED).unlink(missing_ok=True)


def raise_if_failed(path: Path) -> None:
    """Raise the `RemoteError` noted when `path` (a cache folder) could not be retrieved; else nothing."""
    note = Path(path) / FAILED
    if note.is_file():
        raise RemoteError(None, note.read_text(encoding="utf-8").strip())
