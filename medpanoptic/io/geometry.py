"""The one place where voxel indices meet patient coordinates.

Conventions:
- Arrays are indexed (i, j, k) = (column, row, slice), as MONAI and NIfTI do; SimpleITK's
  numpy views, DICOM frames, NIfTI and NRRD bytes are (k, j, i) ("planes first"): every
  reader and writer crosses between the two with `to_ijk_order` / `from_ijk_order`, nowhere else.
- `MetaTensor.affine` maps (i, j, k, 1) to RAS millimetres. DICOM and ITK speak LPS: every
  conversion goes through `ras_to_lps` / `lps_to_ras` / `voxel_to_lps`, defined here only.
- Affines are always 4x4, for 2D images too (the third axis is a unit normal), so that a 2D
  pixel (i, j) still has a patient position (i, j, 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import GeometryError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flips the first two patient axes; its own inverse, so it also maps RAS to LPS."""

ORTHONORMAL_TOLERANCE = 1e-4

GRID_TOLERANCE = 1e-3
"""How far (in voxels of the finer grid) any voxel centre may move between two affines that
`same_grid` still calls one grid. Relative to the voxel size, so a microscopy grid of 0.25 µm
pixels is judged as strictly as a CT grid of 1 mm voxels (an absolute 1e-3 mm would be four
pixels there); a thousandth of a voxel at the grid's far corner is invisible, and still more
than ten times the float32 rounding of a NIfTI header (about 1e-7 of the origin's distance)."""


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """The 4x4 LPS affine (DICOM's, ITK's) of a 4x4 RAS affine (MONAI's, NIfTI's)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """The 4x4 RAS affine of a 4x4 LPS affine (the flip is its own inverse)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def lps_transform_to_ras(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 point transform in LPS mm (ITK's registration result) as the same transform in RAS mm."""
    return LPS_TO_RAS @ np.asarray(matrix, dtype=float) @ LPS_TO_RAS


def to_ijk_order(voxels: np.ndarray) -> np.ndarray:
    """A view of planes-first voxels (k, j, i) — SimpleITK's, DICOM frames', NIfTI's byte order —
    indexed (i, j, k). A trailing component axis (k, j, i, c) comes first: (c, i, j, k)."""
    return np.asarray(voxels).T


def from_ijk_order(array: np.ndarray) -> np.ndarray:
    """The voxels of an (i, j[, k]) array as a C-contiguous planes-first (k, j, i) array; a channel-first
    (c, i, j, k) array becomes (k, j, i, c). The inverse of `to_ijk_order`.

    Free for arrays already in that layout (what ITK and nibabel readers return). Otherwise a
    3D array is transposed one j-plane at a time: each plane's source rows are contiguous, so
    the copy stays in cache (several times faster than a whole-volume transpose).
    """
    array = np.asarray(array)
    if array.flags.f_contiguous:
        return array.T
    if array.ndim != 3:
        return np.ascontiguousarray(array.T)
    # one thread per plane copy: the writers already run maps side by side, and a multi-threaded
    # copy per plane (torch's) waits on a barrier 512 times, ten times slower on a loaded machine
    out = np.empty(array.shape[::-1], dtype=array.dtype)
    for j in range(array.shape[1]):
        out[:, j, :] = array[:, j, :].T
    return out


def xy_order(values: np.ndarray) -> np.ndarray:
    """Array-axis order (row, col) / (z, row, col) on the last axis as (x, y) / (x, y, z): the order of
    slide coordinates (GeoJSON, QuPath, `--roi`, grid_sample) against numpy's. Its own inverse."""
    return np.asarray(values)[..., ::-1]


def same_grid(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int], affine_b: np.ndarray) -> bool:
    """Whether two grids put every voxel at the same patient position, within `GRID_TOLERANCE` voxels.

    The shapes are spatial, (i, j[, k]); the largest displacement between the two affines over
    the grid lies at one of its corners, so the origin and each axis' full extent bound it.
    """
    if tuple(int(s) for s in shape_a) != tuple(int(s) for s in shape_b):
        return False
    ndim = len(shape_a)
    a, b = np.asarray(affine_a, dtype=float), np.asarray(affine_b, dtype=float)
    extent = np.maximum(np.asarray(shape_a, dtype=float) - 1, 0)
    axis_drift = np.linalg.norm(a[:3, :ndim] - b[:3, :ndim], axis=0) @ extent
    drift = float(np.linalg.norm(a[:3, 3] - b[:3, 3]) + axis_drift)
    voxel = float(min(spacing_from_affine(a, ndim).min(), spacing_from_affine(b, ndim).min()))
    return drift <= GRID_TOLERANCE * voxel


def affine_from_lps(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """RAS affine (4x4) from an ITK/DICOM-style LPS origin, spacing and row-major direction matrix."""
    n = len(origin)
    if n not in (2, 3) or len(spacing) != n or len(direction) != n * n:
        raise GeometryError(None, f"geometry needs 2 or 3 axes, got origin {origin}, spacing {spacing}")
    lps = np.eye(4)
    lps[:n, :n] = np.asarray(direction, dtype=float).reshape(n, n) * np.asarray(spacing, dtype=float)
    lps[:n, 3] = origin
    return lps_to_ras(lps)


def lps_from_affine(affine: np.ndarray, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, row-major direction) in LPS for an `ndim`-D image with a 4x4 RAS affine."""
    lps = ras_to_lps(affine)
    if ndim == 2 and (np.abs(lps[2, :2]).max() > 1e-6 or np.abs(lps[:2, 2]).max() > 1e-6):
        raise GeometryError(None, "a 2D image's affine must keep its plane in x-y to be written by ITK")
    m = lps[:ndim, :ndim]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise GeometryError(None, f"affine has a zero-length axis: {affine.tolist()}")
    direction = m / spacing
    return tuple(lps[:ndim, 3].tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def spacing_from_affine(affine: np.ndarray, ndim: int = 3) -> np.ndarray:
    """Voxel size in mm along each array axis."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :ndim], axis=0)


def voxel_to_ras(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Patient RAS mm of voxel indices `ijk` of shape (..., 2 or 3)."""
    ijk = np.asarray(ijk, dtype=float)
    a = np.asarray(affine, dtype=float)
    n = ijk.shape[-1]
    return ijk @ a[:3, :n].T + a[:3, 3]


def ras_to_voxel(affine: np.ndarray, ras: np.ndarray, ndim: int = 3) -> np.ndarray:
    """Voxel indices (float, shape (..., ndim)) of patient RAS mm `ras`: the inverse of `voxel_to_ras`
    (for 2D grids, the nearest pixel position of the image plane)."""
    a = np.asarray(affine, dtype=float)
    offset = np.asarray(ras, dtype=float) - a[:3, 3]
    return offset @ np.linalg.pinv(a[:3, :ndim]).T


def voxel_to_lps(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Patient LPS mm (DICOM's frame) of voxel indices `ijk`."""
    return voxel_to_ras(affine, ijk) @ LPS_TO_RAS[:3, :3]


def check_orthonormal(direction: np.ndarray, source: str | None = None) -> None:
    """Refuse sheared or scaled direction cosines: they mean a geometry we would silently get wrong."""
    d = np.asarray(direction, dtype=float)
    if not np.allclose(d.T @ d, np.eye(d.shape[1]), atol=ORTHONORMAL_TOLERANCE):
        raise GeometryError(source, f"direction cosines are not orthonormal (sheared geometry): {d.round(6).tolist()}")


def check_spacing(spacing: Sequence[float], source: str | None, what: str) -> list[float]:
    """Voxel sizes as floats, refused unless every one is finite and positive.

    A negative size mirrors the volume (wrong axis codes) and zero collapses an axis: both
    would put voxels at the wrong place, so neither is guessed around. `what` names the tag
    or header field in the message.
    """
    values = [float(v) for v in spacing]
    bad = [v for v in values if not (np.isfinite(v) and v > 0)]
    if bad:
        raise GeometryError(source, f"{what} is {_listed(values)}: voxel sizes must be finite and positive")
    return values


def _listed(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]" if len(values) != 1 else f"{values[0]:g}"


def affine_from_dicom_planes(
    first_position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_step: Sequence[float],
) -> np.ndarray:
    """RAS affine of a stack of DICOM planes, array axes (column, row, slice).

    `orientation` is ImageOrientationPatient (row cosines then column cosines, LPS),
    `pixel_spacing` is PixelSpacing (between rows, between columns), `slice_step` is the
    LPS vector from one plane's position to the next one's.
    """
    row_cos = np.asarray(orientation[:3], dtype=float)
    col_cos = np.asarray(orientation[3:6], dtype=float)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * float(pixel_spacing[1])
    lps[:3, 1] = col_cos * float(pixel_spacing[0])
    lps[:3, 2] = np.asarray(slice_step, dtype=float)
    lps[:3, 3] = np.asarray(first_position, dtype=float)
    return lps_to_ras(lps)


def dicom_planes_from_affine(affine: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """(ImageOrientationPatient, PixelSpacing, first ImagePositionPatient, LPS slice step) of a RAS affine."""
    lps = ras_to_lps(affine)
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    dx, dy = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    orientation = np.concatenate([col_step / dx, row_step / dy]).tolist()
    return orientation, [dy, dx], lps[:3, 3].copy(), lps[:3, 2].copy()


SLICE_SPACING_TOLERANCE = 0.01
"""Allowed relative deviation of one slice step from the median step before a stack is refused."""


def affine_from_plane_stack(
    positions: np.ndarray,
    orientations: np.ndarray,
    pixel_spacing: Sequence[float],
    source: str | None = None,
    single_slice_thickness: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a stack of DICOM planes and return (RAS affine, order of the planes along the normal).

    `positions` is (n, 3) ImagePositionPatient and `orientations` (n, 6) ImageOrientationPatient
    of each plane, in LPS mm. Refused, with the reason: planes of different orientations,
    sheared stacks (gantry tilt), two planes at one position, missing planes and non-uniform
    spacing — each of them would give a volume whose voxels are not where the patient was.
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    orientations = np.asarray(orientations, dtype=float).reshape(-1, 6)
    if not np.allclose(orientations, orientations[0], atol=ORTHONORMAL_TOLERANCE):
        distinct = np.unique(orientations.round(4), axis=0)
        raise GeometryError(source, f"the slices have {len(distinct)} different orientations; it is not one volume")
    row_cos, col_cos = orientations[0, :3], orientations[0, 3:]
    check_orthonormal(np.stack([row_cos, col_cos], axis=1), source)
    normal = np.cross(row_cos, col_cos)
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth, positions = depth[order], positions[order]
    n = len(positions)
    if n == 1:
        step = normal * (single_slice_thickness or 1.0)
        return affine_from_dicom_planes(positions[0], orientations[0], pixel_spacing, step), order

    steps = np.diff(depth)
    if np.any(steps < 1e-3):
        k = int(np.argmin(steps))
        raise GeometryError(
            source, f"two slices lie at the same position ({depth[k]:.3f} mm along the normal): "
            "several acquisitions, phases or echoes share this series"
        )
    median = float(np.median(steps))
    off = np.abs(steps - median) > SLICE_SPACING_TOLERANCE * median + 1e-3
    if np.any(off):
        k = int(np.flatnonzero(off)[0])
        ratio = steps[k] / median
        if abs(ratio - round(ratio)) < 0.05 and round(ratio) >= 2:
            raise GeometryError(
                source, f"{int(round(ratio)) - 1} missing slice(s) between positions {depth[k]:.2f} and "
                f"{depth[k + 1]:.2f} mm (step {steps[k]:.2f} mm, elsewhere {median:.2f} mm)"
            )
        raise GeometryError(
            source, f"non-uniform slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm"
        )
    step = (positions[-1] - positions[0]) / (n - 1)
    in_plane = step - normal * (step @ normal)
    shear = float(np.linalg.norm(in_plane))
    if shear > 1e-3 * max(1.0, median) and shear > 1e-4:
        tilt = float(np.degrees(np.arctan2(shear, step @ normal)))
        raise GeometryError(
            source, f"sheared slice stack (gantry tilt of {tilt:.2f} degrees): slices shift {shear:.3f} mm "
            "in-plane per slice; resample it to an orthogonal grid first"
        )
    drift = positions - (positions[0] + np.outer(np.arange(n), step))
    if np.abs(drift).max() > SLICE_SPACING_TOLERANCE * median + 1e-3:
        raise GeometryError(source, "slice positions do not lie on one straight line")
    return affine_from_dicom_planes(positions[0], orientations[0], pixel_spacing, step), order
