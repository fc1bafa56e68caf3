"""Slides for the tiled-path tests: truth pairs with things centred on tile borders, corners and chunk
faces, to run through `medpanoptic.wsi.oracle.TruthHeads` (the truth's targets as network output)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medpanoptic.labels import nuclei_labels
from medpanoptic.postprocess import PostprocessConfig
from medpanoptic.wsi.infer import Grouping
from medpanoptic.wsi.slide import ArraySlide

PIXEL_2D = (0.0005, 0.0005)
VOXEL_3D = (0.002, 0.001, 0.001)  # anisotropic: z twice as coarse
LABELS = nuclei_labels()


def ideal_grouping(spacing: Sequence[float], nms_mm: float = 0.003) -> Grouping:
    return Grouping(LABELS, PostprocessConfig(center_threshold=0.3, nms_mm=nms_mm), tuple(spacing))


def balls(shape: Sequence[int], centres: Sequence[Sequence[float]], radius: float, spacing: Sequence[float]) -> np.ndarray:
    """A (2, *shape) truth pair: tissue everywhere, a nucleus (label 2) of `radius` mm at each centre (voxels)."""
    label = np.ones(shape, np.int32)
    instance = np.zeros(shape, np.int32)
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    for i, centre in enumerate(centres, 1):
        inside = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius ** 2
        inside &= instance == 0
        instance[inside], label[inside] = i, 2
    return np.stack([label, instance])


def truth_slide(pair: np.ndarray, spacing: Sequence[float]) -> ArraySlide:
    return ArraySlide(np.moveaxis(pair, 0, -1).astype(np.float32), spacing)


BORDER_CENTRES_2D = [(128, 128), (128, 60), (60, 128), (256, 256), (200, 128), (128, 250), (127.5, 167.5),
                     (255.5, 100), (30, 30), (290, 290)]
"""Nuclei on the core borders (multiples of 128), on the corners where four cores meet, half a pixel off them."""


def instance_sets(instance: np.ndarray) -> set[frozenset]:
    """Each instance as the set of its flat pixel indices: two maps hold the same instances iff these are equal."""
    flat = instance.reshape(-1)
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {frozenset(g.tolist()) for i, g in zip(ids, groups) if i != 0}


def matched_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels on which two instance maps agree once b's ids are renamed to the a-id they overlap most."""
    pairs = np.stack([a.reshape(-1), b.reshape(-1)], 1)
    fg = pairs[(pairs[:, 0] > 0) | (pairs[:, 1] > 0)]
    rename = {}
    if len(fg):
        keys, counts = np.unique(fg, axis=0, return_counts=True)
        for (ia, ib), n in sorted(zip(map(tuple, keys), counts), key=lambda kv: -kv[1]):
            if ib and ib not in rename and ia and ia not in rename.values():
                rename[ib] = ia
    renamed = np.vectorize(lambda v: rename.get(v, -1 if v else 0))(b) if rename or b.any() else b
    return float((renamed == a).mean())
