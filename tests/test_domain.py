"""Knowing when a scan lies outside what a bundle learned: real scans of other kinds are named, with
their reasons, in the log, in cases.csv and in the result JSON; --strict-domain refuses them; unseen
phantoms of the bundle's own kind pass without a word."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpanoptic.domain import (
    FINGERPRINT_FORMAT, TOLERANCES, check_domain, domain_check, domain_fingerprint, load_fingerprint,
)
from medpanoptic.errors import InputError
from medpanoptic.io.scan import read_scan
from medpanoptic.segment import Segmenter, bundle_path
from medpanoptic.synthetic import ct_phantom, nuclei_phantom, oblique_direction

CT_BUNDLE, NUCLEI_BUNDLE = "ct_lesion_panoptic", "nuclei_panoptic_2d"


@pytest.fixture(scope="module")
def chest_ct_path() -> Path:
    """The real chest CT that slicerio ships (128 x 128 x 34 voxels of 3.05 x 3.05 x 10 mm, air at -3024 HU)."""
    import slicerio

    return Path(os.path.dirname(slicerio.__file__)) / "data" / "CTChest4.nrrd"


@pytest.fixture(scope="module")
def mr_path(nibabel_data) -> Path:
    """A real T1 MR of a head that nibabel ships (33 x 41 x 25 voxels of 2 mm)."""
    return nibabel_data / "anatomical.nii"


@pytest.fixture(scope="module")
def chest_crop(chest_ct_path, tmp_path_factory) -> Path:
    """The chest CT's central 40 x 40 x 12 voxels as NIfTI (its own spacing and position kept): a
    field of view the size of the training phantoms', so only spacing and intensities are off, and
    a run short enough for a test."""
    image = read_scan(chest_ct_path)
    start = np.array([44, 44, 11])
    affine = image.affine.numpy().copy()
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    crop = image.numpy()[0, 44:84, 44:84, 11:23].astype(np.int16)
    path = tmp_path_factory.mktemp("chest") / "chest_crop.nii.gz"
    nib.save(nib.Nifti1Image(crop, affine), path)
    return path


@pytest.fixture(scope="module")
def ct_segmenter():
    return Segmenter.from_bundle(CT_BUNDLE, device="cpu")


def test_shipped_bundles_carry_their_training_fingerprint():
    for name, dims, channels in ((CT_BUNDLE, 3, [1]), (NUCLEI_BUNDLE, 2, [1, 3])):
        fingerprint = load_fingerprint(bundle_path(name))
        assert fingerprint["format"] == FINGERPRINT_FORMAT
        assert (fingerprint["spatial_dims"], fingerprint["channels"]) == (dims, channels)
        assert fingerprint["n_cases"] == 16
        assert fingerprint["instances"]["typical_diameter_mm"] > 0
    ct = load_fingerprint(bundle_path(CT_BUNDLE))
    assert [a["median"] for a in ct["spacing_mm"]] == [1.0, 1.0, 2.5]
    assert [a["median"] for a in ct["field_of_view_mm"]] == [96.0, 96.0, 120.0]
    assert ct["modality"] == "CT"
    assert 8.0 < ct["instances"]["typical_diameter_mm"] < 14.0  # lesions of 4-9 mm radius
    nuclei = load_fingerprint(bundle_path(NUCLEI_BUNDLE))["instances"]
    assert nuclei["pixel_size_mm"] == [0.0005, 0.0005]
    assert 12.0 < nuclei["typical_diameter_px"][0] < 20.0  # nuclei of 3-6 um radius at 0.5 um per pixel


def test_fingerprint_summarises_spacing_field_of_view_and_intensities_per_channel_count():
    small = {"shape": (64, 56, 32), "n_lesions": 3, "lesion_radius_mm": (3.0, 5.0)}
    images = [ct_phantom(spacing=(0.8, 0.9, 2.0), direction=oblique_direction().ravel(), seed=s, **small).image
              for s in (1, 2)]
    images.append(ct_phantom(spacing=(1.2, 0.9, 3.0), seed=3, **small).image)
    fingerprint = domain_fingerprint(images, modality="CT")
    assert fingerprint["n_cases"] == 3
    assert fingerprint["spacing_mm"][0] == {"min": 0.8, "median": 0.8, "max": 1.2}
    assert fingerprint["spacing_mm"][2] == {"min": 2.0, "median": 2.0, "max": 3.0}
    assert fingerprint["field_of_view_mm"][2] == {"min": 64.0, "median": 64.0, "max": 96.0}
    p1 = fingerprint["intensity"]["1"][0]["p1"]
    assert -1100 < p1["min"] <= p1["median"] <= p1["max"] < -900  # the air around the body
    grey_and_rgb = domain_fingerprint([nuclei_phantom(shape=(64, 64), n_nuclei=4, seed=1).image,
                                       nuclei_phantom(shape=(64, 64), n_nuclei=4, rgb=True, seed=2).image])
    assert grey_and_rgb["channels"] == [1, 3]
    assert [len(grey_and_rgb["intensity"][k]) for k in ("1", "3")] == [1, 3]


def test_mixed_dimensions_are_refused_by_name():
    with pytest.raises(InputError, match="training images of \\[2, 3\\] spatial dims"):
        domain_fingerprint([ct_phantom(shape=(64, 56, 32), n_lesions=1).image,
                            nuclei_phantom(shape=(64, 64), n_nuclei=2).image])


def test_a_malformed_fingerprint_is_refused_naming_the_file(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "fingerprint.json"
    path.write_text('{"format": "something-else"}', encoding="utf-8")
    with pytest.raises(InputError, match=f"fingerprint.json: not a {FINGERPRINT_FORMAT} document"):
        load_fingerprint(tmp_path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="fingerprint.json: not a readable fingerprint"):
        load_fingerprint(tmp_path)
    path.write_text(json.dumps({"format": FINGERPRINT_FORMAT, "spatial_dims": 3}), encoding="utf-8")
    with pytest.raises(InputError, match="the fingerprint lacks channels, spacing_mm"):
        load_fingerprint(tmp_path)


@pytest.mark.parametrize("seed", [100, 101, 102])
def test_unseen_phantoms_of_the_bundles_own_kind_pass(seed):
    ct = load_fingerprint(bundle_path(CT_BUNDLE))
    assert check_domain(ct, ct_phantom(seed=seed).image) == []
    crowded = ct_phantom(direction=oblique_direction((-15.0, 10.0, 22.0)).ravel(), n_lesions=14,
                         touching_fraction=0.6, seed=seed)
    assert check_domain(ct, crowded.image) == []
    nuclei = load_fingerprint(bundle_path(NUCLEI_BUNDLE))
    assert check_domain(nuclei, nuclei_phantom(seed=seed).image) == []
    assert check_domain(nuclei, nuclei_phantom(rgb=True, seed=seed).image) == []


def test_a_2d_picture_larger_or_smaller_than_the_training_crops_is_not_judged_on_field_of_view():
    """Was: "field of view along axis 0 is 0.32 mm, training saw 0.128 mm" for any micrograph larger than
    the training crops, although sliding-window inference handles pictures of any size."""
    from medpanoptic.domain import TOLERANCES, Tolerances

    nuclei = load_fingerprint(bundle_path(NUCLEI_BUNDLE))
    large = nuclei_phantom(shape=(640, 512), n_nuclei=150, seed=5).image
    small = nuclei_phantom(shape=(56, 48), n_nuclei=2, seed=5).image
    assert TOLERANCES.field_of_view_2d is False
    assert check_domain(nuclei, large) == [] and check_domain(nuclei, small) == []
    assert check_domain(nuclei, large, spacing=(0.005, 0.005)) == [
        "spacing along axis 0 is 0.005 mm, training saw 0.0005 mm",
        "spacing along axis 1 is 0.005 mm, training saw 0.0005 mm"]  # pixel size is still judged
    judged = check_domain(nuclei, large, tolerances=Tolerances(field_of_view_2d=True))
    assert judged == ["field of view along axis 0 is 0.32 mm, training saw 0.128 mm"]


def test_the_real_chest_ct_is_outside_the_ct_bundle_on_spacing_field_of_view_and_intensity(chest_ct_path):
    reasons = check_domain(load_fingerprint(bundle_path(CT_BUNDLE)), read_scan(chest_ct_path))
    assert reasons[:6] == [
        "spacing along axis 0 is 3.05 mm, training saw 1 mm",
        "spacing along axis 1 is 3.05 mm, training saw 1 mm",
        "spacing along axis 2 is 10 mm, training saw 2.5 mm",
        "field of view along axis 0 is 390 mm, training saw 96 mm",
        "field of view along axis 1 is 390 mm, training saw 96 mm",
        "field of view along axis 2 is 340 mm, training saw 120 mm",
    ]
    assert len(reasons) == 7 and reasons[6].startswith("intensity p5 of channel 0 is -3024, training saw -10")


def test_tolerances_are_the_stated_factors(chest_ct_path):
    """Spacing twice the training's largest is still inside; a little more is not."""
    fingerprint = load_fingerprint(bundle_path(CT_BUNDLE))
    assert TOLERANCES.spacing == 2.0
    inside = ct_phantom(shape=(48, 48, 24), spacing=(2.0, 2.0, 5.0), seed=7).image
    assert check_domain(fingerprint, inside) == []
    outside = ct_phantom(shape=(46, 46, 24), spacing=(2.1, 2.1, 5.0), seed=7).image
    assert check_domain(fingerprint, outside) == ["spacing along axis 0 is 2.1 mm, training saw 1 mm",
                                                  "spacing along axis 1 is 2.1 mm, training saw 1 mm"]


