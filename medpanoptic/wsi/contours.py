"""Outer contours of a tile's instances, traced along pixel edges in one compiled pass.

Each ring runs on the pixel corners around the instance (QuPath's convention for traced pixel
ROIs): its area is the instance's pixel count (holes filled), and rasterising it gives the
instance back. Instances are 4-connected: two pixels touching at a corner only are two parts.
Where an instance has several parts, the ring of the largest one is kept (its area decides).

Tracing keeps the instance on the right-hand side of the walk along the edges (rows down,
columns right): at each corner it turns right when the pixel ahead on the right is not the
instance's, goes on when that one is and the one ahead on the left is not, else turns left.
Every ring, outer or around a hole, has a top edge (instance below, walked to the right):
each unvisited one starts a ring; outer rings have positive area (x = column, y = row), holes negative.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import _kernels  # noqa: F401  (a writable numba cache folder before the kernels are declared)

_STEP_ROW = np.array([0, 1, 0, -1], np.int64)  # right, down, left, up
_STEP_COL = np.array([1, 0, -1, 0], np.int64)


@njit(cache=True, nogil=True, inline="always")
def _inside(instance, value, r, c, r0, c0, r1, c1):  # pragma: no cover - compiled
    return r0 <= r < r1 and c0 <= c < c1 and instance[r, c] == value


@njit(cache=True, nogil=True, inline="always")
def _ahead(d, r, c):  # pragma: no cover - compiled
    """The pixels ahead on the right and on the left of corner (r, c) walking in direction d."""
    if d == 0:
        return r, c, r - 1, c
    if d == 1:
        return r, c - 1, r, c
    if d == 2:
        return r - 1, c - 1, r, c - 1
    return r - 1, c, r - 1, c - 1


@njit(cache=True, nogil=True)
def _trace(instance, ids, start, stop, step_row, step_col):  # pragma: no cover - compiled
    n = ids.size
    offsets = np.zeros(n + 1, np.int64)
    out = np.empty((max(16, 4 * n), 2), np.int32)
    used = 0
    for k in range(n):
        value = ids[k]
        r0, c0, r1, c1 = start[k, 0], start[k, 1], stop[k, 0], stop[k, 1]
        if r1 <= r0:
            offsets[k + 1] = used
            continue
        visited = np.zeros((r1 - r0, c1 - c0), np.bool_)
        cap = 4 * (r1 - r0) * (c1 - c0) + 4
        ring = np.empty((cap, 2), np.int32)
        best = np.empty((0, 2), np.int32)
        best_area = 0
        for r in range(r0, r1):
            for c in range(c0, c1):
                if visited[r - r0, c - c0] or not _inside(instance, value, r, c, r0, c0, r1, c1):
                    continue
                if _inside(instance, value, r - 1, c, r0, c0, r1, c1):
                    continue
                vr, vc, d, m, twice_area = r, c, 0, 0, 0
                while True:
                    if d == 0:
                        visited[vr - r0, vc - c0] = True
                    nr, nc = vr + step_row[d], vc + step_col[d]
                    twice_area += vc * nr - nc * vr  # shoelace over x = column, y = row
                    vr, vc = nr, nc
                    ar, ac, lr, lc = _ahead(d, vr, vc)
                    if not _inside(instance, value, ar, ac, r0, c0, r1, c1):
                        turn = (d + 1) % 4
                    elif not _inside(instance, value, lr, lc, r0, c0, r1, c1):
                        turn = d
                    else:
                        turn = (d + 3) % 4
                    if turn != d:
                        ring[m, 0], ring[m, 1] = vr, vc
                        m += 1
                    d = turn
                    if vr == r and vc == c and d == 0:
                        break
                if twice_area > best_area:
                    best_area = twice_area
                    best = ring[:m].copy()
        if used + best.shape[0] > out.shape[0]:
            grown = np.empty((2 * (used + best.shape[0]), 2), np.int32)
            grown[:used] = out[:used]
            out = grown
        out[used:used + best.shape[0]] = best
        used += best.shape[0]
        offsets[k + 1] = used
    return out[:used], offsets


def outer_rings(instance: np.ndarray, ids: np.ndarray, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outer ring of each instance `ids[k]` of a 2D instance map, within its box `start[k]:stop[k]`.

    Returns (corners, offsets): ring k is `corners[offsets[k]:offsets[k + 1]]`, (row, column) pixel
    corners (integers; pixel (r, c) spans [r, r + 1] x [c, c + 1]), each corner once, not closed;
    an id without pixels has an empty ring."""
    if instance.ndim != 2:
        raise ValueError(f"contours are traced on 2D instance maps, got {instance.ndim}D")
    instance = np.ascontiguousarray(instance)
    ids = np.ascontiguousarray(ids, dtype=instance.dtype)
    start = np.ascontiguousarray(start, dtype=np.int64).reshape(-1, 2)
    stop = np.ascontiguousarray(stop, dtype=np.int64).reshape(-1, 2)
    return _trace(instance, ids, start, stop, _STEP_ROW, _STEP_COL)
