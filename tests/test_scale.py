"""Scale without a pixel size: a nuclei image magnified or shrunk, saved as PNG without a pixel size,
is brought to the shipped nuclei bundle's training scale by estimating its objects' size, and the
result lies on the source grid; a pixel size given by the user overrides the estimate."""

from __future__ import annotations

import json
import re
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medpanoptic.io.itk import sitk_from_array
from medpanoptic.io.scan import PIXEL_SIZE_KNOWN, read_scan
from medpanoptic.metrics import panoptic_quality
from medpanoptic.scale import rescale_image, to_source_grid, typical_diameter_px
from medpanoptic.segment import Segmenter
from medpanoptic.synthetic import grid_affine, nuclei_phantom

BUNDLE = "nuclei_panoptic_2d"
SEEDS = (100, 101, 102, 103)
TOLERANCE = 0.05
"""How far below the native-scale PQ_things the rescaled images may come, on average over SEEDS
(the issue's figure). Measured with nuclei_panoptic_2d 0.4.0: grey native 0.937, 0.6x 0.898
(-0.038), 1.6x 0.913 (-0.024); RGB native 0.939, 0.6x 0.902 (-0.037), 1.6x 0.905 (-0.034); over
seeds 100-109 -0.037, -0.035, -0.047, -0.038.

0.3.0 missed it (-0.055 to -0.061 on nuclei drawn on the pixel grid): it had learnt edges that
are exactly pixel edges, and a resampled picture has none (the same nuclei resampled by only
0.95x scored 0.918 against 0.953). The phantoms now image their nuclei by area coverage before
the blur, as optics do, and 0.4.0 was trained on them. What is left is mostly resolution: at 0.6x
the nuclei are 7-14 px wide, and a perfect segmentation carried back scores 0.927 (test below)."""


def magnified(phantom, factor: float, path):
    """The phantom's image resized by `factor` (bilinear; antialiased when shrinking) and written as
    a PNG without a pixel size, and its truth resized by nearest neighbour: what a user gets from
    another magnification."""
    shape = tuple(int(round(n * factor)) for n in phantom.image.shape[1:])
    image = torch.nn.functional.interpolate(phantom.image.as_tensor()[None], size=shape, mode="bilinear",
                                            align_corners=False, antialias=factor < 1)[0]
    truth = torch.nn.functional.interpolate(phantom.pair.as_tensor()[None].double(), size=shape,
                                            mode="nearest-exact")[0].to(torch.int32)
    pixels = np.clip(np.rint(image.numpy()), 0, 255).astype(np.uint8)
    rgb = pixels.shape[0] == 3
    sitk.WriteImage(sitk_from_array(pixels if rgb else pixels[0], np.eye(4), vector=rgb), str(path))
    return path, truth


@pytest.fixture(scope="module")
def segmenters():
    return (Segmenter.from_bundle(BUNDLE, device="cpu"),
            Segmenter.from_bundle(BUNDLE, device="cpu", estimate_scale=False))


def pq_things(result, truth, label_set) -> float:
    return float(panoptic_quality(result.pair, truth, label_set).summary()["pq_things"])


def test_a_png_or_tiff_without_a_pixel_size_says_so(tmp_path):
    pixels = np.zeros((20, 30), dtype=np.uint8)
    for suffix in (".png", ".tif"):
        plain, stated = tmp_path / f"plain{suffix}", tmp_path / f"stated{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(plain))
        with_size = sitk.GetImageFromArray(pixels)
        with_size.SetSpacing((0.0005, 0.0005))
        sitk.WriteImage(with_size, str(stated))
        assert read_scan(plain).meta[PIXEL_SIZE_KNOWN] is False
        assert read_scan(stated).meta[PIXEL_SIZE_KNOWN] is True
    assert PIXEL_SIZE_KNOWN not in nuclei_phantom(shape=(64, 64), n_nuclei=3).image.meta