def test_the_mr_is_outside_on_intensity_and_a_dicom_mr_on_modality(mr_path, pydicom_files):
    fingerprint = load_fingerprint(bundle_path(CT_BUNDLE))
    reasons = check_domain(fingerprint, read_scan(mr_path))
    assert reasons[0] == "field of view along axis 2 is 50 mm, training saw 120 mm"
    assert reasons[1].startswith("intensity p99 of channel 0 is 12721, training saw 108-136")
    dicom_mr = read_scan(pydicom_files / "MR_small.dcm")
    assert check_domain(fingerprint, dicom_mr)[0] == "modality MR, training saw CT"


def test_the_nuclei_bundle_names_a_ct_by_its_dimensions(chest_ct_path):
    fingerprint = load_fingerprint(bundle_path(NUCLEI_BUNDLE))
    assert check_domain(fingerprint, read_scan(chest_ct_path)) == ["a 3D image, training saw 2D images"]


def test_the_nuclei_bundle_warns_on_a_real_ct_slice(pydicom_files, tmp_path, caplog):
    """A real CT slice (pydicom's CT_small.dcm) as a 2D NIfTI: pixels of 0.66 mm and HU, not 0.5 um and 0-255."""
    ct = read_scan(pydicom_files / "CT_small.dcm")
    affine = ct.affine.numpy().copy()
    path = tmp_path / "ct_slice.nii.gz"
    nib.save(nib.Nifti1Image(ct.numpy()[0, :, :, 0].astype(np.int16), affine), path)
    segmenter = Segmenter.from_bundle(NUCLEI_BUNDLE, device="cpu")
    with caplog.at_level(logging.WARNING, logger="medpanoptic"):
        result = segmenter(path)
    assert not result.domain["ok"]
    assert result.domain["reasons"][:2] == ["spacing along axis 0 is 0.661 mm, training saw 0.0005 mm",
                                           "spacing along axis 1 is 0.661 mm, training saw 0.0005 mm"]
    assert any(r.startswith("intensity p1 of channel 0 is -850") for r in result.domain["reasons"])
    warned = [r.getMessage() for r in caplog.records if "outside the training domain" in r.getMessage()]
    assert warned == [f"{path}: outside the training domain of bundle {NUCLEI_BUNDLE}: {'; '.join(result.domain['reasons'])}"]
    assert tuple(result.pair.shape[1:]) == (128, 128)


