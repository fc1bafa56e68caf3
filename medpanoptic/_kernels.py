"""Compiled CPU kernels (numba) for the one pass over the voxels; torch covers other devices.

Compiled on first use and cached (`cache=True`), so later processes start at once: beside this
file where its `__pycache__` is writable, else in numba's user cache folder, else (an installed
package read-only, a home without a cache) in a folder of the temporary directory;
`NUMBA_CACHE_DIR` chooses the folder outright.

Threads: a parallel kernel waits for its slowest thread, so on a machine whose cores are busy
with other processes, or with PyTorch's threads in the cohort pipeline, more threads only make
it slower. Each call therefore uses the cores that are free now (at least one), never more than
PyTorch's thread count when PyTorch is loaded, or exactly `MEDPANOPTIC_NUM_THREADS`. The
threading layer stays numba's default (OpenMP here): 'workqueue' aborts when two Python threads
launch kernels at once, which the cohort pipeline and the writers do.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import numba
import numpy as np
from numba import njit, prange

THREADS_ENV = "MEDPANOPTIC_NUM_THREADS"
BLOCKS = 64  # units of parallel work
RUN = 4096  # voxels per run: the second pass revisits only runs that hold an instance


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _other_runnable() -> int:
    """Threads of other processes running or waiting for a core right now.

    The system's count (/proc/loadavg) includes this process: the caller, and the kernels' own
    worker threads, which spin a while after each parallel region. Counting those as load would
    halve the threads of every kernel after the first.
    """
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(0, running - _own_running())


def _own_running() -> int:
    """Threads of this process that are running now (at least the caller)."""
    own = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat", encoding="ascii") as f:
                    own += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except (OSError, IndexError):
                continue
    except OSError:
        pass
    return max(1, own)


def kernel_threads() -> int:
    """Threads the next kernel should use: `MEDPANOPTIC_NUM_THREADS`, else the free cores, at most PyTorch's threads."""
    most = numba.config.NUMBA_NUM_THREADS
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted:
        try:
            return max(1, min(most, int(wanted)))
        except ValueError:
            logging.getLogger("medpanoptic").warning("%s=%r is not a whole number: ignored", THREADS_ENV, wanted)
    n = _usable_cores() - _other_runnable()
    if "torch" in sys.modules:  # share the machine with PyTorch's pool, do not add to it
        n = min(n, sys.modules["torch"].get_num_threads())
    return max(1, min(most, n))


def _use_free_cores() -> None:
    numba.set_num_threads(kernel_threads())  # per calling thread


def _writable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def cache_folder() -> str | None:
    """Where numba would cache these kernels by itself (None: nowhere it can write)."""
    from numba.misc.appdirs import AppDirs

    if numba.config.CACHE_DIR:
        return numba.config.CACHE_DIR
    for folder in (os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__"),
                   AppDirs(appname="numba", appauthor=False).user_cache_dir):
        if _writable(folder):
            return folder
    return None


def _ensure_cache_folder() -> None:
    """Give numba a writable cache folder before the kernels are declared: with none, every
    `cache=True` kernel would refuse to load ("no locator available")."""
    if cache_folder() is None:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        numba.config.CACHE_DIR = os.path.join(tempfile.gettempdir(), f"medpanoptic-numba-{uid}")


_ensure_cache_folder()


@njit(parallel=True, cache=True, nogil=True)
def _first_pass(gl, gi, pl, pi, n_labels, n_runs):  # pragma: no cover - compiled
    n = gl.size
    runs_per_block = (n_runs + BLOCKS - 1) // BLOCKS
    confusion = np.zeros((BLOCKS, n_labels * n_labels), np.int64)
    found = np.zeros(n_runs, np.int64)
    smallest = np.zeros(BLOCKS, np.int64)
    for b in prange(BLOCKS):
        low = 0
        histogram = np.zeros(n_labels * n_labels, np.int64)
        for r in range(b * runs_per_block, min(n_runs, (b + 1) * runs_per_block)):
            count = 0
            for v in range(r * RUN, min(n, (r + 1) * RUN)):
                g, p = np.int64(gl[v]), np.int64(pl[v])
                if g < 0 or p < 0 or g >= n_labels or p >= n_labels:
                    low = -1
                    continue
                histogram[g * n_labels + p] += 1
                either = np.int64(gi[v]) | np.int64(pi[v])
                if either != 0:
                    count += 1
                    if either < 0:
                        low = -1
            found[r] = count
        confusion[b] = histogram
        smallest[b] = low
    return confusion.sum(axis=0), found, smallest.min()


