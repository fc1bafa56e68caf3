"""Tiled panoptic inference over a slide: read ahead, batched network, grouping on the device, stitching.

    run = segment_slide(open_slide("slide.tif"), "nuclei_panoptic_2d", "out/", ("geojson", "zarr", "table"))

Tiles are read on worker threads into a bounded queue, then resampled, pre-processed (and pinned
when the device is CUDA) on the network's thread; batches of tiles go through the bundle's own
inferer and network (AMP on CUDA); each tile's heads are grouped on the device with
`group_instances`; `stitch.own_instances` keeps the instances whose centre lies in the tile's
core, and the `SlideWriter` merges and streams them out on a thread of its own, while the next
batch is on the device. With `scheduler=ADDRESS` the batches are mapped on a `dask.distributed`
cluster instead and only the stitching and writing stay here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..labels import LabelSet
from ..nets import HeadLayout
from ..postprocess import PostprocessConfig, group_instances
from ._malloc import HeapTrimmer, share_malloc_arenas
from .slide import Slide
from .stitch import id_dtype, own_instances
from .tiles import Tile, TileGrid, in_bands, read_source, read_tile, tile_grid, to_working
from .writers import SlideWriter, check_disk, estimate_bytes, run_fingerprint

log = logging.getLogger(__name__)

CONTEXT_PX = 16
"""Pixels of network context added to the largest instance to make the halo."""


class Predictor(Protocol):
    """The network side of the pipeline: a tile's pixels -> network input, a batch of inputs -> heads."""

    device: torch.device

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """(C, *spatial) float32 pixels as read -> the network's input for one tile (CPU)."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) on the device -> (B, heads, *spatial) on the device."""


class BundlePredictor:
    """A bundle's pre-processing, inferer and network (`Segmenter`) as a `Predictor`."""

    def __init__(self, segmenter) -> None:
        from monai.data import MetaTensor

        self.segmenter = segmenter
        self.device = segmenter.device
        self._meta_tensor = MetaTensor

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        image = self._meta_tensor(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)))
        return torch.as_tensor(self.segmenter.preprocessing({"image": image})["image"]).float().contiguous()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        seg = self.segmenter
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            return torch.as_tensor(seg.inferer(batch, seg.network)).float()


@dataclass(frozen=True)
class Grouping:
    """How heads become instances: the label set, the bundle's grouping knobs and the working pixel size."""

    label_set: LabelSet
    config: PostprocessConfig
    pixel_size_mm: tuple[float, ...]
    backend: str = "auto"

    def __call__(self, heads: torch.Tensor) -> tuple[np.ndarray, dict[int, float]]:
        """One tile's (channels, *spatial) heads -> (2, *spatial) int32 pair, scores."""
        layout = HeadLayout(self.label_set.max_id + 1, len(self.pixel_size_mm))
        parts = layout.split(heads)
        pair, scores = group_instances(parts["semantic"], parts["center"], parts["offset"], self.label_set,
                                       self.pixel_size_mm, self.config, self.backend)
        return pair.cpu().numpy(), scores

    @property
    def stride(self) -> int:
        """A bound on a tile's local ids (heatmap peaks plus as many vote peaks): a power of two."""
        return 1 << math.ceil(math.log2(2 * self.config.top_k + 2))


@dataclass
class Timings:
    """Seconds spent per stage (read: waiting for tiles; network; grouping; stitching and writing)."""

    read: float = 0.0
    network: float = 0.0
    grouping: float = 0.0
    writing: float = 0.0
    tiles: int = 0
    pixels: int = 0

    @property
    def total(self) -> float:
        return self.read + self.network + self.grouping + self.writing


@dataclass
class SlideRun:
    """What `segment_slide` did: the files, the grid, how many tiles were done now or before, the timings."""

    written: dict[str, Path]
    grid: TileGrid
    resumed_tiles: int
    timings: Timings = field(default_factory=Timings)
    instances: int = 0


