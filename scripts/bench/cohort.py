"""Benchmark: cases per minute through the whole `medpanoptic segment` pipeline against bare network
inference of the same cases, side by side in one run.

    python scripts/bench/cohort.py [--cases 8] [--to nifti,table,png] [--shape 96,96,48]

"Bare inference" is the bundle's network under its sliding-window inferer on images that are
already read and pre-processed in memory: the least any pipeline must spend. "Pipeline" is
`segment_cohort` from the files on disk: reading (NIfTI and DICOM series), pre-processing,
the same network, grouping, inversion to the source grid, the chosen exports and the cohort
summary. Goal (workflow issue): pipeline throughput >= 0.7 of bare inference.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from medpanoptic.cohort import segment_cohort
from medpanoptic.io.dicom_write import write_dicom_series
from medpanoptic.io.nifti import write_nifti
from medpanoptic.segment import Segmenter, bundle_path
from medpanoptic.synthetic import ct_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="ct_lesion_panoptic")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", default="96,96,48")
    parser.add_argument("--to", default="nifti,table,png")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(tempfile.mkdtemp(prefix="medpanoptic-cohort-"))
    try:
        inputs = work / "inputs"
        inputs.mkdir()
        phantoms = [ct_phantom(shape=shape, n_lesions=8, seed=700 + i) for i in range(args.cases)]
        for i, ph in enumerate(phantoms):  # half NIfTI, half DICOM series, as cohorts come
            if i % 2:
                write_dicom_series(ph.image, inputs / f"case_{i:02d}", series_description="bench", patient_id=f"P{i}")
            else:
                write_nifti(inputs / f"case_{i:02d}.nii.gz", ph.image[0].numpy(), ph.image.affine.numpy())
        seg = Segmenter.from_bundle(bundle_path(args.bundle))
        ready = [seg.preprocessing({"image": seg.load(ph.image).clone()})["image"][None].to(seg.device) for ph in phantoms]

        def bare() -> None:
            with torch.no_grad(), torch.autocast(seg.device.type, enabled=seg.device.type == "cuda"):
                for x in ready:
                    seg.inferer(x, seg.network)
            if seg.device.type == "cuda":
                torch.cuda.synchronize()

        bare()  # warm-up (kernels, numba, allocator)
        formats = [f for f in args.to.split(",") if f] + ([] if "table" in args.to else ["table"])
        segment_cohort([inputs], seg.bundle, work / "warmup", formats, progress=False, segmenter=seg)
        start = time.perf_counter()
        bare()
        t_bare = time.perf_counter() - start
        start = time.perf_counter()
        report = segment_cohort([inputs], seg.bundle, work / "out", formats, progress=False, segmenter=seg)
        t_pipeline = time.perf_counter() - start
        assert len(report.done) == args.cases and report.ok, report.failed
        name = torch.cuda.get_device_name() if seg.device.type == "cuda" else "CPU"
        print(f"{name}, {args.cases} cases of {shape} (half NIfTI, half DICOM), bundle {seg.bundle.name}, formats {formats}")
        print(f"{'':36}{'time s':>8}{'cases/min':>11}")
        print(f"{'bare network inference':36}{t_bare:8.2f}{60 * args.cases / t_bare:11.1f}")
        print(f"{'medpanoptic segment pipeline':36}{t_pipeline:8.2f}{60 * args.cases / t_pipeline:11.1f}")
        print(f"pipeline / bare throughput = {t_bare / t_pipeline:.2f} (goal >= 0.7)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
