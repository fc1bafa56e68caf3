"""`medpanoptic train`: plan -> generated bundle -> cross-validated training -> segment, on CPU.

One tiny MSD phantom dataset and one hand-written plan (tiny network, 32x32x16 patches, 2 epochs)
serve the module; the plan's anisotropic grid is oblique, so "on the source grid" means something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medpanoptic.cli import main
from medpanoptic.errors import InputError
from medpanoptic.io import read_panoptic, read_scan
from medpanoptic.io.decathlon import write_case, write_dataset_json
from medpanoptic.planning.phantoms import Geometry, write_phantom_dataset
from medpanoptic.planning.train import make_splits, splits_document, train
from medpanoptic.synthetic import make_phantom, oblique_direction

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "bundles" / "meta_schema.json"
EPOCHS = 2


def _decisions(**changes) -> dict:
    values = {
        "target_spacing_mm": [1.2, 1.2, 2.5],
        "normalisation": [{"channel": "CT", "scheme": "ct", "clip": [-200.0, 300.0], "mean": 50.0, "std": 100.0}],
        "patch_size": [32, 32, 16], "batch_size": 2, "estimated_memory_gb": 0.2,
        "network": {"backbone": "dynunet", "filters": [8, 16, 32], "kernel_size": [[3, 3, 3]] * 3,
                    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]},
        "sigma_mm": 3.0, "sigma_fraction": 0.5, "nms_mm": 4.0, "min_size_mm": 30.0, "center_threshold": 0.3,
        "scale_augmentation": [0.8, 1.25], "folds": 2, "epochs": EPOCHS, "learning_rate": 0.002, "samples_per_case": 2,
        **changes,
    }
    return {k: {"value": v, "reason": f"test plan: {k}"} for k, v in values.items()}


def write_plan(data: Path, path: Path, **changes) -> Path:
    """A plan as `medpanoptic plan` writes it (format medpanoptic-plan/1), over an MSD dataset."""
    document = json.loads((data / "dataset.json").read_text())
    cases = [{"case": Path(e["image"]).name.split(".")[0], "image": [e["image"][2:]], "label": e["label"][2:],
              "instance": e["instance"][2:], "classes": None} for e in document["training"]]
    plan = {"format": "medpanoptic-plan/1", "medpanoptic_version": "0.1.0",
            "dataset": {"root": str(data.resolve()), "layout": "msd", "name": "phantoms", "spatial_dims": 3,
                        "channels": ["CT"], "modality": "CT", "n_cases": len(cases)},
            "label_set": document["medpanoptic"]["label_set"], "cases": cases,
            "fingerprint": {"spacing_mm": {"median": [1.0, 1.0, 2.5]}}, "decisions": _decisions(**changes)}
    path.write_text(json.dumps(plan, indent=2))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msd")
    training, label_set = [], None
    for i in range(4):
        direction = oblique_direction((12.0, -8.0, 5.0)).ravel() if i % 2 else None
        ph = make_phantom(3, seed=700 + i, shape=(40, 40, 20), spacing=(1.1, 1.2, 2.5), n_lesions=3,
                          direction=direction)
        label_set = ph.label_set
        training.append(write_case(root, f"phantom_{700 + i:04d}", ph.image, ph.pair))
    write_dataset_json(root, "phantoms", label_set, "CT", 3, training)
    return root


@pytest.fixture(scope="module")
def plan(dataset, tmp_path_factory) -> Path:
    return write_plan(dataset, tmp_path_factory.mktemp("plan") / "plan.json")


@pytest.fixture(scope="module")
def trained(plan, tmp_path_factory) -> Path:
    """Fold 0 trained for EPOCHS epochs, uninterrupted."""
    return train(plan, 0, out=tmp_path_factory.mktemp("bundles") / "uninterrupted")


def test_generated_bundle_is_complete_and_records_what_ran(trained, plan):
    configs = trained / "configs"
    for name in ("inference.json", "train.json", "multi_gpu_train.json", "evaluate.json", "postprocess.json",
                 "metadata.json", "labels.json", "logging.conf", "splits.json", "fingerprint.json"):
        assert (configs / name).is_file(), name
    train_json = json.loads((configs / "train.json").read_text())
    assert train_json["fold"] == 0 and train_json["pixdim"] == [1.2, 1.2, 2.5]
    assert train_json["network_def"]["filters"] == [8, 16, 32]
    augmentation = {t["_target_"]: t for t in train_json["train"]["augmentation"]}
    assert (augmentation["RandZoomd"]["min_zoom"], augmentation["RandZoomd"]["max_zoom"]) == (0.8, 1.25)
    assert augmentation["medpanoptic.transforms.PanopticTargetsd"]["sigma_mm"] == "@sigma_mm"
    assert train_json["sigma_mm"] == 3.0
    assert augmentation["medpanoptic.transforms.PanopticTargetsd"]["sigma_fraction"] == "@sigma_fraction"
    assert train_json["sigma_fraction"] == 0.5
    fingerprint = json.loads((configs / "fingerprint.json").read_text())
    assert fingerprint["plan_fingerprint"] == json.loads(plan.read_text())["fingerprint"]  # beside the domain one
    # weights: the fold's best and the bundle's; checkpoint, curves and out-of-fold cache
    fold = trained / "models" / "fold_0"
    assert torch.equal(*(torch.load(p, weights_only=True)["backbone.output_block.conv.conv.weight"]
                         for p in (fold / "model.pt", trained / "models" / "model.pt")))
    history = json.loads((fold / "history.json").read_text())
    assert [h["epoch"] for h in history["epochs"]] == list(range(1, EPOCHS + 1))
    assert all({"loss", "val_pq", "val_pq_things", "val_pq_stuff"} <= set(h) for h in history["epochs"])
    assert (fold / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    val_cases = json.loads((configs / "splits.json").read_text())["folds"][0]["val"]
    cached = sorted(p.stem for p in (trained / "cache" / "fold_0").glob("*.pt"))
    assert cached == sorted(val_cases)
    entry = torch.load(trained / "cache" / "fold_0" / f"{val_cases[0]}.pt", weights_only=True)
    assert entry["pred"].shape[0] == 4 + 1 + 3 and entry["pred"].shape[1:] == entry["label"].shape[1:]
    readme = (trained / "docs" / "README.md").read_text()
    assert "| fold | train cases | validation cases |" in readme and "test plan: sigma_mm" in readme
    postprocess = json.loads((configs / "postprocess.json").read_text())  # tuned: README and config agree
    for knob in ("center_threshold", "nms_mm", "min_size_mm"):
        assert f"| {knob} | {postprocess[knob]} |" in readme


def test_bundle_keeps_the_training_fingerprint_for_the_domain_check(trained, dataset):
    from medpanoptic import domain

    fingerprint = domain.load_fingerprint(trained)  # refuses a malformed one
    assert fingerprint["n_cases"] == 4 and fingerprint["channels"] == [1] and fingerprint["spatial_dims"] == 3
    assert fingerprint["plan_fingerprint"] == {"spacing_mm": {"median": [1.0, 1.0, 2.5]}}
    scan = read_scan(dataset / "imagesTr" / "phantom_0700.nii.gz")
    assert domain.check_domain(fingerprint, scan) == []  # a training scan lies inside


def test_generated_bundle_verifies(trained, monkeypatch):
    from monai.bundle import verify_metadata, verify_net_in_out

    monkeypatch.chdir(trained)
    verify_metadata(meta_file="configs/metadata.json", filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json", config_file="configs/inference.json",
                      n=2, p=1)
    meta = json.loads((trained / "configs" / "metadata.json").read_text())["network_data_format"]
    assert meta["inputs"]["image"]["spatial_shape"] == ["4*n", "4*n", "4*n"]
    assert meta["outputs"]["pred"]["num_channels"] == len(meta["outputs"]["pred"]["channel_def"]) == 8


def _on_source_grid(result_dir: Path, dataset: Path, per_case_folder: bool = False) -> list[str]:
    cases = []
    for source in sorted((dataset / "imagesTr").glob("*.nii.gz")):
        case = source.name[: -len(".nii.gz")]
        pred, _ = read_panoptic(result_dir / case / case if per_case_folder else result_dir / case)
        scan = read_scan(source)
        assert pred.shape[1:] == scan.shape[1:], case
        np.testing.assert_allclose(pred.affine.numpy(), scan.affine.numpy(), atol=1e-4)
        cases.append(case)
    return cases


def test_generated_bundle_runs_with_monai_and_with_segment(trained, dataset, tmp_path):
    """`python -m monai.bundle run` and `medpanoptic segment --bundle`: outputs on each source grid
    (two of the four scans are oblique), and both give the same pairs."""
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                           "--dataset_dir", str(dataset / "imagesTr"), "--output_dir", str(tmp_path / "monai")],
                          cwd=trained, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_on_source_grid(tmp_path / "monai", dataset)) == 4
    assert main(["segment", str(dataset / "imagesTr"), "--bundle", str(trained), "--out", str(tmp_path / "cli"),
                 "--to", "nifti"]) == 0
    assert len(_on_source_grid(tmp_path / "cli", dataset, per_case_folder=True)) == 4
    a, _ = read_panoptic(tmp_path / "monai" / "phantom_0701")
    b, _ = read_panoptic(tmp_path / "cli" / "phantom_0701" / "phantom_0701")
    assert torch.equal(a[0], b[0])


def test_torchrun_trains_a_fold_with_gloo(plan, tmp_path):
    """`torchrun -m medpanoptic train`: the bundle's multi_gpu_train.json (DDP, distributed samplers);
    rank 0 writes the plain network's weights, the other rank only trains."""
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29571",
                           "-m", "medpanoptic", "train", str(plan), "--fold", "0", "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained ") == 1
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)
    history = json.loads((out / "models" / "fold_0" / "history.json").read_text())
    assert [h["epoch"] for h in history["epochs"]] == [1] and "val_pq" in history["epochs"][0]


