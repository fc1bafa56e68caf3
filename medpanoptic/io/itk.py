"""SimpleITK images <-> channel-first numpy arrays with a RAS affine (axis order and LPS handled in `geometry`)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .geometry import affine_from_lps, check_orthonormal, from_ijk_order, lps_from_affine, to_ijk_order


def array_from_sitk(image: sitk.Image, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Channel-first array (C, i, j[, k]) and 4x4 RAS affine of a SimpleITK image.

    The array is a transposed view of one copy of the voxels (no second copy is made).
    """
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(ndim, ndim)
    check_orthonormal(direction, source)
    affine = affine_from_lps(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    voxels = sitk.GetArrayFromImage(image)  # (k, j, i[, c])
    array = to_ijk_order(voxels)  # (c, i, j, k) or (i, j, k)
    return (array if image.GetNumberOfComponentsPerPixel() > 1 else array[None]), affine


def sitk_from_array(array: np.ndarray, affine: np.ndarray, vector: bool = False) -> sitk.Image:
    """SimpleITK image of a spatial array (i, j[, k]), or with `vector` a channel-first one, on `affine`."""
    array = np.asarray(array)
    ndim = array.ndim - 1 if vector else array.ndim
    image = sitk.GetImageFromArray(from_ijk_order(array), isVector=vector)  # (k, j, i[, c])
    origin, spacing, direction = lps_from_affine(affine, ndim)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image
