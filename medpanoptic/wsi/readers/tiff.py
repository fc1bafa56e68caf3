"""Pyramidal TIFF and OME-TIFF read by region through tifffile's zarr store (one store per level).

The pixel size comes from, in order: OME `PhysicalSizeX/Y/Z` with their units, Aperio's
`MPP = ` in the ImageDescription, or the `XResolution`/`YResolution` tags with a real
`ResolutionUnit` (inch or centimetre). Tile offsets are checked against the file's length
when it is opened: a truncated file is refused then, not decoded as zeros later.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..slide import Box
from ._base import LazySlide, downsamples, resolve_pixel_size, to_mm

# series axes we can read: spatial axes with at most one channel axis (S = samples, C = channels)
_SPATIAL = "ZYX"
_APERIO_MPP = re.compile(r"\bMPP\s*=\s*([0-9.eE+-]+)")
_RESOLUTION_UNIT_MM = {2: 25.4, 3: 10.0}  # inch, centimetre; 1 means "no unit"


class TiffSlide(LazySlide):
    """A tiled (pyramidal) TIFF or OME-TIFF; level 0 is the first series' full resolution."""

    format_name = "tiff"

    def __init__(self, path: str | os.PathLike, pixel_size_mm=None) -> None:
        import tifffile
        import zarr

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            axes = series.axes
        except Exception as e:  # tifffile raises many types on damaged files
            raise InputError(self.path, f"cannot read as TIFF: {type(e).__name__}: {e}") from None
        try:
            self._axes = _check_axes(self.path, axes)
            _check_complete(self.path, series)
            self._arrays = [zarr.open(series.aszarr(level=k), mode="r") for k in range(len(series.levels))]
        except InputError:
            self._tif.close()
            raise
        except Exception as e:
            self._tif.close()
            raise InputError(self.path, f"cannot open the TIFF's levels: {type(e).__name__}: {e}") from None
        # a single focal plane (SVS gives axes ZYXS with Z of length 1) is a 2D slide
        self._dropped = {i for i, a in enumerate(self._axes) if a == "Z" and self._arrays[0].shape[i] == 1}
        spatial = [i for i, a in enumerate(self._axes) if a in _SPATIAL and i not in self._dropped]
        channel = [i for i, a in enumerate(self._axes) if a not in _SPATIAL]
        self._order = spatial + channel
        shapes = [tuple(arr.shape[i] for i in spatial) for arr in self._arrays]
        self.levels = downsamples(shapes)
        self.channels = int(self._arrays[0].shape[channel[0]]) if channel else 1
        self.dtype = np.dtype(series.dtype)
        found = _pixel_size_mm(self.path, self._tif, "".join(self._axes[i] for i in spatial))
        try:
            self.pixel_size_mm = resolve_pixel_size(self.path, found, pixel_size_mm, len(spatial))
        except InputError:
            self._tif.close()
            raise

    def _read(self, box: Box, level: int) -> np.ndarray:
        index, it = [], iter(box)
        for i, a in enumerate(self._axes):
            index.append(0 if i in self._dropped else next(it) if a in _SPATIAL else slice(None))
        pixels = np.asarray(self._arrays[level][tuple(index)])
        kept = [i for i in range(len(self._axes)) if i not in self._dropped]
        pixels = np.transpose(pixels, [kept.index(i) for i in self._order])
        return pixels if len(self._order) > len(box) else pixels[..., None]

    def close(self) -> None:
        self._tif.close()


def _check_axes(path, axes: str) -> str:
    """Series axes as YX / ZYX plus at most one channel axis (S or C); a time axis or more is refused."""
    extra = [a for a in axes if a not in _SPATIAL + "SC"]
    channel = [a for a in axes if a in "SC"]
    if extra or len(channel) > 1 or not ("Y" in axes and "X" in axes):
        raise InputError(path, f"a TIFF series with axes {axes!r}: only YX or ZYX images with one channel axis can be read")
    return axes


def _check_complete(path, series) -> None:
    """Every tile of every level lies inside the file: a truncated TIFF is refused when opened."""
    size = os.path.getsize(path)
    for k, level in enumerate(series.levels):
        for page in level.pages:
            if page is None:
                raise InputError(path, f"level {k} has a missing page")
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size and (int((offsets + counts).max()) > size or (counts == 0).any()):
                raise InputError(path, f"truncated TIFF: level {k} has tiles past the end of the file ({size} bytes)")


def _pixel_size_mm(path, tif, spatial_axes: str) -> tuple[float, ...] | None:
    """Pixel size per spatial axis from the OME metadata, the Aperio description or the resolution tags."""
    for source in (_ome_pixel_size, _aperio_pixel_size, _resolution_pixel_size):
        found = source(path, tif, spatial_axes)
        if found is not None:
            return found
    return None


def _ome_pixel_size(path, tif, spatial_axes: str) -> tuple[float, ...] | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError as e:
        raise InputError(path, f"the OME-XML metadata does not parse: {e}") from None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in spatial_axes:
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        sizes.append(to_mm(float(value), pixels.get(f"PhysicalSize{axis}Unit", "µm"), path, f"OME PhysicalSize{axis}"))
    return tuple(sizes)


def _aperio_pixel_size(path, tif, spatial_axes: str) -> tuple[float, ...] | None:
    description = tif.pages[0].description or ""
    match = _APERIO_MPP.search(description) if description.startswith("Aperio") else None
    if match is None or spatial_axes != "YX":
        return None
    mpp = float(match.group(1))
    return (mpp / 1000.0, mpp / 1000.0)


def _resolution_pixel_size(path, tif, spatial_axes: str) -> tuple[float, ...] | None:
    page = tif.pages[0]
    tags = page.tags
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF's default unit is the inch
    if spatial_axes != "YX" or unit not in _RESOLUTION_UNIT_MM or "XResolution" not in tags or "YResolution" not in tags:
        return None
    sizes = []
    for name in ("YResolution", "XResolution"):
        numerator, denominator = tags[name].value
        if numerator <= 0 or denominator <= 0:
            return None
        sizes.append(_RESOLUTION_UNIT_MM[unit] * denominator / numerator)
    return tuple(sizes)
