"""The formats registry: which files are read as scans, and which formats a result is written in.

- Scans: file suffix -> how it is read (`scan_format`). DICOM is known by its content, never by
  its name, so it has no suffix here.
- Results: format name -> writer (`WRITERS`). Every writer is `write(result, stem) -> dict[str, Path]`,
  result first, and writes the files its `suffixes` name beside `stem`. `result` is a
  `PanopticResult` (see `Result`): writers take what is derived from the pair (its checked
  statistics, segment numbering and instance table) from the result, which makes each once.

A new format registers here; nothing else keeps a list of suffixes or format names.
Importing this module imports no array library: `medpanoptic --help` lists the formats at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Protocol

from ..errors import GeometryError, InputError

if TYPE_CHECKING:
    from monai.data import MetaTensor

    from ..labels import LabelSet
    from ..pair import PairStats
    from .segments import Numbering


# -- scans ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanFormat:
    """A single-file scan format: its suffixes and how it is read.

    `reader`: "nifti" (nibabel, our own geometry checks) or "itk" (SimpleITK). `text_header`:
    the header is checked (spacing, size, data file) before ITK reads it. `picture`: a 2D picture
    format, whose single-slice 3D reading is a 2D image.
    """

    name: str
    suffixes: tuple[str, ...]
    reader: Literal["nifti", "itk"]
    text_header: bool = False
    picture: bool = False
    label_map: bool = False  # also read as a semantic label map with a geometry (ground truth, Decathlon labels)


SCAN_FORMATS = (
    ScanFormat("nifti", (".nii.gz", ".nii"), "nifti", label_map=True),
    ScanFormat("nrrd", (".nrrd", ".nhdr"), "itk", text_header=True, label_map=True),
    ScanFormat("metaimage", (".mha", ".mhd"), "itk", text_header=True, label_map=True),
    ScanFormat("png", (".png",), "itk", picture=True),
    ScanFormat("tiff", (".tif", ".tiff"), "itk"),
    ScanFormat("jpeg", (".jpg", ".jpeg"), "itk", picture=True),
    ScanFormat("bmp", (".bmp",), "itk", picture=True),
)

SCAN_FORMAT_OF = {suffix: fmt for fmt in SCAN_FORMATS for suffix in fmt.suffixes}
"""Suffix -> scan format."""
SCAN_SUFFIXES = tuple(sorted(SCAN_FORMAT_OF, key=len, reverse=True))
"""Every scan suffix, longest first (`.nii.gz` before `.gz`-less `.nii`): what `find_scans` collects."""


LABEL_MAP_SUFFIXES = tuple(s for s in SCAN_SUFFIXES if SCAN_FORMAT_OF[s].label_map)
"""Suffixes of files read as semantic label maps, longest first."""


def scan_suffix(path: str | os.PathLike) -> str | None:
    """The registered scan suffix `path`'s name ends with (letter case ignored), or None."""
    name = Path(path).name.lower()
    return next((s for s in SCAN_SUFFIXES if name.endswith(s)), None)


def scan_format(path: str | os.PathLike) -> ScanFormat | None:
    """How a scan file is read, by its suffix; None for names no reader claims (DICOM included)."""
    suffix = scan_suffix(path)
    return SCAN_FORMAT_OF[suffix] if suffix else None


# -- results ----------------------------------------------------------------------------------
class Result(Protocol):
    """What a writer needs of a result (`medpanoptic.segment.PanopticResult` is one)."""

    pair: MetaTensor
    label_set: LabelSet
    source: MetaTensor | None
    scores: dict[int, float] | None
    case: str
    dropped_instances: int

    @property
    def is_dicom(self) -> bool: ...
    @property
    def pair_stats(self) -> PairStats: ...
    @property
    def segment_map(self) -> Numbering: ...
    @property
    def instance_table(self) -> list[dict]: ...


WriteFn = Callable[[Result, "str | os.PathLike"], "dict[str, Path]"]

PANOPTIC_SUFFIXES = {"label": "_label.nii.gz", "instance": "_instance.nii.gz", "json": "_panoptic.json",
                     "pair": "_pair.nii.gz"}
"""The files of `write_panoptic` beside a stem (`pair`: its `single_file=True` two-component NIfTI)."""
TIFF_SUFFIXES = {"label": "_label.tif", "instance": "_instance.tif"}
"""The files of `write_tiff_maps` beside a stem."""
SEG_NRRD_SUFFIX = ".seg.nrrd"
"""A Slicer segmentation: known by this name (an NRRD inside)."""