def test_the_ct_bundle_warns_on_a_real_ct_and_an_mr_in_the_log_cases_csv_and_result_json(
        chest_crop, mr_path, tmp_path, caplog):
    from medpanoptic.cli import main
    from medpanoptic.io.decathlon import write_case

    phantom = ct_phantom(seed=104)
    own = write_case(tmp_path / "data", "phantom_0104", phantom.image, phantom.pair)["image"]
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="medpanoptic"):
        code = main(["segment", str(chest_crop), str(mr_path), str(tmp_path / "data" / own), "--out", str(out),
                     "--to", "nifti,table", "--device", "cpu"])
    assert code == 0
    warned = {r.getMessage().split(":")[0] for r in caplog.records if "outside the training domain" in r.getMessage()}
    assert warned == {str(chest_crop), str(mr_path)}
    with open(out / "cases.csv", newline="", encoding="utf-8") as f:
        domain = {row["case"]: row["domain"] for row in csv.DictReader(f)}
    assert domain["phantom_0104"] == "ok"
    assert domain["chest_crop"].startswith("spacing along axis 0 is 3.05 mm, training saw 1 mm; ")
    assert "intensity p50 of channel 0 is -" in domain["chest_crop"]
    assert domain["anatomical"].startswith("field of view along axis 2 is 50 mm, training saw 120 mm; "
                                           "intensity p99 of channel 0 is 12721, training saw 108-136")
    document = json.loads((out / "chest_crop" / "chest_crop_panoptic.json").read_text(encoding="utf-8"))
    assert document["domain"]["ok"] is False
    assert "; ".join(document["domain"]["reasons"]) == domain["chest_crop"]
    own_document = json.loads((out / "phantom_0104" / "phantom_0104_panoptic.json").read_text(encoding="utf-8"))
    assert own_document["domain"] == {"ok": True, "reasons": []}


