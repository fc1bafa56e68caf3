"""Planning from the data (issue #14): layouts, the dataset check, the fingerprint, the plan and its memory model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpanoptic.errors import InputError
from medpanoptic.io.geometry import spacing_from_affine, voxel_to_ras
from medpanoptic.planning.datasets import load_dataset
from medpanoptic.planning.phantoms import Geometry, write_phantom_dataset
from medpanoptic.planning.plan import load_plan
from medpanoptic.planning.transforms import (
    NOMINAL_PIXEL_MM,
    LoadCased,
    NormalizeChannelsd,
)

ANISOTROPIC = Geometry(3, (64, 64, 12), (0.7, 0.7, 5.0), thing_scale=0.5, n_things=3)
MR = Geometry(3, (48, 48, 16), (0.6, 0.6, 4.0), channels=2, thing_scale=0.5, n_things=3)
NUCLEI = Geometry(2, (96, 96), (0.0005, 0.0005), n_things=6)


@pytest.fixture(scope="module")
def msd_oblique(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("msd"), "msd", 4, ANISOTROPIC, oblique=True)


@pytest.fixture(scope="module")
def nnunet_mr(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("nnunet"), "nnunet_v2", 4, MR)


@pytest.fixture(scope="module")
def microscopy_png(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("cells"), "microscopy", 4, NUCLEI, image_format="png")


# -- layouts -------------------------------------------------------------------------------------
def test_msd_layout_loads_with_its_label_set_and_instance_maps(msd_oblique):
    ds = load_dataset(msd_oblique)
    assert (ds.layout, ds.spatial_dims, ds.channels, ds.modality, len(ds.cases)) == ("msd", 3, ["CT"], "CT", 4)
    assert [c.name for c in ds.label_set if c.is_thing] == ["lesion"]
    assert ds.cases[0] == {"case": "phantom_0000", "image": ["imagesTr/phantom_0000.nii.gz"],
                           "label": "labelsTr/phantom_0000.nii.gz", "instance": "instancesTr/phantom_0000.nii.gz",
                           "classes": None}


def test_nnunet_layout_loads_two_channels_and_things_from_dataset_json_or_the_flag(nnunet_mr):
    ds = load_dataset(nnunet_mr)
    assert (ds.layout, ds.channels, ds.modality) == ("nnunet_v2", ["T2", "ADC"], "MR")
    assert ds.cases[1]["image"] == ["imagesTr/phantom_0001_0000.nii.gz", "imagesTr/phantom_0001_0001.nii.gz"]
    assert [c.name for c in ds.label_set if c.is_thing] == ["lesion"]
    flagged = load_dataset(nnunet_mr, things="liver,lesion")
    assert [c.name for c in flagged.label_set if c.is_thing] == ["liver", "lesion"]
    with pytest.raises(InputError, match=r"thing class\(es\) \['tumour'\] are not among the labels"):
        load_dataset(nnunet_mr, things="tumour")
    entry = LoadCased(label_set=ds.label_set, root=ds.root)(ds.cases[0])
    assert entry["image"].shape == (2, 48, 48, 16)
    assert not np.allclose(entry["image"][0].numpy(), entry["image"][1].numpy())  # two different contrasts
    assert int(entry["label"][1].max()) >= 1  # instances from connected components of the thing class


def test_microscopy_png_layout_loads_in_nominal_pixels_with_instances_as_the_thing_class(microscopy_png):
    ds = load_dataset(microscopy_png)
    assert (ds.layout, ds.spatial_dims, ds.channels, ds.modality) == ("microscopy", 2, ["grey"], "microscopy")
    assert [(c.name, c.kind) for c in ds.label_set] == [("nucleus", "thing")]
    entry = LoadCased(label_set=ds.label_set, root=ds.root)(ds.cases[0])
    image, pair = entry["image"], entry["label"]
    assert image.shape == (1, 96, 96) and pair.shape == (2, 96, 96)
    assert np.allclose(spacing_from_affine(image.affine.numpy(), 2), NOMINAL_PIXEL_MM)  # PNG states no pixel size
    assert image.meta["pixel_size_nominal"] is True
    label, instance = pair.numpy()
    assert instance.max() == 6 and set(np.unique(label)) == {0, 1}
    assert np.array_equal(label > 0, instance > 0)


def test_microscopy_tiff_keeps_its_pixel_size_and_class_tables_give_classes(tmp_path):
    root = write_phantom_dataset(tmp_path / "cells", "microscopy", 2, NUCLEI, thing_classes=("tumour", "lymphocyte"))
    ds = load_dataset(root)
    assert sorted(c.name for c in ds.label_set) == ["lymphocyte", "tumour"]
    assert all(c.is_thing for c in ds.label_set)
    entry = LoadCased(label_set=ds.label_set, root=root)(ds.cases[0])
    assert np.allclose(spacing_from_affine(entry["image"].affine.numpy(), 2), 0.0005)
    label, instance = entry["label"].numpy()
    tumour, lymphocyte = ds.label_set.by_name("tumour").id, ds.label_set.by_name("lymphocyte").id
    assert set(np.unique(label[instance % 2 == 0][instance[instance % 2 == 0] > 0])) == {tumour}
    assert set(np.unique(label[instance % 2 == 1])) == {lymphocyte}


def test_loadcased_gives_image_and_pair_on_the_source_grid_oblique_and_anisotropic(msd_oblique):
    """The pair's affine is the image's, the image's is the file's (oblique, 0.7x0.7x5 mm), and the
    truth lands where the phantom put it in patient space."""
    import nibabel as nib

    ds = load_dataset(msd_oblique)
    entry = LoadCased(label_set=ds.label_set.to_dict(), root=ds.root)(ds.cases[0])
    image, pair = entry["image"], entry["label"]
    source = nib.load(ds.root / ds.cases[0]["image"][0])
    assert np.allclose(image.affine.numpy(), source.affine, atol=1e-5)
    assert np.array_equal(pair.affine.numpy(), image.affine.numpy())
    assert np.allclose(spacing_from_affine(image.affine.numpy(), 3), (0.7, 0.7, 5.0), atol=1e-5)
    assert abs(image.affine[0, 1]) > 0.01  # oblique
    from medpanoptic.planning.phantoms import phantom_case
    from medpanoptic.synthetic import oblique_direction

    truth = phantom_case(ANISOTROPIC, 0, oblique_direction().ravel())
    assert np.array_equal(pair.numpy(), truth.pair.numpy())
    centre = np.argwhere(pair[1].numpy() == 1).mean(0)
    assert np.allclose(voxel_to_ras(image.affine.numpy(), centre), voxel_to_ras(truth.pair.affine.numpy(), centre))


def test_loadcased_refuses_a_label_off_the_image_grid_naming_both_files(tmp_path):
    import nibabel as nib

    root = write_phantom_dataset(tmp_path / "ds", "nnunet_v2", 1, MR)
    label = root / "labelsTr" / "phantom_0000.nii.gz"
    moved = nib.load(label)
    affine = moved.affine.copy()
    affine[0, 3] += 3.0  # shifted by 5 voxels
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), affine), label)
    ds = load_dataset(root)
    with pytest.raises(InputError, match=r"phantom_0000\.nii\.gz: not on the grid of its image .*phantom_0000_0000"):
        LoadCased(label_set=ds.label_set, root=root)(ds.cases[0])


def test_the_ct_window_is_widened_to_the_things_so_hyperdense_lesions_are_not_clipped(msd_oblique):
    """The foreground is mostly body and liver: hyperdense lesions (+100 to +130 HU on a 90 HU liver)
    lie above its 99.5th percentile, and nnU-Net's window alone would clip their rims away."""
    from medpanoptic.planning.plan import make_plan

    plan = make_plan(msd_oblique, use_data_analyzer=False)
    foreground, things = plan["fingerprint"]["intensity"][0], plan["fingerprint"]["things_intensity"][0]
    assert things["p99_5"] > foreground["p99_5"] + 30.0
    decision = plan["decisions"]["normalisation"]
    assert decision["value"][0]["clip"] == [min(foreground["p00_5"], things["p00_5"]), things["p99_5"]]
    assert decision["value"][0]["mean"] == foreground["mean"]  # the z-score stays the foreground's
    assert "so that no thing is clipped" in decision["reason"]


