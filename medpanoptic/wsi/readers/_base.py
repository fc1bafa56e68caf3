"""What every lazy reader shares: the `Slide` attributes, checked reads, closing, and the pixel size rule."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import InputError
from ..slide import Box, Level, check_box

log = logging.getLogger("medpanoptic")

# length units as OME, NGFF and DICOM spell them, in mm
UNIT_MM = {
    "pm": 1e-9, "picometer": 1e-9, "nm": 1e-6, "nanometer": 1e-6,
    "µm": 1e-3, "μm": 1e-3, "um": 1e-3, "micron": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3,
    "mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "cm": 10.0, "centimeter": 10.0,
    "m": 1000.0, "meter": 1000.0, "metre": 1000.0, "Å": 1e-7, "angstrom": 1e-7,
}

NO_PIXEL_SIZE = "no pixel size in the file; give --pixel-size"


class LazySlide:
    """Base of the readers: subclasses fill the attributes in `__init__` and implement `_read`.

    `read` checks the box against the level first (`check_box`), so a backend only ever sees
    boxes inside its level, and turns any failure of the library while decoding into one
    `InputError` naming the file, the level and the box.
    """

    path: Path | None
    levels: tuple[Level, ...]
    channels: int
    dtype: np.dtype
    pixel_size_mm: tuple[float, ...]
    format_name = "slide"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.levels[0].shape

    def read(self, box: Box, level: int = 0) -> np.ndarray:
        box = check_box(self, box, level)
        try:
            pixels = self._read(box, level)
        except InputError:
            raise
        except Exception as e:  # decoders raise many types on damaged tiles
            raise InputError(self.path, f"cannot read level {level} region {_describe(box)}: {type(e).__name__}: {e}") from None
        expected = tuple(s.stop - s.start for s in box) + (self.channels,)
        if pixels.shape != expected:
            raise InputError(self.path, f"level {level} region {_describe(box)} decoded as shape {pixels.shape}, expected {expected}")
        return pixels

    def _read(self, box: Box, level: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        size = "x".join(f"{p * 1000:g}" for p in self.pixel_size_mm)
        return f"<{type(self).__name__} {self.path} {self.shape} {self.channels}ch {size} µm/px {len(self.levels)} levels>"


def _describe(box: Box) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in box) + "]"


def to_mm(value: float, unit: str | None, path, what: str) -> float:
    """`value` in `unit` as mm; an unknown unit is refused rather than guessed."""
    factor = UNIT_MM.get((unit or "").strip(), UNIT_MM.get((unit or "").strip().lower()))
    if factor is None:
        raise InputError(path, f"{what} has an unknown length unit {unit!r}")
    return float(value) * factor


def resolve_pixel_size(
    path, found: Sequence[float] | None, given: float | Sequence[float] | None, ndim: int,
) -> tuple[float, ...]:
    """The pixel size in mm per spatial axis: `given` (overriding the file's, logged) or the file's.

    A file without one is refused: a guessed pixel size would scale every nucleus wrongly.
    """
    if given is not None:
        given_t = _as_axes(path, given, ndim)
        if found is not None and not np.allclose(given_t, found, rtol=1e-6):
            log.info("%s: pixel size %s mm given, overriding the file's %s mm",
                     os.fspath(path), given_t, tuple(float(f) for f in found))
        return given_t
    if found is None:
        raise InputError(path, NO_PIXEL_SIZE)
    return _as_axes(path, found, ndim)


def _as_axes(path, size: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    values = (float(size),) * ndim if np.isscalar(size) else tuple(float(s) for s in size)
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise InputError(path, f"a pixel size needs 1 or {ndim} values, got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(path, f"pixel size must be finite and positive, got {values}")
    return values


def downsamples(shapes: Sequence[tuple[int, ...]]) -> tuple[Level, ...]:
    """Levels from their shapes, each downsample being level 0's size over the level's per axis."""
    base = shapes[0]
    return tuple(Level(tuple(int(n) for n in s), tuple(float(b) / float(n) for b, n in zip(base, s))) for s in shapes)
