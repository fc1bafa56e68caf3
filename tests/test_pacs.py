"""From the PACS and back: a real Orthanc (DICOMweb + DIMSE) on loopback, phantom series in, DICOM SEG out.

Orthanc (Debian `orthanc` + `orthanc-dicomweb`, installed by `.ci/run`) runs once per session
with fresh storage; the tests skip only when its binary is absent. Address, settings and cache
rules are checked without it.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medpanoptic.errors import InputError, RemoteError
from medpanoptic.io import read_panoptic, read_scan
from medpanoptic.io.dicom_write import write_dicom_series
from medpanoptic.synthetic import ct_phantom, oblique_direction
from medpanoptic.remote.auth import Settings, load_settings
from medpanoptic.remote.cache import checked_uid, raise_if_failed, series_folder
from medpanoptic.remote.retry import TransientFault, with_retries
from medpanoptic.remote.urls import parse_node, with_query
from tests.orthanc import PASSWORD, USER, Orthanc, TlsFiles, dicomweb_plugin, orthanc_binary

ROOT = Path(__file__).resolve().parents[1]
CT_BUNDLE = ROOT / "bundles" / "ct_lesion_panoptic"
SPACING = (1.4, 1.3, 3.0)  # anisotropic, on oblique grids


# -- without a node -------------------------------------------------------------------------
def test_node_addresses_parse_and_refuse_what_is_wrong():
    web = parse_node("dicomweb://127.0.0.1:8042/dicom-web/?study=1.2.3&modality=CT")
    assert (web.http_url, web.key, web.query) == ("http://127.0.0.1:8042/dicom-web", "dicomweb://127.0.0.1:8042/dicom-web",
                                                  {"study": "1.2.3", "modality": "CT"})
    assert parse_node("dicomwebs://pacs.example:443/wado?study=1.2").http_url == "https://pacs.example:443/wado"
    dimse = parse_node("dimse://ORTHANC@127.0.0.1:4242?patient=P1&since=20240101")
    assert (dimse.aet, dimse.port, dimse.key) == ("ORTHANC", 4242, "dimse://ORTHANC@127.0.0.1:4242")
    with pytest.raises(InputError, match="credentials never go in the address") as e:
        parse_node("dicomweb://alice:hunter2@127.0.0.1:8042/dicom-web?study=1.2")
    assert "hunter2" not in str(e.value)
    with pytest.raises(InputError, match=r"dimse://AET@HOST:PORT"):
        parse_node("dimse://127.0.0.1:4242?study=1.2")
    with pytest.raises(InputError, match="needs HOST:PORT"):
        parse_node("dicomweb://127.0.0.1/dicom-web?study=1.2")
    with pytest.raises(InputError, match="--study must be a DICOM UID"):
        parse_node("dicomweb://127.0.0.1:8042/x?study=../../etc")
    with pytest.raises(InputError, match="--since must be a date YYYYMMDD"):
        parse_node("dicomweb://127.0.0.1:8042/x?since=yesterday")
    with pytest.raises(InputError, match="say which series to take"):
        parse_node("dicomweb://127.0.0.1:8042/x")
    with pytest.raises(InputError, match="--series needs --study"):
        parse_node("dicomweb://127.0.0.1:8042/x?series=1.2")
    with pytest.raises(InputError, match="a --store address takes no query"):
        parse_node("dicomweb://127.0.0.1:8042/x?study=1.2", require_query=False)
    assert with_query("dimse://A@h:1", study="1.2", series=None) == "dimse://A@h:1?study=1.2"
    tls = parse_node("dimses://ORTHANC@pacs.example:2762?study=1.2")
    assert (tls.aet, tls.key, tls.uses_tls, tls.is_dicomweb) == ("ORTHANC", "dimses://ORTHANC@pacs.example:2762", True,
                                                                 False)
    assert not dimse.uses_tls and parse_node("dicomwebs://h:443/x?study=1.2").uses_tls
    with pytest.raises(InputError, match=r"^dimses://h:1: a DIMSE address is dimse://AET@HOST:PORT"):
        parse_node("dimses://h:1?study=1.2")


def test_settings_come_from_env_or_a_private_file_and_never_show_secrets(tmp_path):
    node = parse_node("dicomweb://127.0.0.1:8042/dicom-web?study=1.2")
    config = tmp_path / "pacs.json"
    config.write_text(json.dumps({"username": "file-user", "password": "file-pw", "retries": 1,
                                  "nodes": {"127.0.0.1:8042": {"timeout_s": 2}}}))
    config.chmod(0o644)
    with pytest.raises(InputError, match="readable by others: chmod 600 it"):
        load_settings(node, {"MEDPANOPTIC_PACS_CONFIG": str(config)})
    config.chmod(0o600)
    settings = load_settings(node, {"MEDPANOPTIC_PACS_CONFIG": str(config), "MEDPANOPTIC_PACS_PASSWORD": "env-pw"})
    assert (settings.username, settings.password, settings.retries, settings.timeout_s) == ("file-user", "env-pw", 1, 2.0)
    assert "env-pw" not in repr(settings) and "env-pw" not in str(settings) and "***" in repr(settings)
    assert settings.http_auth().username == "file-user"
    bearer = Settings(token="tok-123").http_auth()
    assert "tok-123" not in repr(bearer)
    with pytest.raises(InputError, match="no such CA file"):
        load_settings(node, {"MEDPANOPTIC_PACS_CA": str(tmp_path / "missing.pem")})
    with pytest.raises(InputError, match=r"no such certificate file \(MEDPANOPTIC_PACS_CERT / tls_cert\)"):
        load_settings(node, {"MEDPANOPTIC_PACS_CERT": str(tmp_path / "missing.crt")})
    key = tmp_path / "our.key"
    key.write_text("not a key")
    with pytest.raises(InputError, match=r"a TLS key needs its certificate"):
        load_settings(node, {"MEDPANOPTIC_PACS_KEY": str(key)})
    with pytest.raises(InputError, match=r"our.key: cannot load our TLS certificate and key"):
        from medpanoptic.remote.dimse import tls_context

        tls_context(Settings(tls_cert=str(key)))


def test_server_uids_never_become_paths(tmp_path):
    with pytest.raises(RemoteError, match="the node sent an invalid Series Instance UID '../../etc'"):
        checked_uid("../../etc", "Series Instance UID", "dicomweb://127.0.0.1:1/x")
    folder = series_folder(tmp_path / "cache", "1.2.3", "1.2.3.4")
    assert folder == tmp_path / "cache" / "1.2.3" / "1.2.3.4"
    raise_if_failed(folder)  # nothing noted: nothing raised


def test_transient_faults_are_retried_then_reported_once():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientFault("cannot connect (is the node running?)")
        return "ok"

    assert with_retries(flaky, "dimse://A@127.0.0.1:1", "C-FIND", retries=2, first_delay_s=0.0) == "ok"
    with pytest.raises(RemoteError, match=r"^dimse://A@127.0.0.1:1: C-FIND: cannot connect \(is the node running\?\) "
                                          r"\(tried 2 times\)$"):
        with_retries(lambda: (_ for _ in ()).throw(TransientFault("cannot connect (is the node running?)")),
                     "dimse://A@127.0.0.1:1", "C-FIND", retries=1, first_delay_s=0.0)


# -- with a real Orthanc -------------------------------------------------------------------
needs_orthanc = pytest.mark.skipif(orthanc_binary() is None or dicomweb_plugin() is None,
                                   reason="Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc "
                                          "orthanc-dicomweb; .ci/run does it)")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def orthanc_tls(tmp_path_factory, tls_files):
    """A second Orthanc whose DICOM port speaks only TLS and asks for a client certificate signed by our CA."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc_tls"), tls=tls_files).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def segmenter():
    from medpanoptic.segment import Segmenter

    return Segmenter.from_bundle(CT_BUNDLE, device="cpu")


