"""The research workflow: the Python API, `medpanoptic segment` over a cohort (resume, errors.csv, torchrun),
the bad-input corpus and `medpanoptic demo` — with the shipped 3D bundle, on CPU."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medpanoptic.cli import main
from medpanoptic.io import read_panoptic, read_scan
from medpanoptic.io.dicom_write import write_dicom_series
from medpanoptic.io.nifti import write_nifti
from medpanoptic.metrics import panoptic_quality
from medpanoptic.synthetic import ct_phantom, nuclei_phantom, oblique_direction

ROOT = Path(__file__).resolve().parents[1]
CT_BUNDLE = ROOT / "bundles" / "ct_lesion_panoptic"
ALL_FORMATS = "nifti,dicom-seg,seg-nrrd,labelmap,table,png"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segmenter():
    from medpanoptic.segment import Segmenter

    return Segmenter.from_bundle(CT_BUNDLE, device="cpu")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two cases: an oblique NIfTI and an oblique DICOM series, with their truths."""
    root = tmp_path_factory.mktemp("cohort")
    a = ct_phantom(shape=(80, 80, 40), direction=oblique_direction().ravel(), n_lesions=6, seed=201)
    b = ct_phantom(shape=(80, 80, 40), direction=oblique_direction((-10.0, 15.0, 5.0)).ravel(), n_lesions=6, seed=202)
    (root / "inputs").mkdir()
    write_nifti(root / "inputs" / "case_a.nii.gz", a.image[0].numpy(), a.image.affine.numpy())
    write_dicom_series(b.image, root / "inputs" / "case_b", series_description="cohort case b", patient_id="B")
    return root, {"case_a": a, "case_b": b}


