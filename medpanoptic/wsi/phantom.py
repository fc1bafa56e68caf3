"""Whole-slide and volume phantoms written in constant memory, with their panoptic truth as OME-Zarr.

Every pixel is a pure function of its position and the seed: noise comes from a hash of the
pixel's coordinates, tissue from a coarse random field sampled by interpolation, nuclei from
one list placed cell by cell. So the slide can be rendered tile by tile (with a small halo for
the smoothing) in any order, without seams, and its truth matches it exactly.

Nuclei look like `synthetic.nuclei_phantom(rgb=True, supersample=1)`'s: the same radii (3-6 µm,
elongated up to 35 %), the same H&E colours, shading, texture, noise and blur, drawn on the pixel
grid itself rather than by area coverage (16 points a pixel would make a slide 16x as slow). They are placed two or three per cell of a grid whose cell centres fall on every tile
corner and tile-border midpoint; those cells always hold a nucleus centred exactly there, so
every tiling by a multiple of the tile size cuts nuclei in two and in four. Touching pairs
share a cell.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from ..io.atomic import atomic_paths, atomic_write_text
from ..io.paths import inside
from ..labels import nuclei_labels
from ..synthetic import HE_COLOURS

WSI_PIXEL_SIZE_MM = 0.0005  # 0.5 µm per pixel: the nuclei bundle's
TILE = 512
CELL = 64  # divides TILE; its centres (multiples of CELL) hit tile corners and border midpoints
NUCLEUS_RADIUS_MM = (0.003, 0.006)  # as nuclei_phantom
ELONGATION = 0.35
CONTRASTS = (1.0, 0.85, 0.7)
TEXTURE_SIGMA, BLUR_SIGMA = 1.5, 0.7  # px, as nuclei_phantom
_HALO = 9  # px: 3 for the blur + 6 for the texture filter


# -- position-determined noise ----------------------------------------------------------------
def _hash_normal(seed: int, stream: int, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Near-normal noise (float32, mean 0, std 1) over the box [lo, hi) of the unbounded pixel grid.

    One splitmix64 hash of (seed, stream, position) per pixel; its four 16-bit quarters are
    summed (Irwin-Hall), which is close enough to Gaussian for texture and sensor noise.
    """
    key = np.uint64((seed * 0x9E3779B97F4A7C15 + (stream + 1) * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF)
    index = np.zeros((1,) * len(lo), dtype=np.uint64)
    for axis, (a, b) in enumerate(zip(lo, hi)):
        ramp = (np.arange(a, b, dtype=np.int64) + (1 << 20)).astype(np.uint64)
        index = index * np.uint64(1 << 21) + ramp.reshape([-1 if i == axis else 1 for i in range(len(lo))])
    with np.errstate(over="ignore"):
        h = index ^ key
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
        m = np.uint64(0xFFFF)
        quarters = (h & m) + ((h >> np.uint64(16)) & m) + ((h >> np.uint64(32)) & m) + (h >> np.uint64(48))
    return quarters.astype(np.float32) * np.float32(np.sqrt(3.0) / 65536.0) - np.float32(2.0 * np.sqrt(3.0))


def _smoothed_noise_std(sigma: float, ndim: int) -> float:
    """Standard deviation of unit white noise after `gaussian_filter(sigma, truncate=4)`."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    return float(np.sqrt((k**2).sum()) ** ndim)


def _texture(seed: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """nuclei_phantom's fine texture (smoothed noise of unit std) over [lo, hi)."""
    pad = int(4.0 * TEXTURE_SIGMA + 0.5)
    raw = _hash_normal(seed, 1, lo - pad, hi + pad)
    smooth = ndimage.gaussian_filter(raw, TEXTURE_SIGMA, truncate=4.0)
    crop = tuple(slice(pad, -pad) for _ in lo)
    return smooth[crop] / np.float32(_smoothed_noise_std(TEXTURE_SIGMA, len(lo)))


# -- tissue ----------------------------------------------------------------------------------
class _TissueField:
    """Tissue (stuff) where a smooth random field, fading towards the slide's edges, is positive.

    Held on grids 64 and 16 times coarser than the slide (a 32k x 32k slide: 4 MB + 16 MB),
    sampled by linear interpolation: large islands of tissue with blank glass between them,
    and holes and ragged edges at the scale of nuclei_phantom's tissue.
    """

    def __init__(self, seed: int, shape: Sequence[int], coarse: int = 64, fine: int = 16) -> None:
        rng = np.random.default_rng([seed, 7])
        self.shape = tuple(int(n) for n in shape)
        self.steps = (coarse, fine)
        self.grids = []
        for step, sigma in ((coarse, 2.5), (fine, 1.0)):
            grid_shape = tuple(max(2, -(-n // step) + 1) for n in self.shape)
            field = ndimage.gaussian_filter(rng.standard_normal(grid_shape), sigma, mode="wrap")
            self.grids.append(((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32))

    def value(self, coords: Sequence[np.ndarray]) -> np.ndarray:
        """The field at pixel coordinates (broadcasting arrays, one per axis); tissue where > 0."""
        coords = np.broadcast_arrays(*[np.asarray(c, dtype=np.float32) for c in coords])
        coarse, fine = (
            ndimage.map_coordinates(grid, [c / step for c in coords], order=1, mode="nearest")
            for grid, step in zip(self.grids, self.steps)
        )
        # 1 in the middle, falling to about -1.5 at the edges: the slide's border is glass
        edge = sum((2 * c / max(n - 1, 1) - 1) ** 8 for c, n in zip(coords, self.shape))
        return coarse + 0.35 * fine + 0.6 - 2.0 * edge

    def mask(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """`value > 0` over the box [lo, hi), by separable interpolation (the same numbers, much faster)."""
        axes = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)]
        field = sum(w * _interpolate_box(grid, [x / step for x in axes]) for grid, step, w in zip(self.grids, self.steps, (1.0, 0.35)))
        for axis, (x, n) in enumerate(zip(axes, self.shape)):
            field = field - 2.0 * ((2 * x / max(n - 1, 1) - 1) ** 8).reshape([-1 if i == axis else 1 for i in range(len(axes))])
        return field + 0.6 > 0


def _interpolate_box(grid: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Linear interpolation of `grid` on the outer product of 1D positions (clamped at the edges)."""
    out = grid
    for axis, pos in enumerate(positions):
        n = grid.shape[axis]
        pos = np.clip(pos, 0, n - 1)
        i0 = np.minimum(np.floor(pos).astype(int), n - 2)
        t = (pos - i0).astype(np.float32)
        shape = [-1 if i == axis else 1 for i in range(grid.ndim)]
        out = np.take(out, i0, axis=axis) * (1 - t).reshape(shape) + np.take(out, i0 + 1, axis=axis) * t.reshape(shape)
    return out


# -- nuclei ----------------------------------------------------------------------------------
@dataclass
class Nuclei:
    """The things of a phantom: centres (px, level 0), semi-axes (mm), axes (rotation columns), shade."""

    centers: np.ndarray  # (N, ndim) float, pixel coordinates
    radii_mm: np.ndarray  # (N, ndim)
    rotations: np.ndarray  # (N, ndim, ndim)
    contrast: np.ndarray  # (N,)
    on_border: np.ndarray  # (N,) bool: centred exactly on a tile corner / border midpoint (chunk face in 3D)
    reach: np.ndarray  # (N, ndim) int: half extent in px, a bound on the ellipse's box

    def __len__(self) -> int:
        return len(self.centers)


def place_nuclei(
    seed: int, shape: Sequence[int], spacing_mm: Sequence[float], cell: Sequence[int], tile: Sequence[int],
    tissue: _TissueField, touching_fraction: float = 0.3, occupancy: float = 0.9,
    radius_mm: tuple[float, float] = NUCLEUS_RADIUS_MM, per_cell: tuple[int, int] = (2, 3),
) -> Nuclei:
    """Nuclei cell by cell: one (or a touching pair) per cell whose centre is tissue, never crossing cells.

    Cells centred on a tile corner or the middle of a tile border (every tile face in 3D) hold
    one nucleus centred exactly there; the others hold theirs jittered within the cell. Each
    cell then takes `per_cell` nuclei in all where they fit apart (a gap of 2.5 px, as in
    nuclei_phantom), for nuclei_phantom's density.
    """
    rng = np.random.default_rng([seed, 11])
    shape, spacing = np.asarray(shape), np.asarray(spacing_mm, dtype=float)
    cell, tile = np.asarray(cell), np.asarray(tile)
    ndim = len(shape)
    needed = 2 * (np.ceil(radius_mm[1] * (1 + ELONGATION) / spacing) + 1) + 4
    gap_mm = 2.5 * float(spacing.max())  # as nuclei_phantom
    if np.any(cell < needed):
        raise ValueError(f"cells of {tuple(cell)} px cannot hold nuclei of up to {tuple(needed)} px: use larger tiles or chunks")
    per_tile = tile // cell
    counts = (shape - cell // 2) // cell  # cell k spans [k*cell - cell/2, k*cell + cell/2)
    grid = np.stack(np.meshgrid(*[np.arange(1, int(c) + 1) for c in counts], indexing="ij"), -1).reshape(-1, ndim)
    in_tissue = tissue.value(list((grid * cell).T)) > 0
    centers, radii, rotations, contrast, border = [], [], [], [], []
    for idx in grid[in_tissue]:
        center = idx * cell.astype(float)
        phase = idx % per_tile
        exact = bool(np.all((phase == 0) | (2 * phase == per_tile)) and np.any(phase == 0))
        if not exact and rng.random() >= occupancy:
            continue
        pair = not exact and rng.random() < touching_fraction
        blobs = [_random_nucleus(rng, ndim, radius_mm) for _ in range(2 if pair else 1)]
        offsets = [np.zeros(ndim)]
        if pair:
            direction = rng.normal(size=ndim)
            direction /= np.linalg.norm(direction)
            distance_mm = 0.8 * (blobs[0][0].min() + blobs[1][0].min())
            half = direction * distance_mm / 2 / spacing
            offsets = [-half, half]
        reach = [np.ceil(r.max() / spacing) + 1 for r, _ in blobs]
        extent = np.max([np.abs(o) + rc for o, rc in zip(offsets, reach)], axis=0)
        if pair and np.any(extent > cell / 2 - 2):  # the pair does not fit its cell: keep one
            blobs, offsets, reach = blobs[:1], [np.zeros(ndim)], reach[:1]
            extent = reach[0]
        room = np.maximum(cell / 2 - 2 - extent, 0)
        jitter = np.zeros(ndim) if exact else rng.uniform(-room, room)
        members = []
        for (r, rot), off in zip(blobs, offsets):
            members.append((center + jitter + off, r.max()))
            centers.append(center + jitter + off)
            radii.append(r)
            rotations.append(rot)
            contrast.append(float(rng.choice(CONTRASTS)))
            border.append(exact)
        # more nuclei, kept apart, until the cell holds as many as nuclei_phantom's tissue does
        wanted = int(rng.integers(per_cell[0], per_cell[1] + 1))
        for _ in range(20):
            if len(members) >= wanted:
                break
            r, rot = _random_nucleus(rng, ndim, radius_mm)
            room = cell / 2 - 2 - (np.ceil(r.max() / spacing) + 1)
            candidate = center + rng.uniform(-room, room)
            if all(np.linalg.norm((candidate - m) * spacing) >= r.max() + mr + gap_mm for m, mr in members):
                members.append((candidate, r.max()))
                centers.append(candidate)
                radii.append(r)
                rotations.append(rot)
                contrast.append(float(rng.choice(CONTRASTS)))
                border.append(False)
    centers = np.asarray(centers, dtype=float).reshape(-1, ndim)
    radii = np.asarray(radii, dtype=float).reshape(-1, ndim)
    reach = (np.ceil(radii.max(1, initial=0)[:, None] / spacing) + 1).astype(int) if len(radii) else np.zeros((0, ndim), int)
    return Nuclei(centers, radii, np.asarray(rotations).reshape(-1, ndim, ndim), np.asarray(contrast),
                  np.asarray(border, dtype=bool), reach.reshape(-1, ndim))


def _random_nucleus(rng: np.random.Generator, ndim: int, radius_mm: tuple[float, float]):
    r = rng.uniform(*radius_mm)
    radii = r * rng.uniform(1 - ELONGATION, 1 + ELONGATION, size=ndim)
    q, rr = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(rr))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return radii, q


def rasterize(nuclei: Nuclei, spacing_mm: Sequence[float], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Instance ids (1..N in the list's order, int32) over the box [lo, hi); overlaps go to the nearest."""
    spacing = np.asarray(spacing_mm, dtype=float)
    instance = np.zeros(tuple(hi - lo), dtype=np.int32)
    best = np.full(instance.shape, np.inf, dtype=np.float32)
    near = np.all((nuclei.centers + nuclei.reach > lo) & (nuclei.centers - nuclei.reach < hi), axis=1)
    for i in np.flatnonzero(near):
        a = np.maximum(np.floor(nuclei.centers[i] - nuclei.reach[i]).astype(int), lo)
        b = np.minimum(np.ceil(nuclei.centers[i] + nuclei.reach[i]).astype(int) + 1, hi)
        if np.any(b <= a):
            continue
        grids = np.meshgrid(*[np.arange(x, y, dtype=np.float64) for x, y in zip(a, b)], indexing="ij")
        offsets = np.stack(grids, -1) - nuclei.centers[i]
        local = (offsets * spacing) @ nuclei.rotations[i] / nuclei.radii_mm[i]
        d = np.sqrt((local**2).sum(-1)).astype(np.float32)
        box = tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))
        take = (d <= 1.0) & (d < best[box])
        instance[box][take] = i + 1
        best[box][take] = d[take]
    return instance


# -- rendering -------------------------------------------------------------------------------
class _Scene:
    """Tissue, nuclei and the seed of one phantom: renders any box of it, image and truth."""

    def __init__(self, shape, spacing_mm, seed, tile, cell, touching_fraction) -> None:
        self.args = (shape, spacing_mm, seed, tile, cell, touching_fraction)  # rebuilds it in a worker
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing_mm)
        self.seed = seed
        self.tissue = _TissueField(seed, self.shape)
        self.nuclei = place_nuclei(seed, self.shape, self.spacing, cell, tile, self.tissue, touching_fraction)
        self.shade = np.concatenate([[1.0], 0.8 + 0.2 * self.nuclei.contrast]).astype(np.float32)

    def truth(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """(label, instance) over [lo, hi): 0 glass, 1 tissue, 2 nucleus; instances 1..N."""
        lo, hi = np.asarray(lo), np.asarray(hi)
        instance = rasterize(self.nuclei, self.spacing, lo, hi)
        label = self.tissue.mask(lo, hi).astype(np.uint8)
        label[instance > 0] = 2
        return label, instance

    def he_tile(self, lo, hi) -> np.ndarray:
        """H&E-like RGB (uint8, rows x cols x 3) over [lo, hi), rendered as nuclei_phantom(rgb=True)."""
        return self.he_tile_and_truth(lo, hi)[0]

    def he_tile_and_truth(self, lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(RGB, label, instance) over [lo, hi): the truth is rasterised once for both."""
        lo, hi = np.asarray(lo), np.asarray(hi)
        glo, ghi = lo - 3, hi + 3  # the blur's halo
        label, instance = self.truth(glo, ghi)
        inner = (slice(3, -3), slice(3, -3))
        return self._render_he(glo, ghi, label, instance), label[inner], instance[inner]

    def _render_he(self, glo, ghi, label, instance) -> np.ndarray:
        colours = np.asarray([HE_COLOURS[k] for k in sorted(HE_COLOURS)], dtype=np.float32)
        image = colours[label] * self.shade[instance][..., None]
        image += 10.0 * _texture(self.seed, glo, ghi)[..., None]
        image += 6.0 * np.stack([_hash_normal(self.seed, 2 + c, glo, ghi) for c in range(3)], -1)
        image = ndimage.gaussian_filter(image, (BLUR_SIGMA, BLUR_SIGMA, 0), truncate=4.0)
        return np.clip(np.rint(image[3:-3, 3:-3]), 0, 255).astype(np.uint8)

    def fluorescence_block(self, lo, hi) -> np.ndarray:
        """A nuclear stain (uint8): bright nuclei, dim tissue, dark background, as nuclei_phantom's grey."""
        lo, hi = np.asarray(lo), np.asarray(hi)
        glo, ghi = lo - 3, hi + 3
        label, instance = self.truth(glo, ghi)
        brightness = np.concatenate([[0.0], 200.0 * self.nuclei.contrast]).astype(np.float32)
        image = np.where(instance > 0, brightness[instance], np.where(label > 0, 45.0, 12.0)).astype(np.float32)
        image += 8.0 * _texture(self.seed, glo, ghi)
        image = ndimage.gaussian_filter(image, BLUR_SIGMA, truncate=4.0) + 8.0 * _hash_normal(self.seed, 9, glo, ghi)
        crop = tuple(slice(3, -3) for _ in lo)
        return np.clip(np.rint(image[crop]), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class WsiPhantom:
    """What `write_wsi_phantom` wrote: the slide, its truth and the list of nuclei."""

    image: Path  # pyramidal tiled OME-TIFF
    truth: Path  # OME-Zarr folder: `label` (0 glass, 1 tissue, 2 nucleus) and `instance` images
    nuclei: Path  # CSV: id, center_row, center_col (level-0 px), on_border
    shape: tuple[int, int]
    pixel_size_mm: float
    n_nuclei: int
    n_on_border: int


def write_wsi_phantom(
    out: str | os.PathLike, size: int | Sequence[int] = 16384, seed: int = 0, compression: str = "jpeg",
    touching_fraction: float = 0.3, tile: int = TILE, workers: int = 1,
) -> WsiPhantom:
    """Write a whole-slide phantom into `out`: `phantom.ome.tif`, `truth.ome.zarr`, `nuclei.csv`.

    The slide is a pyramidal tiled OME-TIFF (tiles of `tile` px, `compression` "jpeg" or
    "deflate", levels halved until they fit in 1024 px, 0.5 µm per pixel in the OME metadata
    and the resolution tags). Memory stays constant whatever `size`: tiles are rendered and
    written one by one, each level is built from the one above through a temporary chunked
    store, and the truth is written chunk by chunk. `workers` processes render the tiles (the
    same file for any number of them).
    """

    if tile % CELL:
        raise ValueError(f"tile must be a multiple of {CELL}, got {tile}")
    shape = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scene = _Scene(shape, (WSI_PIXEL_SIZE_MM,) * 2, seed, (tile, tile), (CELL, CELL), touching_fraction)
    image_path, truth_path, nuclei_path = out / "phantom.ome.tif", out / "truth.ome.zarr", out / "nuclei.csv"
    truth_tmp = out / f".{truth_path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        truth = _create_truth(scene, truth_tmp, tile)
        with tempfile.TemporaryDirectory(dir=out, prefix=".phantom-") as scratch, atomic_paths(image_path) as (tmp,):
            _write_pyramid(scene, tmp, Path(scratch), tile, compression, truth, workers)
        _replace_dir(truth_tmp, truth_path, out)
    except BaseException:
        shutil.rmtree(truth_tmp, ignore_errors=True)
        raise
    _write_nuclei_csv(scene.nuclei, nuclei_path)
    return WsiPhantom(image_path, truth_path, nuclei_path, shape, WSI_PIXEL_SIZE_MM, len(scene.nuclei),
                      int(scene.nuclei.on_border.sum()))


def _write_pyramid(scene: _Scene, path: Path, scratch: Path, tile: int, compression: str, truth: dict,
                   workers: int = 1) -> None:
    """The OME-TIFF: level 0 tile by tile (its truth stored alongside), then each level from the one above."""
    import tifffile

    shape = scene.shape
    levels = _level_shapes(shape)
    stores = [_scratch_array(scratch / f"level{k}", s + (3,), tile // 2) for k, s in enumerate(levels[1:], 1)]
    um = WSI_PIXEL_SIZE_MM * 1000
    options = {"tile": (tile, tile), "photometric": "rgb", "compression": compression, "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(_level0_tiles(scene, tile, stores[0] if stores else None, truth, workers), shape=shape + (3,),
                  subifds=len(levels) - 1, resolution=(1e4 / um, 1e4 / um), resolutionunit="CENTIMETER",
                  metadata={"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeXUnit": "µm",
                            "PhysicalSizeY": um, "PhysicalSizeYUnit": "µm", "Name": f"medpanoptic phantom seed {scene.seed}"},
                  **options)
        for k in range(1, len(levels)):
            nxt = stores[k] if k < len(stores) else None
            tif.write(_tiles_of(stores[k - 1], tile, nxt), shape=levels[k] + (3,), subfiletype=1,
                      resolution=(1e4 / (um * 2**k), 1e4 / (um * 2**k)), resolutionunit="CENTIMETER", **options)


def _level_shapes(shape: tuple[int, ...], fits: int = 1024) -> list[tuple[int, ...]]:
    levels = [shape]
    while max(levels[-1]) > fits:
        levels.append(tuple((n + 1) // 2 for n in levels[-1]))
    return levels


def _scratch_array(path: Path, shape, chunk: int):
    import zarr

    return zarr.open_array(path, mode="w", shape=shape, chunks=(chunk, chunk, shape[-1]), dtype=np.uint8,
                           zarr_format=3, fill_value=0)


def _halve(tile: np.ndarray) -> np.ndarray:
    """2x2 mean (odd edges repeated), rounded: the next pyramid level of one tile."""
    pad = [(0, n % 2) for n in tile.shape[:2]] + [(0, 0)]
    t = np.pad(tile, pad, mode="edge").astype(np.uint16)
    return ((t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2] + 2) // 4).astype(np.uint8)


def _level0_tiles(scene: _Scene, tile: int, below, truth: dict, workers: int = 1) -> Iterator[np.ndarray]:
    rows, cols = scene.shape
    boxes = [((y, x), (min(y + tile, rows), min(x + tile, cols))) for y in range(0, rows, tile) for x in range(0, cols, tile)]
    for ((y, x), hi), (pixels, label, instance) in zip(boxes, _rendered(scene, boxes, workers)):
        truth["label"][y:hi[0], x:hi[1]] = label
        truth["instance"][y:hi[0], x:hi[1]] = instance
        if below is not None:
            below[y // 2:y // 2 + (pixels.shape[0] + 1) // 2, x // 2:x // 2 + (pixels.shape[1] + 1) // 2] = _halve(pixels)
        yield pixels


_WORKER_SCENE: _Scene | None = None


def _start_worker(args) -> None:
    global _WORKER_SCENE
    _WORKER_SCENE = _Scene(*args)


def _render_in_worker(box):
    return _WORKER_SCENE.he_tile_and_truth(*box)


def _rendered(scene: _Scene, boxes: list, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(RGB, label, instance) of each box in order; with `workers` > 1 rendered by that many processes.

    At most two tiles per worker are in flight, so memory stays bounded however large the slide.
    Every tile is a function of its position only: the output is the same for any `workers`.
    """
    if workers <= 1:
        yield from (scene.he_tile_and_truth(lo, hi) for lo, hi in boxes)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from itertools import islice

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(scene.args,)) as pool:
        queue = iter(boxes)
        pending = deque(pool.submit(_render_in_worker, box) for box in islice(queue, 2 * workers))
        while pending:
            result = pending.popleft().result()
            box = next(queue, None)
            if box is not None:
                pending.append(pool.submit(_render_in_worker, box))
            yield result


def _tiles_of(level, tile: int, below) -> Iterator[np.ndarray]:
    rows, cols = level.shape[:2]
    for y in range(0, rows, tile):
        for x in range(0, cols, tile):
            pixels = np.asarray(level[y:y + tile, x:x + tile])
            if below is not None:
                below[y // 2:y // 2 + (pixels.shape[0] + 1) // 2, x // 2:x // 2 + (pixels.shape[1] + 1) // 2] = _halve(pixels)
            yield pixels


# -- truth as OME-Zarr -----------------------------------------------------------------------
def ngff_multiscales(name: str, axes: Sequence[str], pixel_size_mm: Sequence[float]) -> list[dict]:
    """NGFF 0.4 `multiscales` of a one-level image whose spatial axes are in micrometres."""
    return [{
        "version": "0.4", "name": name,
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [float(p) * 1000 for p in pixel_size_mm]}]}],
    }]


def _create_truth(scene: _Scene, path: Path, chunk: int) -> dict:
    """Empty label and instance images (NGFF 0.4, chunks of one tile) for the tiles to fill."""
    import zarr

    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.attrs["medpanoptic"] = {"label_set": nuclei_labels().to_dict(), "seed": scene.seed}
    arrays = {}
    for name, dtype in (("label", np.uint8), ("instance", np.int32)):
        group = root.create_group(name)
        group.attrs["multiscales"] = ngff_multiscales(name, "zyx"[-len(scene.shape):], scene.spacing)
        group.attrs["image-label"] = {"version": "0.4", "colors": [
            {"label-value": c.id, "rgba": [*c.color, 255]} for c in nuclei_labels().classes]} if name == "label" else {"version": "0.4"}
        arrays[name] = group.create_array("0", shape=scene.shape, chunks=(chunk,) * len(scene.shape), dtype=dtype,
                                          fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
    return arrays


def _replace_dir(tmp: Path, final: Path, root: Path) -> None:
    if final.exists():
        shutil.rmtree(inside(root, final))
    os.replace(tmp, final)


def _write_nuclei_csv(nuclei: Nuclei, path: Path) -> None:
    names = ("center_row", "center_col") if nuclei.centers.shape[1] == 2 else ("center_z", "center_row", "center_col")
    lines = ["id," + ",".join(names) + ",on_border"]
    for i, (c, b) in enumerate(zip(nuclei.centers, nuclei.on_border), start=1):
        lines.append(f"{i}," + ",".join(f"{v:.3f}" for v in c) + f",{int(b)}")
    atomic_write_text(path, "\n".join(lines) + "\n")


# -- 3D --------------------------------------------------------------------------------------
def _cell_for(chunk: int, spacing_mm: float) -> int:
    """The largest chunk / 2**k (k >= 1) that holds one nucleus, else the chunk itself."""
    needed = 2 * (np.ceil(NUCLEUS_RADIUS_MM[1] * (1 + ELONGATION) / spacing_mm) + 1) + 4
    k = 2
    while chunk % (2 * k) == 0 and chunk // (2 * k) >= needed:
        k *= 2
    return chunk // k if chunk % k == 0 and chunk // k >= needed else chunk


def write_volume_phantom(
    path: str | os.PathLike, shape: Sequence[int] = (128, 256, 256), chunks: Sequence[int] = (64, 128, 128),
    spacing_mm: Sequence[float] = (0.001, 0.001, 0.001), seed: int = 0, touching_fraction: float = 0.3,
) -> Nuclei:
    """A chunked OME-Zarr volume (a nuclear stain, uint8, z/y/x) with its truth under `labels/`.

    `path` is an NGFF 0.4 image; `labels/label` and `labels/instance` are its label images
    (NGFF labels). Nuclei (3-6 µm radius) are centred exactly on chunk corners, edges and
    faces as well as inside chunks; everything is written chunk by chunk.
    """
    import zarr

    path = Path(path)
    shape, chunks = tuple(int(n) for n in shape), tuple(int(c) for c in chunks)
    cell = tuple(_cell_for(c, s) for c, s in zip(chunks, spacing_mm))
    scene = _Scene(shape, spacing_mm, seed, chunks, cell, touching_fraction)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        root.attrs["multiscales"] = ngff_multiscales("phantom", ("z", "y", "x"), spacing_mm)
        image = root.create_array("0", shape=shape, chunks=chunks, dtype=np.uint8, fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
        labels = root.create_group("labels")
        labels.attrs["labels"] = ["label", "instance"]
        truth = {}
        for name, dtype in (("label", np.uint8), ("instance", np.int32)):
            group = labels.create_group(name)
            group.attrs["multiscales"] = ngff_multiscales(name, ("z", "y", "x"), spacing_mm)
            group.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
            truth[name] = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                             chunk_key_encoding={"name": "v2", "separator": "/"})
        for lo in product(*[range(0, n, c) for n, c in zip(shape, chunks)]):
            hi = tuple(min(a + c, n) for a, c, n in zip(lo, chunks, shape))
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            image[box] = scene.fluorescence_block(lo, hi)
            truth["label"][box], truth["instance"][box] = scene.truth(lo, hi)
        _replace_dir(tmp, path, path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return scene.nuclei
