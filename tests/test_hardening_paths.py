"""`medpanoptic segment` against hostile names and file systems (#12, #18): case names from tags and
manifests stay inside `--out`, a bare bundle name never loads a folder from the current directory,
the shipped bundles travel in the wheel, a killed run's leftovers go, one run per output folder,
and `$` in names draws literally."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pydicom
import pytest

from medpanoptic.cli import main
from medpanoptic.cohort import LOCK, output_lock
from medpanoptic.errors import InputError
from medpanoptic.io.dicom_write import write_dicom_series
from medpanoptic.io.nifti import write_nifti
from medpanoptic.io.paths import safe_component
from medpanoptic.segment import bundle_path, shipped_bundles
from medpanoptic.synthetic import ct_phantom, oblique_direction

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 12)  # a tiny phantom: each case costs a second or two on CPU

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(shape=SHAPE, spacing=(0.9, 1.1, 2.5), direction=oblique_direction().ravel(), n_lesions=1, seed=5)


def _nifti(phantom, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, phantom.image[0].numpy(), phantom.image.affine.numpy())
    return path


def _segment(*args: str) -> int:
    return main(["segment", *args, "--to", "nifti,table,png", "--device", "cpu"])


def _tree(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under `root` except those under `skip`, with file contents (None for folders, link targets)."""
    found = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        content = os.readlink(p).encode() if p.is_symlink() else p.read_bytes() if p.is_file() else None
        found[str(p.relative_to(root))] = content
    return found


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _assert_cases_are_safe_folders(out: Path) -> list[str]:
    """Every case of cases.csv is a safe folder directly in `out` whose files and done.json carry that name."""
    cases = [r["case"] for r in _rows(out / "cases.csv")]
    assert cases and _rows(out / "errors.csv") == []
    for case in cases:
        assert case == safe_component(case)
        folder = out / case
        assert folder.is_dir() and folder.resolve().parent == out.resolve()
        assert json.loads((folder / "done.json").read_text())["case"] == case
        assert all(p.name.startswith(case) for p in folder.iterdir() if p.name != "done.json")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(cases)
    return cases


@pytest.fixture
def arena(tmp_path):
    """`tmp/outer/sentinel/keep.txt` beside `tmp/outer/out`: a run must leave everything but `out` as it was."""
    sentinel = tmp_path / "outer" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "keep.txt").write_text("precious")
    return tmp_path, tmp_path / "outer" / "out"


# -- 1. names from tags and manifests never leave --out ----------------------------------------
def _hostile_series(phantom, study: Path) -> None:
    """Three image series in one folder whose SeriesNumber / SeriesInstanceUID / SeriesDescription climb
    (written in Explicit VR, so the text survives as the file states it)."""
    first = study / "ct"
    write_dicom_series(phantom.image, first, series_description="/../../Z", patient_id="H")
    files = sorted(first.iterdir())
    hostile = [("/../..", "1.2.826.0.1.3680043.9.7777.1", "/../.."),
               ("/../../X", "1.2.826.0.1.3680043.9.7777.2", "../../X"),
               (None, "1.2.826.0.1.3680043.9.7777./../../Y", "/etc")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid IS / UI values we set on purpose
        for n, (number, uid, description) in enumerate(hostile):
            for f in files:
                ds = pydicom.dcmread(f)
                ds.SeriesInstanceUID, ds.SeriesDescription = uid, description
                ds.SOPInstanceUID = pydicom.uid.generate_uid()
                if number is None:
                    del ds.SeriesNumber
                else:  # an IS element cannot hold text: a file stating another VR can, and is read as it says
                    ds.add_new(0x00200011, "SH", number)
                ds.save_as(first / f"s{n}_{f.name}")
    for f in files:
        f.unlink()


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_hostile_dicom_series_tags_stay_inside_out(phantom, arena):
    root, out = arena
    _hostile_series(phantom, root / "data" / "study")
    before = _tree(root, out)
    assert _segment(str(root / "data" / "study"), "--out", str(out)) == 0
    assert _tree(root, out) == before  # nothing new outside --out, the sentinel and its file still there
    cases = _assert_cases_are_safe_folders(out)
    assert len(cases) == 3 and all(c.startswith("ct_") for c in cases)
    assert "ct_series" in cases  # SeriesNumber '/../..' -> 'series/../..' -> one readable component


def test_hostile_manifest_cases_stay_inside_out(phantom, arena):
    root, out = arena
    image = _nifti(phantom, root / "data" / "scan.nii.gz")
    absolute = root / "outer" / "absolute_target"
    manifest = root / "data" / "cohort.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["image", "case"], ["scan.nii.gz", ".."], [str(image), "../../X"],
                                 ["scan.nii.gz", str(absolute)], ["scan.nii.gz", "../sentinel"]])
    before = _tree(root, out)
    assert _segment(str(manifest), "--out", str(out)) == 0
    assert _tree(root, out) == before and not absolute.exists()
    cases = _assert_cases_are_safe_folders(out)
    assert len(cases) == 4 and "X" in cases and "sentinel" in cases
    assert main(["segment", str(manifest), "--out", str(out), "--to", "nifti,table,png", "--device", "cpu"]) == 0
    assert _tree(root, out) == before  # a resumed run (it removes and renames folders) stays inside too


