"""Panoptic results on disk: `<stem>_label.nii.gz`, `<stem>_instance.nii.gz` and `<stem>_panoptic.json`.

The two maps are written on the exact source grid as unscaled integers (slope 1, intercept 0);
the JSON carries the label set and one entry per instance. Optionally the pair also goes
into one two-component NIfTI (vector intent), `<stem>_pair.nii.gz`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from ..errors import GeometryError, InputError, LabelSetError, PanopticError
from ..labels import LabelSet
from ..pair import INSTANCE, LABEL, check_pair, instances_from_semantic
from .atomic import atomic_paths
from .formats import PANOPTIC_SUFFIXES, SEG_NRRD_SUFFIX, TIFF_SUFFIXES, scan_format
from .geometry import from_ijk_order, same_grid
from .itk import array_from_sitk
from .nifti import read_nifti, write_nifti
from .scan import make_meta_tensor
from .table import instance_table

FORMAT_NAME = "medpanoptic.panoptic"
FORMAT_VERSION = 1
SUFFIXES = PANOPTIC_SUFFIXES
IDENTITY_KEYS = ("patient_id", "study_instance_uid", "series_instance_uid", "frame_of_reference_uid")
"""Who and where a result belongs to: copied from the source scan's meta, checked before a DICOM SEG is written."""


def source_identity(meta: dict) -> dict[str, str]:
    """The patient, study, series and frame of reference a scan's (or result's) meta records; empty ones left out."""
    return {k: str(meta[k]) for k in IDENTITY_KEYS if meta.get(k)}


def panoptic_paths(stem: str | os.PathLike) -> dict[str, Path]:
    """The file names of a panoptic result with this stem."""
    stem = os.fspath(stem)
    return {key: Path(stem + suffix) for key, suffix in SUFFIXES.items()}


def _smallest_uint(max_value: int) -> type:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    raise PanopticError(f"ids up to {max_value} do not fit 32 bits")


def write_panoptic(
    pair: torch.Tensor,
    stem: str | os.PathLike,
    label_set: LabelSet,
    *,
    single_file: bool = False,
    compress: bool = True,
    extra: dict | None = None,
    instances: list[dict] | None = None,
) -> dict[str, Path]:
    """Write a panoptic pair and its label set; all files appear together or none does.

    `pair` is a (2, *spatial) integer MetaTensor on the source grid (its affine is written as
    the NIfTI geometry). With `single_file`, the pair is also written as one two-component
    NIfTI. The source's patient, study, series and frame of reference in the pair's meta (see
    `IDENTITY_KEYS`) are recorded, so that an export against another patient's series is refused.
    `extra` goes into the JSON (e.g. the bundle and the source scan). The JSON's `instances`
    are the instance table (`io.table`); pass `instances` when it is already made for this pair
    (a `PanopticResult` has it, from its checked statistics), else the pair is checked and the
    table made here. Returns the paths.
    """
    affine = np.asarray(pair.affine if isinstance(pair, MetaTensor) else np.eye(4), dtype=float)
    arr = np.asarray(pair.detach().cpu())
    paths = panoptic_paths(stem)
    keys = ["label", "instance", "json"] + (["pair"] if single_file else [])
    with atomic_paths(*(paths[k] for k in keys)) as temps:
        tmp = dict(zip(keys, temps))
        # the two maps are cast, reordered and compressed on worker threads while this one
        # validates the pair and sums up its instances; a refused pair leaves no file behind
        with ThreadPoolExecutor(max_workers=2) as pool:
            label_job = pool.submit(_write_map, tmp["label"], arr[LABEL], affine, compress)
            instance_job = pool.submit(_write_map, tmp["instance"], arr[INSTANCE], affine, compress, 255)
            if instances is None:
                instances = instance_table(arr, label_set, stats=check_pair(pair, label_set), affine=affine)
            label, instance = label_job.result(), instance_job.result()
        if single_file:
            both = np.stack([label.astype(instance.dtype), instance])
            write_nifti(tmp["pair"], both, affine, vector=True, compress=compress)
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "label_set": label_set.to_dict(),
            "shape": list(arr.shape[1:]),
            "affine_ras": affine.tolist(),
            "instances": instances,
            **({"source_identity": identity} if (identity := source_identity(getattr(pair, "meta", {}))) else {}),
            **(extra or {}),
        }
        tmp["json"].write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return {k: paths[k] for k in keys}


