"""Flip test-time augmentation and fold ensembles (`ensemble`, `Segmenter(tta=, folds=)`, `segment --tta --folds`):
outputs averaged before grouping, offsets turned with the flips."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from medpanoptic.cli import main
from medpanoptic.ensemble import FlipAveraged, MeanOfNetworks, flip_subsets, unflip
from medpanoptic.errors import InputError
from medpanoptic.io.nifti import write_nifti
from medpanoptic.nets import HeadLayout
from medpanoptic.segment import Segmenter, shipped_bundles
from medpanoptic.synthetic import nuclei_phantom
from medpanoptic.targets import panoptic_targets


class IdealNetwork(torch.nn.Module):
    """An exactly flip-equivariant "network": its input is a panoptic pair (label, instance as floats) and its
    output the ideal heads of that pair (`panoptic_targets`): confident logits, centres and offsets."""

    def __init__(self, label_set, spacing, sigma_mm: float) -> None:
        super().__init__()
        self.label_set, self.spacing, self.sigma_mm = label_set, spacing, sigma_mm
        self.layout = HeadLayout(label_set.max_id + 1, len(spacing))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for pair in x.round().long():
            t = panoptic_targets(pair, self.label_set, self.spacing, self.sigma_mm)
            logits = 10.0 * torch.moveaxis(torch.nn.functional.one_hot(t["semantic"][0], self.layout.n_classes), -1, 0)
            outputs.append(torch.cat([logits.float(), t["center"], t["offset"]]))
        return torch.stack(outputs)


class FixedOutput(torch.nn.Module):
    """A network that ignores its input: the plainest case that is not equivariant at all."""

    def __init__(self, output: torch.Tensor, layout: HeadLayout) -> None:
        super().__init__()
        self.output, self.layout = output, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output


def test_flip_subsets_start_with_no_flip_and_cover_every_subset():
    assert flip_subsets([1, 0]) == [(), (0,), (1,), (0, 1)]
    assert len(flip_subsets(range(3))) == 8


@pytest.mark.parametrize("dims", [2, 3])
def test_tta_of_an_equivariant_ideal_output_is_that_output(dims, oblique_ct):
    """Off-centre instances of several sizes: a centre map not flipped back, or an offset not turned, would show."""
    phantom = nuclei_phantom(shape=(72, 60), n_nuclei=8, seed=2) if dims == 2 else oblique_ct
    spacing = (0.0005, 0.0005) if dims == 2 else (0.8, 0.9, 2.0)
    ideal = IdealNetwork(phantom.label_set, spacing, sigma_mm=4 * spacing[0])
    x = torch.as_tensor(np.asarray(phantom.pair), dtype=torch.float32)[None]
    expected = ideal(x)
    offsets = expected[0, ideal.layout.offset]
    assert offsets.abs().max() > 3  # real offsets, pointing both ways along every axis
    assert all((offsets[a] > 1).any() and (offsets[a] < -1).any() for a in range(dims))
    averaged = FlipAveraged(ideal)(x)
    assert len(FlipAveraged(ideal).flips) == 2 ** dims
    torch.testing.assert_close(averaged, expected, atol=1e-4, rtol=0)
    # the same average with the offsets flipped back but not turned: they cancel out instead
    naive = sum(ideal(x.flip([2 + a for a in f]) if f else x).flip([2 + a for a in f]) for f in flip_subsets(range(dims)))
    assert (naive[0, ideal.layout.offset] / 2 ** dims).abs().max() < offsets.abs().max() / 2


def test_tta_along_one_axis_turns_only_that_axis_offsets():
    layout = HeadLayout(n_classes=2, spatial_dims=2)  # channels: 2 logits, centre, offset along axis 0, along axis 1
    output = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(1, 5, 2, 3)
    averaged = FlipAveraged(FixedOutput(output, layout), axes=[1])(torch.zeros(1, 1, 2, 3))
    # channels 0..3 average with their mirror along axis 1; the axis-1 offset averages with its mirror's opposite
    assert averaged[0, 0].tolist() == [[1.0, 1.0, 1.0], [4.0, 4.0, 4.0]]
    assert averaged[0, 2].tolist() == [[13.0, 13.0, 13.0], [16.0, 16.0, 16.0]]
    assert averaged[0, 3].tolist() == [[19.0, 19.0, 19.0], [22.0, 22.0, 22.0]]
    assert averaged[0, 4].tolist() == [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]
    restored = unflip(output.clone(), (0,), layout)
    assert restored[0, 3].tolist() == (-output[0, 3].flip(0)).tolist() and restored[0, 4].tolist() == output[0, 4].flip(0).tolist()


def test_flip_axes_outside_the_network_are_refused():
    layout = HeadLayout(n_classes=2, spatial_dims=2)
    with pytest.raises(ValueError, match=r"flip axes \[2\] are not spatial axes of a 2D network \(0..1\)"):
        FlipAveraged(FixedOutput(torch.zeros(1, 5, 2, 2), layout), axes=[0, 2])
    with pytest.raises(ValueError, match="must share one head layout"):
        MeanOfNetworks([FixedOutput(torch.zeros(1), layout), FixedOutput(torch.zeros(1), HeadLayout(3, 2))])


# -- fold ensembles through the Segmenter and the command -------------------------------------------------------
@pytest.fixture(scope="module")
def fold_bundle(tmp_path_factory):
    """The shipped nuclei bundle with two folds: its own weights and a perturbed copy; no models/model.pt."""
    root = tmp_path_factory.mktemp("bundle") / "nuclei_folds"
    shutil.copytree(shipped_bundles() / "nuclei_panoptic_2d", root)
    weights = torch.load(root / "models" / "model.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    perturbed = {k: v * 0.9 + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                 for k, v in weights.items()}
    for fold, state in enumerate((weights, perturbed)):
        (root / "models" / f"fold_{fold}").mkdir()
        torch.save(state, root / "models" / f"fold_{fold}" / "model.pt")
    (root / "models" / "model.pt").unlink()
    return root


@pytest.fixture(scope="module")
def nuclei_image():
    return nuclei_phantom(shape=(64, 64), n_nuclei=5, seed=4).image


def test_fold_ensemble_averages_the_folds_outputs(fold_bundle, nuclei_image):
    single = [Segmenter(fold_bundle, device="cpu", folds=[k]).forward(nuclei_image)["pred"] for k in (0, 1)]
    assert not torch.allclose(single[0], single[1], atol=1e-3)
    ensemble = Segmenter(fold_bundle, device="cpu", folds="all")
    assert [w.parent.name for w in ensemble.weights] == ["fold_0", "fold_1"]
    torch.testing.assert_close(ensemble.forward(nuclei_image)["pred"], (single[0] + single[1]) / 2, atol=1e-5, rtol=0)
    default = Segmenter(fold_bundle, device="cpu")  # no models/model.pt: every fold
    assert default.weights == ensemble.weights
    shipped = Segmenter(shipped_bundles() / "nuclei_panoptic_2d", device="cpu")  # models/model.pt: that one
    assert [w.name for w in shipped.weights] == ["model.pt"] and shipped.network is shipped.networks[0]


def test_tta_in_the_segmenter_averages_flipped_passes_of_the_bundle_network(fold_bundle, nuclei_image):
    plain = Segmenter(fold_bundle, device="cpu", folds="0")
    flipped = Segmenter(fold_bundle, device="cpu", folds="0", tta=[1])
    assert flipped.network.flips == [(), (1,)]
    data = plain.preprocessing({"image": nuclei_image.clone()})
    x = data["image"][None]
    with torch.no_grad():
        mirrored = plain.inferer(x.flip(3), plain.network)
        expected = (plain.inferer(x, plain.network) + unflip(mirrored, (1,), plain.network.layout)) / 2
    torch.testing.assert_close(flipped.forward(nuclei_image)["pred"], expected[0], atol=1e-5, rtol=0)
    result = flipped(nuclei_image)  # grouped and back on the image's grid
    assert tuple(result.pair.shape[1:]) == tuple(nuclei_image.shape[1:])


def test_missing_folds_and_bad_axes_are_refused_by_name(fold_bundle):
    with pytest.raises(InputError, match=r"models: fold\(s\) 3 not in this bundle \(its folds: 0, 1\)"):
        Segmenter(fold_bundle, device="cpu", folds=[0, 3])
    with pytest.raises(InputError, match=r"no fold_<k>/model.pt: the bundle holds no fold ensemble"):
        Segmenter(shipped_bundles() / "nuclei_panoptic_2d", device="cpu", folds="all")
    with pytest.raises(InputError, match=r"tta axes \[2\]: the bundle nuclei_folds segments 2D images \(spatial axes 0..1\)"):
        Segmenter(fold_bundle, device="cpu", tta=[2])
    with pytest.raises(InputError, match=r"--folds 'one': expected 'all' or fold numbers such as 0,2"):
        Segmenter(fold_bundle, device="cpu", folds="one")


def _cases(out) -> dict[str, dict]:
    with open(out / "cases.csv", newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_segment_command_with_tta_and_folds_and_resume_per_setting(fold_bundle, nuclei_image, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(scans / "nuclei.nii.gz", nuclei_image[0].numpy(), nuclei_image.affine.numpy())
    out = tmp_path / "out"
    base = ["segment", str(scans), "--bundle", str(fold_bundle), "--out", str(out), "--device", "cpu", "--to", "nifti,table"]
    assert main(base + ["--tta", "--folds", "0,1"]) == 0
    assert "1 case(s) segmented, 0 already done" in capsys.readouterr().out
    assert (out / "nuclei" / "nuclei_label.nii.gz").is_file() and "nuclei" in _cases(out)
    assert main(base + ["--tta", "--folds", "0,1"]) == 0
    assert "0 case(s) segmented, 1 already done" in capsys.readouterr().out
    assert main(base + ["--tta-axes", "0", "--folds", "0,1"]) == 0  # other flips: done again, not taken as done
    assert "1 case(s) segmented, 0 already done" in capsys.readouterr().out
    assert main(base + ["--folds", "1"]) == 0  # other weights: done again
    assert "1 case(s) segmented, 0 already done" in capsys.readouterr().out
    assert main(base + ["--folds", "0,x"]) == 2
    assert "medpanoptic: error: --folds '0,x': expected 'all' or fold numbers such as 0,2" in capsys.readouterr().err
