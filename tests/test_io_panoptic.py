"""write_panoptic / read_panoptic: exact values, exact geometry, read by SimpleITK, nibabel and MONAI."""

import gzip
import json
import struct

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medpanoptic.errors import InputError, PanopticError
from medpanoptic.io import read_panoptic, write_panoptic
from medpanoptic.io.panoptic import read_panoptic_stem, read_semantic_map
from medpanoptic.io.nifti import write_nifti

from .conftest import lps_geometry


def test_maps_are_on_the_source_grid(oblique_ct, tmp_path):
    paths = write_panoptic(oblique_ct.pair, tmp_path / "case", oblique_ct.label_set)
    origin, spacing, direction = lps_geometry(oblique_ct.image.affine)
    for key, channel in (("label", 0), ("instance", 1)):
        image = sitk.ReadImage(str(paths[key]))
        np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-5)
        np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-5)
        np.testing.assert_allclose(image.GetDirection(), direction.ravel(), atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), oblique_ct.pair[channel].numpy())
        ref = nib.load(paths[key])
        np.testing.assert_allclose(ref.affine, oblique_ct.image.affine.numpy(), atol=1e-5)
        np.testing.assert_array_equal(np.asanyarray(ref.dataobj), oblique_ct.pair[channel].numpy())
        assert np.issubdtype(ref.get_data_dtype(), np.unsignedinteger)
        slope, inter = struct.unpack("<ff", gzip.open(paths[key]).read(352)[112:120])
        assert (slope, inter) == (1.0, 0.0)


def test_json_carries_label_set_and_instances(oblique_ct, tmp_path):
    paths = write_panoptic(oblique_ct.pair, tmp_path / "case", oblique_ct.label_set, extra={"source": "phantom"})
    doc = json.loads(paths["json"].read_text())
    assert doc["source"] == "phantom" and doc["label_set"] == oblique_ct.label_set.to_dict()
    assert len(doc["instances"]) == oblique_ct.n_instances
    first = doc["instances"][0]
    voxels = int((oblique_ct.pair[1] == first["instance"]).sum())
    assert first["voxels"] == voxels
    assert first["volume_mm3"] == pytest.approx(voxels * 0.8 * 0.9 * 2.0)


def test_round_trip(oblique_ct, nuclei, tmp_path):
    for name, ph in (("ct", oblique_ct), ("cells", nuclei)):
        write_panoptic(ph.pair, tmp_path / name, ph.label_set)
        pair, labels = read_panoptic(tmp_path / name)
        assert torch.equal(pair.as_tensor(), ph.pair.as_tensor().to(pair.dtype))
        np.testing.assert_allclose(pair.affine, ph.pair.affine, atol=1e-5)
        assert labels == ph.label_set
        # any of the files names the result too
        assert torch.equal(read_panoptic(tmp_path / f"{name}_label.nii.gz")[0].as_tensor(), pair.as_tensor())


def test_single_file_pair_is_read_by_sitk_nibabel_and_monai(oblique_ct, tmp_path):
    from monai.transforms import LoadImage

    paths = write_panoptic(oblique_ct.pair, tmp_path / "case", oblique_ct.label_set, single_file=True)
    truth = oblique_ct.pair.numpy()
    image = sitk.ReadImage(str(paths["pair"]))
    assert image.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_array_equal(np.moveaxis(sitk.GetArrayFromImage(image), -1, 0).transpose(0, 3, 2, 1), truth)
    ref = nib.load(paths["pair"])
    assert ref.header.get_intent()[0] == "vector"
    np.testing.assert_array_equal(np.moveaxis(np.asanyarray(ref.dataobj)[:, :, :, 0, :], -1, 0), truth)
    # MONAI's default NIfTI reader (its ITK reader would need the `itk` package; SimpleITK above is ITK)
    loaded = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True,
                       squeeze_non_spatial_dims=True)(str(paths["pair"]))
    np.testing.assert_array_equal(loaded.numpy(), truth)
    np.testing.assert_allclose(loaded.affine.numpy(), oblique_ct.image.affine.numpy(), atol=1e-5)
    pair, labels = read_panoptic(paths["pair"])
    np.testing.assert_array_equal(pair.numpy(), truth)
    assert labels == oblique_ct.label_set


def test_semantic_map_gets_instances_from_components(oblique_ct, tmp_path):
    """A Decathlon-style semantic label: things become their connected components."""
    path = tmp_path / "semantic.nii.gz"
    write_nifti(path, oblique_ct.pair[0].numpy().astype(np.uint8), oblique_ct.image.affine.numpy())
    pair, labels = read_panoptic(path, label_set=oblique_ct.label_set)
    assert labels == oblique_ct.label_set
    touching_pairs = 1  # 6 lesions with a 0.3 touching fraction: one touching pair
    assert int(pair[1].max()) == oblique_ct.n_instances - touching_pairs
    pair2, _ = read_semantic_map(path, oblique_ct.label_set)
    assert torch.equal(pair.as_tensor(), pair2.as_tensor())
    np.testing.assert_allclose(pair2.affine, oblique_ct.image.affine, atol=1e-5)


HOW_TO_GIVE = r"give one: label_set=\.\.\. \(Python\), --labels labels.json \(command line\), or a dataset.json"


