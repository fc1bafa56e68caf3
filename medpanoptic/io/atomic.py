"""All-or-nothing writes: every output goes to a temporary file beside its target, then is renamed.

A crash, a full disk or a bad input never leaves a half-written file under the final name,
and a set of files (label map, instance map, JSON) appears together or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Sequence


def _temp_beside(path: Path) -> Path:
    # Keep the full suffix (".nii.gz", ".seg.nrrd") so that writers choosing a format by
    # extension still pick the right one.
    suffix = "".join(path.suffixes) if path.suffixes else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike) -> Iterator[Sequence[Path]]:
    """Yield temporary paths for `targets`; on success rename them all into place, else delete them."""
    finals = [Path(t) for t in targets]
    for f in finals:
        f.parent.mkdir(parents=True, exist_ok=True)
    temps = [_temp_beside(f) for f in finals]
    try:
        yield temps
        missing = [str(f) for f, t in zip(finals, temps) if not t.exists()]
        if missing:
            raise RuntimeError(f"writer produced no file for {missing}")
    except BaseException:
        for t in temps:
            with contextlib.suppress(FileNotFoundError):
                t.unlink()
        raise
    for f, t in zip(finals, temps):
        os.replace(t, f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_paths(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, document: object, indent: int = 2) -> None:
    """Write a JSON document atomically (UTF-8), e.g. a label set: `atomic_write_json(path, labels.to_dict())`."""
    atomic_write_text(path, json.dumps(document, indent=indent) + "\n")
