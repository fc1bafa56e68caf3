"""A chunked label image written tile by tile, each chunk decoded once and encoded once.

Read boxes overlap by their halos, so a chunk of the slide's label images is touched by up to
nine tiles in 2D (27 in 3D). Read and written back through the store, every touch would decode
and re-encode it. `ChunkedCanvas` keeps a chunk decoded while tiles that will touch it are still
to come (`expect` counts them) and encodes it when the last one is merged; a bound on the chunks
held (`capacity`, least recently used first out) keeps memory flat whatever the slide's width:
an evicted chunk is read back if a tile comes for it later (in 3D, where a band's chunks would
not fit the bound, that is most of them: never more work than writing through the store).

Chunks are written whole, and `on_flush` tells which tiles' merges have reached the store: the
writer journals a tile only then, so a killed run never records a tile whose pixels were lost.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

Key = tuple[int, ...]
Box = tuple[slice, ...]


class ChunkedCanvas:
    """`array` (a zarr array, or anything chunked, readable and writable by region) as a `stitch.Canvas`
    that buffers whole chunks; `fresh`: the array holds only its fill value (nothing to read back);
    `on_flush(chunk, tiles)`: a chunk holding writes of `tiles` was stored."""

    def __init__(self, array, capacity: int, fresh: bool = False,
                 on_flush: Callable[[Key, set[int]], None] | None = None) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(array.chunks)
        self.capacity = max(1, int(capacity))
        self.on_flush = on_flush
        self._fresh = fresh
        self._stored: set[Key] = set()
        self._held: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._dirty: dict[Key, set[int]] = {}  # chunk -> the tiles merged into it since it was last stored
        self._expected: dict[Key, int] = {}
        self._tile = -1
        self.reads = 0  # chunks read back from the store (evicted, or a resumed run's)

    # -- which chunks -----------------------------------------------------------------------
    def keys(self, box: Box) -> Iterator[Key]:
        """The chunks a box (clipped to the canvas) overlaps."""
        if any(max(b.start, 0) >= min(b.stop, n) for b, n in zip(box, self.shape)):
            return iter(())
        ranges = [range(max(b.start, 0) // c, (min(b.stop, n) - 1) // c + 1)
                  for b, c, n in zip(box, self.chunks, self.shape)]
        return itertools.product(*ranges)

    def _chunk_box(self, key: Key) -> Box:
        return tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape))

    def expect(self, boxes: Iterable[Box]) -> None:
        """Count the tiles still to come for each chunk (their boxes on the canvas)."""
        for box in boxes:
            for key in self.keys(box):
                self._expected[key] = self._expected.get(key, 0) + 1

    # -- region access (the `Canvas` protocol) ------------------------------------------------
    def __getitem__(self, box: Box) -> np.ndarray:
        out = np.empty([b.stop - b.start for b in box], self.dtype)
        for key, inner, outer in self._pieces(box):
            out[outer] = self._chunk(key)[inner]
        return out

    def __setitem__(self, box: Box, value: np.ndarray) -> None:
        """Write `value` on `box` on behalf of the tile `begin` named."""
        for key, inner, outer in self._pieces(box):
            self._chunk(key)[inner] = value[outer]
            self._dirty.setdefault(key, set()).add(self._tile)

    def begin(self, tile: int) -> None:
        """The tile whose merge the next writes are (reported by `on_flush` once they are stored)."""
        self._tile = tile

    def unstored(self, box: Box, tile: int) -> int:
        """How many chunks of `box` hold writes of `tile` not stored yet."""
        return sum(tile in self._dirty.get(key, ()) for key in self.keys(box))

    def done(self, box: Box) -> None:
        """A tile expected on `box` is merged: chunks no other tile will touch are stored and let go."""
        for key in list(self.keys(box)):
            left = self._expected.get(key, 0) - 1
            self._expected[key] = left
            if left <= 0:
                self._expected.pop(key, None)
                self._release(key)

    def flush(self) -> None:
        """Store every chunk held (an interrupted or finished run)."""
        for key in list(self._held):
            self._release(key)

    # -- chunks -------------------------------------------------------------------------------
    def _pieces(self, box: Box) -> Iterator[tuple[Key, Box, Box]]:
        for key in self.keys(box):
            chunk = self._chunk_box(key)
            both = [slice(max(b.start, c.start), min(b.stop, c.stop)) for b, c in zip(box, chunk)]
            inner = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(both, chunk))
            outer = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(both, box))
            yield key, inner, outer

    def _chunk(self, key: Key) -> np.ndarray:
        held = self._held.get(key)
        if held is not None:
            self._held.move_to_end(key)
            return held
        box = self._chunk_box(key)
        if self._fresh and key not in self._stored:
            held = np.zeros([b.stop - b.start for b in box], self.dtype)
            fill = getattr(self.array, "fill_value", 0)
            if fill:
                held[...] = fill
        else:
            held = np.array(self.array[box], dtype=self.dtype)
            self.reads += 1
        self._held[key] = held
        while len(self._held) > self.capacity:
            self._release(next(iter(self._held)))
        return held

    def _release(self, key: Key) -> None:
        held = self._held.pop(key, None)
        tiles = self._dirty.pop(key, set())
        if held is not None and tiles:
            self.array[self._chunk_box(key)] = held
            self._stored.add(key)
        if tiles and self.on_flush is not None:
            self.on_flush(key, tiles)


HELD_BYTES = 128 << 20
"""What one canvas may hold in decoded chunks (3D chunks are 128³: a band's worth would not fit)."""


def capacity_for(chunks: Sequence[int], tile_shape: Sequence[int], band: int, itemsize: int,
                 budget: int = HELD_BYTES) -> int:
    """Chunks to hold for tiles taken in bands `band` working pixels wide over the axes after the first
    (`tiles.in_bands`): those under two rows of a band's read boxes, halos included, as far as
    `budget` bytes allow; never fewer than one read box spans, plus one (its merge reads, then writes them)."""
    down = 2 * (math.ceil(tile_shape[0] / chunks[0]) + 1)
    across = [math.ceil((band + t) / c) + 1 for c, t in zip(chunks[1:], tile_shape[1:])]
    per_box = math.prod(math.ceil(t / c) + 1 for c, t in zip(chunks, tile_shape))
    affordable = budget // (math.prod(chunks) * itemsize)
    return max(per_box + 1, min(down * math.prod(across), affordable))
