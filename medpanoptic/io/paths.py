"""Names that come from data become safe path components, and every path we touch stays inside its root.

A case id, a series description or a manifest's `case` column is untrusted: `..`, `/etc`, a NUL
byte or a Windows drive letter must never become part of a path. `safe_component` keeps a name
readable (letters, digits, `-`, `_`, `.`, `+`, `@`; everything else becomes `_`) and never returns
an empty, hidden, dot-only or reserved name; `unique_components` makes a list of them distinct
without ever letting two inputs share a folder; `inside` checks a path before it is written or
removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from ..errors import InputError

MAX_COMPONENT = 120  # bytes of a name, well inside every file system's 255
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@-]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_component(name: object, fallback: str = "case") -> str:
    """`name` as one path component that cannot climb, hide or address a device; readable when it can be."""
    text = _UNSAFE.sub("_", str(name)).strip("._")
    text = text[:MAX_COMPONENT].rstrip("._")
    if not text or text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = f"{fallback}_{text}" if text else fallback
    return text


def unique_components(names: Iterable[object], fallback: str = "case") -> list[str]:
    """`safe_component` of each name, made distinct case-insensitively (a clash gets `_2`, `_3`, ...)."""
    taken: set[str] = set()
    out = []
    for name in names:
        base = safe_component(name, fallback)
        candidate, n = base, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path`, if it lies inside `root` once both are resolved (links followed); else an `InputError`."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != base and base not in resolved.parents:
        raise InputError(path, f"refusing to touch a path outside the output folder {base}")
    return resolved