def test_typical_diameter_is_that_of_the_discs_split_or_touching():
    yy, xx = np.mgrid[:200, :200]
    mask = np.zeros((200, 200), dtype=bool)
    for cy, cx in ((40, 40), (40, 140), (150, 60)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 10 ** 2  # three discs of diameter 20 px
    mask |= (yy - 150) ** 2 + (xx - 77) ** 2 <= 10 ** 2  # the third touches a fourth
    assert typical_diameter_px(mask) == pytest.approx(21.0, abs=1.0)
    assert typical_diameter_px(mask, sampling=(0.0005, 0.0005)) == pytest.approx(21.0 * 0.0005, abs=0.0005)
    assert typical_diameter_px(np.zeros((10, 10), dtype=bool)) is None


def test_rescaled_image_covers_the_same_field_and_comes_back_on_the_source_grid():
    direction = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    affine = grid_affine((50, 40), (0.0005, 0.0007), direction.ravel())
    from medpanoptic.io.scan import make_meta_tensor

    image = make_meta_tensor(np.random.default_rng(0).random((1, 50, 40), dtype=np.float32), affine, {})
    scaled = rescale_image(image, 0.5)
    assert tuple(scaled.shape[1:]) == (25, 20)
    a, b = image.affine.numpy(), scaled.affine.numpy()
    # the scaled pixel (i, j) covers source pixels 2i..2i+1: its centre is at source index 2i + 0.5
    for ij in ((0, 0), (24, 19), (7, 3)):
        source = np.array([2 * ij[0] + 0.5, 2 * ij[1] + 0.5, 0, 1])
        assert np.allclose(b @ np.array([*ij, 0, 1]), a @ source)
    pair = torch.zeros((2, 25, 20), dtype=torch.int32)
    pair[0, 2:6, 2:6], pair[1, 2:6, 2:6] = 2, 7
    pair[0, 10:12, 10:12], pair[1, 10:12, 10:12] = 2, 9
    back, scores, lost = to_source_grid(pair, (50, 40), {7: 0.9, 9: 0.5}, thing_ids=[2])
    assert tuple(back.shape) == (2, 50, 40) and lost == []
    assert int((back[1] == 1).sum()) == 64 and int((back[1] == 2).sum()) == 16
    assert scores == {1: 0.9, 2: 0.5}


@pytest.mark.parametrize("factor, floor", [(0.6, 0.92), (1.6, 0.98)])
def test_a_perfect_segmentation_carried_back_keeps_its_objects(factor, floor):
    """The ceiling of the figures below: the truth at the training scale, carried back onto the
    rescaled image's grid as a prediction is, scored against the truth resampled onto that grid
    (0.927 measured at 0.6x, where 7-14 px nuclei lose their outlines to the grid; 0.983 at 1.6x)."""
    from medpanoptic.scale import scaled_shape

    values = []
    for seed in SEEDS:
        phantom = nuclei_phantom(seed=seed)
        pair = phantom.pair.as_tensor()
        shape = tuple(int(round(n * factor)) for n in pair.shape[1:])
        resample = lambda p, size: torch.nn.functional.interpolate(p[None].double(), size=size, mode="nearest-exact")[0].to(torch.int32)  # noqa: E731
        truth = resample(pair, shape)
        at_training_scale = resample(pair, scaled_shape(shape, 1 / factor))
        back, _, lost = to_source_grid(at_training_scale, shape, {}, thing_ids=phantom.label_set.thing_ids)
        assert lost == []
        values.append(float(panoptic_quality(back, truth, phantom.label_set).summary()["pq_things"]))
    assert floor <= float(np.mean(values)) < 1.0, values


@pytest.fixture(scope="module")
def figures(segmenters, tmp_path_factory):
    """PQ_things per image kind and scale, with and without the estimate, on unseen phantoms."""
    with_estimate, without = segmenters
    folder = tmp_path_factory.mktemp("scaled")
    rows = []
    for rgb in (False, True):
        for seed in SEEDS:
            phantom = nuclei_phantom(rgb=rgb, seed=seed)
            for factor in (1.0, 0.6, 1.6):
                path, truth = magnified(phantom, factor, folder / f"nuclei_{seed}_{'rgb' if rgb else 'grey'}_{factor}.png")
                result = with_estimate(path)
                assert result.pair.shape == (2, *truth.shape[1:])
                assert torch.equal(result.pair.affine, read_scan(path).affine)
                row = {"rgb": rgb, "seed": seed, "factor": factor, "with": pq_things(result, truth, phantom.label_set),
                       "scale": result.scale}
                if factor == 1.6:
                    row["without"] = pq_things(without(path), truth, phantom.label_set)
                rows.append(row)
    return rows


def _mean(rows, key, **where) -> float:
    return float(np.mean([r[key] for r in rows if all(r[k] == v for k, v in where.items())]))


def test_with_the_estimate_pq_things_stays_near_the_native_scale(figures):
    for rgb in (False, True):
        native = _mean(figures, "with", rgb=rgb, factor=1.0)
        for factor in (0.6, 1.6):
            assert _mean(figures, "with", rgb=rgb, factor=factor) >= native - TOLERANCE, (rgb, factor, figures)


def test_without_the_estimate_the_magnified_images_are_worse(figures):
    """The bundle's scale and resampling augmentation keep it from cutting 1.6x nuclei in two on its own
    (0.3.0, RGB: PQ_things 0.848 without the estimate, where the unaugmented weights gave ~0.4); bringing
    the image to the training scale still adds to that (0.895 with 0.3.0)."""
    for rgb in (False, True):
        assert _mean(figures, "without", rgb=rgb, factor=1.6) < _mean(figures, "with", rgb=rgb, factor=1.6) - 0.03, figures


def test_the_estimate_finds_the_magnification_and_reports_it(figures):
    for row in figures:
        assert row["scale"]["method"] == "estimated"
        if row["factor"] == 1.0:
            assert row["scale"]["factor"] == 1.0
        else:  # the ideal factor is 1 / magnification, within what one image's nuclei tell
            assert row["scale"]["factor"] == pytest.approx(1.0 / row["factor"], rel=0.2), row


def test_a_given_pixel_size_overrides_the_estimate_and_goes_into_the_json(tmp_path, cli_main=None):
    from medpanoptic.cli import main

    phantom = nuclei_phantom(seed=102)
    path, truth = magnified(phantom, 1.6, tmp_path / "big.png")  # 0.5 um / 1.6 per pixel
    out = tmp_path / "out"
    assert main(["segment", str(path), "--bundle", BUNDLE, "--out", str(out), "--to", "nifti,table",
                 "--pixel-size", "0.3125", "--device", "cpu"]) == 0
    document = json.loads((out / "big" / "big_panoptic.json").read_text(encoding="utf-8"))
    assert document["scale"] == {"method": "given", "factor": 0.625, "pixel_size_mm": 0.0003125}
    assert document["shape"] == list(truth.shape[1:])
    assert document["domain"]["ok"] is True  # at the given pixel size it is a nuclei image like the training ones


def test_a_pixel_size_for_a_3d_bundle_is_refused():
    from medpanoptic.errors import InputError

    with pytest.raises(InputError, match="a pixel size is only taken by 2D bundles that state theirs"):
        Segmenter.from_bundle("ct_lesion_panoptic", device="cpu", pixel_size=0.5)


def test_the_estimate_is_logged_naming_the_file(segmenters, tmp_path, caplog):
    path, _ = magnified(nuclei_phantom(seed=103), 1.6, tmp_path / "logged.png")
    with caplog.at_level(logging.WARNING, logger="medpanoptic"):
        result = segmenters[0](path)
    (message,) = [r.getMessage() for r in caplog.records if "no pixel size in the file" in r.getMessage()]
    assert message.startswith(f"{path}: no pixel size in the file; objects about ")
    logged = float(re.search(r"rescaled by ([0-9.]+)", message).group(1))
    assert logged == pytest.approx(result.scale["factor"], abs=1e-3)