@pytest.fixture
def pacs_env(monkeypatch, tmp_path):
    """Our credentials (and fast retries) through the environment and a private config file."""
    config = tmp_path / "pacs.json"
    config.write_text(json.dumps({"retries": 1, "timeout_s": 10}))
    config.chmod(0o600)
    monkeypatch.setenv("MEDPANOPTIC_PACS_USER", USER)
    monkeypatch.setenv("MEDPANOPTIC_PACS_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEDPANOPTIC_PACS_CONFIG", str(config))


def _series(root: Path, name: str, seed: int, patient: str, drop_slice: int | None = None) -> tuple[list[Path], str]:
    """A tiny oblique, anisotropic CT phantom as a DICOM series (optionally with one slice missing)."""
    phantom = ct_phantom(shape=(48, 40, 16), spacing=SPACING, n_lesions=3, seed=seed,
                         direction=oblique_direction((15.0, -10.0, 6.0)).ravel())
    files = write_dicom_series(phantom.image, root / name, patient_id=patient, series_description=name)
    if drop_slice is not None:
        files.pop(drop_slice).unlink()
    return files, str(pydicom.dcmread(files[0]).StudyInstanceUID)


def _segs(orthanc: Orthanc, study: str) -> list[dict]:
    return orthanc.series_of_study(study, "SEG")