def test_normalise_channels_ct_window_then_zscore_and_per_image_zscore():
    import torch
    from monai.data import MetaTensor

    image = MetaTensor(torch.stack([torch.linspace(-1000, 1000, 1000), torch.linspace(0, 50, 1000)]).reshape(2, 10, 10, 10))
    plan = [{"channel": "CT", "scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 100.0},
            {"channel": "T2", "scheme": "zscore", "clip": None, "mean": None, "std": None}]
    out = NormalizeChannelsd("image", plan)({"image": image})["image"]
    assert float(out[0].min()) == pytest.approx(-1.5) and float(out[0].max()) == pytest.approx(1.5)
    assert float(out[1].mean()) == pytest.approx(0.0, abs=1e-5) and float(out[1].std()) == pytest.approx(1.0, abs=1e-4)


# -- the plan file --------------------------------------------------------------------------------
def test_load_plan_refuses_a_file_that_is_not_a_plan(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": "something-else/2"}))
    with pytest.raises(InputError, match=r"plan\.json: not a valid plan: format is 'something-else/2'"):
        load_plan(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"plan\.json: cannot read the plan"):
        load_plan(path)


# -- the dataset check -----------------------------------------------------------------------------
def _broken_nnunet(tmp_path):
    """A two-channel nnU-Net dataset with one problem of each kind in different files."""
    import nibabel as nib

    root = write_phantom_dataset(tmp_path / "bad", "nnunet_v2", 5, MR)
    document = json.loads((root / "dataset.json").read_text())
    document["labels"]["cyst"] = 4
    document["things"] = ["lesion", "cyst"]  # cyst: a thing class with no voxel anywhere
    (root / "dataset.json").write_text(json.dumps(document))
    (root / "imagesTr" / "phantom_0000_0001.nii.gz").unlink()  # missing channel
    label = nib.load(root / "labelsTr" / "phantom_0001.nii.gz")
    shifted = label.affine.copy()
    shifted[1, 3] += 6.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), root / "labelsTr" / "phantom_0001.nii.gz")
    label = nib.load(root / "labelsTr" / "phantom_0002.nii.gz")
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 9  # a class outside the labels
    nib.save(nib.Nifti1Image(values, label.affine), root / "labelsTr" / "phantom_0002.nii.gz")
    image = nib.load(root / "imagesTr" / "phantom_0003_0000.nii.gz")
    volume = np.asarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.stack([volume, volume], -1), image.affine), root / "imagesTr" / "phantom_0003_0000.nii.gz")
    (root / "imagesTr" / "phantom_0004_0001.nii.gz").write_bytes(b"not a nifti file at all")
    return root