@dataclass(frozen=True)
class Writer:
    """One output format: its name, the files it writes beside the stem, and how.

    `needs_dicom`: it references the source DICOM series (a result made from another kind of
    scan has none to reference). `check` refuses a result it cannot write, before any file of any
    format is written.
    """

    name: str
    suffixes: tuple[str, ...]
    write: WriteFn
    description: str
    needs_dicom: bool = False
    check: Callable[[Result], None] | None = None
    requires: tuple[str, ...] = ()
    """Formats whose files this one references; `write_formats` writes them first when not asked for."""
    spatial_dims: tuple[int, ...] = (2, 3)
    """The dimensions of the results it can hold (GeoJSON: 2D contours only)."""


def _write_nifti(result: Result, stem) -> dict[str, Path]:
    from .panoptic import write_panoptic

    source = str(result.source.meta.get("filename_or_obj", "")) if result.source is not None else ""
    extra = {"case": result.case, "source": source, "scores": {str(k): v for k, v in (result.scores or {}).items()},
             "dropped_instances": result.dropped_instances}
    for key in ("domain", "scale"):  # what inference knew of the scan: its training domain, its rescaling
        if getattr(result, key, None) is not None:
            extra[key] = getattr(result, key)
    written = write_panoptic(result.pair, stem, result.label_set, extra=extra, instances=result.instance_table)
    return {f"nifti_{k}": v for k, v in written.items()}


def check_same_source(pair: MetaTensor, source: MetaTensor) -> None:
    """Refuse a source scan of another patient or frame of reference than the one the result was made on.

    Two series of one grid size can belong to different patients; a DICOM SEG written against
    the wrong one would carry that patient's identity. Results that record no identity pass.
    """
    from .panoptic import source_identity

    made_on, given = source_identity(pair.meta), source_identity(source.meta)
    where = source.meta.get("filename_or_obj", "the source scan")
    for key, what, error in (("patient_id", "patient", InputError), ("frame_of_reference_uid", "frame of reference", GeometryError)):
        if key in made_on and key in given and made_on[key] != given[key]:
            raise error(where, f"the result was made on {what} {made_on[key]!r}, this source belongs to {given[key]!r}: "
                               "refusing to write a DICOM SEG against another series' patient")


def _check_dicom_source(result: Result) -> None:
    if result.source is None:
        raise InputError(None, "DICOM SEG export needs the source DICOM scan (--source)")
    check_same_source(result.pair, result.source)


def _dicom_seg_writer(name: str, suffix: str, segmentation_type: str) -> WriteFn:
    def write(result: Result, stem) -> dict[str, Path]:
        from .dicom_seg import write_dicom_seg

        path = write_dicom_seg(result.pair, result.label_set, result.source, f"{os.fspath(stem)}{suffix}",
                               segmentation_type=segmentation_type, numbering=result.segment_map)
        return {name: path}

    return write


def _write_sr(result: Result, stem) -> dict[str, Path]:
    from .dicom_sr import write_sr

    stem = os.fspath(stem)
    return {"sr": write_sr(result.pair, result.label_set, result.source, f"{stem}_seg.dcm", f"{stem}_sr.dcm",
                           rows=result.instance_table)}


def _write_seg_nrrd(result: Result, stem) -> dict[str, Path]:
    from .seg_nrrd import write_seg_nrrd

    return {"seg-nrrd": write_seg_nrrd(result.pair, result.label_set, f"{os.fspath(stem)}{SEG_NRRD_SUFFIX}",
                                       numbering=result.segment_map)}


def _write_labelmap(result: Result, stem) -> dict[str, Path]:
    from .labelmap import write_labelmap

    return write_labelmap(result.pair, result.label_set, stem, numbering=result.segment_map)


def _write_table(result: Result, stem) -> dict[str, Path]:
    from .table import write_instance_table

    return {f"table_{k}": v for k, v in write_instance_table(result.instance_table, stem).items()}


def _write_tiff(result: Result, stem) -> dict[str, Path]:
    from .panoptic import write_tiff_maps

    return {f"tiff_{k}": v for k, v in write_tiff_maps(result.pair, stem).items()}


def _write_png(result: Result, stem) -> dict[str, Path]:
    import torch

    from .qc import qc_montage

    image = result.source if result.source is not None else torch.zeros((1,) + tuple(result.pair.shape[1:]))
    return {"png": qc_montage(image, result.pair, result.label_set, f"{os.fspath(stem)}_qc.png", title=result.case,
                              stats=result.pair_stats)}


