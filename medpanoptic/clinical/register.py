"""Register a later scan to the baseline: SimpleITK rigid, then affine, on intensities or on stuff labels.

The result is one 4x4 matrix in RAS mm that maps a baseline point to the follow-up point
showing the same anatomy, so a follow-up map is brought onto the baseline grid by sampling it
there (`to_baseline_grid`). ITK's LPS transform becomes RAS in `io.geometry`, as every LPS <-> RAS flip does.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.geometry import lps_transform_to_ras, ras_to_voxel, voxel_to_ras
from ..io.itk import sitk_from_array
from ..labels import LabelSet

IDENTITY = np.eye(4)


def register(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine: np.ndarray,
             stages: tuple[str, ...] = ("rigid", "affine"), seed: int = 0) -> np.ndarray:
    """RAS matrix taking baseline (`fixed`) points to follow-up (`moving`) points; arrays are spatial (i, j, k).

    Mattes mutual information, three resolution levels, a fixed sampling seed (same answer every run).
    """
    fixed_image = sitk.Cast(sitk_from_array(np.asarray(fixed, dtype=np.float32), fixed_affine), sitk.sitkFloat32)
    moving_image = sitk.Cast(sitk_from_array(np.asarray(moving, dtype=np.float32), moving_affine), sitk.sitkFloat32)
    transform = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.GEOMETRY)
    for stage in stages:
        if stage == "affine":
            rigid = transform
            transform = sitk.AffineTransform(3)
            transform.SetCenter(rigid.GetCenter())
            transform.SetMatrix(rigid.GetMatrix())
            transform.SetTranslation(rigid.GetTranslation())
        transform = _optimise(fixed_image, moving_image, transform, seed)
    return _ras_matrix(transform)


def _optimise(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, seed: int) -> sitk.Transform:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                    relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SetInitialTransform(transform, inPlace=False)
    result = method.Execute(fixed, moving)
    return _flatten(result, type(transform))


def _flatten(result: sitk.Transform, kind: type) -> sitk.Transform:
    """The optimised transform itself, out of the composite SimpleITK wraps it in."""
    if isinstance(result, sitk.CompositeTransform) or result.GetName() == "CompositeTransform":
        result = sitk.CompositeTransform(result).GetNthTransform(0)
    return kind(result) if kind is not sitk.Transform else result


def _ras_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 RAS matrix of a SimpleITK matrix-offset transform (which speaks LPS)."""
    matrix = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)
    center = np.asarray(transform.GetCenter(), dtype=float)
    translation = np.asarray(transform.GetTranslation(), dtype=float)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + center - matrix @ center
    return lps_transform_to_ras(lps)


def stuff_guide(label: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """A registration image from a result's stuff classes (things take the value of background)."""
    stuff = np.isin(label, label_set.stuff_ids)
    return np.where(stuff, label, 0).astype(np.float32)


def to_baseline_grid(values: np.ndarray, affine: np.ndarray, baseline_shape, baseline_affine: np.ndarray,
                     transform: np.ndarray = IDENTITY) -> np.ndarray:
    """A follow-up integer map (spatial) sampled (nearest) at the baseline voxels' follow-up positions."""
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in baseline_shape], indexing="ij"), axis=-1)
    points = voxel_to_ras(baseline_affine, ijk)
    points = points @ transform[:3, :3].T + transform[:3, 3]
    where = ras_to_voxel(affine, points)
    return ndimage.map_coordinates(values, np.moveaxis(where, -1, 0), order=0, mode="constant", cval=0)