class Kill:
    """Stops training like a kill would: at `iteration`, in the middle of an epoch."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine) -> None:
        raise KeyboardInterrupt


def test_resume_after_a_kill_mid_epoch_gives_the_same_weights(trained, plan, tmp_path):
    out = tmp_path / "killed"
    epoch_length = len(json.loads((trained / "configs" / "splits.json").read_text())["folds"][0]["train"])
    assert epoch_length >= 2  # batch of 1 case (2 crops): iteration epoch_length + 1 lies inside epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(plan, 0, out=out, handlers=[Kill(epoch_length + 1)])
    stopped = torch.load(out / "models" / "fold_0" / "checkpoint.pt", weights_only=True)
    assert stopped["trainer"]["iteration"] == epoch_length  # the last checkpoint is the first epoch's
    with pytest.raises(InputError, match="holds trained folds already: pass --resume"):
        train(plan, 0, out=out)
    train(plan, 0, out=out, resume=True)
    resumed = torch.load(out / "models" / "fold_0" / "checkpoint.pt", weights_only=True)
    reference = torch.load(trained / "models" / "fold_0" / "checkpoint.pt", weights_only=True)
    assert resumed["trainer"]["iteration"] == reference["trainer"]["iteration"] == EPOCHS * epoch_length
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key  # bit-identical
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]
    # another fold later, on its own: the bundle's choice and table then cover both folds
    train(plan, 1, epochs=1, out=out, resume=True)
    readme = (out / "docs" / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 2
    history = {k: json.loads((out / "models" / f"fold_{k}" / "history.json").read_text())["best"] for k in (0, 1)}
    chosen = max(history, key=lambda k: history[k]["metric"])
    for key, value in torch.load(out / "models" / f"fold_{chosen}" / "model.pt", weights_only=True).items():
        assert torch.equal(torch.load(out / "models" / "model.pt", weights_only=True)[key], value)
    assert {p.parent.name for p in (out / "cache").glob("*/*.pt")} == {"fold_0", "fold_1"}


def test_fixed_length_epochs_draw_cases_with_replacement_and_resume_exactly(dataset, tmp_path):
    """A CPU plan's `steps_per_epoch`: epochs of that many steps whatever the number of cases (two here,
    drawn with replacement), and a run killed inside its second epoch resumes to the same weights."""
    plan = write_plan(dataset, tmp_path / "plan.json", steps_per_epoch=3)
    whole = train(plan, 0, out=tmp_path / "whole")
    record = json.loads((whole / "models" / "fold_0" / "history.json").read_text())["epochs"]
    assert [h["steps"] for h in record] == [3] * EPOCHS
    with pytest.raises(KeyboardInterrupt):
        train(plan, 0, out=tmp_path / "killed", handlers=[Kill(4)])
    train(plan, 0, out=tmp_path / "killed", resume=True)
    resumed, reference = (torch.load(p / "models" / "fold_0" / "checkpoint.pt", weights_only=True)
                          for p in (tmp_path / "killed", whole))
    assert resumed["trainer"]["iteration"] == reference["trainer"]["iteration"] == 3 * EPOCHS
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_splits_put_things_in_every_validation_fold():
    names = [f"c{i}" for i in range(10)]
    things = [i in (2, 5, 9) for i in range(10)]
    splits = make_splits(names, things, 3, seed=4)
    assert splits == make_splits(names, things, 3, seed=4)  # deterministic
    assert sorted(n for s in splits for n in s["val"]) == names  # each case validated once
    for s in splits:
        assert any(things[names.index(n)] for n in s["val"])
        assert set(s["train"]).isdisjoint(s["val"])
    with pytest.raises(InputError, match="only 2 case\\(s\\) hold things: 3 folds"):
        make_splits(names, [i in (2, 5) for i in range(10)], 3)


def test_splits_of_a_plan_read_the_label_maps(plan):
    document = splits_document(json.loads(plan.read_text()), seed=1)
    assert len(document["folds"]) == 2 and set(document["cases"]) == {f"phantom_{700 + i:04d}" for i in range(4)}


def test_a_bad_plan_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"format": "something/2"}))
    assert main(["train", str(bad), "--fold", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("medpanoptic: error: ") and "not a valid plan: format is" in err
    bad.write_text("{ not json")
    assert main(["train", str(bad)]) == 2
    assert "cannot read the plan" in capsys.readouterr().err


LAYOUTS = {"nnunet_v2": Geometry(3, (48, 48, 16), (0.6, 0.6, 4.0), channels=2, thing_scale=0.5, n_things=3),
           "microscopy": Geometry(2, (96, 96), (0.0005, 0.0005), n_things=6)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_plan_train_segment_in_the_other_layouts(layout, tmp_path):
    """nnU-Net v2 with two MR channels (3D) and microscopy (2D TIFF): `make_plan` -> 2 epochs -> the
    bundle segments a case (Segmenter) onto its own grid, and its network passes `verify_net_in_out`."""
    from monai.bundle import verify_net_in_out

    from medpanoptic.planning.plan import make_plan, save_plan
    from medpanoptic.planning.transforms import load_image
    from medpanoptic.segment import Segmenter

    root = write_phantom_dataset(tmp_path / "data", layout, 4, LAYOUTS[layout], seed=800)
    plan = make_plan(root, gpu_memory_gb=24.0, base_filters=8, use_data_analyzer=False)
    for name, value in {"folds": 2, "epochs": EPOCHS}.items():
        plan["decisions"][name]["value"] = value
    bundle = train(save_plan(plan, tmp_path / "plan.json"), 0, out=tmp_path / "bundle")
    image = load_image(plan["cases"][0], root)
    assert image.shape[0] == len(plan["dataset"]["channels"])
    result = Segmenter(bundle, device="cpu")(image, case="c0")
    assert result.pair.shape[1:] == image.shape[1:]
    np.testing.assert_allclose(result.pair.affine.numpy(), image.affine.numpy(), atol=1e-6)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(bundle)
        verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json",
                          config_file="configs/inference.json", n=2, p=1)


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory) -> tuple[Path, Path]:
    """An nnU-Net v2 dataset of two MR channels (`<case>_0000`, `_0001`) and the bundle trained on it (1 epoch)."""
    from medpanoptic.planning.plan import make_plan, save_plan

    tmp = tmp_path_factory.mktemp("two_channel")
    root = write_phantom_dataset(tmp / "data", "nnunet_v2", 3, LAYOUTS["nnunet_v2"], seed=820)
    plan = make_plan(root, gpu_memory_gb=24.0, base_filters=8, use_data_analyzer=False)
    for name, value in {"folds": 2, "epochs": 1}.items():
        plan["decisions"][name]["value"] = value
    return root, train(save_plan(plan, tmp / "plan.json"), 0, out=tmp / "bundle")


def _channel_folder(root: Path, folder: Path, cases: list[str]) -> Path:
    import shutil

    folder.mkdir()
    for case in cases:
        for channel in ("0000", "0001"):
            shutil.copy(root / "imagesTr" / f"{case}_{channel}.nii.gz", folder)
    return folder


def test_channel_files_are_segmented_as_one_case_by_monai_and_by_segment(two_channel, tmp_path):
    """Was: `inference.json` read `<case>_0000` and `<case>_0001` as two one-channel scans (and the
    two-channel network refused them); now they are one case `<case>`, its result on the source grid."""
    from medpanoptic.io.inputs import find_scans

    root, bundle = two_channel
    cases = ["phantom_0820", "phantom_0821"]
    scans = _channel_folder(root, tmp_path / "imagesTs", cases)
    found = find_scans([scans], channels=2)
    assert [(s.case, [p.name for p in s.channel_files]) for s in found] == [
        (c, [f"{c}_0000.nii.gz", f"{c}_0001.nii.gz"]) for c in cases]
    assert json.loads((bundle / "configs" / "inference.json").read_text())["channel_files"] == 2
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                           "--dataset_dir", str(scans), "--output_dir", str(tmp_path / "monai")],
                          cwd=bundle, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["segment", str(scans), "--bundle", str(bundle), "--out", str(tmp_path / "cli"), "--to", "nifti"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir() if p.is_dir()) == cases
    for case in cases:
        scan = read_scan(scans / f"{case}_0000.nii.gz")
        a, _ = read_panoptic(tmp_path / "monai" / case)
        b, _ = read_panoptic(tmp_path / "cli" / case / case)
        for pair in (a, b):
            assert pair.shape[1:] == scan.shape[1:]
            np.testing.assert_allclose(pair.affine.numpy(), scan.affine.numpy(), atol=1e-4)
        assert torch.equal(a[0], b[0])


def test_a_channel_file_on_another_grid_is_a_one_line_error_naming_both_files(two_channel, tmp_path, capsys):
    import nibabel as nib

    from medpanoptic.errors import GeometryError
    from medpanoptic.io.scan import read_scan_channels

    root, bundle = two_channel
    scans = _channel_folder(root, tmp_path / "imagesTs", ["phantom_0820"])
    second = scans / "phantom_0820_0001.nii.gz"
    image = nib.load(second)
    shifted = image.affine.copy()
    shifted[:3, 3] += 3.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), second)
    first = scans / "phantom_0820_0000.nii.gz"
    with pytest.raises(GeometryError, match=f"{second}: not on the grid of the case's first channel {first} "
                                            r"\(same shape, but shifted, rotated or of another spacing\)"):
        read_scan_channels([first, second])
    assert main(["segment", str(scans), "--bundle", str(bundle), "--out", str(tmp_path / "cli"), "--to", "nifti"]) == 1
    captured = capsys.readouterr()
    line = next(line for line in (captured.out + captured.err).splitlines() if "not on the grid" in line)
    assert line.startswith(f"medpanoptic: error: case phantom_0820: {second}: not on the grid of the case's first "
                           f"channel {first}")


def test_a_lone_channel_file_is_refused_naming_the_channels_the_bundle_takes(two_channel, tmp_path, capsys):
    """A case whose `_0001` file is missing stays a one-file case, refused in words (was: a convolution's
    shape error deep inside the network)."""
    import shutil

    root, bundle = two_channel
    (tmp_path / "imagesTs").mkdir()
    shutil.copy(root / "imagesTr" / "phantom_0820_0000.nii.gz", tmp_path / "imagesTs")
    assert main(["segment", str(tmp_path / "imagesTs"), "--bundle", str(bundle), "--out", str(tmp_path / "cli"),
                 "--to", "nifti"]) == 1
    err = capsys.readouterr().err
    assert ("medpanoptic: error: case phantom_0820_0000: " in err
            and "phantom_0820_0000.nii.gz: 1 channel(s); the bundle bundle takes 2, one file per channel "
                "(<case>_0000 .. <case>_0001)" in err)