def _check_seg_round_trip(orthanc: Orthanc, study: str, case_dir: Path, source_files: list[Path], tmp_path: Path) -> None:
    """Orthanc indexes one SEG in `study`; retrieved, it reads back to the case's pair on the source grid."""
    segs = _segs(orthanc, study)
    assert len(segs) == 1 and len(segs[0]["Instances"]) == 1
    seg_file = tmp_path / f"from_orthanc_{study[-8:]}.dcm"
    seg_file.write_bytes(orthanc.instance_file(segs[0]))
    seg = pydicom.dcmread(seg_file)
    assert seg.StudyInstanceUID == study and seg.Modality == "SEG"
    case = case_dir.name
    local, label_set = read_panoptic(case_dir / case)
    back, _ = read_panoptic(seg_file, label_set=label_set)
    source = read_scan(source_files[0].parent)
    assert back.shape == local.shape and tuple(back.shape[1:]) == tuple(source.shape[1:])
    np.testing.assert_allclose(back.affine.numpy(), source.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(back.numpy(), local.numpy())
    assert int(local[1].max()) >= 1  # lesions were found and survived the trip


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_orthanc
@pytest.mark.slow
def test_segment_dicomweb_with_store_round_trips_once(orthanc, pacs_env, tmp_path, capsys):
    from medpanoptic.cli import main

    files, study = _series(tmp_path / "dicom", "web", 301, "WEB")
    orthanc.upload(files)
    out = tmp_path / "out"
    args = ["segment", orthanc.dicomweb, "--study", study, "--out", str(out), "--device", "cpu", "--to", "nifti,table",
            "--store", orthanc.dicomweb]
    assert main(args) == 0
    case_dir = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    _check_seg_round_trip(orthanc, study, case_dir, files, tmp_path)
    record = json.loads((case_dir / "done.json").read_text())
    assert list(record["stored"]) == [parse_node(orthanc.dicomweb, require_query=False).key]
    assert main(args + ["--no-resume"]) == 0  # segmented again: the same SEG UIDs, not stored twice
    assert len(_segs(orthanc, study)) == 1 and len(_segs(orthanc, study)[0]["Instances"]) == 1
    assert main(args) == 0  # resumed: skipped, and nothing stored again
    assert "0 case(s) segmented, 1 already done, 0 failed" in capsys.readouterr().out
    everything = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.suffix in (".json", ".csv"))
    assert PASSWORD not in everything


@needs_orthanc
@pytest.mark.slow
def test_segment_dimse_with_store(orthanc, pacs_env, tmp_path):
    from medpanoptic.cli import main

    files, study = _series(tmp_path / "dicom", "dimse", 302, "DIMSE")
    orthanc.upload(files)
    out = tmp_path / "out"
    assert main(["segment", orthanc.dimse, "--study", study, "--out", str(out), "--device", "cpu",
                 "--to", "nifti,table", "--store", orthanc.dimse]) == 0
    case_dir = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    _check_seg_round_trip(orthanc, study, case_dir, files, tmp_path)


@needs_orthanc
@pytest.mark.slow
def test_listen_segments_a_series_sent_by_c_store_and_stores_the_seg(orthanc, pacs_env, segmenter, tmp_path):
    from pynetdicom import AE
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    from medpanoptic.remote.listen import listen
    from tests.orthanc import free_port

    files, study = _series(tmp_path / "dicom", "sent", 303, "LISTEN")
    port, out = free_port(), tmp_path / "out"
    done: list[int] = []
    errors: list[BaseException] = []

    def run():
        try:
            done.append(listen(port, CT_BUNDLE, out, store=orthanc.dicomweb, idle_s=1.0, segmenter=segmenter,
                               max_series=1))
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = None
    for _ in range(100):  # the listener binds its port in the background
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDPANOPTIC")
        if assoc.is_established:
            break
        threading.Event().wait(0.1)
    assert assoc is not None and assoc.is_established
    statuses = [assoc.send_c_store(pydicom.dcmread(f)).Status for f in files]
    assoc.release()
    thread.join(timeout=600)
    assert not errors and done == [1] and statuses == [0] * len(files)
    case_dir = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    _check_seg_round_trip(orthanc, study, case_dir, files, tmp_path)