def test_api_on_nifti_and_dicom(segmenter, cohort, tmp_path):
    root, truths = cohort
    for case, path in (("case_a", root / "inputs" / "case_a.nii.gz"), ("case_b", root / "inputs" / "case_b")):
        result = segmenter(path)
        source = read_scan(path)
        assert result.case == case and result.pair.shape[1:] == source.shape[1:]
        np.testing.assert_allclose(result.pair.affine.numpy(), source.affine.numpy(), atol=1e-4)
        pq = panoptic_quality(result.pair, truths[case].pair, truths[case].label_set).summary()["pq_things"]
        assert pq >= 0.8, (case, pq)
        table = result.table()
        assert len(table) == result.n_instances and set(table["class"]) <= {"lesion"}
        ids = sorted(set(np.unique(result.instance.numpy()).tolist()) - {0})
        assert ids == list(range(1, result.n_instances + 1)) and sorted(result.scores) == ids
    written = result.save(tmp_path / "b", ALL_FORMATS.split(","))
    assert all(p.exists() and p.stat().st_size > 0 for p in written.values())
    back, _ = read_panoptic(written["dicom-seg"], label_set=result.label_set)
    assert panoptic_quality(back, result.pair, result.label_set).summary()["pq"] == pytest.approx(1.0)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cohort_cli_summary_and_resume(cohort, tmp_path, capsys):
    root, truths = cohort
    out = tmp_path / "out"
    args = ["segment", str(root / "inputs"), "--out", str(out), "--to", ALL_FORMATS, "--device", "cpu"]
    assert main(args) == 0
    for case in truths:
        names = {p.name for p in (out / case).iterdir()}
        assert {f"{case}_label.nii.gz", f"{case}_instance.nii.gz", f"{case}_instances.csv", f"{case}_qc.png",
                f"{case}.seg.nrrd", "done.json"} <= names
    assert "case_b_seg.dcm" in {p.name for p in (out / "case_b").iterdir()}
    assert "case_a_seg.dcm" not in {p.name for p in (out / "case_a").iterdir()}  # DICOM SEG only for DICOM sources
    instances = _rows(out / "instances.csv")
    cases = _rows(out / "cases.csv")
    assert {r["case"] for r in instances} == set(truths) and len(instances) == sum(int(c["n_instances"]) for c in cases)
    assert _rows(out / "errors.csv") == [] and (out / "cohort_overview.png").stat().st_size > 0

    stamp = (out / "case_a" / "case_a_label.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "0 case(s) segmented, 2 already done" in capsys.readouterr().out
    assert (out / "case_a" / "case_a_label.nii.gz").stat().st_mtime_ns == stamp
    os.utime(root / "inputs" / "case_a.nii.gz")  # a changed input is segmented again
    assert main(args) == 0
    assert "1 case(s) segmented, 1 already done" in capsys.readouterr().out


def _corpus(root: Path, pydicom_files: Path) -> dict[str, str]:
    """At least 15 broken or unusual inputs, each with the words its one-line reason must contain."""
    good = ct_phantom(shape=(48, 48, 16), n_lesions=2, seed=301)
    series = root / "_good_series"
    write_dicom_series(good.image, series, series_description="good", patient_id="X")
    files = sorted(series.iterdir())

    def edited(name: str, edit) -> None:
        (root / name).mkdir()
        for k, f in enumerate(files):
            ds = pydicom.dcmread(f)
            if edit(k, ds) is not False:
                ds.save_as(root / name / f.name)

    expected: dict[str, str] = {}
    edited("slice_gap", lambda k, ds: k != 7 and None)
    expected["slice_gap"] = "missing slice"

    def tilt(k, ds):
        p = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [f"{p[0]:.4f}", f"{p[1] + 0.5 * k:.4f}", f"{p[2]:.4f}"]
    edited("gantry_tilt", tilt)
    expected["gantry_tilt"] = "gantry tilt"

    def mixed(k, ds):
        if k == 3:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    edited("mixed_orientation", mixed)
    expected["mixed_orientation"] = "orientation"

    def duplicate(k, ds):
        if k == 4:
            ds.ImagePositionPatient = pydicom.dcmread(files[3]).ImagePositionPatient
    edited("duplicate_positions", duplicate)
    expected["duplicate_positions"] = "same position"

    (root / "truncated").mkdir()
    for f in files:
        shutil.copy(f, root / "truncated" / f.name)
    data = (root / "truncated" / files[5].name).read_bytes()
    (root / "truncated" / files[5].name).write_bytes(data[: len(data) // 2])
    expected["truncated"] = "truncated"

    no_pixels = pydicom.dcmread(files[0])
    del no_pixels.PixelData
    no_pixels.save_as(root / "no_pixels.dcm")
    expected["no_pixels"] = "pixel"

    shutil.copy(pydicom_files / "rtstruct.dcm", root / "rtstruct.dcm")
    expected["rtstruct"] = "RTSTRUCT"
    shutil.copy(pydicom_files / "MR_truncated.dcm", root / "mr_truncated.dcm")
    expected["mr_truncated"] = "truncated"

    affine = good.image.affine.numpy()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), affine), root / "four_d.nii.gz")
    expected["four_d"] = "4D"
    nan = good.image[0].numpy().copy()
    nan[3, 3, 3] = np.nan
    write_nifti(root / "nan_voxels.nii.gz", nan, affine)
    expected["nan_voxels"] = "NaN"
    (root / "empty.nii.gz").write_bytes(b"")
    expected["empty"] = "empty"
    (root / "not_gzip.nii.gz").write_text("this is not an image")
    expected["not_gzip"] = "not_gzip.nii.gz"
    (root / "notes.txt").write_text("a text file among the scans")
    expected["notes"] = "unsupported file type"
    nuclei = nuclei_phantom(shape=(64, 64), n_nuclei=3, seed=1)
    write_nifti(root / "image_2d.nii.gz", nuclei.image[0].numpy(), nuclei.image.affine.numpy())
    expected["image_2d"] = "a 2D image"
    write_nifti(root / "one_slice.nii.gz", good.image[0, :, :, :1].numpy(), affine)
    expected["one_slice"] = "too small"
    (root / "empty_folder").mkdir()
    expected["empty_folder"] = "no DICOM files"
    expected["does_not_exist"] = "no such file"
    if os.geteuid() != 0:  # root reads anything: the permission case only means something for a normal user
        write_nifti(root / "unreadable.nii.gz", good.image[0].numpy(), affine)
        os.chmod(root / "unreadable.nii.gz", 0)
        expected["unreadable"] = "permission denied"
    shutil.rmtree(series)
    return expected


