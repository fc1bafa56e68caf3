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
from typing import Iterable

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from ..errors import GeometryError, InputError, LabelSetError, PanopticError
from ..labels import LabelSet
from ..pair import INSTANCE, LABEL, check_pair, instances_from_semantic
from .atomic import atomic_paths
from .itk import array_from_sitk
from .nifti import read_nifti, write_nifti
from .scan import make_meta_tensor
from .table import instance_table

FORMAT_NAME = "medpanoptic.panoptic"
FORMAT_VERSION = 1
SUFFIXES = {"label": "_label.nii.gz", "instance": "_instance.nii.gz", "json": "_panoptic.json", "pair": "_pair.nii.gz"}
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


TIFF_SUFFIXES = {"label": "_label.tif", "instance": "_instance.tif"}


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
            tifffile.imwrite(tmp, np.ascontiguousarray(values.transpose().astype(dtype)), compression="zlib")
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
    if path.name.lower().endswith((".nii", ".nii.gz")):
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
    if a[0].shape[1:] != b[0].shape[1:] or not np.allclose(a[1], b[1], atol=1e-4):
        raise GeometryError(path, "the label map and the instance map are not on the same grid")


def read_panoptic(
    path: str | os.PathLike,
    label_set: LabelSet | None = None,
    thing_classes: Iterable[int] | None = None,
    connectivity: int | None = None,
    instance_path: str | os.PathLike | None = None,
    segment_mapping: dict[str, int] | None = None,
    *,
    reference: MetaTensor | str | os.PathLike | None = None,
    fractional_threshold: float | None = None,
    overlap: str = "error",
) -> tuple[MetaTensor, LabelSet]:
    """Read a panoptic result back as (pair MetaTensor, LabelSet).

    `path` may be a stem written by `write_panoptic` (or any of its files), a two-component
    pair file, or a single semantic label map. For a semantic map the instances come from
    `instance_path` when given (e.g. a dataset's `instancesTr/` map), else from connected
    components of the thing classes (full connectivity unless `connectivity` says otherwise)
    — the Decathlon case. The thing classes come from `label_set` or `thing_classes`.

    A DICOM SEG (known by its content, whatever its name) or a Slicer `.seg.nrrd` (ours, or
    made by dcmqi, Slicer, ...) is mapped to (label, instance) through `label_set`: by
    `segment_mapping` (segment name -> class id, 0 for background), else the coded segment
    type, else the segment name. Without a label set, the classes are the ones the segments
    state, with their codes (`segments.label_set_of_segments`; refused when a segment does not
    say whether it is stuff or thing). A DICOM SEG is read onto the full grid of the series it
    segments: the `reference` scan's (its source series, or a `read_scan` result) when given,
    else the grid the SEG records (refused, with the reason, when it omits empty frames).
    `fractional_threshold` and `overlap` are for FRACTIONAL and overlapping SEGs (see
    `read_dicom_seg`).
    """
    path = Path(path)
    if path.name.endswith(".seg.nrrd") or path.is_file():
        from .dicom_seg import dicom_seg_label_set, is_dicom_seg, read_dicom_seg
        from .seg_nrrd import read_seg_nrrd, seg_nrrd_label_set

        nrrd = path.name.endswith(".seg.nrrd")
        if nrrd or is_dicom_seg(path):
            if label_set is None:  # the classes (names, codes, colours) the file's segments state
                label_set = seg_nrrd_label_set(path) if nrrd else dicom_seg_label_set(path)
            if nrrd:
                return _checked(read_seg_nrrd(path, label_set, segment_mapping), label_set, path)
            pair = read_dicom_seg(path, label_set, segment_mapping, reference=reference,
                                  fractional_threshold=fractional_threshold, overlap=overlap)
            return _checked(pair, label_set, path)
    for key, suffix in SUFFIXES.items():
        if path.name.endswith(suffix) and key != "pair":
            path = Path(str(path)[: -len(suffix)])
            break
    paths = panoptic_paths(path)
    if paths["label"].exists():
        return _read_stem(paths, label_set)
    if not path.exists():
        raise InputError(path, "no such panoptic result (expected this file or <stem>_label.nii.gz)")
    array, affine = _read_map(path)
    if array.shape[0] == 2:
        pair = make_meta_tensor(array, affine, {"filename_or_obj": str(path)})
        label_set = label_set or _label_set_beside(path) or _guess_label_set(array[LABEL], array[INSTANCE])
        return _checked(pair, label_set, path)
    if array.shape[0] != 1:
        raise InputError(path, f"expected a label map or a two-component pair, found {array.shape[0]} components")
    label = array[0]
    if instance_path is not None:
        instance_map = _read_map(Path(instance_path))
        _same_grid((array, affine), instance_map, Path(instance_path))
        label_set = label_set or _guess_label_set(label, instance_map[0][0], thing_classes)
        pair = make_meta_tensor(np.stack([label, instance_map[0][0]]).astype(np.int32), affine, {"filename_or_obj": str(path)})
        return _checked(pair, label_set, path)
    if label_set is None:
        if thing_classes is None:
            raise InputError(path, "a semantic label map needs a label set or thing_classes to know which classes are things")
        label_set = _guess_label_set(label, None, thing_classes)
    instance = instances_from_semantic(label, label_set.thing_ids, connectivity)
    pair = make_meta_tensor(np.stack([label.astype(np.int32), instance]), affine, {"filename_or_obj": str(path)})
    return _checked(pair, label_set, path)


def _read_stem(paths: dict[str, Path], label_set: LabelSet | None) -> tuple[MetaTensor, LabelSet]:
    label = _read_map(paths["label"])
    if not paths["instance"].exists():
        raise InputError(paths["instance"], "missing: a panoptic result needs its instance map beside the label map")
    instance = _read_map(paths["instance"])
    _same_grid(label, instance, paths["instance"])
    if label_set is None:
        label_set = _label_set_beside(paths["json"])
        if label_set is None:
            raise InputError(paths["json"], "missing: pass label_set explicitly")
    data = np.concatenate([label[0], instance[0]]).astype(np.int32)
    identity = _identity_beside(paths["json"])
    pair = make_meta_tensor(data, label[1], {"filename_or_obj": str(paths["label"]), **identity})
    return _checked(pair, label_set, paths["label"])


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


def _guess_label_set(label: np.ndarray, instance: np.ndarray | None, thing_classes: Iterable[int] | None = None) -> LabelSet:
    """A label set for ids found on disk: things are the given classes, or those carrying instance ids."""
    from ..labels import PALETTE, LabelClass

    ids = [int(v) for v in np.unique(label) if v != 0]
    if thing_classes is not None:
        things = {int(c) for c in thing_classes}
    else:
        things = {int(v) for v in np.unique(label[instance > 0])} if instance is not None else set()
    classes = tuple(
        LabelClass(i, f"class {i}", "thing" if i in things else "stuff", PALETTE[(i - 1) % len(PALETTE)])
        for i in sorted(set(ids) | things)
    )
    return LabelSet(classes)


def _checked(pair: MetaTensor, label_set: LabelSet, path: Path) -> tuple[MetaTensor, LabelSet]:
    try:
        check_pair(pair, label_set, source=str(path))
    except PanopticError as e:
        raise InputError(path, str(e).removeprefix(f"{path}: ")) from None
    return pair, label_set

