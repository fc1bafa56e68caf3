"""Benchmark: every viewer export of a 512x512x300 CT result with 50 lesions; DICOM SEG against plain highdicom.

    python scripts/bench/export.py [--shape 512,512,300] [--lesions 50]

Prints each export's time and size, `PanopticResult.save` with every registered format (and how
many compiled passes over the voxels it made: goal one for statistics, one for segment
numbering), and `write_dicom_seg` time / highdicom's own construction and write of the same
segments from the same source datasets (goal <= 1.3).
The highdicom side is given everything ready-made (source datasets, the frame array and the
segment descriptions), so the ratio is medpanoptic's whole overhead: reading the source
headers, building the segment map and descriptions, and the atomic write. Both sides run
alternately `--repeats` times; the best of each is compared.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import medpanoptic._kernels as kernels
from medpanoptic.io import read_scan, write_dicom_series
from medpanoptic.io.dicom_seg import write_dicom_seg
from medpanoptic.io.formats import FORMAT_NAMES
from medpanoptic.io.labelmap import write_labelmap
from medpanoptic.io.segments import segment_map
from medpanoptic.io.seg_nrrd import write_seg_nrrd
from medpanoptic.io.table import instance_table, write_instance_table
from medpanoptic.segment import PanopticResult
from medpanoptic.synthetic import ct_phantom


def timed(fn):
    gc.collect()  # each side starts without the other's garbage
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def counting_passes() -> dict[str, int]:
    """Count the compiled passes over the voxels: statistics (`pair_stats`) and segment numbering."""
    calls = {"gather_stats": 0, "segment_numbers": 0}
    for name in calls:
        real = getattr(kernels, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(kernels, name, counted)
    return calls


def plain_highdicom(datasets, frames, segments, path):
    """What a highdicom user writes by hand for the same segments."""
    algorithm = hd.AlgorithmIdentificationSequence(name="medpanoptic", family=codes.cid7162.ArtificialIntelligence, version="0")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.number, segment_label=s.name,
            segmented_property_category=hd.sr.CodedConcept(s.category.value, s.category.scheme, s.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(s.type.value, s.type.scheme, s.type.meaning),
            algorithm_type="AUTOMATIC", algorithm_identification=algorithm, tracking_uid=generate_uid(),
            tracking_id=s.tracking_id, display_color=hd.color.CIELabColor.from_rgb(*s.color))
        for s in segments
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=900, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="x", manufacturer_model_name="x", software_versions="0", device_serial_number="0")
    seg.save_as(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="512,512,300")
    parser.add_argument("--lesions", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    phantom = ct_phantom(shape=shape, spacing=(0.7, 0.7, 1.0), n_lesions=args.lesions, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dicom_series(phantom.image, tmp / "ct")
        scan = read_scan(tmp / "ct")
        pair = phantom.pair
        pair.affine = scan.affine
        labels = phantom.label_set

        rows = []
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in scan.meta["source_files"]]
        numbers, segments = segment_map(pair, labels)
        frames = np.ascontiguousarray(numbers.transpose(2, 1, 0))
        ours, theirs = [], []
        for _ in range(args.repeats):  # alternating, so that one-time costs and caches hit both sides
            ours.append(timed(lambda: write_dicom_seg(pair, labels, scan, tmp / "seg.dcm"))[0])
            theirs.append(timed(lambda: plain_highdicom(datasets, frames, segments, tmp / "plain.dcm"))[0])
        ours, theirs = min(ours), min(theirs)
        rows.append(("DICOM SEG (BINARY)", ours, (tmp / "seg.dcm").stat().st_size))
        t, path = timed(lambda: write_dicom_seg(pair, labels, scan, tmp / "lm.dcm", segmentation_type="LABELMAP"))
        rows.append(("DICOM SEG (LABELMAP, RLE)", t, path.stat().st_size))
        t, path = timed(lambda: write_seg_nrrd(pair, labels, tmp / "case.seg.nrrd"))
        rows.append(("Slicer .seg.nrrd", t, path.stat().st_size))
        t, paths = timed(lambda: write_labelmap(pair, labels, tmp / "case"))
        rows.append(("label map + colour tables", t, sum(p.stat().st_size for p in paths.values())))
        t, paths = timed(lambda: write_instance_table(instance_table(pair, labels, scan), tmp / "case"))
        rows.append(("instance table (CSV+JSON)", t, sum(p.stat().st_size for p in paths.values())))
        passes = counting_passes()
        result = PanopticResult(pair, labels, {}, scan, "case")
        t, paths = timed(lambda: result.save(tmp / "all" / "case", FORMAT_NAMES))
        rows.append((f"save, all {len(FORMAT_NAMES)} formats", t, sum(p.stat().st_size for p in paths.values())))

    print(f"{shape} CT, {phantom.n_instances} lesions, {len(segments)} segments")
    print(f"{'export':30}{'time s':>9}{'size MB':>10}")
    for name, t, size in rows:
        print(f"{name:30}{t:9.2f}{size / 1e6:10.2f}")
    print(f"save with every format: {passes['gather_stats']} statistics pass(es), {passes['segment_numbers']} "
          "segment numbering pass(es) (goal 1 and 1)")
    print(f"DICOM SEG: medpanoptic {ours:.2f} s / plain highdicom {theirs:.2f} s = {ours / theirs:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
