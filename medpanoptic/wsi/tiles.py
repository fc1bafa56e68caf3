"""The tile grid of a slide at the bundle's pixel size: cores that partition it, halos around them.

Tiles live on the *working grid*: the slide (or its region of interest) resampled to the bundle's
pixel size, read from the pyramid level nearest to that size but not coarser. Each tile has a
**core** (the cores of all tiles partition the region, so every pixel has exactly one owner) and a
**read box**, its core grown by a halo of at least the largest expected instance on every side,
clipped to the slide (tiles at the slide's edge are shifted inward, so every tile of a grid has one
shape and batches stack). An instance belongs to the tile whose core holds its centre; the halo
makes sure that tile sees all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io.geometry import xy_order
from .slide import Slide

BAND_PX = 4096
"""Working pixels across a band of tiles (`in_bands`)."""


@dataclass(frozen=True)
class Tile:
    """One tile of a grid: its index, its core and its read box on the working grid (stops exclusive)."""

    index: int
    core: tuple[slice, ...]
    box: tuple[slice, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.box)

    def core_in_box(self) -> tuple[slice, ...]:
        """The core in the read box's own coordinates."""
        return tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(self.core, self.box))


@dataclass(frozen=True)
class TileGrid:
    """Tiles over `region` of a slide's working grid, read from `level` and resampled by `scale`.

    `scale[a]` is working pixels -> level-0 pixels along axis a (bundle pixel size ÷ slide pixel
    size); `pixel_size_mm` is the working grid's. `region` is the part of the working grid that is
    segmented (the ROI, or all of it); `extent` is the whole working grid.
    """

    tiles: tuple[Tile, ...]
    region: tuple[slice, ...]
    extent: tuple[int, ...]
    level: int
    scale: tuple[float, ...]
    pixel_size_mm: tuple[float, ...]
    tile_shape: tuple[int, ...]
    halo: tuple[int, ...]
    n_cores: int

    @property
    def region_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.region)

    def to_level0(self, working: np.ndarray) -> np.ndarray:
        """Working-grid coordinates (..., ndim), pixel corners at integers, to level-0 pixel coordinates."""
        return np.asarray(working, dtype=float) * np.asarray(self.scale)


def pick_level(slide: Slide, pixel_size_mm: Sequence[float]) -> int:
    """The coarsest pyramid level whose pixels are not coarser than `pixel_size_mm` on any axis
    (level 0 when even it is coarser: then the tiles are upsampled)."""
    best = 0
    for k, level in enumerate(slide.levels):
        size = [p * d for p, d in zip(slide.pixel_size_mm, level.downsample)]
        if all(s <= t * (1 + 1e-6) for s, t in zip(size, pixel_size_mm)):
            if level.downsample[0] >= slide.levels[best].downsample[0]:
                best = k
    return best


def roi_box(slide: Slide, roi: Sequence[int] | None) -> tuple[slice, ...]:
    """Level-0 box of `--roi x,y,w,h` (x: column, y: row, in level-0 pixels; 3D: x,y,z,w,h,d), or the
    whole slide; a region not wholly inside the slide is an `InputError`."""
    shape = slide.shape
    if roi is None:
        return tuple(slice(0, n) for n in shape)
    ndim = len(shape)
    if len(roi) != 2 * ndim:
        raise InputError(slide.path, f"--roi needs {2 * ndim} numbers for a {ndim}D slide "
                                     f"({'x,y,w,h' if ndim == 2 else 'x,y,z,w,h,d'}), got {len(roi)}")
    start_xyz, size_xyz = list(roi[:ndim]), list(roi[ndim:])
    start, size = xy_order(start_xyz).tolist(), xy_order(size_xyz).tolist()  # x is the last array axis
    if any(s <= 0 for s in size) or any(a < 0 for a in start) or any(a + s > n for a, s, n in zip(start, size, shape)):
        raise InputError(slide.path, f"--roi {','.join(map(str, roi))} lies outside the slide "
                                     f"({' x '.join(map(str, xy_order(shape).tolist()))} pixels, x by y{' by z' if ndim == 3 else ''})")
    return tuple(slice(int(a), int(a + s)) for a, s in zip(start, size))


