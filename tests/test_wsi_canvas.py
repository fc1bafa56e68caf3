"""The chunk-buffered canvas gives the very array that writing through the store gives, with each
chunk encoded once while its tiles come band by band, and stays right when it must evict."""

from __future__ import annotations

import numpy as np
import pytest

from medpanoptic.wsi.canvas import ChunkedCanvas


def _boxes(shape, tile, step):
    return [(slice(r, min(r + tile, shape[0])), slice(c, min(c + tile, shape[1])))
            for r in range(0, shape[0], step) for c in range(0, shape[1], step)]


@pytest.mark.parametrize("capacity", [64, 3])
def test_overlapping_tiles_through_the_canvas_equal_direct_writes(tmp_path, capacity):
    import zarr

    shape, rng = (200, 260), np.random.default_rng(0)
    array = zarr.create_array(str(tmp_path / f"c{capacity}.zarr"), shape=shape, chunks=(64, 64), dtype=np.int32,
                              fill_value=0, zarr_format=2)
    boxes = _boxes(shape, 80, 48)  # read boxes overlapping by their halos
    stored = []
    canvas = ChunkedCanvas(array, capacity, fresh=True, on_flush=lambda key, tiles: stored.append((key, tiles)))
    canvas.expect(boxes)
    expected = np.zeros(shape, np.int32)
    for index, box in enumerate(boxes):
        canvas.begin(index)
        old = canvas[box]
        assert np.array_equal(old, expected[box])
        new = np.where(rng.random(old.shape) < 0.3, index + 1, old)
        canvas[box] = new
        expected[box] = new
        canvas.done(box)
    canvas.flush()
    assert np.array_equal(np.asarray(array[...]), expected)
    keys = [key for key, _ in stored]
    if capacity >= 64:  # every chunk held until its last tile: encoded exactly once
        assert sorted(keys) == sorted(set(keys)) and len(keys) == 4 * 5 and canvas.reads == 0
    else:  # evicted and read back: more writes, same array
        assert len(keys) > 4 * 5 and canvas.reads > 0
    # every tile is reported stored by the chunks it wrote
    assert set().union(*(tiles for _, tiles in stored)) == set(range(len(boxes)))


def test_the_chunks_held_cover_two_rows_of_a_band_within_the_budget():
    from medpanoptic.wsi.canvas import HELD_BYTES, capacity_for

    # 2D: 800² read boxes on 512² chunks, bands of 4096: 6 chunk rows x 11 columns, 66 MiB of int32
    assert capacity_for((512, 512), (800, 800), 4096, 4) == 66
    # 3D: a band's chunks would be gigabytes; the budget bounds them, but never below one read box
    held = capacity_for((128, 128, 128), (192, 192, 192), 4096, 4)
    assert held * 128**3 * 4 <= max(HELD_BYTES, 28 * 128**3 * 4) and held >= 3**3 + 1
