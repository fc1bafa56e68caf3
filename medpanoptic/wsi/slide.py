"""`Slide`: what the tiled pipeline needs from any huge image, and `ArraySlide`, one held in memory.

A slide is read by region, never whole: `read(box, level)` returns the pixels of one box of one
pyramid level as `(*spatial, channels)`. Level 0 is the full resolution; `pixel_size_mm` is
level 0's, per spatial axis (rows, cols) or (z, rows, cols), in mm like every other spacing in
medpanoptic (GeoJSON and the table convert to µm where their conventions say so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InputError

Box = tuple[slice, ...]
"""A region of one level: one `slice(start, stop)` per spatial axis, stops exclusive, step 1."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: its spatial shape and its downsample factor per axis against level 0."""

    shape: tuple[int, ...]
    downsample: tuple[float, ...]


@runtime_checkable
class Slide(Protocol):
    """A lazily read image: whole slides (2D, RGB or grey) and chunked volumes (3D)."""

    path: Path | None
    levels: tuple[Level, ...]
    channels: int
    dtype: np.dtype
    pixel_size_mm: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Level 0's spatial shape."""

    def read(self, box: Box, level: int = 0) -> np.ndarray:
        """The pixels of `box` at `level`, `(*spatial, channels)`; a box outside the level is refused."""

    def close(self) -> None:
        """Release the file handles."""


def check_box(slide: "Slide", box: Sequence[slice], level: int = 0) -> Box:
    """`box` as a tuple of plain slices inside `level`, or an `InputError` naming the slide and the box."""
    if not 0 <= level < len(slide.levels):
        raise InputError(slide.path, f"level {level} does not exist (the slide has {len(slide.levels)})")
    shape = slide.levels[level].shape
    box = tuple(box)
    if len(box) != len(shape):
        raise InputError(slide.path, f"a region needs {len(shape)} axes, got {len(box)}")
    for s, n in zip(box, shape):
        if s.step not in (None, 1) or s.start is None or s.stop is None or not 0 <= s.start < s.stop <= n:
            raise InputError(slide.path, f"region {_describe(box)} lies outside level {level} of shape {shape}")
    return tuple(slice(int(s.start), int(s.stop)) for s in box)


def _describe(box: Sequence[slice]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in box) + "]"


class ArraySlide:
    """A `Slide` over an array already in memory (or memory-mapped): for tests and small images.

    Levels past 0 are strided views (every `2**k`-th pixel), enough for tissue detection.
    """

    def __init__(self, array: np.ndarray, pixel_size_mm: Sequence[float], n_levels: int = 1,
                 path: str | os.PathLike | None = None) -> None:
        array = np.asarray(array) if not isinstance(array, np.memmap) else array
        if array.ndim == len(pixel_size_mm):
            array = array[..., None]
        if array.ndim != len(pixel_size_mm) + 1:
            raise InputError(path, f"an array of shape {array.shape} does not match a {len(pixel_size_mm)}-axis pixel size")
        if not all(np.isfinite(p) and p > 0 for p in pixel_size_mm):
            raise InputError(path, f"pixel size must be positive, got {tuple(pixel_size_mm)}")
        self.path = None if path is None else Path(path)
        self._array = array
        self.channels = int(array.shape[-1])
        self.dtype = array.dtype
        self.pixel_size_mm = tuple(float(p) for p in pixel_size_mm)
        spatial = array.ndim - 1
        self.levels = tuple(
            Level(tuple(len(range(0, n, 2**k)) for n in array.shape[:-1]), (float(2**k),) * spatial)
            for k in range(n_levels)
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.levels[0].shape

    def read(self, box: Box, level: int = 0) -> np.ndarray:
        box = check_box(self, box, level)
        step = 2**level
        view = self._array[tuple(slice(None, None, step) for _ in box)]
        return np.ascontiguousarray(view[box])

    def close(self) -> None:
        pass

    def __enter__(self) -> "ArraySlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