class _StopsOrthancAfterFirstCase:
    """The real segmenter; after its first case (and once the reader thread has retrieved and read the
    second) it stops Orthanc: the node goes down mid-run, before the SEGs are stored."""

    def __init__(self, segmenter, orthanc: Orthanc, reads_before_stop: int = 2) -> None:
        self._segmenter, self._orthanc, self.label_set = segmenter, orthanc, segmenter.label_set
        self._reads, self._reads_before_stop, self._read = 0, reads_before_stop, threading.Condition()

    def __getattr__(self, name):  # the rest is the real segmenter's (its weights and options stamp a case as done)
        return getattr(self._segmenter, name)

    def load(self, *args, **kwargs):
        try:
            return self._segmenter.load(*args, **kwargs)
        finally:
            with self._read:
                self._reads += 1
                self._read.notify_all()

    def __call__(self, *args, **kwargs):
        result = self._segmenter(*args, **kwargs)
        with self._read:
            assert self._read.wait_for(lambda: self._reads >= self._reads_before_stop, timeout=300)
        self._orthanc.stop()
        return result


@needs_orthanc
@pytest.mark.slow
def test_faults_give_one_line_errors_the_run_goes_on_and_a_rerun_completes_once(orthanc, pacs_env, segmenter,
                                                                                 tmp_path, monkeypatch, caplog):
    from medpanoptic.cohort import segment_cohort

    good, good_study = _series(tmp_path / "dicom", "good", 304, "COHORT")
    gappy, gappy_study = _series(tmp_path / "dicom", "gappy", 306, "COHORT", drop_slice=8)
    orthanc.upload(good + gappy)
    source = with_query(orthanc.dicomweb, patient="COHORT", modality="CT")  # the query form of a cohort
    out = tmp_path / "out"

    monkeypatch.setenv("MEDPANOPTIC_PACS_PASSWORD", "not-the-password")
    report = segment_cohort([source], CT_BUNDLE, out, ["nifti", "table", "dicom-seg"], segmenter=segmenter,
                            store=orthanc.dicomweb, progress=False)
    assert not report.done and len(report.failed) == 1
    assert report.failed[0]["error"].endswith("the node refused the credentials (HTTP 401); check "
                                              "MEDPANOPTIC_PACS_USER/_PASSWORD/_TOKEN")
    monkeypatch.setenv("MEDPANOPTIC_PACS_PASSWORD", PASSWORD)

    report = segment_cohort([source], CT_BUNDLE, out, ["nifti", "table", "dicom-seg"], progress=False,
                            segmenter=_StopsOrthancAfterFirstCase(segmenter, orthanc), store=orthanc.dicomweb)
    errors = {r["case"]: r["error"] for r in _rows(out / "errors.csv")}
    assert len(errors) == 2 and not report.done  # the gap is its own case's error; the good case could not be stored
    gappy_case = next(c for c in errors if "1 missing slice(s) between positions" in errors[c])
    good_case = next(c for c in errors if c != gappy_case)
    assert errors[good_case].startswith(f"storing: {parse_node(orthanc.dicomweb, require_query=False).key}: ")
    assert "cannot connect (is the node running?) (tried 2 times)" in errors[good_case]
    assert all("\n" not in e for e in errors.values()) and (out / good_case / "done.json").exists()
    assert not (out / gappy_case).exists()  # nothing half-written

    orthanc.start()
    report = segment_cohort([source], CT_BUNDLE, out, ["nifti", "table", "dicom-seg"], segmenter=segmenter,
                            store=orthanc.dicomweb, progress=False)
    assert report.skipped == [good_case] and [f["case"] for f in report.failed] == [gappy_case]
    assert len(_segs(orthanc, good_study)) == 1 and not _segs(orthanc, gappy_study)
    _check_seg_round_trip(orthanc, good_study, out / good_case, good, tmp_path)
    segment_cohort([source], CT_BUNDLE, out, ["nifti", "table", "dicom-seg"], segmenter=segmenter,
                   store=orthanc.dicomweb, progress=False, resume=False)
    assert len(_segs(orthanc, good_study)) == 1 and len(_segs(orthanc, good_study)[0]["Instances"]) == 1
    logged = caplog.text + "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.suffix in (".json", ".csv"))
    assert PASSWORD not in logged and "not-the-password" not in logged


