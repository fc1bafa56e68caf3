"""The two MONAI bundles, run as users run them: `python -m monai.bundle ...` in a subprocess, offline."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medpanoptic.io import read_panoptic, read_scan
from medpanoptic.metrics import panoptic_quality
from medpanoptic.segment import bundle_config

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SCHEMA = BUNDLES / "meta_schema.json"
CT, NUCLEI = BUNDLES / "ct_lesion_panoptic", BUNDLES / "nuclei_panoptic_2d"

pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout + done.stderr


def bundle(bundle_dir: Path, *args: str, **kwargs) -> str:
    return run([sys.executable, "-m", "monai.bundle", *args], bundle_dir, **kwargs)


def phantoms(out: Path, *args: str) -> Path:
    run([sys.executable, "-m", "medpanoptic", "phantom", str(out), *args], ROOT)
    return out


@pytest.mark.parametrize("bundle_dir", [CT, NUCLEI], ids=lambda p: p.name)
def test_metadata_verifies_offline_and_the_schema_can_fail(bundle_dir, tmp_path):
    out = bundle(bundle_dir, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in out
    from monai.bundle import verify_metadata

    broken = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]["outputs"]["pred"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle_dir", [CT, NUCLEI], ids=lambda p: p.name)
def test_net_in_out_and_torchscript_export(bundle_dir, tmp_path):
    out = bundle(bundle_dir, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                 "--config_file", "configs/inference.json", "--n", "4")
    assert "data shape of network is verified with no error" in out
    weights = bundle_dir / "models" / "model.pt"
    assert weights.stat().st_size <= 20 * 1024 * 1024
    ts = tmp_path / "model.ts"
    bundle(bundle_dir, "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", "models/model.pt",
           "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json")

    net = bundle_config(bundle_dir, "inference.json").get_parsed_content("network_def")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    scripted = torch.jit.load(str(ts))
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())["network_data_format"]
    x = torch.rand((1, 1, 48, 48, 32) if net.layout.spatial_dims == 3 else (1, 3, 64, 64))
    with torch.no_grad():
        expected = net(x)
        np.testing.assert_allclose(scripted(x).numpy(), expected.numpy(), atol=1e-4)
    assert expected.shape[1] == meta["outputs"]["pred"]["num_channels"] == len(meta["outputs"]["pred"]["channel_def"])
    assert x.shape[1] == meta["inputs"]["image"]["num_channels"]


def _pq_things(result_dir: Path, dataset: Path, cases: list[str], source_of) -> float:
    total = None
    for case in cases:
        pred, labels = read_panoptic(result_dir / case)
        truth, _ = read_panoptic(dataset / "labelsTr" / f"{case}.nii.gz", label_set=labels,
                                 instance_path=dataset / "instancesTr" / f"{case}.nii.gz")
        source = read_scan(source_of(case))
        assert pred.shape[1:] == source.shape[1:]
        np.testing.assert_allclose(pred.affine.numpy(), source.affine.numpy(), atol=1e-4)
        q = panoptic_quality(pred, truth, labels)
        total = q if total is None else total + q
    return total.summary()["pq_things"]


def test_ct_bundle_on_nifti_and_oblique_dicom(tmp_path):
    """Shipped weights on unseen oblique phantoms, as NIfTI and as DICOM series: source geometry, PQ_things >= 0.85."""
    data = phantoms(tmp_path / "data", "--n", "3", "--seed", "100", "--oblique", "--dicom")
    cases = [f"phantom_{s:04d}" for s in range(100, 103)]
    bundle(CT, "run", "--config_file", "configs/inference.json", "--dataset_dir", str(data / "imagesTr"),
           "--output_dir", str(tmp_path / "from_nifti"))
    pq_nifti = _pq_things(tmp_path / "from_nifti", data, cases, lambda c: data / "imagesTr" / f"{c}.nii.gz")
    bundle(CT, "run", "--config_file", "configs/inference.json", "--dataset_dir", str(data / "dicom"),
           "--output_dir", str(tmp_path / "from_dicom"))
    pq_dicom = _pq_things(tmp_path / "from_dicom", data, cases, lambda c: data / "dicom" / c)
    assert pq_nifti >= 0.85 and pq_dicom >= 0.85, (pq_nifti, pq_dicom)


@pytest.mark.parametrize("colour", ["grey", "rgb"])
def test_nuclei_bundle_on_grey_and_rgb(tmp_path, colour):
    data = phantoms(tmp_path / "data", "--dims", "2", "--n", "3", "--seed", "100", *(["--rgb"] if colour == "rgb" else []))
    bundle(NUCLEI, "run", "--config_file", "configs/inference.json", "--dataset_dir", str(data / "imagesTr"),
           "--output_dir", str(tmp_path / "out"))
    cases = [f"phantom_{s:04d}" for s in range(100, 103)]
    pq = _pq_things(tmp_path / "out", data, cases, lambda c: data / "imagesTr" / f"{c}.nii.gz")
    assert pq >= 0.85, pq


TINY = {
    CT: ["--shape", "48,48,24", "--things", "3"],
    NUCLEI: ["--shape", "96,96", "--things", "6", "--rgb-fraction", "0.5"],
}
SHORT = ["--max_epochs", "1", "--val_interval", "1", "--num_workers", "0"]


@pytest.mark.parametrize("bundle_dir", [CT, NUCLEI], ids=lambda p: p.name)
def test_short_training_then_evaluate(bundle_dir, tmp_path):
    dims = "3" if bundle_dir is CT else "2"
    data = phantoms(tmp_path / "data", "--dims", dims, "--n", "3", "--seed", "500", *TINY[bundle_dir])
    work = tmp_path / "bundle"
    shutil.copytree(bundle_dir, work, ignore=shutil.ignore_patterns("models"))
    roi = ["--roi_size", "[32,32,16]" if dims == "3" else "[64,64]"]
    bundle(work, "run", "--config_file", "configs/train.json", "--dataset_dir", str(data), *SHORT, *roi)
    # a hand-written bundle keeps models/model.pt, a planned one (the nuclei bundle) models/fold_<fold>/model.pt
    checkpoint = next(p for p in (work / "models" / "model.pt", work / "models" / "fold_0" / "model.pt") if p.is_file())
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = bundle_config(work, "inference.json").get_parsed_content("network_def")
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)  # strict: every key and shape of the inference network, nothing else
    assert any(not torch.equal(initial[k], v) for k, v in state.items() if v.is_floating_point())  # it trained
    out = bundle(work, "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
                 "--dataset_dir", str(data), "--num_workers", "0")
    assert "panoptic evaluation of 1 case(s)" in out
    with open(work / "eval" / "evaluation.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert len(cases) == 1 and cases[0]["case"] in {f"phantom_{500 + i:04d}" for i in range(3)}  # one of three validates
    validated = cases[0]["case"]
    with open(work / "eval" / "evaluation_summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    pq = [float(v) for row in summary for k, v in row.items() if k.startswith("pq") and v not in ("", "nan")]
    assert pq and all(0.0 <= v <= 1.0 for v in pq)
    # the predictions evaluated are on the case's source grid
    pred, _ = read_panoptic(work / "eval" / "predictions" / validated)
    assert pred.shape[1:] == read_scan(data / "imagesTr" / f"{validated}.nii.gz").shape[1:]


def test_multi_gpu_training_under_torchrun_with_gloo(tmp_path):
    data = phantoms(tmp_path / "data", "--n", "10", "--seed", "600", *TINY[CT])
    work = tmp_path / "bundle"
    shutil.copytree(CT, work, ignore=shutil.ignore_patterns("models"))
    out = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/multi_gpu_train.json']",
               "--dataset_dir", str(data), *SHORT, "--roi_size", "[32,32,16]"], work)
    assert "val_pq_things" in out
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the plain network's weights, loadable by inference


POSTPROCESS_KNOBS = {CT: ["center_threshold", "nms_mm", "min_size_mm", "vote_sigma_mm", "vote_min", "vote_gap_mm", "mode"],
                     NUCLEI: ["center_threshold", "nms_mm", "min_size_mm", "mode"]}


@pytest.mark.parametrize("bundle_dir", [CT, NUCLEI], ids=lambda p: p.name)
def test_one_postprocessing_block_per_bundle(bundle_dir):
    """Inference, training's validation and evaluation build the same grouping, from the one block in
    configs/postprocess.json; no other config spells it out; command-line overrides still reach it."""
    shared = json.loads((bundle_dir / "configs" / "postprocess.json").read_text())
    for name in ("inference.json", "train.json", "evaluate.json"):
        assert "PanopticPostprocessd" not in (bundle_dir / "configs" / name).read_text()
    built = [bundle_config(bundle_dir, "inference.json").get_parsed_content("panoptic"),
             bundle_config(bundle_dir, "train.json").get_parsed_content("validate#postprocessing"),
             bundle_config(bundle_dir, "train.json", "evaluate.json").get_parsed_content("validate#postprocessing").transforms[0]]
    for panoptic in built:
        post = panoptic.postprocess
        values = {**{k: getattr(post.config, k) for k in POSTPROCESS_KNOBS[bundle_dir] if k != "mode"}, "mode": post.mode}
        assert values == {k: shared[k] for k in POSTPROCESS_KNOBS[bundle_dir]}
        assert post.spacing == (None if bundle_dir is CT else [0.0005, 0.0005])
    parser = bundle_config(bundle_dir, "inference.json")
    parser["nms_mm"] = 9.0  # what `--nms_mm 9` does
    assert parser.get_parsed_content("panoptic").postprocess.config.nms_mm == 9.0