def _slide_writer(fmt: str) -> WriteFn:
    """The tiled path's streaming writer of `fmt` (`medpanoptic.wsi.writers.write_result`) for a result in memory.

    It lives above the io floor (it stitches tiles), so the registry names it and imports it by
    name when a result is written, rather than importing the tiled path into io."""
    def write(result: Result, stem) -> dict[str, Path]:
        import importlib

        return importlib.import_module("medpanoptic.wsi.writers").write_result(result, stem, fmt)

    return write


WRITERS: dict[str, Writer] = {w.name: w for w in (
    Writer("nifti", tuple(PANOPTIC_SUFFIXES[k] for k in ("label", "instance", "json")), _write_nifti,
           "label and instance maps (NIfTI) and the label set with the instance table (JSON)"),
    Writer("dicom-seg", ("_seg.dcm",), _dicom_seg_writer("dicom-seg", "_seg.dcm", "BINARY"),
           "DICOM Segmentation (BINARY) referencing the source series", needs_dicom=True, check=_check_dicom_source),
    Writer("dicom-seg-labelmap", ("_seg_labelmap.dcm",), _dicom_seg_writer("dicom-seg-labelmap", "_seg_labelmap.dcm", "LABELMAP"),
           "DICOM Segmentation (LABELMAP, RLE)", needs_dicom=True, check=_check_dicom_source),
    Writer("sr", ("_sr.dcm",), _write_sr, "DICOM SR measurement report (TID 1500) of the lesions, referencing the SEG",
           needs_dicom=True, check=_check_dicom_source, requires=("dicom-seg",)),
    Writer("seg-nrrd", (SEG_NRRD_SUFFIX,), _write_seg_nrrd, "3D Slicer segmentation"),
    Writer("labelmap", ("_segments.nii.gz", "_segments.itksnap.txt", "_segments.ctbl"), _write_labelmap,
           "segment numbers (NIfTI) with ITK-SNAP and Slicer colour tables"),
    Writer("table", ("_instances.csv", "_instances.json"), _write_table, "the instance table (CSV and JSON)"),
    Writer("tiff", tuple(TIFF_SUFFIXES.values()), _write_tiff, "label and instance maps as TIFF, numpy's axis order"),
    Writer("png", ("_qc.png",), _write_png, "the QC montage"),
    Writer("zarr", (".ome.zarr",), _slide_writer("zarr"), "OME-Zarr (NGFF 0.4) label and instance images, multiscale"),
    Writer("geojson", (".geojson",), _slide_writer("geojson"), "QuPath GeoJSON: one detection per instance (contour)",
           spatial_dims=(2,)),
    Writer("centroids", ("_centroids.geojson",), _slide_writer("centroids"), "QuPath GeoJSON of the instances' centroids",
           spatial_dims=(2,)),
    Writer("parquet", ("_instances.parquet",), _slide_writer("parquet"), "the instance table as Parquet (slide columns)"),
)}
FORMAT_NAMES = tuple(WRITERS)

OUTPUT_SUFFIXES = tuple(suffix for w in WRITERS.values() for suffix in w.suffixes) + (PANOPTIC_SUFFIXES["pair"],)
"""Every file name ending a writer gives its output (`_pair.nii.gz`: `write_panoptic(single_file=True)`);
`find_scans` does not take these for scans."""

SEG_NAME_SUFFIXES = tuple(w.suffixes[0] for w in WRITERS.values() if w.name.startswith("dicom-seg")) + (".dcm", ".seg")
"""Endings a DICOM SEG's file name may have (ours, then any `.dcm`, dcmqi's `.seg`); a SEG is known by
its content, these only give its case name."""


def check_formats(formats: Iterable[str]) -> list[str]:
    """The format names, in order, each preceded by the formats it requires (`sr` by `dicom-seg`);
    refused with the list of known ones if any is not registered."""
    formats = list(formats)
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise InputError(None, f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMAT_NAMES)}")
    ordered: list[str] = []
    for name in formats:
        ordered += [f for f in (*WRITERS[name].requires, name) if f not in ordered]
    return ordered


def write_formats(result: Result, stem: str | os.PathLike, formats: Iterable[str]) -> dict[str, Path]:
    """Write `result` in each of `formats` beside `stem`; every writer's checks run before the first file.

    Returns every written path by name."""
    writers = [WRITERS[f] for f in check_formats(formats)]
    for writer in writers:
        if writer.check is not None:
            writer.check(result)
    written: dict[str, Path] = {}
    for writer in writers:
        written.update(writer.write(result, stem))
    return written