def test_a_bad_dataset_lists_all_its_problems_by_file(tmp_path):
    from medpanoptic.planning.check import check_dataset

    root = _broken_nnunet(tmp_path)
    with pytest.raises(InputError) as caught:
        check_dataset(load_dataset(root))
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{root}: 6 problems in the dataset:"
    body = "\n".join(lines[1:])
    assert "  imagesTr/phantom_0000_0001.nii.gz: missing (image)" in lines
    assert "  labelsTr/phantom_0001.nii.gz: not on the grid of its image imagesTr/phantom_0001_0000.nii.gz" in body
    assert "  labelsTr/phantom_0002.nii.gz: class id(s) [9] outside the labels [1, 2, 3, 4]" in lines
    assert "  imagesTr/phantom_0003_0000.nii.gz: 4D where 3D is meant: a 4D image of shape (48, 48, 16, 2)" in body
    assert "  imagesTr/phantom_0004_0001.nii.gz: unreadable: cannot read as NIfTI" in body
    assert "  dataset: thing class 'cyst' (id 4) is empty: no voxel in any case" in lines


def test_the_check_finds_channel_counts_that_differ_between_cases(tmp_path):
    import nibabel as nib

    from medpanoptic.io.nifti import write_nifti
    from medpanoptic.planning.check import dataset_problems

    root = write_phantom_dataset(tmp_path / "msd", "msd", 3, ANISOTROPIC)
    path = root / "imagesTr" / "phantom_0001.nii.gz"
    image = nib.load(path)
    volume = np.asarray(image.get_fdata(), dtype=np.float32)
    write_nifti(path, np.stack([volume, volume]), image.affine, vector=True)
    problems = dataset_problems(load_dataset(root))
    assert [(p.where, p.problem) for p in problems] == [
        ("imagesTr/phantom_0001.nii.gz", "2 channel(s), where the dataset has 1 (CT)")]