def test_strict_domain_refuses_the_mr_and_writes_nothing_for_it(mr_path, tmp_path, capsys):
    from medpanoptic.cli import main

    out = tmp_path / "out"
    code = main(["segment", str(mr_path), "--out", str(out), "--strict-domain", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"medpanoptic: error: case anatomical: {mr_path}: outside the training domain of bundle {CT_BUNDLE}: " in err
    assert "(refused: --strict-domain)" in err
    assert not (out / "anatomical").exists()
    with open(out / "errors.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["case"] == "anatomical" and "intensity p99 of channel 0 is 12721" in row["error"]


def test_strict_segmenter_raises_an_input_error_naming_the_scan(ct_segmenter, chest_crop):
    strict = Segmenter.from_bundle(CT_BUNDLE, device="cpu", strict_domain=True)
    with pytest.raises(InputError, match=f"{chest_crop}: outside the training domain of bundle {CT_BUNDLE}: "
                                         "spacing along axis 0 is 3.05 mm"):
        strict(chest_crop)
    assert strict(ct_phantom(seed=105).image).domain == {"ok": True, "reasons": []}


def test_a_bundle_without_a_fingerprint_is_not_checked_and_says_so_once(tmp_path, caplog, mr_path):
    bundle = tmp_path / "no_fingerprint"
    shutil.copytree(bundle_path(NUCLEI_BUNDLE), bundle)
    (bundle / "configs" / "fingerprint.json").unlink()
    with caplog.at_level(logging.WARNING, logger="medpanoptic"):
        segmenter = Segmenter.from_bundle(bundle, device="cpu")
        first = segmenter(nuclei_phantom(shape=(96, 96), n_nuclei=6, seed=3).image)
        second = segmenter(nuclei_phantom(shape=(96, 96), n_nuclei=6, seed=4).image)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["bundle no_fingerprint has no configs/fingerprint.json: scans are not checked against its "
                    "training domain"]
    assert first.domain is None and second.domain is None
    assert domain_check(None, read_scan(mr_path)).to_dict() == {"ok": True, "reasons": [], "checked": False}