@needs_orthanc
@pytest.mark.slow
def test_dimse_lists_at_once_retrieves_when_read_over_one_reused_association(orthanc, pacs_env, segmenter,
                                                                              tmp_path, caplog):
    from medpanoptic.cohort import PACS_CACHE, segment_cohort
    from medpanoptic.io.inputs import find_scans
    from medpanoptic.remote.pull import node_cases

    first, study = _series(tmp_path / "dicom", "reuse_a", 307, "REUSE")
    second, second_study = _series(tmp_path / "dicom", "reuse_b", 308, "REUSE")
    orthanc.upload(first + second)
    source = with_query(orthanc.dimse, patient="REUSE")

    scans = find_scans([source], node_cases(tmp_path / "cache"))
    assert len(scans) == 2 and not list((tmp_path / "cache").rglob("*.dcm"))  # listed, nothing retrieved yet
    node = scans[0].remote.node
    assert scans[1].remote.node is node and node.associations_opened == 1  # 2 C-FINDs + 2 listings: one association
    assert len(list(scans[0].remote.fetch().glob("*.dcm"))) == len(first)  # both series have as many slices
    assert node.associations_opened == 2  # opened again once, now with the CT storage context C-GET needs
    orthanc.stop()  # the node goes away and comes back: our association is gone
    orthanc.start()
    assert len(list(scans[1].remote.fetch().glob("*.dcm"))) == len(second)
    assert node.associations_opened == 3
    scans[0].remote.fetch()  # complete in the cache: nothing asked of the node
    assert node.associations_opened == 3
    node.close()

    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="medpanoptic.remote.dimse"):
        report = segment_cohort([source], CT_BUNDLE, out, ["nifti", "table", "dicom-seg"], segmenter=segmenter,
                                store=orthanc.dimse, progress=False)
    assert sorted(report.done) == sorted(s.case for s in scans) and report.ok
    opened = [r.getMessage() for r in caplog.records if r.getMessage().endswith("opened")]
    assert len(opened) == 4, opened  # two per node (pull, store) for the whole cohort, not several per case
    first_case = next(s.case for s in scans if s.remote.ref.study_uid == study)
    _check_seg_round_trip(orthanc, study, out / first_case, first, tmp_path)

    shutil.rmtree(out / PACS_CACHE)  # a resumed run needs no series: nothing is retrieved again
    report = segment_cohort([source], CT_BUNDLE, out, ["nifti", "table", "dicom-seg"], segmenter=segmenter,
                            store=orthanc.dimse, progress=False)
    assert sorted(report.skipped) == sorted(s.case for s in scans) and not report.done and report.ok
    assert not list((out / PACS_CACHE).rglob("*.dcm"))
    assert [len(_segs(orthanc, s)) for s in (study, second_study)] == [1, 1]


@needs_orthanc
@pytest.mark.slow
def test_segment_dimse_over_tls_with_store_and_refuse_an_unknown_certificate(orthanc_tls, tls_files, pacs_env,
                                                                             segmenter, tmp_path, monkeypatch):
    from medpanoptic.cli import main
    from medpanoptic.cohort import segment_cohort

    files, study = _series(tmp_path / "dicom", "tls", 309, "TLS")
    orthanc_tls.upload(files)
    assert orthanc_tls.dimse.startswith("dimses://")
    monkeypatch.setenv("MEDPANOPTIC_PACS_CA", str(tls_files.ca))
    monkeypatch.setenv("MEDPANOPTIC_PACS_CERT", str(tls_files.client))
    monkeypatch.setenv("MEDPANOPTIC_PACS_KEY", str(tls_files.client_key))
    out = tmp_path / "out"
    assert main(["segment", orthanc_tls.dimse, "--study", study, "--out", str(out), "--device", "cpu",
                 "--to", "nifti,table", "--store", orthanc_tls.dimse]) == 0
    case_dir = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    _check_seg_round_trip(orthanc_tls, study, case_dir, files, tmp_path)

    other = TlsFiles(tmp_path / "other", "other-ca")  # a CA that did not sign the node's certificate
    monkeypatch.setenv("MEDPANOPTIC_PACS_CA", str(other.ca))
    report = segment_cohort([with_query(orthanc_tls.dimse, study=study)], CT_BUNDLE, tmp_path / "refused",
                            ["nifti"], segmenter=segmenter, progress=False)
    key = parse_node(orthanc_tls.dimse, require_query=False).key
    assert [f["error"] for f in report.failed] == [
        f"{key}: C-FIND of series in study {study}: cannot associate over TLS (is the node running, and does its "
        "certificate verify against the CA file and ours against its trust list?) (tried 2 times)"]
