"""A tile's instances measured in one compiled pass and traced on pixel corners, checked against
scipy's and shapely's own answers on random blobs, and the centres against their numpy definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medpanoptic._kernels import instance_summary
from medpanoptic.pair import instance_ids
from medpanoptic.postprocess import instance_centres
from medpanoptic.wsi.contours import outer_rings


def _blobs(seed: int, shape=(48, 56), n=6) -> np.ndarray:
    """Smoothed random blobs as instances 1..n, some with holes, several parts, corner-only contacts."""
    rng = np.random.default_rng(seed)
    instance = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        blob = ndimage.gaussian_filter((rng.random(shape) < 0.35).astype(float), 1.0) > 0.4
        instance[blob & (instance == 0)] = k
    return instance


@pytest.mark.parametrize("seed", range(12))
def test_each_ring_bounds_the_largest_part_of_its_instance_with_holes_filled(seed):
    import shapely
    from shapely import affinity

    instance = _blobs(seed)
    ids = instance_ids(instance)
    summary = instance_summary(np.zeros_like(instance), instance, ids, (1.0, 1.0))
    corners, offsets = outer_rings(instance, ids, summary["start"], summary["stop"])
    assert corners.dtype == np.int32 and offsets[-1] == len(corners)
    for k, value in enumerate(ids):
        ring = corners[offsets[k]:offsets[k + 1]]
        parts, n = ndimage.label(instance == value)  # 4-connected, as the tracer's instances are
        # holes: background not 8-connected to the outside (the dual of 4-connected parts)
        filled = [ndimage.binary_fill_holes(parts == j, structure=np.ones((3, 3))) for j in range(1, n + 1)]
        largest = max(filled, key=np.sum)
        polygon = shapely.Polygon(ring[:, ::-1].astype(float))  # (x, y) = (column, row)
        assert polygon.area == largest.sum()
        # rasterised back (pixel centres inside the polygon) it is that part, holes filled
        rows, cols = np.mgrid[: instance.shape[0], : instance.shape[1]]
        shifted = affinity.translate(polygon, -0.5, -0.5)
        inside = shapely.contains_xy(shifted, cols.ravel(), rows.ravel()).reshape(instance.shape)
        if polygon.is_valid:
            assert np.array_equal(inside, largest)


def test_a_single_pixel_and_an_absent_id():
    instance = np.zeros((3, 4), np.int32)
    instance[1, 2] = 7
    ids = np.array([3, 7], np.int32)
    summary = instance_summary(np.zeros_like(instance), instance, ids, (1.0, 1.0))
    assert summary["count"].tolist() == [0, 1] and summary["centre"].tolist() == [[-1, -1], [1, 2]]
    corners, offsets = outer_rings(instance, ids, summary["start"], summary["stop"])
    assert offsets.tolist() == [0, 0, 4]
    assert sorted(map(tuple, corners.tolist())) == [(1, 2), (1, 3), (2, 2), (2, 3)]


def _centres_by_numpy(pair: np.ndarray, spacing) -> dict:
    """The definition: per instance the member voxel nearest (in mm) to its centroid, the first in C order."""
    label, instance = pair
    out = {}
    for value in np.unique(instance[instance > 0]):
        voxels = np.argwhere(instance == value)
        distance = (((voxels - voxels.mean(0)) * np.asarray(spacing)) ** 2).sum(1)
        centre = voxels[np.argmin(distance)]
        out[int(value)] = (int(label[tuple(centre)]), tuple(centre.tolist()))
    return out


@pytest.mark.parametrize("shape, spacing", [((40, 50), (0.5, 0.25)), ((9, 30, 20), (5.0, 0.7, 0.7))])
def test_the_summary_and_the_centres_follow_their_definitions(shape, spacing):
    rng = np.random.default_rng(3)
    for _ in range(5):
        instance = rng.integers(0, 40, size=shape).astype(np.int32)
        instance[rng.random(shape) < 0.5] = 0
        label = rng.integers(0, 4, size=shape).astype(np.uint8)
        pair = np.stack([label.astype(np.int32), instance])
        expected = _centres_by_numpy(pair, spacing)
        ids = instance_ids(instance)
        summary = instance_summary(label, instance, ids, spacing)
        assert ids.tolist() == sorted(expected)
        for k, value in enumerate(ids.tolist()):
            voxels = np.argwhere(instance == value)
            assert summary["count"][k] == len(voxels)
            assert np.array_equal(summary["start"][k], voxels.min(0)) and np.array_equal(summary["stop"][k], voxels.max(0) + 1)
            assert np.allclose(summary["sum"][k], voxels.sum(0))
            assert np.array_equal(summary["votes"][k], np.bincount(label[instance == value], minlength=summary["votes"].shape[1]))
            assert tuple(summary["centre"][k].tolist()) == expected[value][1]
        affine = np.diag([*spacing, 1.0] if len(shape) == 3 else [*spacing, 1.0, 1.0])
        centres = instance_centres(pair, affine)
        assert {k: v[0] for k, v in centres.items()} == {k: v[0] for k, v in expected.items()}


def test_instance_ids_counts_numpy_and_torch_alike():
    """The writer's thread counts ids with numpy (no PyTorch thread team there); both agree."""
    import torch

    instance = _blobs(5)
    instance[0, 0] = 40  # a gap in the ids
    expected = np.unique(instance[instance > 0])
    assert np.array_equal(instance_ids(instance), expected)
    assert np.array_equal(instance_ids(torch.from_numpy(instance)), expected)
    assert instance_ids(np.zeros((0, 3), np.int32)).size == 0
