"""Benchmark: cases per minute pulling from and storing to a PACS (Orthanc, DICOMweb and DIMSE) against
the same cases from local DICOM folders, side by side in one run.

    python scripts/bench/pacs.py [--cases 6] [--shape 96,96,48]

"Local" is `segment_cohort` on the DICOM series on disk, writing nifti, table and dicom-seg.
"PACS" is the same cohort named by a query (`?patient=BENCH`) on a fresh loopback Orthanc:
QIDO-RS/C-FIND, WADO-RS/C-GET into the cache, the same pipeline, then STOW-RS/C-STORE of
every SEG into its study (and a check that the node lists it). Needs Debian `orthanc` and
`orthanc-dicomweb`. Goal (PACS issue): PACS throughput >= 0.8 of local.

Orthanc's DICOM stack (DCMTK) writes with Nagle's algorithm on unless it is started with
`TCP_NODELAY=1` in its environment; a C-GET then waits for a delayed ACK (about 50 ms) per
instance. `TCP_NODELAY=1 python scripts/bench/pacs.py` measures a node started that way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.orthanc: the same launcher as the tests

from medpanoptic.cohort import segment_cohort  # noqa: E402
from medpanoptic.io.dicom_write import write_dicom_series  # noqa: E402
from medpanoptic.remote.urls import with_query  # noqa: E402
from medpanoptic.segment import Segmenter, bundle_path  # noqa: E402
from medpanoptic.synthetic import ct_phantom  # noqa: E402
from tests.orthanc import PASSWORD, USER, Orthanc  # noqa: E402

FORMATS = ["nifti", "table", "dicom-seg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="ct_lesion_panoptic")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--shape", default="96,96,48")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(tempfile.mkdtemp(prefix="medpanoptic-pacs-"))
    orthanc = Orthanc(work / "orthanc")
    os.environ.update({"MEDPANOPTIC_PACS_USER": USER, "MEDPANOPTIC_PACS_PASSWORD": PASSWORD})
    try:
        orthanc.start()
        inputs = work / "inputs"
        for i in range(args.cases):
            ph = ct_phantom(shape=shape, n_lesions=8, seed=900 + i)
            orthanc.upload(write_dicom_series(ph.image, inputs / f"case_{i:02d}", series_description="bench",
                                              patient_id="BENCH"))
        seg = Segmenter.from_bundle(bundle_path(args.bundle))
        segment_cohort([inputs / "case_00"], seg.bundle, work / "warmup", FORMATS, progress=False, segmenter=seg)
        times = {}
        start = time.perf_counter()
        report = segment_cohort([inputs], seg.bundle, work / "local", FORMATS, progress=False, segmenter=seg)
        times["local DICOM folders"] = time.perf_counter() - start
        assert len(report.done) == args.cases and report.ok, report.failed
        for name, node in (("DICOMweb (QIDO/WADO/STOW-RS)", orthanc.dicomweb), ("DIMSE (C-FIND/C-GET/C-STORE)", orthanc.dimse)):
            start = time.perf_counter()
            report = segment_cohort([with_query(node, patient="BENCH")], seg.bundle, work / name.split()[0], FORMATS,
                                    progress=False, segmenter=seg, store=node)
            times[name] = time.perf_counter() - start
            assert len(report.done) == args.cases and report.ok, report.failed
        device = torch.cuda.get_device_name() if seg.device.type == "cuda" else "CPU"
        print(f"{device}, {args.cases} cases of {shape}, bundle {seg.bundle.name}, formats {FORMATS}, Orthanc on loopback")
        print(f"{'':36}{'time s':>8}{'cases/min':>11}{'vs local':>10}")
        local = times["local DICOM folders"]
        for name, t in times.items():
            print(f"{name:36}{t:8.2f}{60 * args.cases / t:11.1f}{local / t:10.2f}")
        print("goal: PACS / local throughput >= 0.8")
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
