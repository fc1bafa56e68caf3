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
import re
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
    channel_files: tuple[Path, ...] = ()  # a case stored one file per channel: all of them, `path` first

    def as_dict(self) -> dict:
        image = [str(p) for p in self.channel_files] if self.channel_files else str(self.path)
        return {"case": self.case, "image": image, "series_uid": self.series_uid or ""}


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


CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""nnU-Net's channel files: `<case>_0000.nii.gz`, `<case>_0001.nii.gz`..."""


def _channel_groups(images: list[Path], channels: int) -> list[ScanInput]:
    """Image files as cases; where a bundle takes `channels` > 1 files per case, the files of one folder
    named `<case>_0000`..`<case>_{channels-1}` (that run exactly, one suffix) become one case `<case>`."""
    if channels < 2:
        return [ScanInput(case_name(p), p) for p in images]
    groups: dict[tuple[Path, str, str], dict[int, Path]] = {}
    for p in images:
        bare = _bare_name(p)
        match = CHANNEL_SUFFIX.match(bare)
        if match:
            key = (p.parent, match["case"], p.name[len(bare):].lower())
            groups.setdefault(key, {})[int(match["channel"])] = p
    whole = {key: [files[c] for c in range(channels)] for key, files in groups.items()
             if sorted(files) == list(range(channels))}
    first = {files[0]: (key[1], files) for key, files in whole.items()}
    grouped = {p for files in whole.values() for p in files}
    found = []
    for p in images:
        if p in first:
            name, files = first[p]
            found.append(ScanInput(safe_component(name), p, channel_files=tuple(files)))
        elif p not in grouped:
            found.append(ScanInput(case_name(p), p))
    return found


def _from_folder(folder: Path, channels: int = 1) -> list[ScanInput]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    found = _channel_groups([p for p in files if _is_image_file(p)], channels)
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
    """A CSV with an `image` column (paths relative to the CSV), and optional `case` and `series_uid`;
    a case stored one file per channel names the others in `image_1`, `image_2`... columns."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"cannot read the manifest ({e})") from None
    if not rows or "image" not in rows[0]:
        raise InputError(path, "a manifest needs an 'image' column (and optionally 'case', 'series_uid')")
    extra = [f"image_{i}" for i in range(1, len(rows[0]) + 1) if f"image_{i}" in rows[0]]
    found = []
    for row in rows:
        images = [_relative_to(path, row["image"] or "")] + [_relative_to(path, row[c]) for c in extra if row.get(c)]
        files = tuple(images) if len(images) > 1 else ()
        found.append(ScanInput(row.get("case") or case_name(images[0]), images[0], row.get("series_uid") or None,
                               channel_files=files))
    return found


def _relative_to(manifest: Path, value: str) -> Path:
    image = Path(value)
    return image if image.is_absolute() else manifest.parent / image


Resolver = Callable[[object], "list[ScanInput] | None"]
"""Cases for an input that is not a path (a DICOM node address), or None for one it does not claim."""


def find_scans(inputs: Iterable[str | os.PathLike], resolve: Resolver | None = None,
               channels: int = 1) -> list[ScanInput]:
    """The cases named by `inputs`, in order, with unique case ids that are safe path components
    (`../../X` becomes `X`; a clash, ignoring letter case, gets `_2`, `_3`...). `resolve` turns
    inputs that are not paths into cases: `medpanoptic.remote.pull.node_cases(cache)` queries
    DICOM node addresses (`dicomweb://`, `dimse://`) now; their series are retrieved into
    `cache` when read. `channels` > 1 (a bundle that takes one file per channel): a folder's
    `<case>_0000`..`<case>_{channels-1}` files become one case `<case>` (see `_channel_groups`)."""
    found: list[ScanInput] = []
    for item in inputs:
        path = Path(item)
        resolved = resolve(item) if resolve is not None else None
        if resolved is not None:
            found += resolved
        elif path.is_dir() and not path.name.lower().endswith(SCAN_SUFFIXES):
            found += _from_folder(path, channels)
        elif path.suffix.lower() == ".csv":
            found += _from_manifest(path)
        else:
            found.append(ScanInput(case_name(path), path))  # read later: a missing file is that case's error
    names = unique_components(scan.case for scan in found)
    return [replace(scan, case=name) for name, scan in zip(names, found)]