def tile_grid(
    slide: Slide,
    pixel_size_mm: Sequence[float],
    core: int | Sequence[int] = 512,
    halo: int | Sequence[int] = 64,
    roi: Sequence[int] | None = None,
    tissue: tuple[np.ndarray, float | Sequence[float]] | None = None,
    window: int | Sequence[int] | None = None,
    interval: int | Sequence[int] | None = None,
) -> TileGrid:
    """The tiles over `slide` (or its `roi`, level-0 pixels) at `pixel_size_mm`, `core` and `halo`
    in working pixels per axis; `tissue` is `(mask, downsample)` of `tissue_mask`: tiles whose read
    box holds no tissue pixel are left out (their region stays background).

    `window`/`interval`: the sliding-window inferer's window and step. Given, the read boxes start on
    multiples of the step and span a whole number of steps past one window (tiles at the far edge
    end at the slide's edge, as the untiled inferer's last window does), so a tile's windows are
    windows the untiled inference would run too: the network sees the same pixels either way."""
    ndim = len(slide.shape)
    if len(pixel_size_mm) != ndim:
        raise InputError(slide.path, f"a {ndim}D slide needs {ndim} pixel sizes, got {tuple(pixel_size_mm)}")
    core_size = _per_axis(core, ndim)
    halo_size = _per_axis(halo, ndim)
    if min(core_size) < 1 or min(halo_size) < 0:
        raise ValueError(f"tile core must be positive and halo non-negative, got {core_size}, {halo_size}")
    scale = tuple(float(t) / float(p) for t, p in zip(pixel_size_mm, slide.pixel_size_mm))
    extent = tuple(max(1, int(math.floor(n / s))) for n, s in zip(slide.shape, scale))
    box0 = roi_box(slide, roi)
    region = tuple(_working_span(b, s, n) for b, s, n in zip(box0, scale, extent))
    tile_shape = tuple(min(c + 2 * h, n) for c, h, n in zip(core_size, halo_size, extent))
    if window is not None and interval is not None:
        win, step = _per_axis(window, ndim), _per_axis(interval, ndim)
        tile_shape = tuple(min(w + s * max(0, math.ceil((t + s - w) / s)), n)
                           for w, s, t, n in zip(win, step, tile_shape, extent))
        spans = lambda cb, h, t, n, s: _aligned_span(cb, h, t, n, s)  # noqa: E731
    else:
        step = (1,) * ndim
        spans = lambda cb, h, t, n, s: _read_span(cb, h, t, n)  # noqa: E731
    starts = [range(r.start, r.stop, c) for r, c in zip(region, core_size)]
    tiles = []
    n_cores = 0
    for corner in np.ndindex(*[len(s) for s in starts]):
        n_cores += 1
        core_box = tuple(slice(s[i], min(s[i] + c, r.stop)) for s, i, c, r in zip(starts, corner, core_size, region))
        box = tuple(spans(cb, h, t, n, s) for cb, h, t, n, s in zip(core_box, halo_size, tile_shape, extent, step))
        if tissue is not None and not _has_tissue(tissue, box, scale):
            continue
        tiles.append(Tile(len(tiles), core_box, box))
    return TileGrid(tuple(tiles), region, extent, pick_level(slide, pixel_size_mm), scale,
                    tuple(float(p) for p in pixel_size_mm), tile_shape, halo_size, n_cores)


def _working_span(level0: slice, scale: float, extent: int) -> slice:
    """The working-grid pixels covering a level-0 span (at least one, inside the grid)."""
    start = min(int(math.floor(level0.start / scale)), extent - 1)
    return slice(start, max(min(int(math.ceil(level0.stop / scale)), extent), start + 1))


