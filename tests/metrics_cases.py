"""Random panoptic pairs for cross-checking evaluators: a truth and a plausibly wrong prediction."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medpanoptic.labels import LabelSet

LABELS = LabelSet.from_names(stuff=["tissue", "organ"], things=["lesion", "nodule"])  # ids 1, 2 stuff; 3, 4 things


def random_truth(rng: np.random.Generator, shape: tuple[int, ...], n_things: int = 8) -> np.ndarray:
    """A pair with two stuff regions and `n_things` blobs of the two thing classes (some touching)."""
    label = np.zeros(shape, np.int32)
    instance = np.zeros(shape, np.int32)
    grid = np.indices(shape)
    centre = np.array(shape) / 2
    r = np.sqrt(sum(((g - c) / (0.45 * s)) ** 2 for g, c, s in zip(grid, centre, shape)))
    label[r < 1.0] = 1
    label[(r < 0.5) & (grid[0] < centre[0])] = 2
    next_id = 1
    for _ in range(n_things):
        c = rng.uniform(0.15, 0.85, len(shape)) * np.array(shape)
        radius = rng.uniform(1.5, 4.0, len(shape))
        blob = sum(((g - cc) / rr) ** 2 for g, cc, rr in zip(grid, c, radius)) <= 1.0
        blob &= instance == 0
        if blob.sum() < 2:
            continue
        label[blob] = rng.choice([3, 4])
        instance[blob] = next_id
        next_id += 1
    return np.stack([label, instance])


def perturb(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A prediction: shifted and eroded/dilated things, a dropped one, a false one, a merged pair, a relabelled stuff edge."""
    label, instance = truth[0].copy(), truth[1].copy()
    ndim = label.ndim
    out_label = np.where(np.isin(label, [1, 2]), label, 0)
    out_instance = np.zeros_like(instance)
    # stuff: shift the organ a little
    shift = tuple(int(v) for v in rng.integers(-1, 2, ndim))
    organ = np.roll(label == 2, shift, axis=tuple(range(ndim)))
    out_label[(out_label > 0) & organ] = 2
    out_label[(out_label == 2) & ~organ] = 1
    ids = [i for i in np.unique(instance) if i]
    next_id = 1
    for i in ids:
        mask = instance == i
        action = rng.choice(["keep", "shift", "erode", "dilate", "drop", "relabel"], p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
        if action == "drop":
            continue
        cls = int(label[mask][0])
        if action == "relabel":
            cls = 7 - cls  # 3 <-> 4
        if action == "shift":
            mask = np.roll(mask, tuple(int(v) for v in rng.integers(-2, 3, ndim)), axis=tuple(range(ndim)))
        elif action == "erode":
            mask = ndimage.binary_erosion(mask) if ndimage.binary_erosion(mask).any() else mask
        elif action == "dilate":
            mask = ndimage.binary_dilation(mask)
        mask &= out_instance == 0
        if not mask.any():
            continue
        out_label[mask] = cls
        out_instance[mask] = next_id
        next_id += 1
    # a false positive blob
    c = rng.uniform(0.2, 0.8, ndim) * np.array(label.shape)
    grid = np.indices(label.shape)
    fp = (sum((g - cc) ** 2 for g, cc in zip(grid, c)) <= 4.0) & (out_instance == 0)
    if fp.any():
        out_label[fp] = 3
        out_instance[fp] = next_id
    return np.stack([out_label, out_instance])