# -- the plan follows the data ----------------------------------------------------------------------
def test_an_anisotropic_dataset_gets_an_anisotropic_spacing_and_in_plane_only_first_downsamplings(msd_oblique):
    from medpanoptic.planning.plan import make_plan

    plan = make_plan(msd_oblique, use_data_analyzer=False)
    d = {k: v["value"] for k, v in plan["decisions"].items()}
    assert d["target_spacing_mm"] == pytest.approx([0.7, 0.7, 5.0], abs=1e-4)
    assert "anisotropic" in plan["decisions"]["target_spacing_mm"]["reason"]
    net = d["network"]
    assert net["strides"][0] == [1, 1, 1]
    assert net["strides"][1] == [2, 2, 1] and net["strides"][2] == [2, 2, 1]  # in-plane only until 2.8 mm vs 5 mm
    assert net["kernel_size"][0] == [3, 3, 1] and net["kernel_size"][1] == [3, 3, 1]
    assert net["kernel_size"][-1] == [3, 3, 3]
    assert all(p % s == 0 for p, s in zip(d["patch_size"], np.prod(net["strides"], axis=0)))
    assert plan["decisions"]["normalisation"]["value"][0]["scheme"] == "ct"
    assert all(isinstance(v["reason"], str) and len(v["reason"]) > 20 for v in plan["decisions"].values())


def test_the_anisotropy_rule_takes_the_10th_percentile_of_the_coarse_axis():
    from medpanoptic.planning.plan import target_spacing

    fingerprint = {"spacing_mm": {"median": [0.7, 0.7, 5.0], "p10": [0.6, 0.6, 3.0]}}
    assert target_spacing(fingerprint)["value"] == [0.7, 0.7, 3.0]
    fingerprint = {"spacing_mm": {"median": [1.0, 1.0, 2.5], "p10": [0.8, 0.8, 1.0]}}
    assert target_spacing(fingerprint)["value"] == [1.0, 1.0, 2.5]  # not anisotropic enough: the median


def test_smaller_things_give_smaller_sigma_nms_and_minimum_size(tmp_path):
    from medpanoptic.planning.plan import make_plan

    small = write_phantom_dataset(tmp_path / "small", "microscopy", 3, NUCLEI)
    large = write_phantom_dataset(tmp_path / "large", "microscopy", 3,
                                  Geometry(2, (96, 96), (0.0005, 0.0005), thing_scale=2.0, n_things=3))
    a = {k: v["value"] for k, v in make_plan(small)["decisions"].items()}
    b = {k: v["value"] for k, v in make_plan(large)["decisions"].items()}
    assert a["sigma_mm"] < 0.75 * b["sigma_mm"]
    assert a["nms_mm"] < 0.75 * b["nms_mm"]
    assert a["min_size_mm"] < 0.75 * b["min_size_mm"]
    # size-aware centres: each instance's blob follows its own radius, whatever the dataset's sizes
    assert a["sigma_fraction"] == b["sigma_fraction"] == 0.5


def test_a_smaller_memory_budget_gives_a_smaller_patch_or_batch(nnunet_mr):
    from medpanoptic.planning.datasets import load_dataset
    from medpanoptic.planning.fingerprint import dataset_fingerprint
    from medpanoptic.planning.plan import make_plan

    ds = load_dataset(nnunet_mr)
    fingerprint = dataset_fingerprint(ds, use_data_analyzer=False)
    plans = [make_plan(ds, gpu_memory_gb=gb, fingerprint=fingerprint)["decisions"] for gb in (24.0, 0.3)]
    big, small = ({k: v["value"] for k, v in p.items()} for p in plans)
    assert big["patch_size"] == [48, 48, 16]  # the whole median image fits 24 GB
    assert np.prod(small["patch_size"]) * small["batch_size"] < np.prod(big["patch_size"]) * big["batch_size"]
    assert np.prod(small["patch_size"]) < np.prod(big["patch_size"])
    assert small["estimated_memory_gb"] <= 0.3 < big["estimated_memory_gb"] + 1.0


