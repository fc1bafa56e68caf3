"""Benchmark: read_scan and write_panoptic against plain SimpleITK on a 512x512x300 CT series.

    python scripts/bench/io.py [--shape 512,512,300] [--repeats 3] [--busy N]

Prints each time (median of the repeats, alternating the two sides so that both see the
same cache and load) and the ratios the foundation issue asks for:
  read_scan / SimpleITK ImageSeriesReader   (goal <= 1.3)
  write_panoptic / SimpleITK.WriteImage      (goal <= 1.5)
`--busy N` runs both sides beside N CPU-burning processes (see `load.py`). Both readers deliver a numpy array of the voxels; both writers write the label and the
instance map as compressed NIfTI (write_panoptic also writes the JSON instance table).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import busy_cores, describe  # noqa: E402

from medpanoptic.io import read_scan, write_dicom_series, write_panoptic
from medpanoptic.io.itk import sitk_from_array
from medpanoptic.synthetic import ct_phantom


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_sitk_read(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="512,512,300")
    parser.add_argument("--lesions", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="background CPU-burning processes during the timings")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))

    t0 = time.perf_counter()
    phantom = ct_phantom(shape=shape, spacing=(0.7, 0.7, 1.0), n_lesions=args.lesions, seed=1)
    print(f"phantom {shape} with {phantom.n_instances} lesions made in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        series = tmp / "series"
        write_dicom_series(phantom.image, series)
        plain_sitk_read(series)  # warm the page cache for both sides
        with busy_cores(args.busy):
            print(describe(args.busy))
            (read_ours, read_theirs), (write_ours, write_theirs) = _timings(phantom, series, tmp, args.repeats)
        size_ours = sum(p.stat().st_size for p in tmp.glob("case0_*"))
        size_theirs = (tmp / "l.nii.gz").stat().st_size + (tmp / "i.nii.gz").stat().st_size

    print(f"{'':34}{'medpanoptic':>12}{'SimpleITK':>12}{'ratio':>8}{'goal':>8}")
    print(f"{'read ' + 'x'.join(map(str, shape)) + ' DICOM series (s)':34}{read_ours:12.3f}{read_theirs:12.3f}{read_ours / read_theirs:8.2f}{'<=1.3':>8}")
    print(f"{'write label+instance NIfTI (s)':34}{write_ours:12.3f}{write_theirs:12.3f}{write_ours / write_theirs:8.2f}{'<=1.5':>8}")
    print(f"{'written size (MB)':34}{size_ours / 1e6:12.2f}{size_theirs / 1e6:12.2f}")


def _timings(phantom, series: Path, tmp: Path, repeats: int):
    """Medians of (ours, SimpleITK's) for reading the series and for writing the two maps, alternating sides."""
    ours, theirs = [], []
    for _ in range(repeats):
        theirs.append(timed(lambda: plain_sitk_read(series)))
        ours.append(timed(lambda: read_scan(series)))
    read_ours, read_theirs = statistics.median(ours), statistics.median(theirs)

    affine = phantom.pair.affine.numpy()
    arr = phantom.pair.numpy()
    label = sitk_from_array(arr[0].astype(np.uint8), affine)
    instance = sitk_from_array(arr[1].astype(np.uint16), affine)
    write_panoptic(phantom.pair, tmp / "warm", phantom.label_set)  # compiled kernels: compile before timing
    ours, theirs = [], []
    for i in range(repeats):
        theirs.append(timed(lambda: (sitk.WriteImage(label, str(tmp / "l.nii.gz"), useCompression=True),
                                     sitk.WriteImage(instance, str(tmp / "i.nii.gz"), useCompression=True))))
        ours.append(timed(lambda: write_panoptic(phantom.pair, tmp / f"case{i}", phantom.label_set)))
    write_ours, write_theirs = statistics.median(ours), statistics.median(theirs)
    return (read_ours, read_theirs), (write_ours, write_theirs)


if __name__ == "__main__":
    main()