def _per_axis(value: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * ndim


def _read_span(core: slice, halo: int, size: int, extent: int) -> slice:
    """A read span of `size` around `core` grown by `halo`, shifted inward to stay inside `extent`."""
    start = min(max(core.start - halo, 0), extent - size)
    start = min(start, core.start)  # a core larger than the tile (last, clipped) never happens: size >= core
    return slice(start, start + size)


def _aligned_span(core: slice, halo: int, size: int, extent: int, step: int) -> slice:
    """A read span starting on a multiple of `step` at least `halo` before `core`, `size` long (shorter
    at the far edge, where it ends with the slide), holding the core and its halo."""
    start = max(0, (core.start - halo) // step * step)  # size >= core + 2 halo + step: the core and halo fit
    return slice(start, min(start + size, extent))


def _has_tissue(tissue: tuple[np.ndarray, float | Sequence[float]], box: tuple[slice, ...], scale: Sequence[float]) -> bool:
    """Whether the tile's read box, in level-0 pixels, covers tissue in the `tissue_mask` view."""
    from .tissue import tile_has_tissue

    mask, downsample = tissue
    downsample = tuple(downsample) if isinstance(downsample, Sequence) else (float(downsample),) * len(box)
    box0 = tuple(slice(int(math.floor(b.start * s)), int(math.ceil(b.stop * s))) for b, s in zip(box, scale))
    return tile_has_tissue(np.asarray(mask), downsample, box0)


def read_tile(slide: Slide, grid: TileGrid, tile: Tile) -> np.ndarray:
    """The pixels of `tile`'s read box on the working grid, `(channels, *tile.shape)` float32.

    Read from `grid.level` by region (`read_source`) and resampled bilinearly (pixel centres mapped
    exactly, `to_working`) when the level's pixel size is not the working one."""
    return to_working(read_source(slide, grid, tile), slide, grid, tile)


def read_source(slide: Slide, grid: TileGrid, tile: Tile) -> np.ndarray:
    """The pixels of `grid.level` that `tile`'s read box needs, `(channels, *spatial)` float32. It uses
    no PyTorch, so that reader threads can run it (see `infer.read_ahead`)."""
    box, _ = _source_box(slide, grid, tile)
    return np.moveaxis(slide.read(box, grid.level), -1, 0).astype(np.float32, copy=False)


def to_working(pixels: np.ndarray, slide: Slide, grid: TileGrid, tile: Tile) -> np.ndarray:
    """`read_source`'s pixels resampled onto the tile's read box of the working grid (as they are when
    the level is at the working pixel size)."""
    box, ratio = _source_box(slide, grid, tile)
    if ratio is None:
        return pixels
    source = torch.from_numpy(np.ascontiguousarray(pixels))[None]
    axes = []
    for b, r, s in zip(tile.box, ratio, box):
        centre = (torch.arange(b.start, b.stop, dtype=torch.float64) + 0.5) * r - 0.5 - s.start
        axes.append((2 * centre / max(s.stop - s.start - 1, 1) - 1).float())
    mesh = torch.meshgrid(*axes, indexing="ij")
    points = torch.from_numpy(xy_order(torch.stack(mesh, dim=-1).numpy()).copy())[None]  # grid_sample: x first
    sampled = F.grid_sample(source, points, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[0].numpy()


def _source_box(slide: Slide, grid: TileGrid, tile: Tile) -> tuple[tuple[slice, ...], list[float] | None]:
    """The box of `grid.level` under the tile's read box, and working px -> level px per axis (None: 1)."""
    level = slide.levels[grid.level]
    ratio = [s / d for s, d in zip(grid.scale, level.downsample)]
    if all(abs(r - 1.0) < 1e-9 for r in ratio):
        return tile.box, None
    # level coordinate of working pixel centre i: (i + 0.5) * r - 0.5
    lo = [max(int(math.floor((b.start + 0.5) * r - 0.5)), 0) for b, r in zip(tile.box, ratio)]
    hi = [min(int(math.ceil((b.stop - 0.5) * r - 0.5)) + 1, n) for b, r, n in zip(tile.box, ratio, level.shape)]
    hi = [max(h, l + 1) for l, h in zip(lo, hi)]
    return tuple(slice(l, h) for l, h in zip(lo, hi)), ratio


def in_bands(tiles: Sequence[Tile], width: int = BAND_PX) -> list[Tile]:
    """The tiles band by band, each band `width` working pixels across the axes after the first and
    taken down the first axis: the label image chunks a run holds at once (`canvas`) are then as many
    on a slide of any width, where row by row they would be two rows of chunks across the slide."""
    return sorted(tiles, key=lambda t: (tuple(c.start // width for c in t.core[1:]), tuple(c.start for c in t.core)))


def iter_boxes(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """The blocks of a grid of `shape`, `block` pixels a side (the last ones clipped), in C order."""
    for corner in np.ndindex(*[math.ceil(n / b) for n, b in zip(shape, block)]):
        yield tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(corner, block, shape))
