import cc3d
import numpy as np
import pytest
import torch

from medpanoptic.io.table import instance_table
from medpanoptic.pair import check_pair
from medpanoptic.synthetic import ct_phantom, grid_affine, nuclei_phantom, oblique_direction


def test_deterministic_by_seed():
    a, b, c = ct_phantom(seed=4), ct_phantom(seed=4), ct_phantom(seed=5)
    assert torch.equal(a.image, b.image) and torch.equal(a.pair, b.pair)
    assert not torch.equal(a.pair, c.pair)


def test_truth_is_a_valid_pair(oblique_ct, nuclei):
    check_pair(oblique_ct.pair, oblique_ct.label_set)
    check_pair(nuclei.pair, nuclei.label_set)
    assert set(np.unique(oblique_ct.pair[0].numpy())) == {0, 1, 2, 3}
    assert oblique_ct.n_instances == 6 and nuclei.n_instances == 12


@pytest.mark.parametrize("make", [lambda: ct_phantom(n_lesions=10, touching_fraction=0.4, seed=2),
                                  lambda: nuclei_phantom(n_nuclei=20, touching_fraction=0.4, seed=2)])
def test_touching_fraction(make):
    """Touching pairs merge under connected components; separate things do not."""
    ph = make()
    thing = ph.label_set.thing_ids[0]
    mask = (ph.pair[0].numpy() == thing).astype(np.uint8)
    components = cc3d.connected_components(mask, connectivity=26 if mask.ndim == 3 else 8)
    n = ph.n_instances
    n_touching = int(round(n * 0.4)) // 2 * 2
    assert components.max() == n - n_touching // 2


def test_anatomy_lives_in_physical_space():
    """Rotating the grid about the patient's z axis leaves the anatomy where it was, in mm."""
    kwargs = dict(shape=(80, 80, 30), spacing=(1.0, 1.0, 2.5), n_lesions=0, seed=9)
    straight = ct_phantom(**kwargs)
    rotated = ct_phantom(direction=oblique_direction((0, 0, 30)).ravel(), **kwargs)

    def liver(ph):
        arr = ph.pair.numpy()[0]
        affine = ph.pair.affine.numpy()
        ijk = np.argwhere(arr == 2)
        return (ijk @ affine[:3, :3].T + affine[:3, 3]).mean(0), len(ijk) * abs(np.linalg.det(affine[:3, :3]))

    (c1, v1), (c2, v2) = liver(straight), liver(rotated)
    np.testing.assert_allclose(c1, c2, atol=0.5)
    assert v2 == pytest.approx(v1, rel=0.02)
    assert not np.allclose(straight.pair.affine, rotated.pair.affine)


def test_grid_affine_centres_the_field_of_view():
    affine = grid_affine((11, 21, 5), (0.5, 0.7, 3.0), oblique_direction().ravel())
    centre = affine[:3, :3] @ np.array([5, 10, 2]) + affine[:3, 3]
    np.testing.assert_allclose(centre, 0, atol=1e-9)


def test_rgb_nuclei():
    ph = nuclei_phantom(shape=(96, 96), n_nuclei=8, rgb=True, seed=1)
    assert ph.image.shape == (3, 96, 96)
    inside = ph.pair[0].numpy() == 2
    # nuclei are darker and bluer than tissue in H&E
    assert ph.image[2][inside].mean() > ph.image[0][inside].mean()


def test_lesion_volumes_are_in_requested_range():
    ph = ct_phantom(lesion_radius_mm=(5.0, 6.0), touching_fraction=0, n_lesions=5, seed=3)
    for s in instance_table(ph.pair, affine=ph.pair.affine.numpy()):
        r = (3 * s["volume_mm3"] / (4 * np.pi)) ** (1 / 3)
        assert 5.0 * 0.6 < r < 6.0 * 1.4


def test_nuclei_are_imaged_by_area_coverage_before_sampling():
    """Each pixel holds the share of its area a nucleus covers: a lone ellipse's coverage sums to its
    analytic area, the rim holds partial values, and the coverage lies where the pixel-centre truth
    does (same centroid: the fine points are centred on their pixels)."""
    from medpanoptic.synthetic import _Blob, _coverage, _rasterize_things

    spacing, shape = (0.0005, 0.0005), (64, 64)
    affine = grid_affine(shape, spacing)
    blob = _Blob(center=np.array([0.0013, -0.0021]), radii=np.array([0.0051, 0.0033]),
                 rotation=np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]]), contrast=1.0)
    area_px = np.pi * 0.0051 * 0.0033 / (spacing[0] * spacing[1])
    cover, mean_of = _coverage([blob], affine, shape, spacing, 8)
    assert abs(cover.sum() - area_px) / area_px < 0.005
    rim = (cover > 0) & (cover < 1)
    assert rim.sum() > 0.5 * np.sqrt(area_px) and np.allclose(mean_of(np.array([0.0, 2.0])), 2.0 * cover)
    truth = _rasterize_things([blob], affine, shape) > 0
    assert (cover[truth] >= 0.2).all() and (cover[~truth] <= 0.8).all()  # a centre inside: a pixel mostly covered
    ii, jj = np.nonzero(truth)
    centroid = np.array([(cover * np.arange(64)[:, None]).sum(), (cover * np.arange(64)[None, :]).sum()]) / cover.sum()
    assert np.allclose(centroid, [ii.mean(), jj.mean()], atol=0.15)
    hard = nuclei_phantom(n_nuclei=8, seed=3, supersample=1)
    soft = nuclei_phantom(n_nuclei=8, seed=3)
    assert torch.equal(hard.pair, soft.pair)  # the truth is the same: pixels whose centre lies in a nucleus