@njit(parallel=True, cache=True, nogil=True)
def _gather(gl, gi, pl, pi, found, offsets, out):  # pragma: no cover - compiled
    n = gl.size
    n_runs = found.size
    runs_per_block = (n_runs + BLOCKS - 1) // BLOCKS
    for b in prange(BLOCKS):
        for r in range(b * runs_per_block, min(n_runs, (b + 1) * runs_per_block)):
            if found[r] == 0:
                continue
            k = offsets[r]
            for v in range(r * RUN, min(n, (r + 1) * RUN)):
                if gi[v] != 0 or pi[v] != 0:
                    out[0, k] = gl[v]
                    out[1, k] = gi[v]
                    out[2, k] = pl[v]
                    out[3, k] = pi[v]
                    k += 1


def confusion_and_things(gl: np.ndarray, gi: np.ndarray, pl: np.ndarray, pi: np.ndarray, n_labels: int):
    """(label confusion, (4, n) int64 label/instance of both sides at every voxel with an instance).

    The first pass counts the (gt label, pred label) histogram and the instance voxels of each
    run of voxels; the second copies those voxels' ids, visiting only runs that have some.
    Returns (None, None) if any id is negative or a label is >= `n_labels`.
    """
    _use_free_cores()
    n_runs = (gl.size + RUN - 1) // RUN
    confusion, found, low = _first_pass(gl, gi, pl, pi, n_labels, n_runs)
    if low < 0:
        return None, None
    offsets = np.concatenate((np.zeros(1, np.int64), np.cumsum(found)[:-1]))
    out = np.empty((4, int(found.sum())), np.int64)
    _gather(gl, gi, pl, pi, found, offsets, out)
    return confusion.reshape(n_labels, n_labels), out


@njit(parallel=True, cache=True, nogil=True)
def _segment_numbers(label, instance, stuff_lut, thing_lut, out):  # pragma: no cover - compiled
    n = label.size
    step = (n + BLOCKS - 1) // BLOCKS
    counts = np.zeros((BLOCKS, stuff_lut.size), np.int64)
    for b in prange(BLOCKS):
        for v in range(b * step, min(n, (b + 1) * step)):
            i = instance[v]
            if i != 0:
                out[v] = thing_lut[i]
            else:
                g = label[v]
                out[v] = stuff_lut[g]
                counts[b, g] += 1
    return counts.sum(axis=0)


def segment_numbers(label: np.ndarray, instance: np.ndarray, stuff_lut: np.ndarray, thing_lut: np.ndarray):
    """Segment number of every voxel (thing instances by `thing_lut[instance]`, the rest by
    `stuff_lut[label]`), and the count of instance-0 voxels per label. One parallel pass."""
    _use_free_cores()
    out = np.empty(label.size, np.uint16)
    counts = _segment_numbers(label.reshape(-1), instance.reshape(-1), stuff_lut, thing_lut, out)
    return out.reshape(label.shape), counts


STATS_BLOCKS = 8


