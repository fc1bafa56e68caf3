"""Tissue detection on a low-resolution view: the phantom's truth, blank glass, fluorescence, tile lookup."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from medpanoptic.wsi.phantom import write_wsi_phantom
from medpanoptic.wsi.readers import open_slide
from medpanoptic.wsi.slide import ArraySlide
from medpanoptic.wsi.tissue import (
    detection_level,
    otsu_threshold,
    tile_has_tissue,
    tissue_mask,
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_wsi_phantom(tmp_path_factory.mktemp("tissue"), 2048, seed=5, compression="jpeg")


def test_mask_matches_the_phantoms_tissue(phantom):
    truth = np.asarray(zarr.open_group(phantom.truth, mode="r")["label/0"][:]) > 0
    with open_slide(phantom.image) as slide:
        mask, down = tissue_mask(slide)
    assert down == (2.0, 2.0) and mask.shape == (1024, 1024)  # the coarsest level (1 µm/px) is nearest 10 µm
    expected = truth[::2, ::2]
    assert (mask == expected).mean() > 0.97
    assert 0.3 < mask.mean() < 0.9


def test_tiles_on_glass_are_skipped(phantom):
    truth = np.asarray(zarr.open_group(phantom.truth, mode="r")["label/0"][:]) > 0
    with open_slide(phantom.image) as slide:
        mask, down = tissue_mask(slide)
    tiles = [(slice(y, y + 256), slice(x, x + 256)) for y in range(0, 2048, 256) for x in range(0, 2048, 256)]
    blank = [t for t in tiles if not truth[t].any()]
    full = [t for t in tiles if truth[t].mean() > 0.9]
    assert blank and full
    assert not any(tile_has_tissue(mask, down, t) for t in blank)
    assert all(tile_has_tissue(mask, down, t) for t in full)


def test_blank_half_of_a_slide_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 6, size=(512, 512, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(ArraySlide(glass, (0.0005, 0.0005), n_levels=4))[0].any()
    slide = glass.copy()
    slide[:, :256] = np.clip(rng.normal((228, 150, 190), 8, size=(512, 256, 3)), 0, 255).astype(np.uint8)
    mask, down = tissue_mask(ArraySlide(slide, (0.0005, 0.0005), n_levels=4), level=2)
    assert down == (4.0, 4.0)
    assert mask[:, :62].all() and not mask[:, 66:].any()


def test_fluorescence_foreground_by_otsu_and_flat_image_has_none():
    rng = np.random.default_rng(1)
    grey = rng.normal(12, 3, size=(400, 400)).astype(np.float32)
    grey[100:300, 50:250] += 60
    mask, down = tissue_mask(ArraySlide(grey, (0.002, 0.002)), min_object_um=20, min_hole_um=20)
    assert down == (1.0, 1.0)
    assert mask[105:295, 55:245].all() and not mask[:90].any() and not mask[:, 260:].any()
    assert not tissue_mask(ArraySlide(np.full((64, 64), 7.0, np.float32), (0.002, 0.002)))[0].any()


def test_detection_level_nearest_ten_microns():
    slide = ArraySlide(np.zeros((2048, 2048, 3), np.uint8), (0.0005, 0.0005), n_levels=6)  # 0.5 .. 16 µm/px
    assert detection_level(slide) == 4  # 8 µm/px
    small = ArraySlide(np.zeros((1024, 1024, 3), np.uint8), (0.0005, 0.0005), n_levels=6)
    assert detection_level(small) == 4  # 16 µm/px would be 32 px wide: too small, 8 µm/px is 64 px


def test_tile_lookup_maps_level0_boxes_onto_the_mask():
    mask = np.zeros((10, 10), bool)
    mask[3, 5] = True
    assert tile_has_tissue(mask, (16.0, 16.0), (slice(48, 64), slice(80, 96)))
    assert tile_has_tissue(mask, (16.0, 16.0), (slice(60, 70), slice(90, 100)))
    assert not tile_has_tissue(mask, (16.0, 16.0), (slice(0, 48), slice(0, 160)))
    assert not tile_has_tissue(mask, (16.0, 16.0), (slice(64, 160), slice(0, 160)))
    assert not tile_has_tissue(mask, (16.0, 16.0), (slice(48, 80), slice(80, 112)), min_fraction=0.5)  # 1 of 4
    assert tile_has_tissue(mask, (16.0, 16.0), (slice(48, 80), slice(80, 112)), min_fraction=0.2)


def test_otsu_splits_two_populations():
    values = np.concatenate([np.full(100, 10.0), np.full(300, 50.0)])
    assert 10 <= otsu_threshold(values) < 50


def test_volume_foreground_in_3d(tmp_path):
    from medpanoptic.wsi.phantom import write_volume_phantom

    path = tmp_path / "volume.ome.zarr"
    write_volume_phantom(path, shape=(64, 128, 128), chunks=(64, 128, 128), seed=2)  # smaller than a 100 µm cube
    truth = np.asarray(zarr.open_group(path, mode="r")["labels/label/0"][:]) > 0
    with open_slide(path) as slide:
        mask, down = tissue_mask(slide)
    assert down == (1.0, 1.0, 1.0) and mask.shape == truth.shape
    assert (mask == truth).mean() > 0.95