def bundle_grouping(segmenter) -> Grouping:
    """The bundle's grouping (its `panoptic` transform's config, pixel size and backend)."""
    post = segmenter.panoptic.postprocess
    spacing = tuple(float(s) for s in (post.spacing or ()))
    if not spacing:
        raise InputError(segmenter.bundle, "the bundle's grouping has no pixel size (`pixel_size_mm`): "
                                           "the tiled path needs it to resample slides")
    if post.mode != "grouping":
        raise InputError(segmenter.bundle, f"the tiled path groups by centres, the bundle's mode is {post.mode!r}")
    return Grouping(segmenter.label_set, post.config, spacing, post.backend)


def largest_instance_mm(segmenter) -> float | None:
    """Twice the largest instance the bundle was trained on (its fingerprint's equivalent diameters;
    twice for the scale augmentation's headroom), or None when its fingerprint does not say. It sizes
    the halo from the data, not from the NMS radius, which the post-processing tuner moves."""
    diameters = ((getattr(segmenter, "fingerprint", None) or {}).get("instances") or {}).get("equivalent_diameter_mm") or {}
    largest = diameters.get("max")
    return 2.0 * float(largest) if isinstance(largest, (int, float)) and largest > 0 else None


def halo_for(grouping: Grouping, max_instance_mm: float | None = None) -> int:
    """Halo in working pixels: the largest expected instance (default 8 NMS windows) plus network context,
    rounded up to a multiple of 16."""
    size_mm = max_instance_mm if max_instance_mm is not None else 8 * grouping.config.nms_mm
    px = math.ceil(size_mm / min(grouping.pixel_size_mm)) + CONTEXT_PX
    return 16 * math.ceil(px / 16)


def read_ahead(slide: Slide, grid: TileGrid, tiles: Sequence[Tile], prepare: Callable[[np.ndarray], torch.Tensor],
               workers: int = 2, depth: int = 8, pin: bool = False) -> Iterator[tuple[Tile, torch.Tensor]]:
    """The tiles' network inputs, in order: read on `workers` threads at most `depth` ahead, resampled
    and prepared on this thread.

    No PyTorch on the reader threads: measured on 2 cores, with reader threads that had resampled
    and pre-processed tiles alive, idle, every forward pass on this thread took 1.5x as long (each
    thread that runs a parallel PyTorch operation keeps an OpenMP team of its own; with more OpenMP
    threads than cores, libgomp's barriers stop spinning and sleep)."""

    def load(tile: Tile) -> np.ndarray:
        return read_source(slide, grid, tile)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="medpanoptic-read") as pool:
        pending: deque[tuple[Tile, Future]] = deque()
        queue = iter(tiles)
        for tile in queue:
            pending.append((tile, pool.submit(load, tile)))
            if len(pending) >= depth:
                break
        while pending:
            tile, future = pending.popleft()
            pixels = future.result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            x = prepare(to_working(pixels, slide, grid, tile))
            yield tile, x.pin_memory() if pin else x


def batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class TiledInference:
    """The tiled pipeline for one predictor and grouping; `run` segments one slide into a `SlideWriter`."""

    def __init__(self, predictor: Predictor, grouping: Grouping, batch_size: int = 4, workers: int = 2,
                 depth: int = 8) -> None:
        self.predictor = predictor
        self.grouping = grouping
        self.batch_size = batch_size
        self.workers = workers
        self.depth = depth

    def run(self, slide: Slide, grid: TileGrid, writer: SlideWriter, skip: set[int] = frozenset(),
            progress: bool = False, scheduler: str | None = None) -> Timings:
        tiles = in_bands([t for t in grid.tiles if t.index not in skip])
        timings = Timings()
        bar = _progress(len(grid.tiles), len(grid.tiles) - len(tiles), progress)
        dtype = writer.id_dtype
        trimmer = HeapTrimmer()

        def write(tile: Tile, pair: np.ndarray, scores: dict) -> None:
            start = time.perf_counter()
            writer.write_tile(own_instances(tile, pair, scores, self.grouping.stride, dtype))
            trimmer.tick()
            timings.writing += time.perf_counter() - start
            timings.tiles += 1
            timings.pixels += int(np.prod(tile.shape))

        # stitching and writing run on their own thread, one tile after another (the writer is not
        # shared), while this one feeds the network: the device never waits for the disk
        pending: deque[Future] = deque()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medpanoptic-write")
        try:
            results = (self._distributed(slide, grid, tiles, scheduler, timings) if scheduler
                       else self._local(slide, grid, tiles, timings))
            for tile, pair, scores in results:
                pending.append(pool.submit(write, tile, pair, scores))
                while len(pending) > self.depth or (pending and pending[0].done()):
                    pending.popleft().result()
                    bar.update(1)
            while pending:
                pending.popleft().result()
                bar.update(1)
        finally:  # interrupted: the tiles already computed are still written (and recorded), then it stops
            pool.shutdown(wait=True)
            bar.close()
        return timings

    def _local(self, slide, grid, tiles, timings: Timings) -> Iterator[tuple[Tile, np.ndarray, dict]]:
        pin = self.predictor.device.type == "cuda"
        stream = read_ahead(slide, grid, tiles, self.predictor.prepare, self.workers, self.depth, pin)
        while True:
            start = time.perf_counter()
            batch = [item for _, item in zip(range(self.batch_size), stream)]
            timings.read += time.perf_counter() - start
            if not batch:
                return
            for group in _same_shape(batch):
                yield from self._predict(group, timings)

    def _predict(self, group: list[tuple[Tile, torch.Tensor]], timings: Timings):
        start = time.perf_counter()
        x = torch.stack([item for _, item in group]).to(self.predictor.device, non_blocking=True)
        heads = self.predictor.forward(x)
        _sync(heads)
        timings.network += time.perf_counter() - start
        for (tile, _), tile_heads in zip(group, heads):
            start = time.perf_counter()
            pair, scores = self.grouping(tile_heads)
            timings.grouping += time.perf_counter() - start
            yield tile, pair, scores

    def _distributed(self, slide, grid, tiles, scheduler: str, timings: Timings):
        """The batches of tiles mapped on a dask.distributed cluster (a bounded number in flight)."""
        from distributed import Client, as_completed

        client = scheduler if not isinstance(scheduler, str) else Client(scheduler)
        try:
            work = list(batches(tiles, self.batch_size))
            in_flight = max(2, 2 * sum(client.nthreads().values()))
            job = _BatchJob(self, slide, grid)
            futures = as_completed([client.submit(job, b, pure=False) for b in work[:in_flight]])
            queued = iter(work[in_flight:])
            for future in futures:
                result, spent = future.result()
                timings.network += spent[0]
                timings.grouping += spent[1]
                nxt = next(queued, None)
                if nxt is not None:
                    futures.add(client.submit(job, nxt, pure=False))
                yield from result
        finally:
            if isinstance(scheduler, str):
                client.close()


@dataclass
class _BatchJob:
    """One batch of tiles on a dask worker: read, predict, group (what the local path does in stages)."""

    pipeline: TiledInference
    slide: Slide
    grid: TileGrid

    def __call__(self, tiles: list[Tile]):
        spent = Timings()
        prepared = [(t, self.pipeline.predictor.prepare(read_tile(self.slide, self.grid, t))) for t in tiles]
        out = []
        for group in _same_shape(prepared):
            out += list(self.pipeline._predict(group, spent))
        return out, (spent.network, spent.grouping)


def _same_shape(batch: list[tuple[Tile, torch.Tensor]]) -> Iterator[list[tuple[Tile, torch.Tensor]]]:
    shapes: dict[tuple, list] = {}
    for item in batch:
        shapes.setdefault(tuple(item[1].shape), []).append(item)
    yield from shapes.values()


def _sync(tensor: torch.Tensor) -> None:
    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="tile", desc="tiles", disable=not enabled, dynamic_ncols=True)


