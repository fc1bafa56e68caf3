"""Phantoms of known lesions for the clinical tests, built by hand in patient space (RAS mm).

A body (soft tissue, an elliptic cylinder along patient z) with a liver (the body's part with
x < `LIVER_X`), a dense "spine" to give registration something asymmetric, and ellipsoid lesions
of known axes. A follow-up is the same patient moved by a known rigid motion: a voxel at q
shows the anatomy of the baseline point R^T (q - t), so every object is defined once, in the
baseline's frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medpanoptic.io.geometry import voxel_to_ras
from medpanoptic.io.scan import make_meta_tensor
from medpanoptic.labels import ct_lesion_labels
from medpanoptic.synthetic import Phantom, grid_affine, oblique_direction

OBLIQUE = oblique_direction((20.0, -12.0, 8.0)).ravel()
SPACING = (0.8, 0.9, 2.0)
VOXEL_DIAGONAL = float(np.linalg.norm(SPACING))
LIVER_X = 4.0


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    """A lesion in baseline patient space: centre (RAS mm), semi-axes (mm) and axis directions (columns)."""

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: object = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def inside(self, points: np.ndarray) -> np.ndarray:
        local = (points - np.asarray(self.center)) @ np.asarray(self.rotation, dtype=float) / np.asarray(self.semi_axes)
        return (local**2).sum(-1) <= 1.0

    def scaled(self, factor: float) -> "Ellipsoid":
        return Ellipsoid(self.center, tuple(a * factor for a in self.semi_axes), self.rotation)


def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def rotation_x(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[1.0, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def lesion_phantom(lesions, shape=(72, 72, 36), spacing=SPACING, direction=OBLIQUE,
                   rotation: np.ndarray | None = None, translation=(0.0, 0.0, 0.0)) -> Phantom:
    """Body, liver, spine and `lesions` (numbered 1.. in order), seen after the motion (rotation, translation)."""
    affine = grid_affine(shape, spacing, direction)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    q = voxel_to_ras(affine, ijk)
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    p = (q - np.asarray(translation, dtype=float)) @ r  # R^T (q - t), row vectors
    x, y = p[..., 0], p[..., 1]
    body = (x / 27.0) ** 2 + (y / 24.0) ** 2 <= 1.0
    liver = body & (x < LIVER_X)
    spine = (x - 6.0) ** 2 + (y + 17.0) ** 2 <= 16.0
    label = np.where(body, 1, 0).astype(np.int32)
    label[liver] = 2
    instance = np.zeros(shape, dtype=np.int32)
    for number, lesion in enumerate(lesions, start=1):
        inside = lesion.inside(p) & (instance == 0)
        instance[inside] = number
    label[instance > 0] = 3
    image = np.where(body, 40.0, -1000.0) + np.where(liver, 50.0, 0.0) + np.where(spine & body, 400.0, 0.0)
    image = np.where(instance > 0, 160.0, image).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 5.0, shape).astype(np.float32)
    meta = {"source_format": "phantom"}
    return Phantom(make_meta_tensor(image[None], affine, meta),
                   make_meta_tensor(np.stack([label, instance]), affine, dict(meta)), ct_lesion_labels())
