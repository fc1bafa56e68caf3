"""How big a scan may be, checked from its header before a single voxel is allocated.

A header is untrusted: a 1 KB file may declare a 30000³ volume, and a small gzip may unpack
to gigabytes. Every reader multiplies the declared shape out first and refuses, with the size
it would need, anything above the limit, instead of failing later with a MemoryError.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from ..errors import InputError

MAX_SCAN_BYTES = 2 * 2**30
"""Default limit: the scan as float32 (what the network gets) may need at most 2 GiB.

A 512 x 512 x 2000 whole-body CT fits (1.95 GiB); a 1000³ volume (3.7 GiB, e.g. a 1 MB gzip of
zeros declaring it) does not. Sliding-window inference needs several times the scan's size
again, so a larger volume wants a deliberately raised limit on a machine that can hold it."""

MAX_SCAN_BYTES_ENV = "MEDPANOPTIC_MAX_SCAN_BYTES"
"""Environment variable that overrides `MAX_SCAN_BYTES` for a whole run (an integer number of bytes)."""

NETWORK_ITEMSIZE = 4  # float32


def scan_byte_limit(max_bytes: int | None = None) -> int:
    """The limit in force: `max_bytes` if given, else the environment variable, else `MAX_SCAN_BYTES`."""
    if max_bytes is not None:
        return int(max_bytes)
    text = os.environ.get(MAX_SCAN_BYTES_ENV)
    if text is None or not text.strip():
        return MAX_SCAN_BYTES
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise InputError(None, f"{MAX_SCAN_BYTES_ENV}={text!r}: must be a positive whole number of bytes")
    return value


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_scan_size(source: str | os.PathLike, shape: Sequence[int], channels: int = 1, max_bytes: int | None = None) -> None:
    """Refuse a declared `shape` (x `channels`) whose float32 volume would exceed the limit."""
    if any(int(s) < 1 for s in shape) or channels < 1:
        raise InputError(source, f"the header declares an empty image of shape {tuple(int(s) for s in shape)}")
    limit = scan_byte_limit(max_bytes)
    needed = math.prod(int(s) for s in shape) * int(channels) * NETWORK_ITEMSIZE
    if needed > limit:
        dims = " x ".join(str(int(s)) for s in shape) + (f" x {channels} channels" if channels > 1 else "")
        raise InputError(
            source, f"the header declares {dims} voxels, which would need {_human(needed)} as float32, "
            f"above the limit of {_human(limit)} (raise it with read_scan(..., max_bytes=) or {MAX_SCAN_BYTES_ENV})"
        )


def truncated(source: str | os.PathLike, needed: int, present: int) -> InputError:
    """The one wording for a file that holds less voxel data than its header declares."""
    return InputError(source, f"truncated file: the header declares {needed} bytes of voxel data, only {present} are present")
