"""SVS, NDPI, MRXS and every other format OpenSlide opens, read by region through openslide-python.

openslide-python hands back RGBA with the alpha un-premultiplied; pixels outside the scanned
area are transparent. They are composited onto the slide's background colour (white unless
the file says otherwise), so glass looks like glass, never black.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..slide import Box, Level
from ._base import LazySlide, resolve_pixel_size


class OpenSlideSlide(LazySlide):
    """A slide opened by OpenSlide; RGB uint8, level-0 pixel size from `openslide.mpp-x/y`."""

    format_name = "openslide"

    def __init__(self, path: str | os.PathLike, pixel_size_mm=None) -> None:
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(os.fspath(self.path))
            dimensions = self._slide.level_dimensions
            factors = self._slide.level_downsamples
            properties = dict(self._slide.properties)
        except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise InputError(self.path, f"cannot read with OpenSlide: {type(e).__name__}: {e}") from None
        self.vendor = properties.get("openslide.vendor")
        self.levels = tuple(Level((int(h), int(w)), (float(d), float(d))) for (w, h), d in zip(dimensions, factors))
        self.channels = 3
        self.dtype = np.dtype(np.uint8)
        self._background = _background(properties)
        try:
            self.pixel_size_mm = resolve_pixel_size(self.path, _mpp_mm(properties), pixel_size_mm, 2)
        except InputError:
            self._slide.close()
            raise

    def _read(self, box: Box, level: int) -> np.ndarray:
        rows, cols = box
        down = self.levels[level].downsample
        location = (int(round(cols.start * down[1])), int(round(rows.start * down[0])))  # level-0 (x, y)
        region = self._slide.read_region(location, level, (cols.stop - cols.start, rows.stop - rows.start))
        return rgba_on_background(np.asarray(region), self._background)

    def close(self) -> None:
        self._slide.close()


def rgba_on_background(rgba: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Straight (un-premultiplied) RGBA composited onto an opaque background: RGB uint8."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    if np.all(alpha == 255):
        return np.ascontiguousarray(rgba[..., :3])
    colour = rgba[..., :3].astype(np.uint16)
    back = np.asarray(background, dtype=np.uint16)
    return ((colour * alpha + back * (255 - alpha) + 127) // 255).astype(np.uint8)


def _mpp_mm(properties: dict) -> tuple[float, float] | None:
    try:
        mpp_y, mpp_x = float(properties["openslide.mpp-y"]), float(properties["openslide.mpp-x"])
    except (KeyError, ValueError):
        return None
    return (mpp_y / 1000.0, mpp_x / 1000.0)


def _background(properties: dict) -> tuple[int, int, int]:
    """`openslide.background-color` (hex RRGGBB) or white."""
    text = properties.get("openslide.background-color", "FFFFFF")
    try:
        return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        return (255, 255, 255)