def test_a_case_folder_that_is_a_link_is_never_replaced(phantom, arena, capsys):
    root, out = arena
    image = _nifti(phantom, root / "data" / "scan.nii.gz")
    out.mkdir()
    (out / "scan").symlink_to(root / "outer" / "sentinel", target_is_directory=True)
    assert _segment(str(image), "--out", str(out), "--no-resume") == 1
    assert (root / "outer" / "sentinel" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in (root / "outer" / "sentinel").iterdir()) == ["keep.txt"]
    assert "refusing to touch a path outside the output folder" in capsys.readouterr().err
    (out / "other").mkdir()
    (out / "other" / "result.txt").write_text("another case")
    (out / "scan").unlink()
    (out / "scan").symlink_to(out / "other", target_is_directory=True)  # inside --out, still not ours to replace
    assert _segment(str(image), "--out", str(out), "--no-resume") == 1
    assert (out / "other" / "result.txt").read_text() == "another case"
    assert "a link where a case folder belongs; refusing to replace it" in capsys.readouterr().err


# -- 2. a bare bundle name is a shipped bundle, never ./name -----------------------------------
def _hostile_bundle(folder: Path, marker: Path) -> None:
    code = f"$__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes(b"not weights")
    config = {key: code for key in ("label_set", "network_def", "preprocessing", "inferer", "panoptic", "invert")}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))


def test_bare_bundle_name_ignores_a_folder_of_that_name_in_the_cwd(phantom, tmp_path, monkeypatch):
    image = _nifti(phantom, tmp_path / "data" / "scan.nii.gz")
    cwd, marker = tmp_path / "downloads", tmp_path / "marker"
    _hostile_bundle(cwd / "ct_lesion_panoptic", marker)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MEDPANOPTIC_BUNDLES", raising=False)
    assert bundle_path("ct_lesion_panoptic") == shipped_bundles() / "ct_lesion_panoptic"
    assert _segment(str(image), "--out", str(tmp_path / "out")) == 0
    assert not marker.exists()
    assert int(_rows(tmp_path / "out" / "cases.csv")[0]["n_instances"]) >= 1  # the shipped weights found lesions


def test_bundle_names_and_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDPANOPTIC_BUNDLES", raising=False)
    (tmp_path / "mine" / "configs").mkdir(parents=True)
    assert bundle_path("./mine") == Path("./mine") and bundle_path(str(tmp_path / "mine")) == tmp_path / "mine"
    with pytest.raises(InputError, match=r"mine: no shipped bundle of that name .*as a path, e\.g\. \./mine"):
        bundle_path("mine")
    with pytest.raises(InputError, match=r"\.\./mine: no such bundle folder"):
        bundle_path("../mine")
    for not_a_name in ("$(touch x)", "..x y", "-rf", ""):
        with pytest.raises(InputError, match="not a bundle name"):
            bundle_path(not_a_name)
    monkeypatch.setenv("MEDPANOPTIC_BUNDLES", str(tmp_path))
    assert bundle_path("mine") == tmp_path / "mine"  # a folder the user named in $MEDPANOPTIC_BUNDLES
    assert main(["segment", "x.nii.gz", "--out", str(tmp_path / "out"), "--bundle", "$(touch x)"]) == 2
    assert capsys.readouterr().err.startswith("medpanoptic: error: $(touch x): not a bundle name")
    assert not (tmp_path / "out").exists()


# -- 3. the shipped bundles travel in the wheel ------------------------------------------------
def test_shipped_bundles_have_their_weights():
    for name in ("ct_lesion_panoptic", "nuclei_panoptic_2d"):
        folder = bundle_path(name)
        assert folder.parent == shipped_bundles()
        assert (folder / "models" / "model.pt").stat().st_size > 100_000
        assert (folder / "configs" / "inference.json").is_file()


