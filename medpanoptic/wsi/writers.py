"""Streaming writers of a slide's result, tile after tile, never a whole-slide array in memory.

- `zarr`: `<stem>.ome.zarr`, OME-NGFF 0.4 label images `labels/semantic` and `labels/instance`
  (chunked; a multiscale pyramid built chunk by chunk with nearest downsampling; pixel size in
  micrometer; the semantic image's colours and names from the label set);
- `geojson`: `<stem>.geojson` (or `.geojson.gz`), a QuPath-compatible FeatureCollection, one
  Feature per instance: its contour Polygon traced on the pixel corners around it (`contours`),
  in level-0 pixel coordinates (x = column, y = row, pixel corners at integers), `objectType`
  "detection", `classification` {name, color}, `measurements` {"Area µm^2" (2D) | "Volume µm^3", "Score"};
- `centroids`: `<stem>_centroids.geojson`, the same Features as Points, for millions of nuclei;
- `table`: `<stem>_instances.csv`, `parquet`: `<stem>_instances.parquet` (row groups): the
  instance table's columns where they apply (`io.table`), units in the names.

Everything is written into `.<stem>.partial/` beside the outputs and renamed into place at the
end. That folder holds a journal of the finished tiles with the size each text file had after
them: a killed run continues from the last finished tile (text files are cut back to it, zarr
chunks are written whole by the store and a tile's merge can be repeated without changing
anything, see `stitch`). Label image chunks wait in memory for the last tile that touches them
(`canvas`); a tile is journaled only once all the chunks it wrote are stored.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..io.geometry import xy_order
from ..io.paths import inside, safe_component
from ..labels import LabelSet
from .canvas import ChunkedCanvas, capacity_for
from .stitch import OwnedTile, merge_tile, panoptic_divisor
from .tiles import BAND_PX, TileGrid, iter_boxes

SLIDE_FORMATS = ("zarr", "geojson", "centroids", "table", "parquet")
SLIDE_SUFFIXES = {"zarr": ".ome.zarr", "geojson": ".geojson", "centroids": "_centroids.geojson",
                  "table": "_instances.csv", "parquet": "_instances.parquet"}
"""The file or folder each slide format writes beside the stem (`geojson` gets `.gz` with `gzip=True`)."""
TEXT_FORMATS = ("geojson", "centroids", "table")
LABEL_NAMES = ("semantic", "instance")
JOURNAL = "journal.jsonl"
ZARR_CHUNK = 512
log = logging.getLogger(__name__)


def table_columns(ndim: int) -> list[str]:
    """The columns of a slide's instance table (`io.table`'s names where they apply)."""
    axes, xyz = "ijk"[:ndim], "xyz"[:ndim]
    return (["instance", "label", "class", "voxels", "volume_mm3", "area_um2" if ndim == 2 else "volume_um3"]
            + [f"centroid_voxel_{a}" for a in axes] + [f"centroid_level0_px_{a}" for a in xyz]
            + [f"bbox_min_voxel_{a}" for a in axes] + [f"bbox_stop_voxel_{a}" for a in axes] + ["score"])


class SlideWriter:
    """The outputs of one slide, written tile by tile; `finish` puts them in place.

    `grid` gives the working grid (its `region` is what the label images cover); `fingerprint`
    names the run (slide, bundle, grid, formats): a journal of another run is not resumed.
    """

    def __init__(self, out_dir: str | os.PathLike, stem: str, formats: Sequence[str], grid: TileGrid,
                 label_set: LabelSet, id_dtype: np.dtype, fingerprint: str, gzip_geojson: bool = False,
                 simplify_px: float = 0.0, chunk: int | None = None) -> None:
        unknown = [f for f in formats if f not in SLIDE_FORMATS]
        if unknown:
            raise InputError(None, f"unknown slide format(s) {', '.join(unknown)}; choose from {', '.join(SLIDE_FORMATS)}")
        self.out_dir = Path(out_dir)
        self.stem = safe_component(stem, "slide")
        self.formats = list(dict.fromkeys(formats))
        self.grid = grid
        self.label_set = label_set
        self.id_dtype = np.dtype(id_dtype)
        self.fingerprint = fingerprint
        self.gzip_geojson = gzip_geojson
        self.simplify_px = simplify_px
        self.chunk = chunk or (ZARR_CHUNK if len(grid.extent) == 2 else 128)
        self.ndim = len(grid.extent)
        if self.ndim != 2 and any(f in self.formats for f in ("geojson", "centroids")):
            raise InputError(None, "GeoJSON holds 2D contours: a 3D volume is written as zarr, table or parquet")
        self.work = inside(self.out_dir, self.out_dir / f".{self.stem}.partial")
        self.done: set[int] = set()
        self.counts = {f: 0 for f in TEXT_FORMATS}
        self.max_id = 0
        self.text = [f for f in TEXT_FORMATS if f in self.formats or (f == "table" and "parquet" in self.formats)]
        self._files: dict[str, object] = {}
        self._canvases: dict[str, ChunkedCanvas] = {}
        self._unsafe: OrderedDict[int, list] = OrderedDict()  # tile -> [chunks not stored, its journal entry]

    # -- paths ----------------------------------------------------------------------------
    def target(self, fmt: str) -> Path:
        suffix = SLIDE_SUFFIXES[fmt] + (".gz" if fmt == "geojson" and self.gzip_geojson else "")
        return inside(self.out_dir, self.out_dir / f"{self.stem}{suffix}")

    def _part(self, fmt: str) -> Path:
        return self.work / f"{self.stem}{SLIDE_SUFFIXES[fmt]}"

    # -- start and resume -----------------------------------------------------------------
    def open(self, resume: bool = True) -> set[int]:
        """Start, or continue the run its journal records; returns the indices of the finished tiles."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_journal() if resume else None
        if state is None:
            if self.work.exists():
                shutil.rmtree(inside(self.out_dir, self.work))
            self.work.mkdir()
            self._append_journal({"fingerprint": self.fingerprint})
            sizes: dict[str, int] = {}
        else:
            sizes = state
        for fmt in self.text:
            self._open_text(fmt, sizes.get(fmt))
        if "zarr" in self.formats:
            self._open_zarr(fresh=state is None or not self._part("zarr").exists())
        return set(self.done)

    def _read_journal(self) -> dict[str, int] | None:
        path = self.work / JOURNAL
        if not path.is_file():
            return None
        lines = path.read_text(encoding="utf-8").splitlines()
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: the tile it recorded is not finished
        if not entries or entries[0].get("fingerprint") != self.fingerprint:
            return None
        sizes: dict[str, int] = {}
        for entry in entries[1:]:
            self.done.add(int(entry["tile"]))
            sizes, self.counts, self.max_id = entry["sizes"], entry["counts"], entry["max_id"]
        # rewrite the journal without a cut line, so that appends stay parseable
        kept = "".join(json.dumps(e) + "\n" for e in entries)
        path.write_text(kept, encoding="utf-8")
        return sizes

    def _append_journal(self, entry: dict) -> None:
        with open(self.work / JOURNAL, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _open_text(self, fmt: str, size: int | None) -> None:
        path = self._part(fmt)
        if size is None:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(self._header(fmt))
        else:
            with open(path, "r+b") as f:
                f.truncate(size)  # what a killed tile appended after its last journal entry goes
        self._files[fmt] = open(path, "a", encoding="utf-8", newline="")

    def _header(self, fmt: str) -> str:
        if fmt == "table":
            return ",".join(table_columns(self.ndim)) + "\n"
        return '{"type": "FeatureCollection", "features": [\n'

    def _open_zarr(self, fresh: bool) -> None:
        import zarr

        path = self._part("zarr")
        shape = self.grid.region_shape
        chunks = tuple(min(self.chunk, n) for n in shape)
        label_dtype = np.uint8 if self.label_set.max_id < 256 else np.uint16
        if fresh:
            root = zarr.open_group(str(path), mode="w", zarr_format=2)
            labels = root.create_group("labels")
            for name, dtype in zip(LABEL_NAMES, (label_dtype, self.id_dtype)):
                image = labels.create_group(name)
                image.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        root = zarr.open_group(str(path), mode="r+", zarr_format=2)
        arrays = {name: root[f"labels/{name}/0"] for name in LABEL_NAMES}
        self._canvases = {name: ChunkedCanvas(array, capacity_for(chunks, self.grid.tile_shape, BAND_PX,
                                                                  array.dtype.itemsize), fresh, self._stored)
                          for name, array in arrays.items()}
        coming = [self._on_canvas(t.box) for t in self.grid.tiles if t.index not in self.done]
        for canvas in self._canvases.values():
            canvas.expect(coming)

    def _on_canvas(self, box: tuple[slice, ...]) -> tuple[slice, ...]:
        """A working-grid box on the label images (which cover the grid's region), clipped to them."""
        return tuple(slice(max(b.start - r.start, 0), max(min(b.stop, r.stop) - r.start, 0))
                     for b, r in zip(box, self.grid.region))

    # -- one tile -------------------------------------------------------------------------
    def write_tile(self, part: OwnedTile) -> None:
        """Merge one finished tile into the label images and append its instances; journal it once all
        of it is stored (its label image chunks may wait in memory for the neighbouring tiles)."""
        index = part.tile.index
        box = self._on_canvas(part.tile.box)
        if self._canvases:
            for canvas in self._canvases.values():
                canvas.begin(index)
            merge_tile(part, self._canvases["semantic"], self._canvases["instance"], self.label_set, self.grid.region)
        records = self._records(part)
        for fmt in self.text:
            f = self._files[fmt]
            if fmt == "table":
                csv.writer(f, lineterminator="\n").writerows(_table_row(r) for r in records)
                self.counts[fmt] += len(records)
            else:
                for record in records:
                    f.write(self._feature(fmt, record))
                    self.counts[fmt] += 1
            f.flush()
            os.fsync(f.fileno())
        if part.owned:
            self.max_id = max(self.max_id, max(part.owned))
        self.done.add(index)
        sizes = {fmt: self._part(fmt).stat().st_size for fmt in self.text}
        entry = {"tile": index, "sizes": sizes, "counts": dict(self.counts), "max_id": self.max_id}
        self._unsafe[index] = [sum(c.unstored(box, index) for c in self._canvases.values()), entry]
        for canvas in self._canvases.values():
            canvas.done(box)
        self._journal_stored()

    def _stored(self, chunk, tiles: set[int]) -> None:
        """A label image chunk holding writes of `tiles` reached the store."""
        for tile in tiles:
            waiting = self._unsafe.get(tile)
            if waiting is not None:
                waiting[0] -= 1

    def _journal_stored(self) -> None:
        """Journal the tiles, in the order they came, up to the first one not wholly stored yet: a resumed
        run cuts the text files back to the last entry and does the rest again."""
        while self._unsafe:
            tile, (unstored, entry) = next(iter(self._unsafe.items()))
            if unstored > 0:
                return
            del self._unsafe[tile]
            self._append_journal(entry)

    def _records(self, part: OwnedTile) -> list[dict]:
        """The measures and contours of the tile's owned instances, from the owner's view: one compiled
        pass over the tile for all of them (counts, centroids, boxes, class votes), then their rings."""
        from .._kernels import instance_summary

        ids = np.array(sorted(part.owned), dtype=part.pair.dtype)
        if not ids.size:
            return []
        summary = instance_summary(part.pair[0], part.pair[1], ids, self.grid.pixel_size_mm)
        present = summary["count"] > 0
        ids, counts = ids[present], summary["count"][present]
        classes = summary["votes"][present].argmax(axis=1)
        origin = np.array([b.start for b in part.tile.box])
        region_origin = np.array([r.start for r in self.grid.region])
        voxel_mm = float(np.prod(np.asarray(self.grid.pixel_size_mm)))
        centroid = summary["sum"][present] / counts[:, None] + origin  # working-grid voxel index
        start, stop = summary["start"][present], summary["stop"][present]
        size_mm = counts * voxel_mm
        columns = {
            "gid": ids.tolist(), "label": classes.tolist(), "voxels": counts.tolist(), "size_mm": size_mm.tolist(),
            "size_um": (size_mm * 1e3 ** self.ndim).tolist(), "centroid": (centroid - region_origin).tolist(),
            "centroid_level0": xy_order(self.grid.to_level0(centroid + 0.5)).tolist(),
            "low": (start + origin - region_origin).tolist(), "stop": (stop + origin - region_origin).tolist(),
        }
        names = {c.id: c.name for c in self.label_set}
        records = [dict(zip(columns, row)) for row in zip(*columns.values())]
        for record in records:
            record["class"] = names.get(record["label"], str(record["label"]))
            record["score"] = part.scores.get(record["gid"], float("nan"))
        if self.ndim == 2 and "geojson" in self.formats:
            for record, contour in zip(records, self._contours(part.pair[1], ids, start, stop, origin)):
                record["contour"] = contour
        return records

    def _contours(self, instance: np.ndarray, ids: np.ndarray, start: np.ndarray, stop: np.ndarray,
                  origin: np.ndarray) -> list[list[list[float]]]:
        """The outer ring of each instance (`contours.outer_rings`, on pixel corners) as a closed ring
        of level-0 (x, y) coordinates; integers where they all are; the polygons simplified and checked together."""
        import shapely

        from .contours import outer_rings

        corners, offsets = outer_rings(instance, ids, start, stop)
        points = xy_order(self.grid.to_level0(corners + origin))
        rings = shapely.linearrings(points, indices=np.repeat(np.arange(len(ids)), np.diff(offsets)))
        polygons = shapely.polygons(rings)
        if self.simplify_px > 0:
            polygons = shapely.simplify(polygons, self.simplify_px)
        for i in np.flatnonzero(~shapely.is_valid(polygons)):  # a ring touching itself at a corner
            fixed = polygons[i].buffer(0)
            polygons[i] = max(fixed.geoms, key=lambda g: g.area) if fixed.geom_type == "MultiPolygon" else fixed
        coords, index = shapely.get_coordinates(shapely.get_exterior_ring(polygons), return_index=True)
        coords = np.round(coords, 3)
        if np.array_equal(coords, np.rint(coords)):
            coords = coords.astype(np.int64)
        cuts = np.searchsorted(index, np.arange(len(polygons) + 1)).tolist()
        listed = coords.tolist()
        return [listed[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def _feature(self, fmt: str, r: dict) -> str:
        """One GeoJSON Feature (`geojson`: the polygon, `centroids`: the point), after a separator but the first."""
        colour = list(self.label_set[r["label"]].color) if r["label"] in self.label_set else [128, 128, 128]
        geometry = ({"type": "Polygon", "coordinates": [r["contour"]]} if fmt == "geojson" else
                    {"type": "Point", "coordinates": [round(float(v), 3) for v in r["centroid_level0"]]})
        score = None if math.isnan(r["score"]) else round(r["score"], 6)
        measure = "Area µm^2" if self.ndim == 2 else "Volume µm^3"
        feature = {
            "type": "Feature",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"medpanoptic:{self.fingerprint}:{r['gid']}")),
            "geometry": geometry,
            "properties": {"objectType": "detection",
                           "classification": {"name": r["class"], "color": colour},
                           "measurements": {measure: round(r["size_um"], 4), "Score": score},
                           "instance": int(r["gid"])},
        }
        separator = ",\n" if self.counts[fmt] else ""
        return separator + json.dumps(feature, ensure_ascii=False)

    # -- the end --------------------------------------------------------------------------
    def finish(self) -> dict[str, Path]:
        """Close the files, build the pyramid and metadata, and rename every output into place."""
        for canvas in self._canvases.values():
            canvas.flush()
        for fmt, f in self._files.items():
            f.close()
        self._files = {}
        for fmt in ("geojson", "centroids"):
            if fmt in self.formats:
                with open(self._part(fmt), "a", encoding="utf-8") as f:
                    f.write("\n]}\n")
        if "zarr" in self.formats:
            self._finish_zarr()
        if "parquet" in self.formats:
            self._write_parquet()
        written: dict[str, Path] = {}
        for fmt in self.formats:
            part = self._part(fmt)
            if fmt == "geojson" and self.gzip_geojson:
                part = _gzip(part)
            target = self.target(fmt)
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(part, target)
            written[fmt] = target
        shutil.rmtree(inside(self.out_dir, self.work))
        return written

    def close(self) -> None:
        """Store the label image chunks held, journal the tiles now whole, close the open files, and
        leave the partial folder for a later run to resume."""
        try:
            for canvas in self._canvases.values():
                canvas.flush()
            self._journal_stored()
        except OSError as error:  # the disk failing: what is journaled is whole, the rest is done again
            log.warning("%s: the label images could not all be stored (%s); a resumed run redoes those tiles",
                        self.work, error)
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        self._files = {}

    def _write_parquet(self) -> None:
        """The Parquet table from the finished CSV, streamed in row groups (no whole table in memory)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        columns = table_columns(self.ndim)
        source = self._part("table")
        types = {c: pa.string() if c == "class" else pa.float64() if c in ("volume_mm3", "area_um2", "volume_um3", "score")
                 or c.startswith("centroid") else pa.int64() for c in columns}
        schema = pa.schema([(c, types[c]) for c in columns])
        reader = pacsv.open_csv(source, convert_options=pacsv.ConvertOptions(column_types=types),
                                read_options=pacsv.ReadOptions(block_size=1 << 24))
        with pq.ParquetWriter(self._part("parquet"), schema) as writer:
            for batch in reader:
                writer.write_batch(batch)

    def _finish_zarr(self) -> None:
        import zarr

        root = zarr.open_group(str(self._part("zarr")), mode="r+", zarr_format=2)
        n_levels = 1
        for name in LABEL_NAMES:
            group = root[f"labels/{name}"]
            n_levels = _build_pyramid(group)
            group.attrs.update(self._ngff(name, n_levels))
        root["labels"].attrs.update({"labels": list(LABEL_NAMES)})
        root["labels/instance"].attrs["medpanoptic"] = {
            "max_instance_id": int(self.max_id), "panoptic_divisor": panoptic_divisor(int(self.max_id)),
            "label_set": self.label_set.to_dict()}

    def _ngff(self, name: str, n_levels: int) -> dict:
        """NGFF 0.4 multiscales (micrometer, translation of the region) and image-label metadata."""
        axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"[3 - self.ndim:]]
        pixel_um = [p * 1e3 for p in self.grid.pixel_size_mm]
        origin_um = [r.start * p for r, p in zip(self.grid.region, pixel_um)]
        datasets = []
        for k in range(n_levels):
            scale = [p * 2**k for p in pixel_um]
            translation = [o + (2**k - 1) * p / 2 for o, p in zip(origin_um, pixel_um)] if k else origin_um
            datasets.append({"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]})
        label_meta: dict = {"version": "0.4", "source": {"image": "../../"}}
        if name == "semantic":
            label_meta["colors"] = [{"label-value": c.id, "rgba": [*c.color, 255]} for c in self.label_set]
            label_meta["properties"] = [{"label-value": c.id, "name": c.name, "kind": c.kind} for c in self.label_set]
        return {"multiscales": [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets,
                                 "type": "nearest"}], "image-label": label_meta}


def _build_pyramid(group) -> int:
    """Levels 1.. of a label image, each from the one below by taking every second pixel (nearest),
    block by block; until the image fits one chunk. Returns the number of levels."""
    level = 0
    below = group[str(level)]
    while max(below.shape) > max(below.chunks):
        shape = tuple(math.ceil(n / 2) for n in below.shape)
        above = group.create_array(str(level + 1), shape=shape, chunks=below.chunks, dtype=below.dtype,
                                   fill_value=0, overwrite=True)
        for box in iter_boxes(shape, below.chunks):
            source = tuple(slice(2 * b.start, min(2 * b.stop, n)) for b, n in zip(box, below.shape))
            above[box] = np.asarray(below[source])[tuple(slice(None, None, 2) for _ in box)]
        level += 1
        below = above
    return level + 1


def _gzip(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    path.unlink()
    return target


def _table_row(r: dict) -> list:
    """A record as the table's row (`table_columns`): no score is an empty field."""
    score = None if math.isnan(r["score"]) else r["score"]
    return ([r["gid"], r["label"], r["class"], r["voxels"], r["size_mm"], r["size_um"]]
            + r["centroid"] + r["centroid_level0"] + r["low"] + r["stop"] + [score])


def run_fingerprint(*parts: object) -> str:
    """A short stable digest of what defines a run (slide, bundle, grid, formats)."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def estimate_bytes(grid: TileGrid, formats: Iterable[str], id_dtype: np.dtype) -> int:
    """A rough bound of the outputs' size: the label images uncompressed over the tiles' cores with
    their pyramid (a third more), divided by 4 for the store's compression, and 1 kB per 400 pixels
    of text (a nucleus per 400 px² at 0.5 µm/px); what `shutil.disk_usage` is checked against."""
    pixels = sum(int(np.prod([c.stop - c.start for c in t.core])) for t in grid.tiles)
    formats = set(formats)
    total = 0
    if "zarr" in formats:
        total += int(pixels * (1 + np.dtype(id_dtype).itemsize) * 4 / 3 / 4)
    text = sum(f in formats for f in ("geojson", "centroids", "table", "parquet"))
    total += pixels // 400 * 1000 * text // 2
    return total


def check_disk(out_dir: str | os.PathLike, needed: int) -> None:
    """Refuse to start when the output folder's disk has less room than `needed` bytes."""
    folder = Path(out_dir)
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise InputError(out_dir, f"the outputs need about {needed / 1e9:.1f} GB, the disk has {free / 1e9:.1f} GB free")


def write_result(result, stem: str | os.PathLike, fmt: str) -> dict[str, Path]:
    """Write an in-memory `PanopticResult` in a slide format (the registry's `zarr`, `geojson`,
    `centroids`, `parquet`): the whole pair as one tile that owns every instance."""
    from ..io.geometry import spacing_from_affine
    from .stitch import OwnedTile
    from .tiles import Tile, TileGrid

    pair = np.asarray(result.pair.detach().cpu())
    shape = tuple(pair.shape[1:])
    ndim = len(shape)
    spacing = tuple(float(s) for s in spacing_from_affine(np.asarray(result.pair.affine, dtype=float), ndim))
    full = tuple(slice(0, n) for n in shape)
    tile = Tile(0, full, full)
    grid = TileGrid((tile,), full, shape, 0, (1.0,) * ndim, spacing, shape, (0,) * ndim, 1)
    ids = np.unique(pair[1][pair[1] > 0]).tolist()
    owned = {}
    for gid in ids:
        voxels = np.argwhere(pair[1] == gid)
        owned[int(gid)] = (int(np.bincount(pair[0][tuple(voxels.T)]).argmax()), tuple(voxels.mean(0).tolist()))
    dtype = np.dtype(np.int32) if not ids or max(ids) < np.iinfo(np.int32).max else np.dtype(np.int64)
    part = OwnedTile(tile, pair.astype(dtype), owned, dict(result.scores or {}))
    stem = Path(stem)
    writer = SlideWriter(stem.parent, stem.name, [fmt], grid, result.label_set, dtype,
                         run_fingerprint(result.case, fmt, shape))
    writer.open(resume=False)
    try:
        writer.write_tile(part)
    finally:
        writer.close()
    return {fmt: path for fmt, path in writer.finish().items()}