def write_tiff_maps(pair: torch.Tensor, stem: str | os.PathLike) -> dict[str, Path]:
    """`<stem>_label.tif` (uint16) and `<stem>_instance.tif` (uint16, uint32 past 65535) in numpy's axis order.

    Our grid is indexed (i, j[, k]) = (column, row[, slice]) — SimpleITK's x, y, z — so a 2D
    map here is the transpose of what numpy, PIL and tifffile give for the source PNG/TIFF.
    These files reverse the axes back: rows x columns (slices x rows x columns in 3D), so
    `tifffile.imread(path)` lines up pixel for pixel with `np.asarray(PIL.Image.open(source))`.
    They carry no geometry; the NIfTI maps and the viewer exports do.
    """
    import tifffile

    arr = np.asarray(pair.detach().cpu() if isinstance(pair, torch.Tensor) else pair)
    if arr.ndim not in (3, 4) or arr.shape[0] != 2:
        raise PanopticError(f"a TIFF export needs a (2, *spatial) 2D or 3D pair, got shape {tuple(arr.shape)}")
    if arr.size and int(arr.min()) < 0:
        raise PanopticError("negative label or instance ids cannot be written as unsigned TIFF maps")
    paths = {key: Path(os.fspath(stem) + suffix) for key, suffix in TIFF_SUFFIXES.items()}
    with atomic_paths(paths["label"], paths["instance"]) as (label_tmp, instance_tmp):
        for tmp, values in ((label_tmp, arr[LABEL]), (instance_tmp, arr[INSTANCE])):
            high = int(values.max()) if values.size else 0
            dtype = np.uint16 if high <= np.iinfo(np.uint16).max else _smallest_uint(high)
            tifffile.imwrite(tmp, from_ijk_order(values.astype(dtype)), compression="zlib")
    return paths


def _write_map(path: Path, values: np.ndarray, affine: np.ndarray, compress: bool, at_least: int = 0) -> np.ndarray:
    """Write one map in the smallest unsigned type that holds it; returns the cast array.

    Negative ids are refused by `check_pair`, which runs meanwhile; a cast that wrapped them
    is never renamed into place.
    """
    high = int(torch.from_numpy(values).max()) if values.size else 0
    cast = values.astype(_smallest_uint(max(high, at_least)), copy=False)
    write_nifti(path, cast, affine, compress=compress)
    return cast


def _read_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fmt = scan_format(path)
    if fmt is not None and fmt.reader == "nifti":
        array, affine = read_nifti(path)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise InputError(path, f"cannot read: {str(e).strip().splitlines()[-1]}") from None
        array, affine = array_from_sitk(image, str(path))
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(array == np.round(array)):
            raise InputError(path, "a label or instance map must hold whole numbers")
        array = array.astype(np.int64)
    return array, affine


