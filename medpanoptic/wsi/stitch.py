"""Stitching: the instances of overlapping tiles become one instance map over the slide.

An instance belongs to the tile whose core holds its centre (the member pixel nearest its
centroid in working-grid pixels, as `postprocess.instance_centres` defines it). The halo is at
least the largest instance, so the owner sees all of it; neighbours see the same instance, but do
not own it. The owner writes all of its pixels, also those in a neighbour's core; the merge rule
makes the result independent of the order the tiles arrive in (and a tile written twice, after a
resumed run, changes nothing):

- in a tile's core, its own instances win; elsewhere in the core a pixel already claimed by an
  instance of another tile is kept, and the rest gets the tile's stuff label (or background where
  the tile saw an instance it does not own: that one is its owner's to write);
- outside its core, a tile writes only its own instances, and only on pixels no instance holds.

Ids are unique over the slide without any shared counter: tile `t`'s local id `i` becomes
`t * stride + i`, `stride` a bound on the instances one tile can hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ..errors import PanopticError
from ..labels import LabelSet
from ..pair import PANOPTIC_DIVISOR, instance_ids
from .tiles import Tile


class Canvas(Protocol):
    """An array readable and writable by region: a numpy array, a zarr array."""

    shape: tuple[int, ...]

    def __getitem__(self, box): ...
    def __setitem__(self, box, value) -> None: ...


@dataclass
class OwnedTile:
    """What one tile contributes to the slide: its pair with slide-wide ids, what it owns and their centres.

    `pair` is (2, *tile.shape) on the tile's read box with the owned instances' ids already made
    global; `owned` maps each owned global id to (class id, centre in working-grid pixels).
    """

    tile: Tile
    pair: np.ndarray
    owned: dict[int, tuple[int, tuple[float, ...]]]
    scores: dict[int, float] = field(default_factory=dict)

    def own_mask(self) -> np.ndarray:
        """The pixels of the owned instances (the only non-zero ids of `pair`)."""
        return self.pair[1] != 0


def id_dtype(n_tiles: int, stride: int) -> np.dtype:
    """int32 when every id `t * stride + i` fits, else int64."""
    return np.dtype(np.int32) if n_tiles * stride < np.iinfo(np.int32).max else np.dtype(np.int64)


def panoptic_divisor(max_id: int, divisor: int = PANOPTIC_DIVISOR) -> int:
    """The divisor for `panoptic_id = label * divisor + instance` over a slide whose ids reach `max_id`:
    `divisor` when it is larger, else the next power of ten that is; refused if labels would not fit int64."""
    while divisor <= max_id:
        divisor *= 10
    if divisor > np.iinfo(np.int64).max // 256:
        raise PanopticError(f"instance ids up to {max_id} leave no room for a label in a 64-bit panoptic id")
    return divisor


def own_instances(tile: Tile, pair: np.ndarray, scores: dict[int, float], stride: int,
                  dtype: np.dtype = np.dtype(np.int32)) -> OwnedTile:
    """The tile's grouping (a (2, *tile.shape) pair, local ids 1..N, and their scores) as an `OwnedTile`:
    the instances whose centre lies in the core keep their pixels under global ids, the others are
    marked 0 in the instance channel (their label stays, for the merge to know they were there)."""
    if pair.shape[1:] != tile.shape:
        raise PanopticError(f"tile {tile.index}: a pair of shape {pair.shape[1:]} for a read box of {tile.shape}")
    local_max = int(pair[1].max()) if pair[1].size else 0
    if local_max >= stride:
        raise PanopticError(f"tile {tile.index}: {local_max} instances, more than the {stride - 1} a tile may hold")
    from .._kernels import instance_summary

    core = tile.core_in_box()
    ids = instance_ids(pair[1])
    centre = instance_summary(pair[0], pair[1], ids, (1.0,) * len(core))["centre"]
    origin = np.array([b.start for b in tile.box])
    in_core = np.ones(len(ids), bool)
    for axis, c in enumerate(core):
        in_core &= (centre[:, axis] >= c.start) & (centre[:, axis] < c.stop)
    offset = tile.index * stride
    lut = np.zeros(local_max + 1, dtype=dtype)
    lut[ids[in_core]] = offset + ids[in_core]
    classes = pair[0][tuple(centre[in_core].T)]
    owned = {int(offset + i): (int(k), tuple(float(v) for v in c + origin))
             for i, k, c in zip(ids[in_core].tolist(), classes.tolist(), centre[in_core])}
    owned_scores = {int(offset + i): float(scores[i]) for i in ids[in_core].tolist() if i in scores}
    out = np.empty(pair.shape, dtype=dtype)
    out[0] = pair[0]
    np.take(lut, pair[1], out=out[1])
    return OwnedTile(tile, out, owned, owned_scores)


def merge_tile(part: OwnedTile, label: Canvas, instance: Canvas, label_set: LabelSet,
               region: Sequence[slice] | None = None) -> None:
    """Write `part` into the slide's `label` and `instance` canvases by the merge rule of this module.

    The canvases cover `region` of the working grid (default: from the origin); the tile's
    pixels outside it are not written."""
    tile = part.tile
    origin = [0] * len(tile.box) if region is None else [r.start for r in region]
    stop = [o + n for o, n in zip(origin, instance.shape)]
    clipped = tuple(slice(max(b.start, o), min(b.stop, s)) for b, o, s in zip(tile.box, origin, stop))
    if any(c.start >= c.stop for c in clipped):
        return
    on_canvas = tuple(slice(c.start - o, c.stop - o) for c, o in zip(clipped, origin))
    in_tile = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(clipped, tile.box))
    old_label = np.asarray(label[on_canvas])
    old_instance = np.asarray(instance[on_canvas])
    new_label = part.pair[0][in_tile]
    new_instance = part.pair[1][in_tile]
    own = part.own_mask()[in_tile]
    in_core = np.zeros(own.shape, bool)
    in_core[tuple(slice(max(c.start, k.start) - k.start, max(min(c.stop, k.stop) - k.start, 0))
                  for c, k in zip(tile.core, clipped))] = True
    free = old_instance == 0
    take_own = own & (in_core | free)
    take_stuff = in_core & ~own & free
    if not (take_own.any() or take_stuff.any()):
        return
    things = np.asarray(label_set.thing_ids, dtype=new_label.dtype)
    stuff_label = np.where(np.isin(new_label, things), 0, new_label)
    label_out = np.where(take_own, new_label, np.where(take_stuff, stuff_label, old_label))
    instance_out = np.where(take_own, new_instance, np.where(take_stuff, 0, old_instance))
    label[on_canvas] = label_out.astype(old_label.dtype, copy=False)
    instance[on_canvas] = instance_out.astype(old_instance.dtype, copy=False)
