"""OME-Zarr images (NGFF 0.4 in zarr v2, 0.5 in zarr v3), 2D or 3D, read by region from the chunks.

The first `multiscales` entry gives the levels (its datasets, largest first) and the axes;
each level's `scale` (times the multiscale's own, if any) in the axes' units gives the pixel
size of level 0 and the downsample of the others. Spatial axes without a unit carry no pixel
size. A time axis is accepted only with one time point.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..slide import Box, Level
from ._base import LazySlide, resolve_pixel_size, to_mm


class OmeZarrSlide(LazySlide):
    """An NGFF multiscale image: spatial axes (y, x) or (z, y, x), at most one channel axis."""

    format_name = "ome-zarr"

    def __init__(self, path: str | os.PathLike, pixel_size_mm=None) -> None:
        import zarr

        self.path = Path(path)
        try:
            group = zarr.open_group(self.path, mode="r")
            attrs = dict(group.attrs)
        except Exception as e:  # zarr raises many types on folders that are not zarr
            raise InputError(self.path, f"cannot read as OME-Zarr: {type(e).__name__}: {e}") from None
        multiscale = _multiscale(self.path, attrs)
        axes = _axes(self.path, multiscale)
        datasets = multiscale.get("datasets") or []
        if not datasets:
            raise InputError(self.path, "the multiscales entry lists no datasets")
        try:
            self._arrays = [group[str(d["path"])] for d in datasets]
        except (KeyError, TypeError) as e:
            raise InputError(self.path, f"a multiscales dataset is missing: {e}") from None
        for k, array in enumerate(self._arrays):
            if array.ndim != len(axes):
                raise InputError(self.path, f"level {k} has {array.ndim} dimensions but the metadata names {len(axes)} axes")
        kinds = [a["kind"] for a in axes]
        self._spatial = [i for i, k in enumerate(kinds) if k == "space"]
        self._channel = [i for i, k in enumerate(kinds) if k == "channel"]
        self._time = [i for i, k in enumerate(kinds) if k == "time"]
        if self._time and self._arrays[0].shape[self._time[0]] != 1:
            raise InputError(self.path, f"a time series of {self._arrays[0].shape[self._time[0]]} points: only one can be read")
        scales = [_scale(self.path, multiscale, d, len(axes)) for d in datasets]
        base = scales[0]
        self.levels = tuple(
            Level(tuple(int(a.shape[i]) for i in self._spatial), tuple(float(s[i] / base[i]) for i in self._spatial))
            for a, s in zip(self._arrays, scales)
        )
        self.channels = int(self._arrays[0].shape[self._channel[0]]) if self._channel else 1
        self.dtype = np.dtype(self._arrays[0].dtype)
        units = [axes[i]["unit"] for i in self._spatial]
        found = None if any(u is None for u in units) else tuple(
            to_mm(base[i], axes[i]["unit"], self.path, f"axis {axes[i]['name']!r}") for i in self._spatial)
        self.pixel_size_mm = resolve_pixel_size(self.path, found, pixel_size_mm, len(self._spatial))

    def _read(self, box: Box, level: int) -> np.ndarray:
        index: list = [slice(None)] * self._arrays[level].ndim
        for axis, s in zip(self._spatial, box):
            index[axis] = s
        for axis in self._time:
            index[axis] = 0
        pixels = np.asarray(self._arrays[level][tuple(index)])
        kept = [a for a in range(self._arrays[level].ndim) if a not in self._time]
        order = [kept.index(a) for a in self._spatial + self._channel]
        pixels = np.transpose(pixels, order)
        return pixels if self._channel else pixels[..., None]


def _multiscale(path, attrs: dict) -> dict:
    """The first multiscales entry, from NGFF 0.5's `ome` key or 0.4's top level."""
    entries = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if not entries or not isinstance(entries, list) or not isinstance(entries[0], dict):
        raise InputError(path, "not an OME-Zarr image: no NGFF 'multiscales' metadata")
    return entries[0]


def _axes(path, multiscale: dict) -> list[dict]:
    """Axes as {name, kind (space/channel/time), unit}; 2 or 3 spatial axes, at most one channel axis."""
    raw = multiscale.get("axes")
    if not raw:
        raise InputError(path, "the multiscales entry names no axes (NGFF 0.4 or later is needed)")
    axes = []
    for a in raw:
        if isinstance(a, str):
            a = {"name": a}
        name = str(a.get("name", ""))
        kind = a.get("type") or ("space" if name in ("x", "y", "z") else "channel" if name == "c" else "time" if name == "t" else None)
        if kind not in ("space", "channel", "time"):
            raise InputError(path, f"axis {name!r} of type {kind!r} cannot be read (space, channel and time only)")
        axes.append({"name": name, "kind": kind, "unit": a.get("unit")})
    n_space = sum(a["kind"] == "space" for a in axes)
    n_channel = sum(a["kind"] == "channel" for a in axes)
    if n_space not in (2, 3) or n_channel > 1 or sum(a["kind"] == "time" for a in axes) > 1:
        raise InputError(path, f"axes {[a['name'] for a in axes]}: 2 or 3 spatial axes and at most one channel axis are needed")
    return axes


def _scale(path, multiscale: dict, dataset: dict, ndim: int) -> np.ndarray:
    """A dataset's scale per axis, times the multiscale's own scale if it has one."""
    scale = np.ones(ndim)
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for t in transforms or []:
            if t.get("type") == "scale":
                values = np.asarray(t.get("scale", []), dtype=float)
                if values.shape != (ndim,) or not np.all(np.isfinite(values) & (values > 0)):
                    raise InputError(path, f"dataset {dataset.get('path')!r} has an invalid scale {t.get('scale')}")
                scale = scale * values
    return scale
