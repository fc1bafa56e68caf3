"""The `medpanoptic` command as a user runs it: real processes, exit codes, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from medpanoptic.io import read_scan
from medpanoptic.io.decathlon import load_datalist
from medpanoptic.io.panoptic import read_panoptic


def run(*args):
    """A real process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "medpanoptic", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def cli(capsys):
    """The same command in-process (no interpreter start-up): returns (exit code, stdout, stderr)."""
    from medpanoptic.cli import main

    def call(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def test_help_lists_every_command_with_its_summary_and_a_typo_is_refused_by_name():
    """`--help` names each command with its one-line summary (whitespace-wrapped as argparse wraps),
    each command's own `--help` shows its usage, and a misspelt command is one error line, exit 2."""
    from medpanoptic.cli import COMMANDS

    out = run("--help")
    assert out.returncode == 0 and out.stderr == ""
    text = "".join(out.stdout.split())  # argparse wraps lines at spaces and after hyphens
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(COMMANDS)
    for name, (summary, _, _) in COMMANDS.items():
        assert name + "".join(summary.split()) in text
    for name in COMMANDS:
        own = run(name, "--help")
        assert own.returncode == 0 and own.stdout.startswith(f"usage: medpanoptic {name} ")
    typo = run("segmnt")
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr.strip().splitlines() == [
        f"medpanoptic: error: argument COMMAND: invalid choice: 'segmnt' (choose from "
        f"{', '.join(repr(c) for c in COMMANDS)}) (see 'medpanoptic --help')"]


def test_phantom_dataset_in_decathlon_layout(tmp_path, cli):
    code, _, err = cli("phantom", tmp_path / "ds", "--n", 2, "--dims", 3, "--dicom", "--oblique", "--shape", "48,48,24",
                       "--things", 4)
    assert code == 0, err
    doc = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert doc["numTraining"] == 2 and doc["labels"]["3"] == "lesion" and doc["tensorImageSize"] == "3D"
    entries, labels = load_datalist(tmp_path / "ds")
    assert labels.thing_ids == [3]
    for entry in entries:
        image = read_scan(entry["image"])
        pair, _ = read_panoptic(entry["label"], label_set=labels)
        instance = read_scan(entry["instance"])
        assert image.shape[1:] == pair.shape[1:] == (48, 48, 24)
        assert int(instance.max()) == 4
        # the DICOM series holds the same voxels and geometry as the NIfTI image
        case = entry["image"].split("/")[-1].replace(".nii.gz", "")
        series = read_scan(tmp_path / "ds" / "dicom" / case)
        np.testing.assert_allclose(series.affine.numpy(), image.affine.numpy(), atol=1e-4)
        np.testing.assert_allclose(series[0].numpy(), image[0].numpy(), atol=0.51)

    # MONAI's own Decathlon loader reads the list
    from monai.data import load_decathlon_datalist

    monai_list = load_decathlon_datalist(str(tmp_path / "ds" / "dataset.json"), data_list_key="training")
    assert len(monai_list) == 2


def test_phantom_2d(tmp_path, cli):
    code, _, err = cli("phantom", tmp_path / "cells", "--n", 1, "--dims", 2, "--rgb")
    assert code == 0, err
    entries, _ = load_datalist(tmp_path / "cells")
    assert read_scan(entries[0]["image"]).shape == (3, 256, 256)


def test_info_describes_geometry(pydicom_files, cli):
    code, out, _ = cli("info", pydicom_files / "dicomdirtests" / "98892001" / "CT5N")
    assert code == 0
    assert "(16, 16, 5)" in out and "2.5" in out and "SmartScore" in out


def test_info_lists_series_of_a_mixed_folder(pydicom_files, cli):
    code, out, _ = cli("info", pydicom_files / "dicomdirtests" / "98892003" / "MR1")
    assert code == 0
    assert out.count("FAST LOCALIZER") == 3 and "--series-uid" in out


@pytest.mark.parametrize("relative", ["MR_truncated.dcm", "dicomdirtests/77654033/CT2", "does-not-exist"])
def test_errors_are_one_line_and_non_zero(pydicom_files, relative, cli):
    code, _, err = cli("info", pydicom_files / relative)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medpanoptic: error: ") and str(pydicom_files / relative) in lines[0]


def test_a_real_process_exits_non_zero_with_one_line(pydicom_files):
    out = run("info", pydicom_files / "MR_truncated.dcm")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "truncated" in out.stderr and "Traceback" not in out.stderr


def test_bad_arguments_fail(cli):
    assert cli("phantom", "/tmp/x", "--dims", "4")[0] != 0
    assert cli("phantom", "/tmp/x", "--dims", "2", "--dicom")[0] != 0


# -- every failure is one line (hardening #12) -----------------------------------------------
def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medpanoptic: error: "), err
    return lines[0]


def _failing_info(monkeypatch, error: BaseException):
    """Make `info` fail with `error` (a stand-in for a bug or an exhausted machine deep in a library)."""
    from medpanoptic import cli as cli_module

    def run(args):
        raise error

    help_text, configure, _ = cli_module.COMMANDS["info"]
    monkeypatch.setitem(cli_module.COMMANDS, "info", (help_text, configure, run))


def test_internal_error_is_one_line_naming_the_file_and_exception(monkeypatch, tmp_path, cli):
    _failing_info(monkeypatch, TypeError("sequence item 0: expected str instance, NoneType found"))
    code, _, err = cli("info", tmp_path / "scan.dcm")
    line = _one_error_line(err)
    assert code == 1
    assert str(tmp_path / "scan.dcm") in line
    assert "internal error (TypeError: sequence item 0: expected str instance, NoneType found)" in line
    assert line.endswith("run with -v for the traceback") and "Traceback" not in err


def test_verbose_shows_the_traceback_of_an_internal_error(monkeypatch, tmp_path, cli):
    _failing_info(monkeypatch, ValueError("deep inside a library"))
    code, _, err = cli("-v", "info", tmp_path / "scan.dcm")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "ValueError: deep inside a library" in err
    assert err.strip().splitlines()[-1].startswith("medpanoptic: error: ")


def test_memory_error_says_not_enough_memory(monkeypatch, tmp_path, cli):
    _failing_info(monkeypatch, MemoryError("Unable to allocate 16.0 GiB for an array with shape (65535, 65535)"))
    code, _, err = cli("info", tmp_path / "big.dcm")
    line = _one_error_line(err)
    assert code == 2
    assert line == (f"medpanoptic: error: {tmp_path / 'big.dcm'}: not enough memory to run 'info' on it "
                    "(Unable to allocate 16.0 GiB for an array with shape (65535, 65535))")


def test_usage_errors_are_one_line(cli):
    code, _, err = cli("phantom", "/tmp/x", "--dims", "4")
    assert code == 2
    assert "argument --dims: invalid choice: 4" in _one_error_line(err)


def test_unknown_device_is_refused_before_anything_runs(tmp_path, cli):
    import torch

    if not torch.backends.cuda.is_built():
        expected = "cuda:7: this PyTorch build has no CUDA"
    elif torch.cuda.device_count() == 0:
        expected = "cuda:7: no CUDA GPU is visible"
    else:
        expected = f"cuda:7: only {torch.cuda.device_count()} GPU"
    for device, message in (("cuda:7", expected), ("banana:1", "--device banana:1: not a torch device")):
        code, _, err = cli("segment", tmp_path / "scans", "--out", tmp_path / "out", "--device", device)
        assert code == 2
        assert _one_error_line(err).startswith(f"medpanoptic: error: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "1", "1.5", "-0.2", "half"])
def test_iou_threshold_must_lie_strictly_between_0_and_1(tmp_path, value, cli):
    code, _, err = cli("evaluate", "--pred", tmp_path, "--gt", tmp_path, "--iou-threshold", value)
    assert code == 2
    assert f"argument --iou-threshold: must be a finite number in (0, 1), got '{value}'" in _one_error_line(err)


def test_evaluate_folders_refuses_a_nan_threshold(tmp_path):
    from medpanoptic.errors import InputError
    from medpanoptic.metrics.evaluate import evaluate_folders

    with pytest.raises(InputError, match=r"iou_threshold must be a finite number in \(0, 1\), got nan"):
        evaluate_folders(tmp_path, tmp_path, iou_threshold=float("nan"))


def test_evaluate_out_naming_a_folder_is_refused_by_name(tmp_path, cli):
    assert cli("phantom", tmp_path / "ds", "--n", 1, "--dims", 2)[0] == 0
    folder = tmp_path / "reports"
    folder.mkdir()
    code, out, err = cli("evaluate", "--pred", tmp_path / "ds", "--gt", tmp_path / "ds", "--out", folder)
    assert code == 2
    assert _one_error_line(err) == (f"medpanoptic: error: {folder}: is a folder; the report needs a CSV file name "
                                    "(e.g. --out results/report.csv)")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ds", "reports"]


def test_report_write_refuses_a_folder(tmp_path):
    from medpanoptic.errors import InputError
    from medpanoptic.labels import LabelSet
    from medpanoptic.metrics.evaluate import EvaluationReport

    (tmp_path / "r_summary.csv").mkdir()
    with pytest.raises(InputError, match=r"r_summary\.csv: is a folder"):
        EvaluationReport(LabelSet.from_names(stuff=["tissue"])).write(tmp_path / "r.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["r_summary.csv"]


# -- start-up: no PyTorch for help and info -------------------------------------------------------
def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_cli_does_not_import_torch():
    modules = _modules_after("import medpanoptic.cli")
    assert "medpanoptic.cli" in modules and "torch" not in modules and "monai" not in modules


def test_help_and_info_run_without_torch(tmp_path, oblique_ct):
    import nibabel as nib

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(oblique_ct.image[0].numpy(), oblique_ct.image.affine.numpy()), path)
    code = ("import contextlib, io\nfrom medpanoptic.cli import main\n"
            "for argv in (['--help'], ['info', %r]):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        assert main(argv) == 0" % str(path))
    modules = _modules_after(code)
    assert "medpanoptic.io.scan" in modules and "torch" not in modules and "monai" not in modules


def test_info_of_an_oblique_anisotropic_nifti(tmp_path, oblique_ct, cli):
    import nibabel as nib

    from medpanoptic.io.geometry import LPS_TO_RAS

    path = tmp_path / "scan.nii.gz"
    affine = oblique_ct.image.affine.numpy()
    nib.save(nib.Nifti1Image(oblique_ct.image[0].numpy(), affine), path)
    code, out, err = cli("info", path)
    assert code == 0, err
    lps = LPS_TO_RAS @ affine
    assert "shape:       (64, 56, 32) x 1 channel(s), float32" in out
    assert "spacing mm:  (0.8, 0.9, 2.0)" in out
    assert f"origin LPS:  {tuple(round(float(v), 4) for v in lps[:3, 3])}" in out
    direction = np.round(lps[:3, :3] / np.array([0.8, 0.9, 2.0]), 6).tolist()
    assert f"direction:   {direction} (LPS)" in out


# -- the demo's bundle speaks to a new user without warnings ---------------------------------------
def test_bundle_orientation_transforms_build_without_future_warning():
    import warnings

    from medpanoptic.segment import Segmenter, bundle_config, bundle_path

    bundle = bundle_path("ct_lesion_panoptic")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        segmenter = Segmenter.from_bundle(bundle, device="cpu")  # what `medpanoptic demo` builds
        load = bundle_config(bundle, "train.json").get_parsed_content("load_transforms")
    orientations = [t for t in [*segmenter.preprocessing.transforms, *load] if type(t).__name__ == "Orientationd"]
    assert len(orientations) == 2
    for t in orientations:  # RAS as before: MONAI's former default labels
        assert t.ornt_transform.axcodes == "RAS" and tuple(map(tuple, t.ornt_transform.labels)) == (("L", "R"), ("P", "A"), ("I", "S"))


# -- compiled kernels under load ----------------------------------------------------------------
def test_kernel_threads_follow_the_environment(monkeypatch, caplog):
    import numba

    from medpanoptic import _kernels

    most = numba.config.NUMBA_NUM_THREADS
    monkeypatch.setenv("MEDPANOPTIC_NUM_THREADS", "1")
    assert _kernels.kernel_threads() == 1
    monkeypatch.setenv("MEDPANOPTIC_NUM_THREADS", "1000")
    assert _kernels.kernel_threads() == most
    monkeypatch.setenv("MEDPANOPTIC_NUM_THREADS", "lots")
    with caplog.at_level("WARNING", logger="medpanoptic"):
        n = _kernels.kernel_threads()
    assert 1 <= n <= min(most, _kernels._usable_cores())
    assert "MEDPANOPTIC_NUM_THREADS='lots' is not a whole number: ignored" in caplog.text


def test_kernel_threads_never_exceed_torchs(monkeypatch):
    import torch

    from medpanoptic import _kernels

    monkeypatch.delenv("MEDPANOPTIC_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _kernels.kernel_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_same_panoptic_quality_with_any_thread_count(monkeypatch, oblique_ct):
    from medpanoptic.metrics import panoptic_quality

    gt = oblique_ct.pair.numpy()
    pred = np.roll(gt, 1, axis=1)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("MEDPANOPTIC_NUM_THREADS", threads)
        results.append(panoptic_quality(pred, gt, oblique_ct.label_set).counts)
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].sum() > 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_nifti_writer_order_round_trips_on_an_oblique_grid(tmp_path, oblique_ct, dtype):
    import nibabel as nib

    from medpanoptic.io.geometry import from_ijk_order
    from medpanoptic.io.nifti import write_nifti

    values = np.ascontiguousarray(oblique_ct.pair[1].numpy().astype(dtype) + np.arange(32, dtype=dtype))
    strided = values[:, ::2, :]  # neither C- nor F-contiguous
    np.testing.assert_array_equal(from_ijk_order(strided), strided.T)
    assert from_ijk_order(values).flags.c_contiguous
    affine = oblique_ct.image.affine.numpy()
    write_nifti(tmp_path / "map.nii.gz", values, affine)
    image = nib.load(tmp_path / "map.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), values)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
