"""What to segment: scan paths, folders of images, DICOM study folders (every image series) or a CSV manifest.

`find_scans` turns what a user typed into a list of cases, each with a unique case id. A case
id comes from data (a file name, a DICOM tag, a manifest's `case` column), so it is always one
safe path component (`io.paths.safe_component`): it names the case's output folder and files
and must never climb out of them. It reads nothing but DICOM headers; a folder whose headers
cannot be read still becomes a case, so that reading it fails later with its own clear reason
instead of hiding it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from ..errors import InputError
from .dicom_read import is_dicom_file, scan_folder
from .formats import OUTPUT_SUFFIXES, SCAN_SUFFIXES
from .paths import safe_component, unique_components


@dataclass(frozen=True)
class ScanInput:
    """One case: a scan path (file or DICOM folder), the series to take from it, and its id (a safe path component)."""

    case: str
    path: Path
    series_uid: str | None = None
    remote: object = field(default=None, compare=False, repr=False)  # a node's series, retrieved when read

    def as_dict(self) -> dict:
        return {"case": self.case, "image": str(self.path), "series_uid": self.series_uid or ""}


def case_name(source: str | os.PathLike) -> str:
    """A case id from a scan path: the file name without its image suffix, or the folder's name,
    as one safe path component (it becomes a folder and file stem)."""
    return safe_component(_bare_name(Path(str(source).rstrip("/\\"))))


def _bare_name(path: Path) -> str:
    name = path.name
    for suffix in SCAN_SUFFIXES + (".dcm",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name if path.is_dir() or not path.suffix else path.stem  # a folder keeps its dots (UID names)


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(SCAN_SUFFIXES) and not name.endswith(OUTPUT_SUFFIXES)


def _from_folder(folder: Path) -> list[ScanInput]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    found = [ScanInput(case_name(p), p) for p in files if _is_image_file(p)]
    if not any(is_dicom_file(p) for p in files if not _is_image_file(p)):
        return found or [ScanInput(case_name(folder), folder)]  # an empty folder fails later, with its reason
    try:
        series = scan_folder(folder)
    except InputError:
        return found + [ScanInput(case_name(folder), folder)]
    by_folder: dict[Path, list] = {}
    for s in series.values():
        if any("Rows" in h for h in s.headers):
            by_folder.setdefault(Path(os.path.commonpath([str(p.parent) for p in s.files])), []).append(s)
    if not by_folder:  # only non-image objects: reading the folder says so
        return found + [ScanInput(case_name(folder), folder)]
    for where, in_folder in sorted(by_folder.items()):
        if len(in_folder) == 1:
            found.append(ScanInput(case_name(where), where, in_folder[0].series_uid))
            continue
        for s in in_folder:
            number = str(s.headers[0].get("SeriesNumber", "") or "")
            tag = f"series{number}" if number else s.series_uid.rsplit(".", 1)[-1]
            found.append(ScanInput(f"{case_name(where)}_{tag}", where, s.series_uid))
    return found


def _from_manifest(path: Path) -> list[ScanInput]:
    """A CSV with an `image` column (paths relative to the CSV), and optional `case` and `series_uid`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"cannot read the manifest ({e})") from None
    if not rows or "image" not in rows[0]:
        raise InputError(path, "a manifest needs an 'image' column (and optionally 'case', 'series_uid')")
    found = []
    for row in rows:
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        found.append(ScanInput(row.get("case") or case_name(image), image, row.get("series_uid") or None))
    return found


Resolver = Callable[[object], "list[ScanInput] | None"]
"""Cases for an input that is not a path (a DICOM node address), or None for one it does not claim."""


def find_scans(inputs: Iterable[str | os.PathLike], resolve: Resolver | None = None) -> list[ScanInput]:
    """The cases named by `inputs`, in order, with unique case ids that are safe path components
    (`../../X` becomes `X`; a clash, ignoring letter case, gets `_2`, `_3`...). `resolve` turns
    inputs that are not paths into cases: `medpanoptic.remote.pull.node_cases(cache)` queries
    DICOM node addresses (`dicomweb://`, `dimse://`) now; their series are retrieved into
    `cache` when read."""
    found: list[ScanInput] = []
    for item in inputs:
        path = Path(item)
        resolved = resolve(item) if resolve is not None else None
        if resolved is not None:
            found += resolved
        elif path.is_dir() and not path.name.lower().endswith(SCAN_SUFFIXES):
            found += _from_folder(path)
        elif path.suffix.lower() == ".csv":
            found += _from_manifest(path)
        else:
            found.append(ScanInput(case_name(path), path))  # read later: a missing file is that case's error
    names = unique_components(scan.case for scan in found)
    return [replace(scan, case=name) for name, scan in zip(names, found)]