@njit(parallel=True, cache=True, nogil=True)
def _pair_stats(label, instance, d1, d2, n_labels, n_ids):  # pragma: no cover - compiled
    n = label.size
    step = (n + STATS_BLOCKS - 1) // STATS_BLOCKS
    hist = np.zeros((STATS_BLOCKS, 2, n_labels), np.int64)  # [instance == 0, instance > 0] per label
    count = np.zeros((STATS_BLOCKS, n_ids), np.int64)
    total = np.zeros((STATS_BLOCKS, n_ids, 3), np.float64)
    low = np.full((STATS_BLOCKS, n_ids, 4), np.iinfo(np.int64).max, np.int64)  # i, j, k, label
    high = np.full((STATS_BLOCKS, n_ids, 4), -1, np.int64)
    bad = np.zeros(STATS_BLOCKS, np.int64)
    for b in prange(STATS_BLOCKS):
        for v in range(b * step, min(n, (b + 1) * step)):
            g = np.int64(label[v])
            t = np.int64(instance[v])
            if g < 0 or g >= n_labels or t < 0 or t >= n_ids:
                bad[b] = 1
                continue
            if t == 0:
                hist[b, 0, g] += 1
                continue
            hist[b, 1, g] += 1
            count[b, t] += 1
            i = v // (d1 * d2)
            j = (v // d2) % d1
            k = v % d2
            total[b, t, 0] += i
            total[b, t, 1] += j
            total[b, t, 2] += k
            for axis, value in ((0, i), (1, j), (2, k), (3, g)):
                if value < low[b, t, axis]:
                    low[b, t, axis] = value
                if value > high[b, t, axis]:
                    high[b, t, axis] = value
    low_all = low[0]
    high_all = high[0]
    for b in range(1, STATS_BLOCKS):
        low_all = np.minimum(low_all, low[b])
        high_all = np.maximum(high_all, high[b])
    return hist.sum(axis=0), count.sum(axis=0), total.sum(axis=0), low_all, high_all, bad.max()


def gather_stats(label: np.ndarray, instance: np.ndarray, n_labels: int, n_ids: int):
    """One parallel pass over a pair: label histograms of instance-0 and instance voxels, and per
    instance id its voxel count, coordinate sums, bounding box and smallest/largest label.

    Returns None if some id is negative or not below `n_labels` / `n_ids`.
    """
    _use_free_cores()
    shape = label.shape + (1,) * (3 - label.ndim)
    result = _pair_stats(np.ascontiguousarray(label).reshape(-1), np.ascontiguousarray(instance).reshape(-1),
                         shape[1], shape[2], n_labels, n_ids)
    return None if result[-1] else result[:-1]


@njit(cache=True, nogil=True, inline="always")
def _distance(coord, offsets, v, centers, k, scale, ndim):  # pragma: no cover - compiled
    d = 0.0
    for a in range(ndim):
        diff = (coord[a] + offsets[a, v] - centers[k, a]) * scale[a]
        d += diff * diff
    return d


@njit(parallel=True, cache=True, nogil=True)
def _assign(logits, offsets, dims, centers, scale, is_thing, cell, grid, starts, members,
            semantic, owner, votes, probability):  # pragma: no cover - compiled
    n_classes, n = logits.shape
    ndim = offsets.shape[0]
    n_centers = centers.shape[0]
    per_block = (n + BLOCKS - 1) // BLOCKS
    widest = max(grid[0], max(grid[1], grid[2]))
    for b in prange(BLOCKS):
        coord = np.zeros(ndim, np.float32)
        home = np.zeros(3, np.int64)
        exps = np.zeros(n_classes, np.float32)
        for v in range(b * per_block, min(n, (b + 1) * per_block)):
            best_class = 0
            best = logits[0, v]
            for c in range(1, n_classes):
                if logits[c, v] > best:
                    best = logits[c, v]
                    best_class = c
            semantic[v] = best_class
            if not is_thing[best_class]:
                owner[v] = 0
                continue
            if n_centers == 0:
                owner[v] = -1
                continue
            rest = v
            for a in range(ndim - 1, -1, -1):  # unravel the flat index (C order)
                coord[a] = rest % dims[a]
                rest //= dims[a]
            for a in range(3):  # the cell the offset points into, clamped to the grid
                home[a] = 0
                if a < ndim:
                    q = np.int64(np.floor((coord[a] + offsets[a, v]) * scale[a] / cell))
                    home[a] = min(max(q, 0), grid[a] - 1)
            # rings of cells around it, nearest first, until no unseen center can be nearer
            # (an unseen cell lies at least r cells away along some axis)
            nearest = -1
            nearest_d = np.inf
            for r in range(widest + 1):
                for i in range(max(home[0] - r, 0), min(home[0] + r, grid[0] - 1) + 1):
                    for j in range(max(home[1] - r, 0), min(home[1] + r, grid[1] - 1) + 1):
                        for l in range(max(home[2] - r, 0), min(home[2] + r, grid[2] - 1) + 1):
                            if max(abs(i - home[0]), max(abs(j - home[1]), abs(l - home[2]))) != r:
                                continue
                            c = (i * grid[1] + j) * grid[2] + l
                            for m in range(starts[c], starts[c + 1]):
                                k = members[m]
                                d = _distance(coord, offsets, v, centers, k, scale, ndim)
                                if d < nearest_d or (d == nearest_d and k < nearest):
                                    nearest_d = d
                                    nearest = k
                bound = r * cell
                if nearest >= 0 and nearest_d < bound * bound * (1.0 - 1e-5):
                    break
            owner[v] = nearest + 1
            votes[b, nearest + 1, best_class] += 1
            total = 0.0
            for c in range(n_classes):
                exps[c] = np.exp(logits[c, v] - best)
                total += exps[c]
            for c in range(n_classes):
                if is_thing[c]:
                    probability[b, nearest + 1, c] += exps[c] / total


def center_grid(centers: np.ndarray, scale: np.ndarray):
    """Centers bucketed in cubic cells of about one center each (in mm): the cell side, the grid's
    shape (three axes, 1 for a missing one), and per cell (C order) the start of its run in `members`,
    the center indices sorted by cell, in their own order within a cell."""
    k, ndim = centers.shape
    if k == 0:
        return 1.0, np.ones(3, np.int64), np.zeros(2, np.int64), np.zeros(0, np.int64)
    position = centers.astype(np.float64) * scale.astype(np.float64)
    extent = position.max(axis=0) + scale
    cell = max(float(np.prod(extent) / k) ** (1.0 / ndim), float(scale.min()))
    index = np.zeros((k, 3), np.int64)
    index[:, :ndim] = np.floor(position / cell).astype(np.int64)
    grid = index.max(axis=0) + 1
    flat = (index[:, 0] * grid[1] + index[:, 1]) * grid[2] + index[:, 2]
    members = np.argsort(flat, kind="stable").astype(np.int64)
    starts = np.searchsorted(flat[members], np.arange(int(np.prod(grid)) + 1)).astype(np.int64)
    return cell, grid.astype(np.int64), starts, members


@njit(parallel=True, cache=True, nogil=True)
def _relabel(semantic, owner, new_class, new_id, instance):  # pragma: no cover - compiled
    n = semantic.size
    per_block = (n + BLOCKS - 1) // BLOCKS
    for b in prange(BLOCKS):
        for v in range(b * per_block, min(n, (b + 1) * per_block)):
            o = owner[v]
            if o > 0:
                semantic[v] = new_class[o]
                instance[v] = new_id[o]
            elif o < 0:  # a thing voxel without any center
                semantic[v] = 0
                instance[v] = 0
            else:
                instance[v] = 0


def assign_to_centers(logits: np.ndarray, offsets: np.ndarray, centers: np.ndarray, scale: np.ndarray,
                      is_thing: np.ndarray):
    """One parallel pass: argmax, and for thing voxels the nearest center (in mm) after the offset,
    searched in rings of cells around where the offset points (`center_grid`), not over every center.

    Returns per voxel the class and the owner (0: not a thing, -1: a thing but no center,
    k + 1: center k), and per center the class votes and the summed probability of each class.
    """
    _use_free_cores()
    n_classes, n = logits.shape[0], logits[0].size
    dims = np.asarray(logits.shape[1:], np.int64)
    flat_logits = logits.reshape(n_classes, n)
    flat_offsets = offsets.reshape(offsets.shape[0], n)
    semantic = np.empty(n, np.int32)
    owner = np.empty(n, np.int32)
    k = centers.shape[0]
    votes = np.zeros((BLOCKS, k + 1, n_classes), np.int64)
    probability = np.zeros((BLOCKS, k + 1, n_classes), np.float64)
    centers, scale = centers.astype(np.float32), scale.astype(np.float32)
    cell, grid, starts, members = center_grid(centers, scale)
    _assign(flat_logits, flat_offsets, dims, centers, scale, is_thing, cell, grid, starts, members,
            semantic, owner, votes, probability)
    return semantic, owner, votes.sum(axis=0), probability.sum(axis=0)


def relabel(semantic: np.ndarray, owner: np.ndarray, new_class: np.ndarray, new_id: np.ndarray) -> np.ndarray:
    """Apply the per-center class and instance id to every owned voxel (in place for `semantic`); returns the instances."""
    _use_free_cores()
    instance = np.empty(semantic.shape, np.int32)
    _relabel(semantic, owner, new_class.astype(np.int32), new_id.astype(np.int32), instance)
    return instance


@njit(cache=True, nogil=True)
def _find(ids, value):  # pragma: no cover - compiled
    """Index of `value` in the sorted `ids`, or -1."""
    low, high = 0, ids.size
    while low < high:
        mid = (low + high) // 2
        if ids[mid] < value:
            low = mid + 1
        else:
            high = mid
    return low if low < ids.size and ids[low] == value else -1


@njit(cache=True, nogil=True)
def _summary(label, instance, ids, d1, d2, n_labels, spacing):  # pragma: no cover - compiled
    n_ids = ids.size
    count = np.zeros(n_ids, np.int64)
    total = np.zeros((n_ids, 3), np.float64)
    low = np.full((n_ids, 3), np.iinfo(np.int64).max, np.int64)
    high = np.full((n_ids, 3), -1, np.int64)
    votes = np.zeros((n_ids, n_labels), np.int64)
    index = np.full(instance.size, -1, np.int32)
    last = -1
    last_value = 0
    for v in range(instance.size):
        t = instance[v]
        if t == 0:
            continue
        if t != last_value:  # runs of one id are the rule: look it up once per run
            last_value, last = t, _find(ids, t)
        if last < 0:
            continue
        k = last
        index[v] = k
        count[k] += 1
        coord = (v // (d1 * d2), (v // d2) % d1, v % d2)
        for a in range(3):
            total[k, a] += coord[a]
            low[k, a] = min(low[k, a], coord[a])
            high[k, a] = max(high[k, a], coord[a])
        g = np.int64(label[v])
        if 0 <= g < n_labels:
            votes[k, g] += 1
    # the centre: the member voxel nearest (in mm) to the centroid, the first in C order on a tie
    nearest = np.full(n_ids, np.inf)
    centre = np.full(n_ids, -1, np.int64)
    for v in range(instance.size):
        k = index[v]
        if k < 0:
            continue
        coord = (v // (d1 * d2), (v // d2) % d1, v % d2)
        d = 0.0
        for a in range(3):
            diff = (coord[a] - total[k, a] / count[k]) * spacing[a]
            d += diff * diff
        if d < nearest[k]:
            nearest[k] = d
            centre[k] = v
    return count, total, low, high + 1, votes, centre


def instance_summary(label: np.ndarray, instance: np.ndarray, ids: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """One pass over a pair for the instances `ids` (sorted): per id its voxel count, coordinate sums,
    box (start, stop), label votes and centre voxel (the member nearest in mm to the centroid, as
    `postprocess.instance_centres` defines it). Serial and free of the GIL: it runs beside the network.

    Arrays are per id in the order of `ids`, coordinates over the array's axes; an id with no voxel has
    count 0 and centre -1. Other ids in `instance` are ignored."""
    ndim = instance.ndim
    shape = (1,) * (3 - ndim) + instance.shape
    n_labels = int(label.max()) + 1 if label.size else 1
    pad = (1.0,) * (3 - ndim) + tuple(float(s) for s in spacing)
    count, total, low, stop, votes, centre = _summary(
        np.ascontiguousarray(label).reshape(-1), np.ascontiguousarray(instance).reshape(-1),
        np.ascontiguousarray(ids, dtype=np.asarray(instance).dtype), shape[1], shape[2], n_labels, np.array(pad))
    centre_voxel = np.stack(np.unravel_index(np.maximum(centre, 0), shape), axis=1)[:, 3 - ndim:]
    centre_voxel[centre < 0] = -1
    return {"count": count, "sum": total[:, 3 - ndim:], "start": low[:, 3 - ndim:], "stop": stop[:, 3 - ndim:],
            "votes": votes, "centre": centre_voxel}