def test_every_sub_package_is_listed_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = [".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "medpanoptic").rglob("__init__.py")]
    assert sorted(listed) == sorted(found + ["medpanoptic._bundles"])


def test_wheel_carries_the_bundles(tmp_path):
    pytest.importorskip("setuptools", minversion="68")  # built without isolation: no download
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "eval", "model.ts")
    shutil.copytree(ROOT / "medpanoptic", src / "medpanoptic", ignore=ignore)
    shutil.copytree(ROOT / "bundles", src / "bundles", ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                           "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("medpanoptic-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundle in ("ct_lesion_panoptic", "nuclei_panoptic_2d"):
        for part in ("models/model.pt", "configs/inference.json", "configs/metadata.json", "docs/README.md", "LICENSE"):
            assert f"medpanoptic/_bundles/{bundle}/{part}" in names, part
    assert "medpanoptic/_bundles/meta_schema.json" in names
    assert not any(n.startswith("bundles/") or "/eval/" in n or n.endswith("model.ts") for n in names)


# -- 4. a killed run's hidden case folders go, look-alikes stay ---------------------------------
def test_leftovers_of_a_killed_run_are_removed(phantom, tmp_path):
    image = _nifti(phantom, tmp_path / "data" / "scan.nii.gz")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    for stale in (".scan.tmp-0123abcd", ".other_case.tmp-deadbeef"):
        (out / stale / "scan").mkdir(parents=True)
        (out / stale / "scan" / "scan_label.nii.gz").write_bytes(b"half written")
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("not ours")
    (out / ".link.tmp-cafebabe").symlink_to(elsewhere, target_is_directory=True)
    (out / ".notes.tmp").write_text("a user's file")
    (out / ".x.tmp-").mkdir()
    (out / ".x.tmp-0123abcd.csv").write_text("a file, not a case folder")
    (out / ".y.tmp-0123ABCD").mkdir()
    (out / "keep" / ".nested.tmp-0123abcd").mkdir(parents=True)
    assert _segment(str(image), "--out", str(out)) == 0
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == [".link.tmp-cafebabe", ".notes.tmp", ".x.tmp-", ".x.tmp-0123abcd.csv", ".y.tmp-0123ABCD"]
    assert (out / ".link.tmp-cafebabe").is_symlink() and (elsewhere / "data.txt").read_text() == "not ours"
    assert (out / "keep" / ".nested.tmp-0123abcd").is_dir()
    assert (out / "scan" / "done.json").is_file()


# -- 5. one run per output folder ---------------------------------------------------------------
HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""

TRY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("held by", open(sys.argv[1]).read().strip())
"""


def test_a_second_run_on_the_same_out_is_refused(phantom, tmp_path, capsys):
    image = _nifti(phantom, tmp_path / "data" / "scan.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / LOCK)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _segment(str(image), "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert err == (f"medpanoptic: error: {out}: another medpanoptic segment run (pid {holder.pid}) is writing to "
                       f"this output folder; wait for it to finish or choose another --out\n")
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of the refused run
    finally:
        holder.stdin.close()
        holder.wait()
    assert _segment(str(image), "--out", str(out)) == 0
    assert not (out / LOCK).exists()  # released and removed at the end of the run


def test_the_run_lock_is_seen_by_other_processes(tmp_path):
    with output_lock(tmp_path) as lock:
        seen = subprocess.run([sys.executable, "-c", TRY, str(lock)], capture_output=True, text=True, check=True)
        assert seen.stdout.strip() == f"held by {os.getpid()}"
        with pytest.raises(InputError, match=rf"another medpanoptic segment run \(pid {os.getpid()}\)"):
            with output_lock(tmp_path):
                pass
    assert not lock.exists()
    with output_lock(tmp_path):  # free again
        pass


# -- 6. '$' in names --------------------------------------------------------------------------
def test_dollar_signs_in_file_names(phantom, tmp_path):
    inputs = tmp_path / "in"
    for name in ("a$b$.nii.gz", "x$^$.nii.gz", "$$.nii.gz"):
        _nifti(phantom, inputs / name)
    out = tmp_path / "out"
    assert _segment(str(inputs), "--out", str(out)) == 0
    assert sorted(_assert_cases_are_safe_folders(out)) == ["a_b", "case", "x"]
    assert (out / "cohort_overview.png").stat().st_size > 0


def test_qc_pictures_draw_dollar_signs_literally(phantom, tmp_path):
    from medpanoptic.io.qc import cohort_overview, qc_montage

    names = ["a$b$", "x$^$", "$$", "p$\\frac$"]
    overview = cohort_overview(names, [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], tmp_path / "overview.png", "l$_$")
    montage = qc_montage(phantom.image, phantom.pair, phantom.label_set, tmp_path / "qc.png", title="x$^$")
    assert overview.stat().st_size > 0 and montage.stat().st_size > 0
