"""Shared fixtures: phantoms on oblique, anisotropic grids, and the real files shipped by pydicom and nibabel."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medpanoptic.synthetic import ct_phantom, nuclei_phantom, oblique_direction

OBLIQUE = oblique_direction((20.0, -12.0, 8.0)).ravel()
ANISOTROPIC = (0.8, 0.9, 2.0)


@pytest.fixture(scope="session")
def oblique_ct():
    """A small CT phantom on a rotated grid with anisotropic voxels."""
    return ct_phantom(shape=(64, 56, 32), spacing=ANISOTROPIC, direction=OBLIQUE, n_lesions=6, seed=11)


@pytest.fixture(scope="session")
def nuclei():
    return nuclei_phantom(shape=(128, 128), n_nuclei=12, seed=5)


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    import pydicom.data

    return Path(os.path.dirname(pydicom.data.__file__)) / "test_files"


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    import nibabel.tests

    return Path(os.path.dirname(nibabel.tests.__file__)) / "data"


def lps_geometry(affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, spacing, direction) in LPS of a RAS affine — computed here independently of medpanoptic."""
    a = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    return a[:3, 3], spacing, a[:3, :3] / spacing
