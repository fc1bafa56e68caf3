"""The transforms a planned bundle's configs use: one dataset entry -> image and pair, and the plan's normalisation.

    load_case / LoadCased            entry -> image (C, *spatial) float32 + panoptic pair (2, *spatial) on its grid
    NormalizeChannels / ...d         the plan's per-channel normalisation (CT window + z-score, or per-image z-score)

An entry is the plan's datalist entry (`datasets`): one image file per channel (or one
multi-channel file), a semantic label map with an optional instance map, or for microscopy
an instance mask with an optional class table. Pictures without a pixel size (PNG, TIFF
without resolution tags) get `NOMINAL_PIXEL_MM` (1 µm) and say so in their meta.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ..errors import GeometryError, InputError
from ..io.formats import scan_format
from ..io.geometry import same_grid
from ..io.scan import load_scan, make_meta_tensor
from ..labels import LabelSet
from .datasets import read_class_table

NOMINAL_PIXEL_MM = 1e-3
"""The pixel size (mm) given to a picture that states none: 1 µm, nominal; the plan then works in pixels."""


def pixel_size_mm(path: Path) -> float | None:
    """A TIFF's pixel size from its resolution tags (inch or cm), else None (PNG, JPEG, untagged TIFF)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            unit = tags.get("ResolutionUnit")
            resolution = tags.get("XResolution")
            if resolution is None or unit is None or int(unit.value) not in (2, 3):
                return None
            numerator, denominator = resolution.value
            per_unit = numerator / denominator if denominator else 0.0
    except (OSError, ValueError, TypeError, tifffile.TiffFileError):
        return None
    if per_unit <= 0:
        return None
    return (25.4 if int(unit.value) == 2 else 10.0) / per_unit


def _states_no_pixel_size(path: Path) -> bool:
    """A picture (PNG, JPEG, TIFF) whose file gives no pixel size: SimpleITK's 1 mm would be a guess."""
    fmt = scan_format(path)
    return fmt is not None and (fmt.picture or fmt.name == "tiff") and pixel_size_mm(path) is None


