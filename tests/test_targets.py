"""Size-aware centre targets: a big instance gets a blob scaled to its own radius, a small one keeps `sigma_mm`."""

from __future__ import annotations

import numpy as np
import pytest

from medpanoptic.labels import LabelClass, LabelSet
from medpanoptic.targets import equivalent_radius_mm, panoptic_targets

LABELS = LabelSet([LabelClass(1, "nucleus", "thing", (200, 60, 200))])


def _discs(shape, discs):
    label = np.zeros(shape, np.int32)
    instance = np.zeros(shape, np.int32)
    rows, cols = np.indices(shape)
    for i, (r, c, radius) in enumerate(discs, start=1):
        inside = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        label[inside], instance[inside] = 1, i
    return np.stack([label, instance])


def _sigma_px(center_row: np.ndarray, peak: int, d: int = 3) -> float:
    """The Gaussian's width in pixels, read from its value `d` pixels from the peak."""
    return d / np.sqrt(-2.0 * np.log(center_row[peak + d] / center_row[peak]))


def test_large_instance_gets_a_blob_of_its_own_radius_and_small_one_keeps_sigma_mm():
    spacing = (0.5, 0.5)
    pair = _discs((120, 200), [(60, 50, 30), (60, 150, 4)])
    fixed = panoptic_targets(pair, LABELS, spacing, sigma_mm=1.0)["center"][0].numpy()
    aware = panoptic_targets(pair, LABELS, spacing, sigma_mm=1.0, sigma_fraction=0.5)["center"][0].numpy()
    radius_mm = equivalent_radius_mm(int((pair[1] == 1).sum()), spacing)
    assert radius_mm == pytest.approx(15.0, rel=0.02)
    # the big disc: sigma 0.5 x 15 mm = 7.5 mm = 15 px (was 1 mm = 2 px)
    assert _sigma_px(fixed[60], 50) == pytest.approx(2.0, rel=0.02)
    assert _sigma_px(aware[60], 50) == pytest.approx(15.0, rel=0.02)
    # the small disc (radius 2 mm): 0.5 x 2 mm < sigma_mm, so its blob is unchanged
    np.testing.assert_array_equal(aware[:, 130:], fixed[:, 130:])
    # offsets and semantics do not depend on the blob width
    for key in ("semantic", "offset", "offset_weight"):
        np.testing.assert_array_equal(panoptic_targets(pair, LABELS, spacing, 1.0)[key],
                                      panoptic_targets(pair, LABELS, spacing, 1.0, sigma_fraction=0.5)[key])


def test_size_aware_blob_is_round_in_mm_on_anisotropic_pixels():
    spacing = (1.0, 0.25)  # rows 4x coarser than columns
    rows, cols = np.indices((80, 400))
    inside = ((rows - 40) * 1.0) ** 2 + ((cols - 200) * 0.25) ** 2 <= 20.0**2
    pair = np.stack([inside.astype(np.int32), inside.astype(np.int32)])
    center = panoptic_targets(pair, LABELS, spacing, sigma_mm=0.5, sigma_fraction=0.5)["center"][0].numpy()
    sigma_mm = 0.5 * equivalent_radius_mm(int(inside.sum()), spacing)
    assert _sigma_px(center[40], 200, d=8) * spacing[1] == pytest.approx(sigma_mm, rel=0.03)
    assert _sigma_px(center[:, 200], 40, d=2) * spacing[0] == pytest.approx(sigma_mm, rel=0.03)