def segment_slide(
    slide: Slide,
    bundle: str | os.PathLike | object,
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("geojson", "zarr", "table"),
    *,
    stem: str | None = None,
    roi: Sequence[int] | None = None,
    device: str | None = None,
    core: int | None = None,
    halo: int | None = None,
    max_instance_mm: float | None = None,
    tissue: bool | tuple[np.ndarray, float] = True,
    batch_size: int = 4,
    workers: int = 2,
    scheduler=None,
    resume: bool = True,
    progress: bool = False,
    gzip_geojson: bool = False,
    chunk: int | None = None,
    predictor: Predictor | None = None,
    grouping: Grouping | None = None,
) -> SlideRun:
    """Segment a whole slide (or its `roi`, level-0 pixels x,y,w,h) with a bundle (a name, a folder or a
    loaded `Segmenter`) and write `formats` into `out_dir` as `<stem>.*`.

    `core`/`halo` are tile sizes in working pixels (default 512 in 2D, 128 in 3D; halo from
    `max_instance_mm`, by default the bundle's `largest_instance_mm`, see `halo_for`). `tissue`:
    True detects tissue (`wsi.tissue.tissue_mask`, when available) and skips background tiles; a
    `(mask, downsample)` pair is used as given.
    `predictor` and `grouping` replace the bundle's (tests feed ideal heads this way)."""
    share_malloc_arenas()  # before the reader and writer threads start (see `_malloc`)
    windows: tuple = (None, None)
    if predictor is None or grouping is None:
        from ..segment import Segmenter

        segmenter = bundle if isinstance(bundle, Segmenter) else Segmenter(bundle, device)
        predictor = predictor or BundlePredictor(segmenter)
        grouping = grouping or bundle_grouping(segmenter)
        windows = inferer_windows(segmenter.inferer)
        max_instance_mm = max_instance_mm if max_instance_mm is not None else largest_instance_mm(segmenter)
    ndim = len(slide.shape)
    if len(grouping.pixel_size_mm) != ndim:
        raise InputError(slide.path, f"a {ndim}D slide; the bundle segments {len(grouping.pixel_size_mm)}D images")
    core = core or _default_core(ndim, windows[1])
    halo = halo if halo is not None else halo_for(grouping, max_instance_mm)
    mask = _tissue(slide) if tissue is True else (tissue or None)
    grid = tile_grid(slide, grouping.pixel_size_mm, core, halo, roi, mask, *windows)
    dtype = id_dtype(grid.n_cores, grouping.stride)
    name = stem or (Path(slide.path).name.split(".")[0] if slide.path else "slide")
    fingerprint = run_fingerprint(slide.path, slide.shape, grid.region, grid.tile_shape, grid.halo, core,
                                  sorted(formats), grouping.config, grouping.pixel_size_mm)
    writer = SlideWriter(out_dir, name, formats, grid, grouping.label_set, dtype, fingerprint, gzip_geojson,
                         chunk=chunk)
    check_disk(out_dir, estimate_bytes(grid, formats, dtype))
    done = writer.open(resume)
    try:
        timings = TiledInference(predictor, grouping, batch_size, workers).run(slide, grid, writer, done, progress, scheduler)
    finally:
        writer.close()
    n = writer.counts.get("table") or writer.counts.get("geojson") or writer.counts.get("centroids") or 0
    written = writer.finish()
    return SlideRun(written, grid, len(done), timings, n)


def inferer_windows(inferer) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The window and step of a MONAI `SlidingWindowInferer` (None, None for another inferer): the tile
    grid aligns its tiles on them so that tiled and untiled inference run the very same windows."""
    roi = getattr(inferer, "roi_size", None)
    overlap = getattr(inferer, "overlap", None)
    if roi is None or overlap is None:
        return None, None
    roi = tuple(int(r) for r in roi)
    overlaps = overlap if isinstance(overlap, Sequence) else (overlap,) * len(roi)
    return roi, tuple(max(1, int(r * (1 - o))) for r, o in zip(roi, overlaps))


def _default_core(ndim: int, step: tuple[int, ...] | None) -> int | tuple[int, ...]:
    base = 512 if ndim == 2 else 128
    return base if step is None else tuple(max(s, base // s * s) for s in step)


def _tissue(slide: Slide) -> tuple[np.ndarray, float] | None:
    """The tissue mask of `wsi.tissue` for 2D slides, when that module is there (None: every tile is segmented)."""
    if len(slide.shape) != 2:
        return None
    try:
        from .tissue import tissue_mask
    except ImportError:
        return None
    return tissue_mask(slide)
