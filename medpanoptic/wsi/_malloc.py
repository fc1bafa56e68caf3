"""Keep the C heap of a long tiled run from creeping up: glibc's allocator, told to share its arenas
and to hand free pages back now and then.

Tiles are read and pre-processed on worker threads, grouped on the main thread and written on
another, and zarr reads and writes chunks on threads of its own; glibc gives every thread an arena
of its own (up to 8 per core), and blocks freed into one arena serve only that arena later. Over
thousands of tiles the arenas' free space fragments and the resident memory grows with the slide,
while Python's own allocations stay flat (tracemalloc). Measured with the truth as heads on a
16k² phantom: 1602 MiB as it was; 1391 with two shared arenas set before the threads start;
1253 with also a trim of the free pages; a lower mmap threshold instead (large blocks straight
back to the system) reached 1180-1290 but cost 35-70% more post-processing time. From 8k² to
32k² the peak grew +32.9% with these two; +22.6% once label image chunks were held by `canvas`
(not read and written back through zarr for every tile), contours traced in one compiled pass and
tiles pre-processed on the network's thread; +3.1% once the benchmark's oracle stopped building
tables sized by the truth's slide-wide ids (`oracle.TruthHeads`), which was most of what was left.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter
SHARED_ARENAS = 2
TRIM_EVERY = 8
"""Tiles between two trims of the free heap pages (a trim costs a few ms; a tile of network ~1 s on a CPU)."""
_done = False


@functools.cache
def _glibc():
    """The process's C library when it is glibc (asked once: `platform.libc_ver` reads the interpreter's binary)."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def share_malloc_arenas(arenas: int = SHARED_ARENAS) -> bool:
    """Cap glibc's malloc arenas for the threads that allocate from now on (process-wide, once);
    False where the C library is not glibc or refuses. A `MALLOC_ARENA_MAX` set by the user is kept."""
    global _done
    if _done or "MALLOC_ARENA_MAX" in os.environ:
        return _done
    libc = _glibc()
    try:
        _done = bool(libc is not None and libc.mallopt(M_ARENA_MAX, int(arenas)))
    except AttributeError:  # no mallopt in this C library
        _done = False
    log.debug("malloc arenas capped at %d: %s", arenas, _done)
    return _done


class HeapTrimmer:
    """`tick()` after each tile: every `every` ticks the free pages of every arena go back to the system."""

    def __init__(self, every: int = TRIM_EVERY) -> None:
        libc = _glibc()
        self._trim = getattr(libc, "malloc_trim", None)
        self.every, self.ticks, self.trims = every, 0, 0

    def tick(self) -> None:
        self.ticks += 1
        if self._trim is not None and self.ticks % self.every == 0:
            self._trim(0)
            self.trims += 1