def _same_grid(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    if not same_grid(a[0].shape[1:], a[1], b[0].shape[1:], b[1]):
        raise GeometryError(path, "the label map and the instance map are not on the same grid")


LABEL_SET_HINT = ("give one: label_set=... (Python), --labels labels.json (command line), or a dataset.json "
                  "with a medpanoptic label set beside the data")
"""How to give a label set, said by every reader that refuses to guess one."""


def read_panoptic(
    path: str | os.PathLike,
    label_set: LabelSet | None = None,
    thing_classes: Mapping[int, str] | None = None,
    connectivity: int | None = None,
    instance_path: str | os.PathLike | None = None,
    segment_mapping: dict[str, int] | None = None,
    *,
    reference: MetaTensor | str | os.PathLike | None = None,
    fractional_threshold: float | None = None,
    overlap: str = "error",
) -> tuple[MetaTensor, LabelSet]:
    """Read a panoptic result back as (pair MetaTensor, LabelSet), by what the file is.

    - a result `write_panoptic` wrote (its stem or any of its files): `read_panoptic_stem`;
    - a DICOM SEG (known by its content, whatever its name) or a Slicer `.seg.nrrd`:
      `read_viewer_segmentation` (`segment_mapping`, `reference`, `fractional_threshold`, `overlap`);
    - a semantic label map, with `instance_path` or connected components for its instances:
      `read_semantic_map` (`connectivity`);
    - any other two-component pair file: label in component 0, instance in component 1.

    Nothing is guessed: the label set is `label_set`, else the one stored with the result
    (its JSON, the segments' own descriptions); a file that stores none is refused with an
    `InputError` that says how to give one. `thing_classes` ({class id: name}) is a shorthand
    for a label map whose classes are all things: it must name every class the map holds.
    """
    path = Path(path)
    if is_viewer_segmentation(path):
        return read_viewer_segmentation(path, label_set, segment_mapping, reference=reference,
                                        fractional_threshold=fractional_threshold, overlap=overlap)
    if _written_stem(path) is not None:
        return read_panoptic_stem(path, label_set)
    if not path.exists():
        raise InputError(path, "no such panoptic result (expected this file or <stem>_label.nii.gz)")
    array, affine = _read_map(path)
    if array.shape[0] == 2:
        pair = make_meta_tensor(array, affine, {"filename_or_obj": str(path)})
        label_set = _given_or_refused(label_set or _label_set_beside(path), path,
                                      f"a pair file without its label set (no {SUFFIXES['json']} beside it)")
        return _checked(pair, label_set, path)
    if thing_classes is not None:
        if label_set is not None:
            raise InputError(path, "pass label_set or thing_classes, not both")
        label_set = label_set_of_thing_classes(thing_classes, array, path)
    return _semantic_pair(array, affine, path, label_set, instance_path, connectivity)


def read_panoptic_stem(stem: str | os.PathLike, label_set: LabelSet | None = None) -> tuple[MetaTensor, LabelSet]:
    """What `write_panoptic` wrote, named by its stem or any of its files: the label and instance
    maps (or the single pair file) with the label set and source identity of its JSON.

    `label_set` overrides the stored one; without either the result is refused.
    """
    paths = panoptic_paths(_written_stem(Path(stem)) or Path(stem))
    if label_set is None:
        label_set = _given_or_refused(_label_set_beside(paths["json"]), paths["json"],
                                      "missing: the result's label set is stored there")
    identity = _identity_beside(paths["json"])
    if paths["label"].exists():
        label = _read_map(paths["label"])
        if not paths["instance"].exists():
            raise InputError(paths["instance"], "missing: a panoptic result needs its instance map beside the label map")
        instance = _read_map(paths["instance"])
        _same_grid(label, instance, paths["instance"])
        data, affine, where = np.concatenate([label[0], instance[0]]).astype(np.int32), label[1], paths["label"]
    elif paths["pair"].exists():
        (data, affine), where = _read_map(paths["pair"]), paths["pair"]
        if data.shape[0] != 2:
            raise InputError(where, f"a pair file needs two components (label, instance), found {data.shape[0]}")
    else:
        raise InputError(paths["label"], "no such panoptic result (expected this file or <stem>_pair.nii.gz)")
    pair = make_meta_tensor(data, affine, {"filename_or_obj": str(where), **identity})
    return _checked(pair, label_set, where)


def read_semantic_map(
    path: str | os.PathLike,
    label_set: LabelSet,
    instance_path: str | os.PathLike | None = None,
    connectivity: int | None = None,
) -> tuple[MetaTensor, LabelSet]:
    """A Decathlon-style semantic label map and its label set as a pair.

    The instances come from `instance_path` (e.g. a dataset's `instancesTr/` map, on the same
    grid) when given, else from connected components of the label set's thing classes (full
    connectivity unless `connectivity` says otherwise). The label set is required: a label
    map says neither what its classes are called nor which of them are things.
    """
    path = Path(path)
    array, affine = _read_map(path)
    if array.shape[0] != 1:
        raise InputError(path, f"expected a label map (one component), found {array.shape[0]} components")
    return _semantic_pair(array, affine, path, label_set, instance_path, connectivity)


def read_viewer_segmentation(
    path: str | os.PathLike,
    label_set: LabelSet | None = None,
    segment_mapping: dict[str, int] | None = None,
    *,
    reference: MetaTensor | str | os.PathLike | None = None,
    fractional_threshold: float | None = None,
    overlap: str = "error",
) -> tuple[MetaTensor, LabelSet]:
    """A DICOM SEG or a Slicer `.seg.nrrd` (ours, or made by dcmqi, Slicer, ...) as a pair.

    Segments map to (label, instance) through `label_set`: by `segment_mapping` (segment name
    -> class id, 0 for background), else the coded segment type, else the segment name.
    Without a label set, the classes are the ones the segments state, with their codes
    (`segments.label_set_of_segments`, which refuses a segment that does not say whether it
    is stuff or thing). A DICOM SEG is read onto the full grid of the series it segments: the
    `reference` scan's (its source series, or a `read_scan` result) when given, else the grid
    the SEG records (refused, with the reason, when it omits empty frames).
    `fractional_threshold` and `overlap` are for FRACTIONAL and overlapping SEGs (see
    `read_dicom_seg`).
    """
    from .dicom_seg import dicom_seg_label_set, read_dicom_seg
    from .seg_nrrd import read_seg_nrrd, seg_nrrd_label_set

    path = Path(path)
    nrrd = path.name.endswith(SEG_NRRD_SUFFIX)
    if label_set is None:  # the classes (names, codes, colours) the file's segments state
        label_set = seg_nrrd_label_set(path) if nrrd else dicom_seg_label_set(path)
    if nrrd:
        return _checked(read_seg_nrrd(path, label_set, segment_mapping), label_set, path)
    pair = read_dicom_seg(path, label_set, segment_mapping, reference=reference,
                          fractional_threshold=fractional_threshold, overlap=overlap)  # type: ignore[arg-type]
    return _checked(pair, label_set, path)


def is_viewer_segmentation(path: Path) -> bool:
    """Whether `path` is a Slicer `.seg.nrrd` (by name) or a DICOM SEG (by content)."""
    from .dicom_seg import is_dicom_seg

    return path.name.endswith(SEG_NRRD_SUFFIX) or (path.is_file() and is_dicom_seg(path))


def label_set_of_thing_classes(thing_classes: Mapping[int, str], label_map: np.ndarray, path: Path) -> LabelSet:
    """The explicit label set `thing_classes` ({class id: name}, every class a thing) stands for;
    refused unless it names every class present in `label_map`."""
    from ..labels import PALETTE, LabelClass

    if not isinstance(thing_classes, Mapping):
        raise InputError(path, "thing_classes must name each class ({class id: name}, e.g. {1: 'nucleus'}); "
                               f"for classes without names {LABEL_SET_HINT}")
    present = {int(v) for v in np.unique(label_map) if v != 0}
    unnamed = sorted(present - {int(c) for c in thing_classes})
    if unnamed:
        raise InputError(path, f"the label map holds classes {unnamed} that thing_classes does not name: a stuff "
                               f"class needs a label set; {LABEL_SET_HINT}")
    try:
        return LabelSet(tuple(LabelClass(int(i), str(name), "thing", PALETTE[(int(i) - 1) % len(PALETTE)])
                              for i, name in sorted(thing_classes.items())))
    except LabelSetError as e:
        raise InputError(path, f"thing_classes is not a valid label set: {e}") from None


def _semantic_pair(array: np.ndarray, affine: np.ndarray, path: Path, label_set: LabelSet | None,
                   instance_path: str | os.PathLike | None, connectivity: int | None) -> tuple[MetaTensor, LabelSet]:
    """The pair of a loaded one-component label map: instances from `instance_path` or connected components."""
    label_set = _given_or_refused(label_set, path, "a label map without a label set: the file says neither what "
                                                   "its classes are called nor which of them are things")
    label = array[0]
    if instance_path is not None:
        instance_map = _read_map(Path(instance_path))
        _same_grid((array, affine), instance_map, Path(instance_path))
        instance = instance_map[0][0]
    else:
        instance = instances_from_semantic(label, label_set.thing_ids, connectivity)
    pair = make_meta_tensor(np.stack([label, instance]).astype(np.int32), affine, {"filename_or_obj": str(path)})
    return _checked(pair, label_set, path)


def _given_or_refused(label_set: LabelSet | None, path: Path, problem: str) -> LabelSet:
    """`label_set`, or the `InputError` that names the file, the problem and how to give one."""
    if label_set is None:
        raise InputError(path, f"{problem}; {LABEL_SET_HINT}")
    return label_set


def _written_stem(path: Path) -> Path | None:
    """The stem of a result `write_panoptic` wrote, when `path` is that stem or one of its files."""
    for suffix in SUFFIXES.values():
        if path.name.endswith(suffix):
            path = Path(str(path)[: -len(suffix)])
            break
    paths = panoptic_paths(path)
    return path if paths["label"].exists() or paths["pair"].exists() else None


def _label_set_beside(path: Path) -> LabelSet | None:
    json_path = path if path.name.endswith(SUFFIXES["json"]) else None
    if json_path is None:
        stem = str(path)
        for suffix in (SUFFIXES["pair"], ".nii.gz", ".nii"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        json_path = Path(stem + SUFFIXES["json"])
    if not json_path.exists():
        return None
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
        return LabelSet.from_dict(document["label_set"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(json_path, f"not a medpanoptic panoptic JSON ({e})") from None
    except LabelSetError as e:
        raise InputError(json_path, f"its label set is invalid: {e}") from None


def _identity_beside(json_path: Path) -> dict[str, str]:
    """The source identity a result's JSON records (none for results written before it was recorded)."""
    if not json_path.exists():
        return {}
    try:
        recorded = json.loads(json_path.read_text(encoding="utf-8")).get("source_identity") or {}
    except (json.JSONDecodeError, AttributeError) as e:
        raise InputError(json_path, f"not a medpanoptic panoptic JSON ({e})") from None
    if not isinstance(recorded, dict):
        raise InputError(json_path, "source_identity must be an object")
    return source_identity(recorded)


def _checked(pair: MetaTensor, label_set: LabelSet, path: Path) -> tuple[MetaTensor, LabelSet]:
    try:
        check_pair(pair, label_set, source=str(path))
    except PanopticError as e:
        raise InputError(path, str(e).removeprefix(f"{path}: ")) from None
    return pair, label_set