def test_a_plan_for_cpu_training_is_narrower_smaller_and_has_fixed_length_epochs(nnunet_mr, tmp_path):
    from medpanoptic.planning.bundle import train_config
    from medpanoptic.planning.fingerprint import dataset_fingerprint
    from medpanoptic.planning.plan import CPU_PLAN, load_plan, make_plan, save_plan

    ds = load_dataset(nnunet_mr)
    fingerprint = dataset_fingerprint(ds, use_data_analyzer=False)
    gpu, cpu = (make_plan(ds, fingerprint=fingerprint, device=d) for d in ("gpu", "cpu"))
    g, c = ({k: v["value"] for k, v in p["decisions"].items()} for p in (gpu, cpu))
    assert max(c["network"]["filters"]) == CPU_PLAN["max_filters"] < max(g["network"]["filters"])
    assert c["network"]["filters"][0] == CPU_PLAN["base_filters"] < g["network"]["filters"][0]
    assert c["network"]["strides"] == g["network"]["strides"]  # the topology still follows the spacing
    assert c["estimated_memory_gb"] <= CPU_PLAN["memory_gb"] and np.prod(c["patch_size"]) <= np.prod(g["patch_size"])
    assert c["steps_per_epoch"] == CPU_PLAN["steps_per_epoch"] and g["steps_per_epoch"] is None
    assert "CPU" in cpu["decisions"]["network"]["reason"] and "CPU" in cpu["decisions"]["steps_per_epoch"]["reason"]
    assert train_config(load_plan(save_plan(cpu, tmp_path / "cpu.json")))["steps_per_epoch"] == 50
    with pytest.raises(ValueError, match="device must be one of"):
        make_plan(ds, fingerprint=fingerprint, device="tpu")
    cpu["decisions"]["steps_per_epoch"]["value"] = 0
    with pytest.raises(InputError, match="steps_per_epoch must be a positive integer or null"):
        load_plan(save_plan(cpu, tmp_path / "bad.json"))


def test_the_smallest_budgets_keep_three_network_levels_or_are_refused_naming_the_dataset(nnunet_mr):
    """Was: 0.5 GB with 8 base filters shrank the patch to two levels and MONAI's DynUNet raised a bare
    ValueError; 0.3 GB planned an 8x8x8 patch (a fixed 0.5 GB overhead guess ate the budget)."""
    import torch

    from medpanoptic.nets import PanopticNet
    from medpanoptic.planning.fingerprint import dataset_fingerprint
    from medpanoptic.planning.plan import make_plan

    ds = load_dataset(nnunet_mr)
    fingerprint = dataset_fingerprint(ds, use_data_analyzer=False)
    for gb, base in ((0.5, 8), (0.3, 32), (0.02, 8), (0.01, 8)):
        value = {k: v["value"] for k, v in make_plan(ds, gpu_memory_gb=gb, fingerprint=fingerprint,
                                                     base_filters=base)["decisions"].items()}
        network = value["network"]
        assert len(network["strides"]) >= 3 and value["estimated_memory_gb"] <= gb, (gb, value)
        assert all(p >= 8 for p in value["patch_size"]) and value["patch_size"][:2] >= [16, 16]
        with torch.device("meta"):
            PanopticNet(3, 2, ds.label_set.max_id + 1, filters=network["filters"], strides=network["strides"],
                        kernel_size=network["kernel_size"])
    assert make_plan(ds, gpu_memory_gb=0.3, fingerprint=fingerprint)["decisions"]["patch_size"]["value"] == [40, 40, 12]
    with pytest.raises(InputError, match=r"a memory budget of 0.005 GB is too small for dataset 'medpanoptic phantoms "
                                         r"\(nnU-Net v2\)': the smallest 3-level network \(16x16x8 voxels, batch 1\) "
                                         r"needs 0.00759 GB"):
        make_plan(ds, gpu_memory_gb=0.005, fingerprint=fingerprint, base_filters=8)


