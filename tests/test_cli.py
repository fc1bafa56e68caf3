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


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for name in ("info", "phantom"):
        assert name in out.stdout


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
