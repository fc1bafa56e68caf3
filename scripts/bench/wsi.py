"""Benchmark: the tiled whole-slide pipeline against the bare network on the same tiles, and its memory.

    python scripts/bench/wsi.py [--sizes 8192,32768] [--roi-size 4096] [--device cuda] [--busy N]
                                [--only throughput|memory] [--heads network|truth] [--work DIR]

On whole-slide phantoms (`medpanoptic phantom --wsi`: pyramidal OME-TIFF at 0.5 µm/px):

1. throughput, on a `--roi-size`² region of the first slide, side by side in this process: the
   whole pipeline (read ahead, network, grouping, stitching, writing zarr + geojson + table) and
   the bare network (the bundle's inferer on the very same tiles, already read and in memory).
   Printed: MPix/s of both, pipeline ÷ network pixel throughput (goal >= 0.9) and
   (grouping + stitching + writing) ÷ network time (goal <= 0.2);
2. memory: each slide of `--sizes` segmented whole in a fresh process; its peak resident memory
   (goal: flat within 15% from the smallest to the largest slide). By default (`--heads truth`)
   the phantom's truth gives the heads of a perfect network (`wsi.oracle`) instead of the bundle's
   network: the network's memory is one batch of tiles at any slide size, and on a CPU its
   ~1 s a tile makes a 32k² slide (about 4000 tissue tiles) hours long; everything else
   (read-ahead, grouping, stitching, the writers, the pyramid) runs as in a real run.
   `--heads network` runs the bundle's network (on a GPU, or with smaller `--sizes`).

`--busy N` runs everything beside N CPU-burning processes (see `load.py`).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import busy_cores, describe  # noqa: E402

FORMATS = ("zarr", "geojson", "table")


def _phantom(folder: Path, size: int) -> Path:
    """The phantom slide of side `size` in `folder` (written once, on every core; kept for the next run)."""
    import os

    from medpanoptic.wsi.phantom import write_wsi_phantom

    image = folder / f"slide{size}" / "phantom.ome.tif"
    if image.is_file():
        return image
    return write_wsi_phantom(folder / f"slide{size}", size, seed=1, workers=os.cpu_count() or 1).image


def throughput(image: Path, roi_size: int, device: str | None, out: Path) -> None:
    import torch

    from medpanoptic.segment import Segmenter
    from medpanoptic.wsi.infer import BundlePredictor, segment_slide
    from medpanoptic.wsi.readers import open_slide
    from medpanoptic.wsi.tiles import read_tile

    seg = Segmenter("nuclei_panoptic_2d", device)
    slide = open_slide(image)
    n = min(roi_size, *slide.shape)
    roi = (0, 0, n, n)
    segment_slide(slide, seg, out / "warm", FORMATS, roi=(0, 0, 256, 256), tissue=False)  # compile, allocate
    start = time.perf_counter()
    run = segment_slide(slide, seg, out / "pipeline", FORMATS, roi=roi, tissue=False, resume=False)
    wall = time.perf_counter() - start
    predictor = BundlePredictor(seg)
    by_shape: dict[tuple, list] = {}
    for t in run.grid.tiles:  # the same batches as the pipeline: tiles of one shape together (edge tiles are shorter)
        by_shape.setdefault(t.shape, []).append(predictor.prepare(read_tile(slide, run.grid, t)))
    start = time.perf_counter()
    for tiles in by_shape.values():
        for i in range(0, len(tiles), 4):
            heads = predictor.forward(torch.stack(tiles[i:i + 4]).to(predictor.device))
            if heads.device.type == "cuda":
                torch.cuda.synchronize()
    bare = time.perf_counter() - start
    t = run.timings
    mpix = n * n / 1e6
    print(f"throughput on a {n} x {n} region, {len(run.grid.tiles)} tiles of {run.grid.tile_shape}, {seg.device}:")
    print(f"  pipeline {mpix / wall:8.2f} MPix/s ({wall:.1f} s: read wait {t.read:.1f}, network {t.network:.1f}, "
          f"grouping {t.grouping:.1f}, stitch+write {t.writing:.1f}; {run.instances} instances)")
    print(f"  network  {mpix / bare:8.2f} MPix/s ({bare:.1f} s, the same tiles in memory)")
    ratio, post = bare / wall, (t.grouping + t.writing) / max(t.network, 1e-9)
    print(f"  pipeline / network throughput = {ratio:.3f} (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    print(f"  (grouping + stitching + writing) / network = {post:.3f} (goal <= 0.2: {'met' if post <= 0.2 else 'NOT met'})")


def peak_rss_child(image: str, device: str | None, out: str, heads: str) -> None:
    """Run in a fresh process: segment the whole slide, print the peak resident memory in MiB."""
    from medpanoptic.segment import Segmenter
    from medpanoptic.wsi.infer import bundle_grouping, largest_instance_mm, segment_slide
    from medpanoptic.wsi.oracle import TruthHeads, open_truth
    from medpanoptic.wsi.readers import open_slide
    from medpanoptic.wsi.tissue import tissue_mask

    seg = Segmenter("nuclei_panoptic_2d", device)
    slide = open_slide(image)
    if heads == "network":
        run = segment_slide(slide, seg, out, FORMATS, resume=False)
    else:  # the same tiles of tissue, their heads from the truth beside the slide
        grouping = bundle_grouping(seg)
        truth = open_truth(Path(image).parent / "truth.ome.zarr")
        run = segment_slide(truth, None, out, FORMATS, resume=False, tissue=tissue_mask(slide),
                            max_instance_mm=largest_instance_mm(seg),
                            predictor=TruthHeads(seg.label_set, grouping.pixel_size_mm), grouping=grouping)
    print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} {len(run.grid.tiles)} {run.instances}")


def memory(images: dict[int, Path], device: str | None, out: Path, heads: str) -> None:
    peaks = {}
    for size, image in images.items():
        cmd = [sys.executable, __file__, "--child", str(image), "--out", str(out / f"mem{size}"), "--heads", heads]
        cmd += ["--device", device] if device else []
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rss, tiles, instances = done.stdout.split()[-3:]
        peaks[size] = float(rss)
        print(f"  {size:>6}² slide: peak RSS {float(rss):8.1f} MiB ({tiles} tiles, {instances} instances, "
              f"{time.perf_counter() - start:.0f} s)", flush=True)
    low, high = peaks[min(peaks)], peaks[max(peaks)]
    growth = high / low - 1
    verdict = "met" if abs(growth) <= 0.15 else "NOT met"
    print(f"  peak RSS {max(peaks)}² vs {min(peaks)}²: {growth:+.1%} (goal within 15%: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8192,32768", help="slide sides for the memory comparison")
    parser.add_argument("--roi-size", type=int, default=4096, help="side of the region timed for throughput")
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    parser.add_argument("--busy", type=int, default=0, help="background CPU-burning processes during the timings")
    parser.add_argument("--work", help="folder for the phantoms and outputs (default: a temporary one)")
    parser.add_argument("--only", choices=("throughput", "memory"), help="run one of the two parts")
    parser.add_argument("--heads", choices=("network", "truth"), default="truth",
                        help="memory part: the bundle's network, or the phantom's truth as a perfect network's heads")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_rss_child(args.child, args.device, args.out, args.heads)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        work = Path(work)
        images = {size: _phantom(Path(args.work) if args.work else work, size) for size in sizes}
        with busy_cores(args.busy):
            print(describe(args.busy))
            if args.only != "memory":
                throughput(images[sizes[0]], args.roi_size, args.device, work)
            if args.only != "throughput":
                print(f"memory (each slide whole, in a fresh process; heads: {args.heads}):")
                memory(images, args.device, work, args.heads)


if __name__ == "__main__":
    main()
