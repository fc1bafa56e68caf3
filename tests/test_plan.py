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
from medpanoptic.planning.transforms import NOMINAL_PIXEL_MM, LoadCased, NormalizeChannelsd

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
