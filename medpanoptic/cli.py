"""The `medpanoptic` command. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from ._version import __version__
from .errors import MedPanopticError
from .planning.cli import configure_phantom_layouts, configure_plan, run_plan

log = logging.getLogger("medpanoptic")

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _open_fraction(text: str) -> float:
    """A finite number strictly between 0 and 1 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a finite number in (0, 1), got {text!r}")
    return value


def check_device(name: str | None) -> None:
    """Refuse a torch device this machine does not have, before any model or scan is loaded."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise MedPanopticError(f"--device {name}: not a torch device (expected cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise MedPanopticError(f"{name}: this PyTorch build has no CUDA")
        count = torch.cuda.device_count()
        if count == 0:
            raise MedPanopticError(f"{name}: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
        if device.index is not None and device.index >= count:
            raise MedPanopticError(f"{name}: only {count} GPU{'s' if count > 1 else ''} (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise MedPanopticError(f"{name}: MPS is not available on this machine")


# -- info ---------------------------------------------------------------------------------
def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("scan", help="a DICOM folder or file, NIfTI, NRRD, MHA or 2D image")
    p.add_argument("--series-uid", help="which series of a DICOM folder to describe")


def run_info(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np

    from .io.dicom_read import scan_folder
    from .io.geometry import ras_to_lps, spacing_from_affine
    from .io.scan import load_scan

    path = Path(args.scan)
    if path.is_dir():
        series = scan_folder(path)
        print(f"{path}: {len(series)} DICOM series")
        for s in series.values():
            print(f"  {s.summary()}")
        images = [s for s in series.values() if any("Rows" in h for h in s.headers)]
        if len(images) > 1 and not args.series_uid:
            print("pass --series-uid to describe one of them")
            return 0
    values, affine, meta = load_scan(path, args.series_uid)  # no PyTorch: info answers at once
    ndim = values.ndim - 1
    lps = ras_to_lps(affine)
    print(f"file:        {path}")
    print(f"format:      {meta.get('source_format')}")
    print(f"shape:       {tuple(values.shape[1:])} x {values.shape[0]} channel(s), {values.dtype}")
    print(f"spacing mm:  {tuple(round(float(v), 6) for v in spacing_from_affine(affine, ndim))}")
    print(f"origin LPS:  {tuple(round(float(v), 4) for v in lps[:3, 3])}")
    codes = nib.aff2axcodes(affine)[:ndim]
    print(f"orientation: {''.join(codes)} (i, j, k increase towards {', '.join(codes)})")
    print(f"direction:   {np.round(lps[:ndim, :ndim] / spacing_from_affine(affine, ndim), 6).tolist()} (LPS)")
    print(f"values:      {values.min():g} .. {values.max():g}")
    for key in ("series_instance_uid", "modality", "series_description"):
        if meta.get(key):
            print(f"{key.replace('_', ' ')}: {meta[key]}")
    return 0


# -- phantom ------------------------------------------------------------------------------
def _configure_phantom(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", nargs="?", help="folder to create (Medical Segmentation Decathlon layout unless --layout)")
    p.add_argument("--out", dest="out_option", metavar="DIR", help="the same folder, as an option")
    p.add_argument("--wsi", action="store_true", help="a pyramidal whole-slide TIFF at 0.5 µm/px with its truth as OME-Zarr")
    p.add_argument("--workers", type=int, default=1, help="--wsi: processes rendering tiles (default 1)")
    p.add_argument("--size", type=int, default=16384, help="--wsi: slide width and height in pixels (default 16384)")
    p.add_argument("--n", "--cases", type=int, default=4, help="number of cases (default 4)")
    p.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3: CT lesions, 2: microscopy nuclei")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    p.add_argument("--shape", type=_ints, help="grid size, e.g. 96,96,48")
    p.add_argument("--spacing", type=_floats, help="voxel size in mm, e.g. 1,1,2.5")
    p.add_argument("--oblique", action="store_true", help="rotate the grid (3D): tests geometry end to end")
    p.add_argument("--oblique-fraction", type=float, default=0.0,
                   help="3D: this fraction of the cases on grids rotated at random (up to 25 degrees per axis)")
    p.add_argument("--things", type=int, help="lesions (3D) or nuclei (2D) per case")
    p.add_argument("--touching", type=float, default=0.3, help="fraction of things in touching pairs")
    p.add_argument("--rgb", action="store_true", help="2D: H&E-like RGB instead of a single channel")
    p.add_argument("--rgb-fraction", type=float, help="2D: this fraction of the cases in RGB, the rest single-channel")
    p.add_argument("--dicom", action="store_true", help="3D: also write each case as a CT DICOM series")
    configure_phantom_layouts(p)


def run_phantom(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from .io.decathlon import write_case, write_dataset_json
    from .io.dicom_write import write_dicom_series
    from .synthetic import make_phantom, oblique_direction

    args.out = args.out or args.out_option
    if not args.out:
        raise MedPanopticError("give the output folder (OUT or --out DIR)")
    if args.wsi:
        return _run_wsi_phantom(args)
    if args.n < 1:
        raise MedPanopticError(f"--n must be at least 1, got {args.n}")
    if args.layout != "msd" or args.preset or args.channels or args.thing_scale or args.format:
        from .planning.cli import run_phantom_layout

        return run_phantom_layout(args)
    if args.dicom and args.dims != 3:
        raise MedPanopticError("--dicom needs --dims 3")
    out = Path(args.out)
    kwargs: dict = {"touching_fraction": args.touching}
    if args.shape:
        kwargs["shape"] = args.shape
    if args.spacing:
        kwargs["spacing"] = args.spacing
    if args.dims == 3:
        if args.oblique:
            kwargs["direction"] = oblique_direction().ravel()
        if args.things is not None:
            kwargs["n_lesions"] = args.things
    else:
        if args.rgb_fraction is not None and not 0 <= args.rgb_fraction <= 1:
            raise MedPanopticError(f"--rgb-fraction must be within [0, 1], got {args.rgb_fraction}")
        if args.things is not None:
            kwargs["n_nuclei"] = args.things
    training = []
    label_set = None
    n_rgb = round(args.n * (1.0 if args.rgb else args.rgb_fraction or 0.0))
    n_oblique = round(args.n * args.oblique_fraction)
    for i in tqdm(range(args.n), desc="phantoms", unit="case", disable=None):
        if args.dims == 3 and not args.oblique and n_oblique:
            rotated = (i * n_oblique) % args.n < n_oblique  # spread evenly through the dataset
            angles = np.random.default_rng(args.seed + i).uniform(-25.0, 25.0, size=3)
            kwargs["direction"] = oblique_direction(angles).ravel() if rotated else None
        if args.dims == 2:
            kwargs["rgb"] = (i * n_rgb) % args.n < n_rgb  # RGB cases spread evenly through the dataset
        ph = make_phantom(args.dims, seed=args.seed + i, **kwargs)
        label_set = ph.label_set
        case = f"phantom_{args.seed + i:04d}"
        training.append(write_case(out, case, ph.image, ph.pair))
        if args.dicom:
            write_dicom_series(ph.image, out / "dicom" / case, series_description=f"medpanoptic {case}",
                               patient_id=case)
    modality = "CT" if args.dims == 3 else {0: "fluorescence microscopy", args.n: "RGB microscopy"}.get(
        n_rgb, "fluorescence and RGB microscopy")
    path = write_dataset_json(out, f"medpanoptic phantoms {args.dims}D", label_set, modality, args.dims, training)
    print(f"wrote {args.n} case(s) to {out} ({path.name}, imagesTr/, labelsTr/, instancesTr/"
          f"{', dicom/' if args.dicom else ''})")
    return 0


def _run_wsi_phantom(args: argparse.Namespace) -> int:
    from .wsi.phantom import write_wsi_phantom

    if args.size < 64:
        raise MedPanopticError(f"--size must be at least 64 pixels, got {args.size}")
    ph = write_wsi_phantom(args.out, args.size, seed=args.seed, workers=args.workers)
    print(f"wrote a {ph.shape[0]} x {ph.shape[1]} slide at {ph.pixel_size_mm * 1000:g} µm/px to {ph.image} with "
          f"{ph.n_nuclei} nuclei ({ph.n_on_border} centred on tile borders); truth: {ph.truth}, {ph.nuclei}")
    return 0


# -- evaluate -----------------------------------------------------------------------------
def _configure_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="folder of predicted results")
    p.add_argument("--gt", required=True, help="folder of ground truth (results, label maps or a Decathlon dataset)")
    p.add_argument("--labels", help="label set JSON (default: the one stored with the ground truth)")
    p.add_argument("--out", default="report.csv", help="per-case CSV; *_instances.csv and *_summary.csv go beside it")
    p.add_argument("--void-label", type=int, help="ground-truth label of void (ignored) regions")
    p.add_argument("--iou-threshold", type=_open_fraction, default=0.5, help="matching threshold (below 0.5: Hungarian)")
    p.add_argument("--no-surface", action="store_true", help="skip HD95/ASSD per lesion")
    p.add_argument("--allow-missing", action="store_true", help="exit 0 even if some ground-truth cases have no prediction")
    p.add_argument("--source", help="folder of source scans, <source>/<case>: DICOM SEGs are read onto their grid "
                                    "(default: a predicted SEG goes onto the ground truth's grid)")


def run_evaluate(args: argparse.Namespace) -> int:
    from .labels import LabelSet
    from .metrics.evaluate import check_report_path, evaluate_folders, format_summary

    check_report_path(args.out)
    label_set = LabelSet.load(args.labels) if args.labels else None
    report = evaluate_folders(args.pred, args.gt, label_set, args.void_label, args.iou_threshold,
                              surface=not args.no_surface, sources=args.source)
    paths = report.write(args.out)
    print(format_summary(report))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    if report.unmatched_predictions:
        print(f"predictions without ground truth (ignored): {', '.join(report.unmatched_predictions)}", file=sys.stderr)
    failed = False
    if report.missing_predictions:
        print(f"ground-truth cases without a prediction: {', '.join(report.missing_predictions)}", file=sys.stderr)
        failed = not args.allow_missing
    for error in report.errors:
        print(f"medpanoptic: error: case {error['case']}: {error['error']}", file=sys.stderr)
    return 1 if failed or report.errors else 0


# -- export -------------------------------------------------------------------------------
def _configure_export(p: argparse.ArgumentParser) -> None:
    from .io.formats import FORMAT_NAMES

    p.add_argument("stem", help="a panoptic result written by medpanoptic (<stem>_label.nii.gz, ...)")
    p.add_argument("--source", help="the source scan (required for DICOM SEG; gives intensities to the table)")
    p.add_argument("--to", default="seg-nrrd,labelmap,table", help=f"comma-separated formats: {', '.join(FORMAT_NAMES)}")
    p.add_argument("--out", help="output stem (default: the input stem)")
    p.add_argument("--series-uid", help="which series of a DICOM source folder")


def run_export(args: argparse.Namespace) -> int:
    from .export import export
    from .io import read_panoptic, read_scan

    pair, label_set = read_panoptic(args.stem)
    source = read_scan(args.source, args.series_uid) if args.source else None
    written = export(pair, label_set, args.out or args.stem, [f.strip() for f in args.to.split(",") if f.strip()], source)
    for name, path in written.items():
        print(f"{name:>20}: {path}")
    return 0


# -- segment ------------------------------------------------------------------------------
def _configure_segment(p: argparse.ArgumentParser) -> None:
    from .io.formats import FORMAT_NAMES

    p.add_argument("inputs", nargs="+", help="scans: files, folders of NIfTI, DICOM study folders (every series), CSV manifests")
    p.add_argument("--bundle", default="ct_lesion_panoptic",
                   help="name of a shipped bundle (default ct_lesion_panoptic) or a bundle folder given as a path "
                        "(./mine); a bundle is code, like any MONAI bundle: run only bundles you trust")
    p.add_argument("--out", required=True, help="output folder: one sub-folder per case, cohort CSVs and overview beside them")
    p.add_argument("--to", help=f"comma-separated formats: {', '.join(FORMAT_NAMES)} (default nifti,table,png; "
                                f"whole slides: {SLIDE_DEFAULT_FORMATS})")
    p.add_argument("--device", help="torch device (default: cuda when available, under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--no-resume", action="store_true", help="segment every case again, even those already done")
    p.add_argument("--strict-domain", action="store_true",
                   help="refuse a scan far outside the bundle's training domain (its configs/fingerprint.json) "
                        "instead of a warning and a 'domain' column in cases.csv")
    p.add_argument("--pixel-size", type=_floats, metavar="UM",
                   help="2D images and slides: the pixel size in µm (one value, or one per axis), instead of the "
                        "file's or, for files without one (PNG, JPEG, most TIFF), the estimate from the objects' size")
    wsi = p.add_argument_group("whole slides", "pyramidal or large images (SVS, NDPI, MRXS, OME-TIFF, DICOM WSI, "
                                               "OME-Zarr) take the tiled path by themselves")
    wsi.add_argument("--roi", type=_ints, help="only this region, x,y,w,h in level-0 pixels (3D: x,y,z,w,h,d)")
    wsi.add_argument("--scheduler", help="map the tiles on this dask.distributed scheduler (tcp://HOST:PORT)")
    wsi.add_argument("--tile", type=int, help="tile core in pixels at the bundle's pixel size (default ~512 in 2D)")
    wsi.add_argument("--gzip", action="store_true", help="write the GeoJSON gzipped (.geojson.gz)")
    p.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation: average the outputs over flips along every subset of the spatial "
                        "axes (4 passes in 2D, 8 in 3D); logits and heads averaged before grouping")
    p.add_argument("--tta-axes", metavar="AXES", help="flip only along these spatial axes of the network's input, "
                                                      "e.g. 0,1 (implies --tta)")
    p.add_argument("--folds", metavar="all|K,K",
                   help="average the outputs of the bundle's folds (models/fold_K/model.pt): all, or e.g. 0,2 "
                        "(default: models/model.pt when the bundle has one, else every fold)")
    pacs = p.add_argument_group("PACS", "inputs dicomweb(s)://HOST:PORT/PATH or dimse(s)://AET@HOST:PORT; credentials "
                                        "from MEDPANOPTIC_PACS_* variables or MEDPANOPTIC_PACS_CONFIG, never here")
    pacs.add_argument("--study", help="Study Instance UID to take from a DICOM node")
    pacs.add_argument("--series", help="Series Instance UID (within --study); default: every image series")
    pacs.add_argument("--patient", help="query: Patient ID")
    pacs.add_argument("--modality", help="query: modality, e.g. CT")
    pacs.add_argument("--since", help="query: studies on or after this date, YYYYMMDD")
    pacs.add_argument("--store", help="send each case's DICOM SEG to this node (dicomweb://... or dimse://...), once")


SLIDE_DEFAULT_FORMATS = "geojson,zarr,table"
TILED_PIXELS = 8192 * 8192
"""Images with more pixels than this (or with a pyramid) take the tiled path."""


def _slide_inputs(args: argparse.Namespace):
    """The slides among the inputs, opened lazily: pyramidal or larger than `TILED_PIXELS` (others take the
    in-memory path), or every input when a whole-slide option was given."""
    from .errors import InputError
    from .wsi.readers import OPENSLIDE_SUFFIXES, open_slide

    wsi_options = any(getattr(args, k) for k in ("roi", "scheduler", "tile"))
    slides = []
    for text in args.inputs:
        path = Path(text)
        lower = path.name.lower()
        candidate = lower.endswith(OPENSLIDE_SUFFIXES + (".tif", ".tiff", ".zarr", ".btf")) or wsi_options
        if not candidate or "://" in text or not path.exists():
            continue
        pixel = _pixel_size_mm(args.pixel_size)
        try:
            slide = open_slide(path, pixel_size_mm=pixel[0] if pixel and len(pixel) == 1 else pixel)
        except InputError:
            if wsi_options or not _plain_tiff(lower):
                raise
            continue  # a plain TIFF that is no slide (no pixel size, one page): the scan readers take it
        pixels = math.prod(slide.shape)
        if len(slide.levels) > 1 or pixels > TILED_PIXELS or lower.endswith(OPENSLIDE_SUFFIXES) or wsi_options:
            slides.append(slide)
        else:
            slide.close()
    if slides and len(slides) != len(args.inputs):
        raise MedPanopticError("give whole slides on their own: they take the tiled path, the other inputs do not")
    return slides


def _pixel_size_mm(um: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """`--pixel-size` (µm, as pathology states it) in mm, the unit of every other length here."""
    if um is None:
        return None
    if not all(math.isfinite(v) and v > 0 for v in um):
        raise MedPanopticError(f"--pixel-size must be positive µm, got {um}")
    return tuple(v / 1000.0 for v in um)


def _plain_tiff(name: str) -> bool:
    return name.endswith((".tif", ".tiff")) and not name.endswith((".ome.tif", ".ome.tiff"))


def run_segment_slides(args: argparse.Namespace, slides) -> int:
    """The tiled path: each slide segmented tile by tile into OUT/<slide>.*, resumable."""
    from .io.paths import unique_components
    from .segment import Segmenter
    from .wsi.infer import segment_slide
    from .wsi.writers import SLIDE_FORMATS

    untaken = [flag for flag, given in (("--tta", args.tta), ("--tta-axes", args.tta_axes), ("--folds", args.folds),
                                         ("--strict-domain", args.strict_domain)) if given]
    if untaken:  # refused rather than quietly ignored: the user asked for something the tiles would not get
        raise MedPanopticError(f"{', '.join(untaken)}: the tiled path runs the bundle's one network on each tile, "
                               "without flips, folds or a domain check; leave it out for whole slides")
    formats = [f.strip() for f in (args.to or SLIDE_DEFAULT_FORMATS).split(",") if f.strip()]
    other = [f for f in formats if f not in SLIDE_FORMATS]
    if other:
        why = (": highdicom's Segmentation (tile_pixel_array=True) takes the whole total pixel matrix as one "
               "in-memory array, which the tiled path never holds" if any(f.startswith("dicom-seg") for f in other) else "")
        raise MedPanopticError(f"a whole slide is written as {', '.join(SLIDE_FORMATS)}, not {', '.join(other)}{why}")
    segmenter = Segmenter(args.bundle, args.device)
    names = unique_components([s.path.name.split(".")[0] if s.path else "slide" for s in slides], "slide")
    for slide, name in zip(slides, names):
        with contextlib.closing(slide):
            run = segment_slide(slide, segmenter, args.out, formats, stem=name, roi=args.roi, core=args.tile,
                                scheduler=args.scheduler, resume=not args.no_resume, progress=True,
                                gzip_geojson=args.gzip)
        done = f" ({run.resumed_tiles} done before)" if run.resumed_tiles else ""
        print(f"{slide.path}: {run.instances} instances in {len(run.grid.tiles)} tiles{done} -> "
              f"{', '.join(str(p) for p in run.written.values())}")
    return 0


def _formats(text: str | None) -> list[str]:
    from .io.formats import check_formats

    text = text or "nifti,table,png"

    formats = check_formats(f.strip() for f in text.split(",") if f.strip())
    return formats if "table" in formats else formats + ["table"]  # the cohort summary is built from the tables


def _remote_inputs(args: argparse.Namespace) -> list[str]:
    """The inputs, with the query options added to every DICOM node address."""
    from .remote import is_remote
    from .remote.urls import with_query

    query = {k: getattr(args, k) for k in ("study", "series", "patient", "modality", "since")}
    if any(query.values()) and not any(is_remote(i) for i in args.inputs):
        raise MedPanopticError("--study/--series/--patient/--modality/--since select series on a DICOM node: "
                               "give a dicomweb:// or dimse:// input")
    return [with_query(i, **query) if is_remote(i) else i for i in args.inputs]


def run_segment(args: argparse.Namespace) -> int:
    from .cohort import segment_cohort
    from .ensemble import parse_folds, parse_tta
    from .segment import bundle_path

    check_device(args.device)
    slides = _slide_inputs(args)
    if slides:
        return run_segment_slides(args, slides)
    tta = parse_tta(args.tta_axes) if args.tta_axes else args.tta
    folds = parse_folds(args.folds) if args.folds else None
    inputs, formats = _remote_inputs(args), _formats(args.to)
    if args.store:
        from .remote.push import STORED_FORMAT

        formats += [] if STORED_FORMAT in formats else [STORED_FORMAT]  # what goes back to the node
    report = segment_cohort(inputs, bundle_path(args.bundle), args.out, formats, device=args.device,
                            resume=not args.no_resume, store=args.store, strict_domain=args.strict_domain,
                            pixel_size=_pixel_size_mm(args.pixel_size), tta=tta, folds=folds)
    if int(__import__("os").environ.get("RANK", 0)) == 0:
        print(f"{len(report.done)} case(s) segmented, {len(report.skipped)} already done, {len(report.failed)} failed"
              f" -> {args.out} (instances.csv, cases.csv, errors.csv, cohort_overview.png)")
        for failure in report.failed:
            print(f"medpanoptic: error: case {failure['case']}: {failure['error']}", file=sys.stderr)
    return 0 if report.ok else 1


# -- demo ---------------------------------------------------------------------------------
def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="medpanoptic-demo", help="output folder (default ./medpanoptic-demo)")
    p.add_argument("--seed", type=int, default=7, help="phantom seed (default 7)")
    p.add_argument("--device", help="torch device (default: cuda when available)")


def run_demo(args: argparse.Namespace) -> int:
    from .io.dicom_write import write_dicom_series
    from .io.panoptic import write_panoptic
    from .metrics import panoptic_quality
    from .segment import Segmenter, bundle_path
    from .synthetic import ct_phantom, oblique_direction

    check_device(args.device)
    out = Path(args.out)
    phantom = ct_phantom(direction=oblique_direction().ravel(), seed=args.seed)
    dicom = out / "input" / "dicom"
    if dicom.exists():
        import shutil

        shutil.rmtree(dicom)
    write_dicom_series(phantom.image, dicom, series_description="medpanoptic demo phantom", patient_id="DEMO")
    write_panoptic(phantom.pair, out / "truth" / "phantom", phantom.label_set)
    segmenter = Segmenter.from_bundle(bundle_path("ct_lesion_panoptic"), device=args.device)
    result = segmenter(dicom, case="phantom")
    written = result.save(out / "result" / "phantom", ["nifti", "dicom-seg", "seg-nrrd", "table", "png"])
    quality = panoptic_quality(result.pair, phantom.pair, phantom.label_set).summary()
    print(f"medpanoptic demo: a CT phantom (oblique grid {tuple(phantom.image.shape[1:])}, "
          f"{phantom.n_instances} lesions, some touching) written as a DICOM series to {dicom}")
    print(f"segmented with the ct_lesion_panoptic bundle on {segmenter.device}: {result.n_instances} lesion(s) found")
    print(f"against the phantom truth: PQ {quality['pq']:.3f}   PQ_things {quality['pq_things']:.3f}   "
          f"PQ_stuff {quality['pq_stuff']:.3f}")
    print("outputs:")
    for name, path in written.items():
        print(f"  {name:>18}: {path}")
    return 0


# -- listen -------------------------------------------------------------------------------
def _configure_listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=11112, help="DICOM port to receive C-STORE on (default 11112)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--aet", default="MEDPANOPTIC", help="our AE title (default MEDPANOPTIC)")
    p.add_argument("--bundle", default="ct_lesion_panoptic", help="bundle folder or name of a shipped bundle")
    p.add_argument("--out", required=True, help="output folder (received series are kept in OUT/.pacs-incoming)")
    p.add_argument("--store", help="send each result's DICOM SEG to this node (dicomweb://... or dimse://...)")
    p.add_argument("--to", default="nifti,table,dicom-seg", help="formats written per case (dicom-seg is always added)")
    p.add_argument("--idle-s", type=float, default=5.0, help="a series is complete once nothing arrived for it for this long")
    p.add_argument("--device", help="torch device (default: cuda when available)")


def run_listen(args: argparse.Namespace) -> int:
    from .remote.listen import listen
    from .remote.push import STORED_FORMAT
    from .segment import bundle_path

    formats = _formats(args.to)
    formats += [] if STORED_FORMAT in formats else [STORED_FORMAT]
    listen(args.port, bundle_path(args.bundle), args.out, store=args.store, formats=formats, host=args.host,
           aet=args.aet, idle_s=args.idle_s, device=args.device)
    return 0


# -- track --------------------------------------------------------------------------------
def _configure_track(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="BASELINE FOLLOWUP [MORE...]: results (stems or case folders), earliest first")
    p.add_argument("--scans", nargs="+", help="the scans of the results, same order (registration on intensities)")
    p.add_argument("--out", required=True, help="output folder: lesions.csv, timepoints.csv, volumes.png, report.html")
    p.add_argument("--registered", action="store_true", help="the results already share one frame: skip registration")
    p.add_argument("--grown", type=float, default=0.2, help="long-axis growth that makes a lesion 'grown' (default 0.2)")
    p.add_argument("--grown-mm", type=float, default=5.0, help="... and long-axis growth in mm it also needs (default 5)")
    p.add_argument("--shrunk", type=float, default=0.3, help="long-axis shrinkage that makes it 'shrunk' (default 0.3)")
    p.add_argument("--max-distance-mm", type=float, default=10.0, help="centroid distance for matching without overlap")


def run_track(args: argparse.Namespace) -> int:
    from .clinical.track import Thresholds, follow_up, load_timepoint, write_follow_up

    if len(args.results) < 2:
        raise MedPanopticError("track needs a baseline and at least one follow-up result")
    if args.scans and len(args.scans) != len(args.results):
        raise MedPanopticError(f"--scans gives {len(args.scans)} scan(s) for {len(args.results)} result(s)")
    scans = args.scans or [None] * len(args.results)
    timepoints = [load_timepoint(r, s) for r, s in zip(args.results, scans)]
    thresholds = Thresholds(grown=args.grown, grown_mm=args.grown_mm, shrunk=args.shrunk, max_distance_mm=args.max_distance_mm)
    result = follow_up(timepoints, registered=args.registered, thresholds=thresholds)
    written = write_follow_up(result, timepoints, args.out)
    for row in result.timepoints:
        print(f"{row['timepoint_name']}: {row['n_lesions']} lesion(s), sum of diameters {row['sum_of_diameters_mm']:.1f} mm"
              f" -> {row['response']} ({row['rule']})")
    print(f"wrote {len(written)} file(s) to {args.out}")
    return 0


# -- train (medpanoptic.planning.train) ----------------------------------------------------
def _configure_train(p: argparse.ArgumentParser) -> None:
    from .planning.train import configure_cli

    configure_cli(p)


def _run_train(args: argparse.Namespace) -> int:
    from .planning.train import run_cli

    return run_cli(args)


COMMANDS: dict[str, tuple[str, Configure, Run]] = {
    "demo": ("segment a built-in CT phantom with the shipped 3D bundle and export every format", _configure_demo, run_demo),
    "segment": ("segment scans or a whole cohort with a bundle (resumable, errors.csv, torchrun)", _configure_segment, run_segment),
    "listen": ("receive DICOM series (C-STORE), segment each complete one and send the SEG back", _configure_listen, run_listen),
    "info": ("print a scan's geometry (and, for a DICOM folder, its series)", _configure_info, run_info),
    "phantom": ("write synthetic phantoms with panoptic truth as a Decathlon-layout dataset", _configure_phantom, run_phantom),
    "plan": ("check and fingerprint a dataset, and plan its training and post-processing (JSON with reasons)",
             configure_plan, run_plan),
    "export": ("write a result as DICOM SEG, Slicer .seg.nrrd, viewer label map and instance table", _configure_export, run_export),
    "evaluate": ("panoptic quality and lesion-wise figures of predictions against ground truth", _configure_evaluate, run_evaluate),
    "train": ("train the bundle of a plan: k-fold cross-validation, exact resume, tuned post-processing",
              _configure_train, _run_train),
    "track": ("follow-up: register time points, match lesions (new/vanished/merged/split/grown), RECIST response",
              _configure_track, run_track),
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are errors like any other: one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"medpanoptic: error: {message} (see '{self.prog} --help')\n")


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `commands`, only those subcommands' arguments are configured.

    Configuring a subcommand may import what it runs (format lists live beside PyTorch code),
    so `medpanoptic --help` and `medpanoptic info` configure nothing they do not need.
    """
    parser = _Parser(
        prog="medpanoptic",
        description="Panoptic segmentation for medical images: every voxel gets a class and, for things, an instance.",
    )
    parser.add_argument("--version", action="version", version=f"medpanoptic {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details; tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_text, configure, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            configure(p)
        p.set_defaults(run=run)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (the top-level options take no values), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _subject(args: argparse.Namespace) -> str:
    """What the command was working on, for messages: its input path(s)."""
    for key in ("scan", "stem", "pred", "inputs", "results", "plan", "out"):
        value = getattr(args, key, None)
        if value:
            return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return ""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> int:
    print(f"medpanoptic: error: {_one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; every failure ends as one `medpanoptic: error:` line on stderr.

    Exit codes: 0 success; 2 the input or the arguments cannot be used (including not enough
    memory for this input); 1 some cases failed, or an internal error (a bug: `-v` shows its traceback).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except MedPanopticError as e:
        return _fail(str(e), 2)
    except OSError as e:
        return _fail(f"{e.filename or _subject(args)}: {e.strerror or e}", 2)
    except MemoryError as e:
        detail = f" ({_one_line(e)})" if str(e) else ""
        return _fail(f"{_subject(args)}: not enough memory to run '{args.command}' on it{detail}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as e:  # a bug: say so in one line, keep the traceback for -v
        if args.verbose:
            traceback.print_exc()
        where = f"{_subject(args)}: " if _subject(args) else ""
        return _fail(f"{where}internal error ({type(e).__name__}: {e}); run with -v for the traceback", 1)


if __name__ == "__main__":
    sys.exit(main())