def test_a_label_map_without_a_label_set_is_refused_not_guessed(oblique_ct, tmp_path):
    """No "class 3", no stuff-or-thing by whether instances are present: the error says how to give a label set."""
    path = tmp_path / "semantic.nii.gz"
    write_nifti(path, oblique_ct.pair[0].numpy().astype(np.uint8), oblique_ct.image.affine.numpy())
    write_nifti(tmp_path / "inst.nii.gz", oblique_ct.pair[1].numpy().astype(np.uint16), oblique_ct.image.affine.numpy())
    for call in (lambda: read_panoptic(path), lambda: read_panoptic(path, instance_path=tmp_path / "inst.nii.gz"),
                 lambda: read_semantic_map(path, None)):
        with pytest.raises(InputError, match=f"semantic.nii.gz: a label map without a label set: .*; {HOW_TO_GIVE}"):
            call()


def test_thing_classes_must_name_every_class(oblique_ct, tmp_path):
    label = oblique_ct.pair[0].numpy().astype(np.uint8)
    path = tmp_path / "semantic.nii.gz"
    write_nifti(path, label, oblique_ct.image.affine.numpy())
    with pytest.raises(InputError, match=r"semantic.nii.gz: the label map holds classes \[1, 2\] that thing_classes "
                                         r"does not name: a stuff class needs a label set"):
        read_panoptic(path, thing_classes={3: "lesion"})
    with pytest.raises(InputError, match=r"thing_classes must name each class \(\{class id: name\}"):
        read_panoptic(path, thing_classes=[1, 2, 3])
    with pytest.raises(InputError, match="pass label_set or thing_classes, not both"):
        read_panoptic(path, oblique_ct.label_set, thing_classes={3: "lesion"})
    lesions_only = tmp_path / "lesions.nii.gz"
    write_nifti(lesions_only, np.where(label == 3, 3, 0).astype(np.uint8), oblique_ct.image.affine.numpy())
    pair, labels = read_panoptic(lesions_only, thing_classes={3: "lesion"})
    assert [(c.id, c.name, c.kind) for c in labels] == [(3, "lesion", "thing")]
    explicit, _ = read_semantic_map(lesions_only, oblique_ct.label_set)
    assert torch.equal(pair.as_tensor(), explicit.as_tensor())


def test_a_pair_file_or_stem_without_its_json_is_refused(oblique_ct, tmp_path):
    paths = write_panoptic(oblique_ct.pair, tmp_path / "case", oblique_ct.label_set, single_file=True)
    alone = tmp_path / "alone.nii.gz"
    paths["pair"].rename(alone)
    with pytest.raises(InputError, match=f"alone.nii.gz: a pair file without its label set .*; {HOW_TO_GIVE}"):
        read_panoptic(alone)
    pair, labels = read_panoptic(alone, label_set=oblique_ct.label_set)
    np.testing.assert_array_equal(pair.numpy(), oblique_ct.pair.numpy())
    paths["json"].unlink()
    with pytest.raises(InputError, match=f"case_panoptic.json: missing: the result's label set is stored there; {HOW_TO_GIVE}"):
        read_panoptic(tmp_path / "case")
    pair, _ = read_panoptic_stem(tmp_path / "case_label.nii.gz", oblique_ct.label_set)
    np.testing.assert_array_equal(pair.numpy(), oblique_ct.pair.numpy())


def test_read_panoptic_stem_reads_a_single_pair_file(oblique_ct, tmp_path):
    paths = write_panoptic(oblique_ct.pair, tmp_path / "case", oblique_ct.label_set, single_file=True)
    paths["label"].unlink()
    paths["instance"].unlink()
    for name in ("case", "case_pair.nii.gz", "case_panoptic.json"):
        pair, labels = read_panoptic_stem(tmp_path / name)
        np.testing.assert_array_equal(pair.numpy(), oblique_ct.pair.numpy())
        np.testing.assert_allclose(pair.affine, oblique_ct.image.affine, atol=1e-5)
        assert labels == oblique_ct.label_set and pair.meta["filename_or_obj"] == str(paths["pair"])


def test_nothing_half_written(oblique_ct, tmp_path):
    bad = oblique_ct.pair.clone()
    i, j, k = np.argwhere(bad[0].numpy() == 0)[0]
    bad[1, i, j, k] = 5  # an instance id on a background voxel
    with pytest.raises(PanopticError, match="background"):
        write_panoptic(bad, tmp_path / "case", oblique_ct.label_set)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_removes_temporaries(oblique_ct, tmp_path, monkeypatch):
    import medpanoptic.io.panoptic as panoptic_module

    calls = []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        write_nifti(path, *args, **kwargs)

    monkeypatch.setattr(panoptic_module, "write_nifti", failing)
    with pytest.raises(OSError):
        panoptic_module.write_panoptic(oblique_ct.pair, tmp_path / "case", oblique_ct.label_set)
    assert list(tmp_path.iterdir()) == []


def test_grids_must_agree(oblique_ct, tmp_path):
    paths = write_panoptic(oblique_ct.pair, tmp_path / "case", oblique_ct.label_set)
    shifted = oblique_ct.image.affine.numpy().copy()
    shifted[:3, 3] += 1.0
    write_nifti(paths["instance"], oblique_ct.pair[1].numpy().astype(np.uint16), shifted)
    with pytest.raises(InputError, match="same grid"):
        read_panoptic(tmp_path / "case")