def _read_channels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(channel-first array, RAS affine) of one image file; NIfTI vector images keep their channels."""
    fmt = scan_format(path)
    if fmt is not None and fmt.reader == "nifti" and path.exists():
        from ..io.nifti import read_nifti

        array, affine = read_nifti(path)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InputError(path, "the image contains NaN or infinite voxels")
        return array, affine
    array, affine, _ = load_scan(path)
    return array, affine


def _nominal(affine: np.ndarray, ndim: int) -> np.ndarray:
    """The affine with its spatial axes rescaled to `NOMINAL_PIXEL_MM` (directions kept)."""
    out = np.array(affine, dtype=float)
    norms = np.linalg.norm(out[:3, :ndim], axis=0)
    out[:3, :ndim] = out[:3, :ndim] / norms * NOMINAL_PIXEL_MM
    return out


def grid_difference(shape: Sequence[int], other: Sequence[int]) -> str:
    """How two grids that are not the same differ, in words."""
    if tuple(shape) != tuple(other):
        return f"shape {tuple(int(s) for s in shape)} vs {tuple(int(s) for s in other)}"
    return "same shape, but shifted, rotated or of another spacing"


def load_image(entry: Mapping, root: str | os.PathLike) -> MetaTensor:
    """The entry's image as one (C, *spatial) float32 MetaTensor; channel files off each other's grid are refused."""
    root = Path(root)
    paths = [root / p for p in entry["image"]]
    arrays, affine = [], None
    for path in paths:
        array, this_affine = _read_channels(path)
        if affine is not None and not same_grid(arrays[0].shape[1:], affine, array.shape[1:], this_affine):
            raise GeometryError(path, f"not on the grid of the case's first channel {paths[0]} "
                                      f"({grid_difference(array.shape[1:], arrays[0].shape[1:])})")
        affine = this_affine if affine is None else affine
        arrays.append(array.astype(np.float32, copy=False))
    ndim = arrays[0].ndim - 1
    nominal = _states_no_pixel_size(paths[0])
    if nominal:
        affine = _nominal(affine, ndim)
    meta = {"filename_or_obj": str(paths[0]), "source_files": [str(p) for p in paths], "case": entry.get("case", ""),
            "pixel_size_nominal": bool(nominal)}
    return make_meta_tensor(np.concatenate(arrays), affine, meta)


def load_pair(entry: Mapping, label_set: LabelSet, root: str | os.PathLike, image: MetaTensor) -> MetaTensor:
    """The entry's panoptic pair on `image`'s grid (same affine); off that grid -> InputError naming both files."""
    root = Path(root)
    label_path = root / entry["label"]
    instance = entry.get("instance")
    if instance is not None and instance == entry["label"]:
        array, affine = _mask_pair(label_path, entry.get("classes") and root / entry["classes"], label_set)
    else:
        from ..io.panoptic import read_panoptic

        pair, _ = read_panoptic(label_path, label_set=label_set,
                                instance_path=root / instance if instance else None)
        array, affine = np.asarray(pair), np.asarray(pair.affine, dtype=float)
    if image.meta.get("pixel_size_nominal"):
        affine = _nominal(affine, array.ndim - 1)
    image_affine = np.asarray(image.affine, dtype=float)
    if not same_grid(image.shape[1:], image_affine, array.shape[1:], affine):
        raise GeometryError(label_path, f"not on the grid of its image {image.meta['filename_or_obj']} "
                                        f"({grid_difference(array.shape[1:], image.shape[1:])})")
    return make_meta_tensor(array.astype(np.int32), image_affine,
                            {"filename_or_obj": str(label_path), "case": entry.get("case", "")})


def _mask_pair(mask_path: Path, table_path: Path | None, label_set: LabelSet) -> tuple[np.ndarray, np.ndarray]:
    """(label, instance) of an instance mask: the class of each instance from its table, else the one thing class."""
    array, affine, _ = load_scan(mask_path)
    if array.shape[0] != 1:
        raise InputError(mask_path, f"an instance mask has one channel, found {array.shape[0]}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
        raise InputError(mask_path, "an instance mask must hold whole numbers")
    instance = array[0].astype(np.int64)
    if instance.min() < 0:
        raise InputError(mask_path, "an instance mask cannot hold negative ids")
    lookup = np.zeros(int(instance.max()) + 1, dtype=np.int64)
    if table_path:
        table = read_class_table(table_path)
        present = np.unique(instance[instance > 0])
        missing = [int(i) for i in present if int(i) not in table]
        if missing:
            raise InputError(table_path, f"no class for instance(s) {missing[:10]} of {mask_path.name}")
        for inst in present:
            lookup[inst] = label_set.by_name(table[int(inst)]).id
    else:
        if len(label_set.thing_ids) != 1:
            raise InputError(mask_path, f"no class table, and the label set has {len(label_set.thing_ids)} thing "
                                        "classes: give classes/<case>.csv (instance,class)")
        lookup[1:] = label_set.thing_ids[0]
    return np.stack([lookup[instance], instance]), affine


def load_case(entry: Mapping, label_set: LabelSet, root: str | os.PathLike) -> tuple[MetaTensor, MetaTensor]:
    """(image, pair) of one datalist entry, on one grid."""
    image = load_image(entry, root)
    return image, load_pair(entry, label_set, root, image)


class LoadCased(MapTransform):
    """A datalist entry -> `image` (C, *spatial) float32 and `label` pair (2, *spatial) int, on the image's grid.

    `keys` names the image and label keys, in that order. `label_set` is a LabelSet, its dict
    (as in the plan) or a labels.json path; `root` is the dataset's root (entries are relative).
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), label_set: LabelSet | Mapping | str | None = None,
                 root: str | os.PathLike = ".", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"LoadCased needs two keys (image, label), got {self.keys}")
        if label_set is None:
            raise ValueError("LoadCased needs the dataset's label_set")
        self.label_set = (label_set if isinstance(label_set, LabelSet)
                          else LabelSet.from_dict(label_set) if isinstance(label_set, Mapping) else LabelSet.load(label_set))
        self.root = Path(root)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image_key, label_key = self.keys
        entry = {"case": d.get("case", ""), "image": d[image_key], "label": d[label_key],
                 "instance": d.get("instance"), "classes": d.get("classes")}
        if isinstance(entry["image"], str):
            entry["image"] = [entry["image"]]
        d[image_key], d[label_key] = load_case(entry, self.label_set, self.root)
        return d


class NormalizeChannels(Transform):
    """The plan's per-channel normalisation of a (C, *spatial) image.

    "ct" and "fixed": clip to the dataset's foreground percentiles [lo, hi], then z-score with the
    dataset's foreground mean and std (every CT scan on one scale, HU mean something; every tile of
    a slide on one scale, so a tile of glass keeps its contrast); "zscore": each
    image's own mean and std per channel (MR and microscopy intensities have no absolute unit).
    """

    def __init__(self, normalisation: Sequence[Mapping]) -> None:
        self.normalisation = [dict(n) for n in normalisation]
        for n in self.normalisation:
            if n.get("scheme") not in FIXED_SCHEMES + ("zscore",):
                raise ValueError(f"channel {n.get('channel')!r}: unknown normalisation scheme {n.get('scheme')!r}")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] != len(self.normalisation):
            raise InputError(getattr(image, "meta", {}).get("filename_or_obj"),
                             f"{image.shape[0]} channel(s), but the plan normalises {len(self.normalisation)}")
        out = image.clone().float()
        for c, n in enumerate(self.normalisation):
            channel = out[c]
            if n["scheme"] in FIXED_SCHEMES:
                lo, hi = n["clip"]
                channel = channel.clamp(float(lo), float(hi))
                out[c] = (channel - float(n["mean"])) / max(float(n["std"]), 1e-8)
            else:
                out[c] = (channel - channel.mean()) / channel.std().clamp_min(1e-8)
        return out


FIXED_SCHEMES = ("ct", "fixed")
"""Schemes with one window and one mean/std for every image (from the dataset's foreground)."""


class NormalizeChannelsd(MapTransform):
    """`NormalizeChannels` on each key (default "image")."""

    def __init__(self, keys: KeysCollection = "image", normalisation: Sequence[Mapping] = (),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = NormalizeChannels(normalisation)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d
