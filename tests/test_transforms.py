"""The MONAI dictionary transforms: targets after augmentation, post-processing keeps meta for Invertd,
inputs discovery, and the MSD conversion script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.transforms import Compose, Invertd, Orientationd, RandFlipd, Spacingd

from medpanoptic.io.dicom_write import write_dicom_series
from medpanoptic.io.inputs import find_scans
from medpanoptic.io.nifti import write_nifti
from medpanoptic.metrics import panoptic_quality
from medpanoptic.nets import HeadLayout
from medpanoptic.targets import panoptic_targets, unpack_targets
from medpanoptic.transforms import PanopticPostprocessd, PanopticTargetsd, ThingIndicesd

ROOT = Path(__file__).resolve().parents[1]


def test_targets_follow_the_flip(oblique_ct):
    """Targets made after a flip are the flipped targets of the original: centres and offsets move with the voxels."""
    flip = RandFlipd(keys="label", prob=1.0, spatial_axis=0)
    label_set = oblique_ct.label_set
    spacing = tuple(np.linalg.norm(oblique_ct.pair.affine.numpy()[:3, :3], axis=0))
    flipped = PanopticTargetsd("label", label_set, sigma_mm=2.0)(flip({"label": oblique_ct.pair.clone()}))["label"]
    packed = unpack_targets(flipped.as_tensor()[None], 3)
    original = panoptic_targets(oblique_ct.pair, label_set, spacing, 2.0)
    np.testing.assert_array_equal(packed["semantic"][0].numpy(), original["semantic"].flip(1).numpy())
    np.testing.assert_allclose(packed["center"][0].numpy(), original["center"].flip(1).numpy(), atol=1e-5)
    expected_offset = original["offset"].flip(1)
    expected_offset[0] = -expected_offset[0]  # along the flipped axis the vector turns round
    np.testing.assert_allclose(packed["offset"][0].numpy(), expected_offset.numpy(), atol=1e-4)


def test_postprocess_then_invert_lands_on_the_source_grid(oblique_ct):
    """Ideal heads made on the reoriented, resampled grid come back, through Invertd, as the truth on the source grid."""
    label_set = oblique_ct.label_set
    pre = Compose([Orientationd(keys=["image", "label"], axcodes="RAS"),
                   Spacingd(keys=["image", "label"], pixdim=(1.0, 1.0, 1.5), mode=("bilinear", "nearest"))])
    data = pre({"image": oblique_ct.image.clone(), "label": oblique_ct.pair.clone()})
    targets = panoptic_targets(data["label"], label_set, (1.0, 1.0, 1.5), 2.0)
    logits = torch.nn.functional.one_hot(targets["semantic"][0], label_set.max_id + 1).movedim(-1, 0).float() * 10
    from monai.data import MetaTensor

    output = MetaTensor(torch.cat([logits, targets["center"], targets["offset"]]), meta=dict(data["image"].meta),
                        applied_operations=list(data["image"].applied_operations))
    assert output.shape[0] == HeadLayout(label_set.max_id + 1, 3).channels
    data["pred"] = output
    data = PanopticPostprocessd("pred", label_set, center_threshold=0.5, nms_mm=4.0)(data)
    assert set(data["pred_scores"]) == set(range(1, int(data["pred"][1].max()) + 1))
    data = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(data)
    pair = torch.round(data["pred"].as_tensor().float()).to(torch.int32)
    assert pair.shape == oblique_ct.pair.shape
    np.testing.assert_allclose(data["pred"].affine.numpy(), oblique_ct.pair.affine.numpy(), atol=1e-4)
    quality = panoptic_quality(pair, oblique_ct.pair, label_set).summary()
    assert quality["rq_things"] == 1.0 and quality["pq_things"] > 0.85  # resampled twice: boundaries move, lesions stay


def test_thing_indices_select_the_things(oblique_ct):
    d = ThingIndicesd("label", oblique_ct.label_set)({"label": oblique_ct.pair})
    things = np.isin(oblique_ct.pair[0].numpy(), oblique_ct.label_set.thing_ids).ravel()
    np.testing.assert_array_equal(d["label_thing_indices"].numpy(), np.nonzero(things)[0])
    assert len(d["label_thing_indices"]) + len(d["label_other_indices"]) == things.size


def test_find_scans_splits_studies_and_reads_manifests(oblique_ct, tmp_path):
    write_dicom_series(oblique_ct.image, tmp_path / "study" / "ct", series_description="a", patient_id="P")
    write_nifti(tmp_path / "study" / "extra.nii.gz", oblique_ct.image[0].numpy(), oblique_ct.image.affine.numpy())
    # a second series in the same folder: every image series becomes its own case
    for f in sorted((tmp_path / "study" / "ct").iterdir())[:4]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber = "1.2.3.4.5", 7
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / "study" / "ct" / f"second_{f.name}")
    cases = find_scans([tmp_path / "study"])
    names = sorted(c.case for c in cases)
    assert len(cases) == 3 and "extra" in names and "ct_series7" in names
    assert [n for n in names if n.startswith("ct_series") and n != "ct_series7"]
    assert {c.series_uid for c in cases if c.case == "ct_series7"} == {"1.2.3.4.5"}
    (tmp_path / "list.csv").write_text("case,image\nfirst,study/extra.nii.gz\nfirst,study/extra.nii.gz\n")
    listed = find_scans([tmp_path / "list.csv"])
    assert [c.case for c in listed] == ["first", "first_2"] and listed[0].path == tmp_path / "study" / "extra.nii.gz"


def test_channel_files_group_into_one_case_only_as_a_complete_run_for_a_multi_channel_bundle(tmp_path):
    """`<case>_0000`, `_0001`: one two-channel case for a bundle of two channel files; MSD-style names
    (`phantom_0000`, `phantom_0001`) stay separate cases for a one-channel bundle; an incomplete run too."""
    for name in ("liver_0000", "liver_0001", "kidney_0000", "kidney_0002", "lung_0000", "lung_0001", "lung_0002"):
        (tmp_path / "scans").mkdir(exist_ok=True)
        (tmp_path / "scans" / f"{name}.nii.gz").write_bytes(b"")
    one = find_scans([tmp_path / "scans"])
    assert [c.case for c in one] == ["kidney_0000", "kidney_0002", "liver_0000", "liver_0001",
                                     "lung_0000", "lung_0001", "lung_0002"] and not any(c.channel_files for c in one)
    two = find_scans([tmp_path / "scans"], channels=2)
    assert [(c.case, [p.name for p in c.channel_files]) for c in two] == [
        ("kidney_0000", []), ("kidney_0002", []), ("liver", ["liver_0000.nii.gz", "liver_0001.nii.gz"]),
        ("lung_0000", []), ("lung_0001", []), ("lung_0002", [])]
    assert two[2].as_dict()["image"] == [str(tmp_path / "scans" / f"liver_000{i}.nii.gz") for i in (0, 1)]
    (tmp_path / "list.csv").write_text("case,image,image_1\nmr,scans/lung_0000.nii.gz,scans/lung_0001.nii.gz\n")
    listed = find_scans([tmp_path / "list.csv"])
    assert listed[0].channel_files == (tmp_path / "scans" / "lung_0000.nii.gz", tmp_path / "scans" / "lung_0001.nii.gz")


def test_msd_conversion_script(tmp_path):
    """A Decathlon task with only semantic labels gets instance maps and a label set the bundles can train from."""
    subprocess.run([sys.executable, "-m", "medpanoptic", "phantom", str(tmp_path / "task"), "--n", "2",
                    "--shape", "48,48,24", "--things", "3"], check=True, capture_output=True)
    task = tmp_path / "task"
    truth = {p.name: np.asarray(__import__("nibabel").load(p).dataobj) for p in (task / "instancesTr").iterdir()}
    shutil.rmtree(task / "instancesTr")
    document = json.loads((task / "dataset.json").read_text())
    del document["medpanoptic"]
    for entry in document["training"]:
        del entry["instance"]
    (task / "dataset.json").write_text(json.dumps(document))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_msd.py"), str(task), "--stuff", "1,2",
                    "--things", "3"], check=True, capture_output=True)
    from medpanoptic.io.decathlon import load_datalist

    entries, label_set = load_datalist(task)
    assert label_set.thing_ids == [3] and label_set.stuff_ids == [1, 2]
    for entry in entries:
        instance = np.asarray(__import__("nibabel").load(entry["instance"]).dataobj)
        reference = truth[Path(entry["instance"]).name]
        # the phantom's own instances vs connected components: equal wherever lesions do not touch
        assert instance.max() <= reference.max() and instance.max() >= 1
        assert np.array_equal(instance > 0, reference > 0)