def test_a_grid_too_small_for_three_levels_gets_a_padded_patch_that_has_them():
    from medpanoptic.planning.topology import levels, smallest_patch

    assert smallest_patch((0.6, 0.6, 4.0), (10, 10, 3)) == [16, 16, 3]
    assert smallest_patch((1.0, 1.0), (5, 7)) == [16, 16]
    assert levels((0.6, 0.6, 4.0), [16, 16, 3]) == levels((1.0, 1.0), [16, 16]) == 3
    assert smallest_patch((0.7, 0.7, 5.0), (64, 64, 12)) == [64, 64, 12]  # already deep enough: untouched


def test_the_fingerprint_uses_data_analyzer_for_volumes_and_counts_touching_instances(nnunet_mr):
    from medpanoptic.planning.datasets import load_dataset
    from medpanoptic.planning.fingerprint import dataset_fingerprint, touching_instances

    fingerprint = dataset_fingerprint(load_dataset(nnunet_mr))
    assert fingerprint["intensity_source"].startswith("monai.apps.auto3dseg.DataAnalyzer")
    t2, adc = fingerprint["intensity"]
    assert (t2["channel"], adc["channel"]) == ("T2", "ADC") and adc["median"] > t2["median"]
    lesion = fingerprint["things"]["lesion"]
    assert lesion["n_instances"] >= 4 and lesion["instances_per_case"]["median"] >= 1
    assert 0.5 * 2 * 2.0 < lesion["diameter_mm"]["median"] < 2 * 2 * 4.5  # radii 2-4.5 mm (thing_scale 0.5)
    assert lesion["diameter_px"]["median"] == pytest.approx(lesion["diameter_mm"]["median"] / (0.6 * 0.6 * 4.0) ** (1 / 3), rel=0.01)
    instance = np.zeros((6, 6), int)
    instance[1:3, 1:3], instance[3:5, 1:3], instance[1:3, 4:6] = 1, 2, 3
    assert touching_instances(instance) == {1, 2}


def test_the_memory_model_is_within_1_5x_of_a_measured_forward_and_backward():
    """Measured: the bytes autograd saves for backward over the network and the real PanopticLoss,
    plus parameters with AdamW's state, on topologies the model was not calibrated on."""
    import torch

    from medpanoptic.losses import PanopticLoss
    from medpanoptic.nets import PanopticNet
    from medpanoptic.planning.memory import (
        GB,
        OPTIMISER_BYTES_PER_PARAMETER,
        estimate_memory_gb,
        saved_tensor_bytes,
    )
    from medpanoptic.planning.topology import plan_topology

    torch.manual_seed(0)
    for spacing, patch, channels, base in (((0.7, 0.7, 5.0), (48, 48, 8), 2, 8), ((1.0, 1.0), (96, 64), 3, 12)):
        dims, n_classes, batch = len(patch), 3, 2
        network = plan_topology(spacing, patch, base_filters=base)
        net = PanopticNet(dims, channels, n_classes, filters=network["filters"], strides=network["strides"],
                          kernel_size=network["kernel_size"])
        loss = PanopticLoss(net.layout)
        x = torch.randn(batch, channels, *patch)
        target = torch.zeros(batch, 3 + dims, *patch)
        target[:, 0] = torch.randint(0, n_classes, (batch, *patch)).float()

        def step(inputs, loss=loss, net=net, target=target):
            return loss(net(inputs), target)

        measured = saved_tensor_bytes(step, x) + OPTIMISER_BYTES_PER_PARAMETER * sum(p.numel() for p in net.parameters())
        predicted = estimate_memory_gb(patch, batch, network, dims, channels, n_classes, overhead_gb=0.0, slack=0.0) * GB
        assert 1 / 1.5 < predicted / measured < 1.5, (spacing, patch, predicted / measured)