def test_bad_input_corpus_goes_to_errors_csv(pydicom_files, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    expected = _corpus(corpus, pydicom_files)
    assert len(expected) >= 15
    inputs = sorted(str(p) for p in corpus.iterdir()) + [str(corpus / "does_not_exist.nii.gz")]
    out = tmp_path / "out"
    assert main(["segment", *inputs, "--out", str(out), "--device", "cpu"]) == 1
    errors = {r["case"]: r for r in _rows(out / "errors.csv")}
    assert set(errors) == set(expected)
    for case, words in expected.items():
        assert words.lower() in errors[case]["error"].lower(), (case, errors[case]["error"])
        assert "\n" not in errors[case]["error"] and not (out / case).exists()  # one line, no partial output
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert capsys.readouterr().err.count("medpanoptic: error: case") == len(expected)


def test_torchrun_gives_the_same_outputs_as_one_process(cohort, tmp_path):
    root, truths = cohort
    single, double = tmp_path / "single", tmp_path / "double"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    common = ["segment", str(root / "inputs"), "--to", "nifti,table", "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "medpanoptic", *common, "--out", str(single)], check=True, env=env,
                   capture_output=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29544",
                           "-m", "medpanoptic", *common, "--out", str(double)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    for case in truths:
        a = nib.load(single / case / f"{case}_instance.nii.gz")
        b = nib.load(double / case / f"{case}_instance.nii.gz")
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_allclose(a.affine, b.affine)
    one, two = _rows(single / "instances.csv"), _rows(double / "instances.csv")
    # scores are floats from a different thread layout: equal to rounding, everything else exactly
    assert [{k: v for k, v in r.items() if k != "score"} for r in one] == [{k: v for k, v in r.items() if k != "score"} for r in two]
    np.testing.assert_allclose([float(r["score"]) for r in one], [float(r["score"]) for r in two], rtol=1e-3)
    assert not list(double.glob(".rank*"))


def test_demo_writes_every_format_and_scores_itself(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "PQ_things" in text and "phantom_seg.dcm" in text
    pq_things = float(text.split("PQ_things")[1].split()[0])
    assert pq_things >= 0.75
    names = {p.name for p in (tmp_path / "demo" / "result").iterdir()}
    assert {"phantom_label.nii.gz", "phantom_seg.dcm", "phantom.seg.nrrd", "phantom_instances.csv", "phantom_qc.png"} <= names


# -- instances through the inversion onto the source grid ----------------------------------------------
def _inversion_case():
    """A coarse oblique anisotropic source grid, resampled fine as the bundles do, with network-like
    heads on the fine grid: a large lesion (with a one-voxel nodule inside it), and a one-voxel
    lesion far from it, placed between the fine voxels that the inversion samples."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientationd, Spacingd

    from medpanoptic.io.geometry import affine_from_lps, ras_to_voxel, voxel_to_ras

    source_affine = affine_from_lps((-20.0, 15.0, 30.0), (1.6, 1.8, 5.0), oblique_direction((20.0, -12.0, 8.0)).ravel())
    image = MetaTensor(torch.zeros((1, 14, 12, 6)), affine=torch.as_tensor(source_affine))
    preprocessing = Compose([Orientationd(keys="image", axcodes="RAS"),
                             Spacingd(keys="image", pixdim=(0.5, 0.5, 1.25), mode="bilinear")])
    data = preprocessing({"image": image})
    fine = data["image"]
    fine_affine = fine.affine.numpy()
    shape = fine.shape[1:]
    # where each source voxel centre falls on the fine grid: the fine voxels nearest-neighbour inversion reads
    source_ijk = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape[1:]], indexing="ij"), -1).reshape(-1, 3)
    sampled = ras_to_voxel(fine_affine, voxel_to_ras(source_affine, source_ijk))
    sampled = sampled[np.all((sampled > 0) & (sampled < np.array(shape) - 1), axis=1)]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    middle = np.array(shape) / 2
    mm = np.linalg.norm((grid - middle) @ (fine_affine[:3, :3]).T, axis=-1)
    ball = mm < 9.0
    # the one-voxel lesion: 12-16 mm from the ball's centre, as far from every sampled point as a voxel can be
    shell = np.argwhere((mm > 12.0) & (mm < 16.0))
    gap = np.array([np.abs(sampled - v).max(axis=1).min() for v in shell])
    tiny = tuple(shell[np.argmax(gap)])
    core = np.argwhere(mm < 3.0)
    nodule = tuple(core[np.argmax([np.abs(sampled - v).max(axis=1).min() for v in core])])
    logits = torch.zeros((4,) + tuple(shape))
    logits[0] = 1.0
    logits[2][torch.from_numpy(ball)] = 5.0
    logits[2][tiny] = 5.0
    logits[3][nodule], logits[2][nodule] = 5.0, 0.0
    heads = torch.cat([logits, torch.zeros((1 + 3,) + tuple(shape))])  # center and offsets unused by components
    data["pred"] = MetaTensor(heads, affine=fine.affine, meta=dict(fine.meta))
    return data, preprocessing, image, tiny, nodule


def test_instances_lost_by_the_inversion_are_restored_or_dropped_by_name(tmp_path):
    import json

    from monai.transforms import Invertd

    from medpanoptic.io.geometry import ras_to_voxel, voxel_to_ras
    from medpanoptic.labels import LabelSet
    from medpanoptic.segment import PanopticResult
    from medpanoptic.transforms import PanopticPostprocessd, SavePanopticd, integer_pair, source_grid_pair

    labels = LabelSet.from_names(stuff=["tissue"], things=["lesion", "nodule"])  # 1 stuff, 2 and 3 things
    data, preprocessing, image, tiny, nodule = _inversion_case()
    data = PanopticPostprocessd(keys="pred", label_set=labels, mode="components")(data)
    found = data["pred"][1].numpy()
    tiny_id, nodule_id = int(found[tiny]), int(found[nodule])
    assert sorted(data["pred_centres"]) == [1, 2, 3] and {tiny_id, nodule_id} < {1, 2, 3}
    data["pred_scores"] = {i: 1.0 / i for i in data["pred_centres"]}  # ranked as grouping ranks them
    data = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True)(data)
    lost = integer_pair(data["pred"])[1]
    assert set(np.unique(lost.numpy())) == {0, ({1, 2, 3} - {tiny_id, nodule_id}).pop()}  # both small ones vanished

    pair, scores, dropped = source_grid_pair(data, "pred")
    assert dropped == [nodule_id]  # its centre lands on the large lesion: no voxel of its own to get
    ids = sorted(set(np.unique(pair[1].numpy())) - {0})
    assert ids == [1, 2] and sorted(scores) == ids  # consecutive, every score keyed to a present id
    source_affine = image.affine.numpy()
    centre = tuple(np.rint(ras_to_voxel(source_affine, voxel_to_ras(data["image"].affine.numpy(), np.array(tiny)))).astype(int))
    restored = int(pair[1][centre])
    assert restored > 0 and int((pair[1] == restored).sum()) == 1 and int(pair[0][centre]) == 2
    assert scores[restored] == pytest.approx(1.0 / tiny_id)  # its score followed it to its new id
    result = PanopticResult(pair, labels, scores, dropped_instances=len(dropped))
    assert result.n_instances == 2 == len(ids)

    # the bundle path (`python -m monai.bundle run`) writes the same through SavePanopticd
    SavePanopticd(keys="pred", output_dir=tmp_path, label_set=labels)({**data, "case": "inverted"})
    back, _ = read_panoptic(tmp_path / "inverted", label_set=labels)
    np.testing.assert_array_equal(back.numpy(), pair.numpy())
    document = json.loads((tmp_path / "inverted_panoptic.json").read_text())
    assert document["dropped_instances"] == 1 and sorted(document["scores"]) == ["1", "2"]


def test_n_instances_counts_instances_not_the_largest_id():
    import torch

    from medpanoptic.labels import LabelSet
    from medpanoptic.pair import make_pair
    from medpanoptic.segment import PanopticResult

    labels = LabelSet.from_names(things=["lesion"])
    pair = make_pair(torch.tensor([[1, 1, 0, 1]]), torch.tensor([[2, 2, 0, 9]]))
    assert PanopticResult(pair, labels).n_instances == 2
