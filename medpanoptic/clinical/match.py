"""Lesion correspondence between two time points, both on the baseline grid after registration.

Lesions that overlap (by at least `min_overlap` of the smaller one's voxels) are linked; the
connected groups of links say what happened: one to one (the same lesion), many to one
(merged), one to many (split). Lesions left without a link are paired by an optimal
assignment on centroid distance (at most `max_distance_mm`): small lesions that moved more
than their own size. Whatever remains is vanished (earlier only) or new (later only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from ..io.geometry import voxel_to_ras

MIN_OVERLAP = 0.1
MAX_DISTANCE_MM = 10.0


@dataclass(frozen=True)
class Group:
    """Lesions of the earlier and of the later time point that are one finding (either side may be empty)."""

    earlier: tuple[int, ...]
    later: tuple[int, ...]

    @property
    def kind(self) -> str:
        """'same', 'merged', 'split', 'vanished' or 'new'."""
        if not self.later:
            return "vanished"
        if not self.earlier:
            return "new"
        if len(self.earlier) > 1:
            return "merged"
        return "split" if len(self.later) > 1 else "same"


def match_lesions(earlier: np.ndarray, later: np.ndarray, affine: np.ndarray, min_overlap: float = MIN_OVERLAP,
                  max_distance_mm: float = MAX_DISTANCE_MM) -> list[Group]:
    """Groups of instance ids of two instance maps on one grid (`affine`, RAS), see the module docstring."""
    a_ids, b_ids = _ids(earlier), _ids(later)
    a_size = np.bincount(earlier.ravel(), minlength=max(a_ids, default=0) + 1)
    b_size = np.bincount(later.ravel(), minlength=max(b_ids, default=0) + 1)
    both = (earlier > 0) & (later > 0)
    pairs, overlap = np.unique(np.stack([earlier[both], later[both]]), axis=1, return_counts=True)
    parent = {("a", i): ("a", i) for i in a_ids} | {("b", i): ("b", i) for i in b_ids}

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for (a, b), count in zip(pairs.T.tolist(), overlap.tolist()):
        if count >= min_overlap * min(a_size[a], b_size[b]):
            parent[root(("a", a))] = root(("b", b))
    members: dict[tuple, list] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    groups = [Group(tuple(sorted(i for s, i in m if s == "a")), tuple(sorted(i for s, i in m if s == "b")))
              for m in members.values()]
    return _pair_by_distance(groups, earlier, later, affine, max_distance_mm)


def _ids(instance: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(instance) if i > 0]


def _pair_by_distance(groups: list[Group], earlier, later, affine, max_distance_mm: float) -> list[Group]:
    linked = [g for g in groups if g.earlier and g.later]
    alone_a = [g.earlier[0] for g in groups if not g.later]
    alone_b = [g.later[0] for g in groups if not g.earlier]
    if alone_a and alone_b:
        ca, cb = _centroids(earlier, alone_a, affine), _centroids(later, alone_b, affine)
        distance = np.linalg.norm(ca[:, None] - cb[None], axis=-1)
        rows, cols = linear_sum_assignment(distance)
        paired = [(r, c) for r, c in zip(rows, cols) if distance[r, c] <= max_distance_mm]
        linked += [Group((alone_a[r],), (alone_b[c],)) for r, c in paired]
        alone_a = [a for k, a in enumerate(alone_a) if k not in {r for r, _ in paired}]
        alone_b = [b for k, b in enumerate(alone_b) if k not in {c for _, c in paired}]
    return linked + [Group((a,), ()) for a in alone_a] + [Group((), (b,)) for b in alone_b]


def _centroids(instance: np.ndarray, ids: list[int], affine: np.ndarray) -> np.ndarray:
    centers = ndimage.center_of_mass(np.ones(instance.shape), instance, ids)
    return voxel_to_ras(affine, np.asarray(centers, dtype=float).reshape(-1, 3))