# -- the command ---------------------------------------------------------------------------------------
def test_plan_command_writes_a_loadable_plan_and_prints_its_decisions(msd_oblique, tmp_path, capsys):
    from medpanoptic.cli import main

    out = tmp_path / "plans" / "plan.json"
    assert main(["plan", str(msd_oblique), "--out", str(out), "--gpu-memory-gb", "8"]) == 0
    printed = capsys.readouterr().out
    assert "spacing:     0.7x0.7x5 mm" in printed and f"wrote the plan to {out}" in printed
    plan = load_plan(out)
    assert plan["format"] == "medpanoptic-plan/1" and plan["dataset"]["root"] == str(msd_oblique)
    assert plan["dataset"]["layout"] == "msd" and len(plan["cases"]) == 4
    assert [p.name for p in out.parent.iterdir()] == ["plan.json"]  # nothing half-written beside it


def test_plan_command_on_a_bad_dataset_lists_every_problem_and_fails(tmp_path, capsys):
    from medpanoptic.cli import main

    root = _broken_nnunet(tmp_path)
    out = tmp_path / "plan.json"
    assert main(["plan", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"medpanoptic: error: {root}: 6 problems in the dataset:"
    assert len(err) == 7 and err[1].startswith("  imagesTr/phantom_0000_0001.nii.gz: missing")
    assert not out.exists()


def test_panoptic_net_runs_a_planned_anisotropic_topology_and_keeps_its_default():
    import torch

    from medpanoptic.nets import PanopticNet
    from medpanoptic.planning.topology import plan_topology

    network = plan_topology((0.7, 0.7, 5.0), (32, 32, 8), base_filters=8)
    net = PanopticNet(3, 2, 4, filters=network["filters"], strides=network["strides"], kernel_size=network["kernel_size"])
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].kernel_size == (3, 3, 1)
    with torch.no_grad():
        assert net(torch.randn(1, 2, 32, 32, 8)).shape == (1, 4 + 1 + 3, 32, 32, 8)
    default = PanopticNet(3, 1, 4)
    assert all(m.kernel_size == (3, 3, 3) for m in default.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size != (1, 1, 1))
    with pytest.raises(ValueError, match=r"filters \(4\), strides \(4\) and kernel_size \(3\) need one entry per level"):
        PanopticNet(3, 1, 4, kernel_size=[3, 3, 3])


def test_things_declared_by_flag_that_the_instance_maps_do_not_cover_are_a_problem(msd_oblique):
    from medpanoptic.planning.check import dataset_problems

    problems = dataset_problems(load_dataset(msd_oblique, things="liver,lesion"))
    assert [p.where for p in problems] == [f"instancesTr/phantom_{i:04d}.nii.gz" for i in range(4)]
    assert problems[0].problem == "thing class 'liver' has voxels without an instance id (the instance map does not cover it)"


def test_dataset_paths_that_climb_out_of_the_root_are_refused(tmp_path):
    root = write_phantom_dataset(tmp_path / "msd", "msd", 1, ANISOTROPIC)
    document = json.loads((root / "dataset.json").read_text())
    document["training"][0]["image"] = "../../../etc/passwd"
    (root / "dataset.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match=r"passwd: refusing to touch a path outside"):
        load_dataset(root)


def test_load_plan_refuses_case_paths_that_leave_the_dataset(msd_oblique, tmp_path):
    from medpanoptic.planning.plan import make_plan, save_plan

    plan = make_plan(msd_oblique, use_data_analyzer=False)
    path = save_plan(plan, tmp_path / "plan.json")
    assert load_plan(path)["decisions"] == json.loads(json.dumps(plan["decisions"]))
    plan["cases"][0]["label"] = "/etc/shadow"
    path.write_text(json.dumps(plan))
    with pytest.raises(InputError, match=r"case 'phantom_0000': path '/etc/shadow' leaves the dataset root"):
        load_plan(path)


def test_phantom_command_writes_each_layout(tmp_path, capsys):
    from medpanoptic.cli import main

    assert main(["phantom", str(tmp_path / "mr"), "--layout", "nnunet_v2", "--preset", "mr", "--cases", "2",
                 "--shape", "48,48,16", "--thing-scale", "0.5", "--things", "3"]) == 0
    assert load_dataset(tmp_path / "mr").channels == ["T2", "ADC"]
    assert main(["phantom", str(tmp_path / "cells"), "--layout", "microscopy", "--preset", "nuclei_large",
                 "--cases", "1", "--format", "png", "--shape", "128,128", "--things", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["images", "masks"]
    assert main(["phantom", str(tmp_path / "x"), "--layout", "microscopy", "--preset", "ct"]) == 2
    assert "--preset ct is 3D, the microscopy layout needs 2D" in capsys.readouterr().err


def test_a_3d_microscopy_stack_without_pixel_size_plans_in_nominal_voxels(tmp_path):
    """Confocal z-stacks (multi-page TIFF, no resolution tags): 3D, every axis 1 µm nominal, said so in the plan."""
    import tifffile

    from medpanoptic.planning.plan import make_plan

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for case in ("a", "b"):
        mask = np.zeros((12, 32, 40), np.uint16)
        mask[2:6, 4:10, 5:12], mask[6:10, 20:28, 20:30] = 1, 2
        image = (rng.random(mask.shape) * 60 + 150 * (mask > 0)).astype(np.uint8)
        tifffile.imwrite(tmp_path / "images" / f"{case}.tif", image)
        tifffile.imwrite(tmp_path / "masks" / f"{case}.tif", mask)
    ds = load_dataset(tmp_path)
    assert (ds.spatial_dims, ds.channels) == (3, ["grey"])
    entry = LoadCased(label_set=ds.label_set, root=tmp_path)(ds.cases[0])
    assert entry["image"].shape == (1, 40, 32, 12) and int(entry["label"][1].max()) == 2
    plan = make_plan(ds)
    assert plan["fingerprint"]["pixel_size_nominal"] is True
    assert plan["decisions"]["target_spacing_mm"]["value"] == [0.001, 0.001, 0.001]
    assert "no pixel size" in plan["decisions"]["target_spacing_mm"]["reason"]
    assert plan["decisions"]["scale_augmentation"]["value"] == [0.6, 1.6]


def test_the_gpu_training_benchmark_refuses_without_a_cuda_device_in_one_line(tmp_path):
    """`scripts/bench/gpu_training.py` is for a lent GPU; without one it says so and writes nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "gpu_training.py"
    done = subprocess.run([sys.executable, str(script), "--work", str(tmp_path / "work"), "--epochs", "1"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == ("gpu_training.py: error: no CUDA device (torch.cuda.is_available() is False): "
                                   "this benchmark needs a GPU")
    assert not (tmp_path / "work").exists()


def test_pictures_without_a_pixel_size_train_on_blurred_and_resampled_images_too(microscopy_png, msd_oblique):
    """A picture without a pixel size is rescaled at inference by an estimated factor: the plan has its
    network see such soft, resampled pictures in training (MONAI transforms in train.json, run here);
    scans that state their pixel size are resampled alike in training and inference and get none."""
    import torch
    from monai.bundle import ConfigParser

    from medpanoptic.planning.bundle import train_config
    from medpanoptic.planning.plan import make_plan

    plan = make_plan(load_dataset(microscopy_png))
    assert plan["decisions"]["resampling_augmentation"]["value"]["low_resolution_zoom"] == [0.55, 1.0]
    steps = {t["_target_"]: t for t in train_config(plan)["train"]["augmentation"]}
    assert steps["RandSimulateLowResolutiond"]["upsample_mode"] == "bilinear"
    assert "sigma_z" not in steps["RandGaussianSmoothd"]
    blur = ConfigParser({"t": {**steps["RandGaussianSmoothd"], "prob": 1.0}}).get_parsed_content("t")
    low = ConfigParser({"t": {**steps["RandSimulateLowResolutiond"], "prob": 1.0, "zoom_range": [0.5, 0.5]}}).get_parsed_content("t")
    edge = torch.zeros((1, 32, 32))
    edge[:, :, 16:] = 1.0
    for transform in (blur, low):
        soft = transform({"image": edge.clone()})["image"]
        assert soft.shape == edge.shape and bool(((soft > 0.05) & (soft < 0.95)).any())  # the step made soft
    scans = make_plan(load_dataset(msd_oblique))
    assert scans["decisions"]["resampling_augmentation"]["value"] is None
    assert not {"RandSimulateLowResolutiond", "RandGaussianSmoothd"} & {
        t["_target_"] for t in train_config(scans)["train"]["augmentation"]}
