"""MONAI dictionary transforms around the package's functions, for bundle configs.

Each is a thin `MapTransform`: the work is done by `read_scan`, `read_panoptic`,
`panoptic_targets`, `group_instances` and `write_panoptic`; these classes only say which
dictionary keys they read and write, as MONAI's `*d` transforms do.

    LoadScand            path -> image MetaTensor (DICOM folder/file, NIfTI, NRRD, MHA, PNG...)
    LoadPanopticd        label map (+ instance map) path -> (2, *spatial) pair
    ThingIndicesd        pair -> indices of thing / other voxels, for crops centred on things
    RepeatToChannelsd    a grey image -> n channels, so one network takes grey and RGB input
    PanopticTargetsd     pair -> packed training targets (after spatial augmentation)
    PanopticPostprocessd network output -> pair, on the output's device, meta kept for Invertd
    SavePanopticd        pair on the source grid -> label/instance NIfTI + JSON
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .io.geometry import spacing_from_affine
from .io.inputs import case_name
from .labels import LabelSet
from .nets import HeadLayout
from .postprocess import PostprocessConfig, component_instances, group_instances, instance_centres, restore_instances
from .targets import pack_targets, panoptic_targets


def _as_label_set(label_set: LabelSet | str | os.PathLike) -> LabelSet:
    return label_set if isinstance(label_set, LabelSet) else LabelSet.load(label_set)


def _spacing(tensor: torch.Tensor, ndim: int) -> tuple[float, ...]:
    if isinstance(tensor, MetaTensor):
        return tuple(float(s) for s in spacing_from_affine(tensor.affine.numpy(), ndim))
    return (1.0,) * ndim


def integer_pair(pair: torch.Tensor) -> torch.Tensor:
    """A pair back as int32 on the CPU: inverse resampling (nearest) hands it back as floats."""
    values = pair.as_tensor() if isinstance(pair, MetaTensor) else pair
    return torch.round(values.float()).to(torch.int32).cpu() if values.is_floating_point() else values.to(torch.int32).cpu()


def source_grid_pair(data: Mapping[Hashable, object], key: str, affine=None) -> tuple[torch.Tensor, dict[int, float], list[int]]:
    """`data[key]` after `Invertd` as an int32 CPU pair, with the instances `PanopticPostprocessd` found
    carried onto the source grid (`restore_instances`): ids 1..N, scores re-keyed, ids dropped."""
    pair = data[key]
    if affine is None:
        affine = pair.affine if isinstance(pair, MetaTensor) else torch.eye(4)
    centres = data.get(f"{key}_centres", {})
    return restore_instances(integer_pair(pair), torch.as_tensor(affine).numpy(), centres, data.get(f"{key}_scores", {}))


class LoadScand(MapTransform):
    """Read each key's path with `read_scan` into a float32 (C, *spatial) MetaTensor (the series
    named by the entry's `series_key`, when a DICOM folder holds several). An image already
    loaded (a MetaTensor) passes through, so scripts can hand over scans they have read."""

    def __init__(self, keys: KeysCollection, series_key: str = "series_uid", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series_key = series_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from .io.scan import read_scan

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            image = value if isinstance(value, MetaTensor) else read_scan(value, d.get(self.series_key) or None)
            d[key] = image.float() if not image.is_floating_point() else image
        return d


class LoadPanopticd(MapTransform):
    """Read a ground-truth pair: a semantic label map with its instance map (`instance_key`) when the
    entry has one, else instances from connected components of the thing classes (Decathlon)."""

    def __init__(self, keys: KeysCollection, label_set: LabelSet | str, instance_key: str = "instance",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_set = _as_label_set(label_set)
        self.instance_key = instance_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from .io.panoptic import read_panoptic

        d = dict(data)
        for key in self.key_iterator(d):
            pair, _ = read_panoptic(d[key], label_set=self.label_set, instance_path=d.get(self.instance_key))
            d[key] = pair
        return d


class ThingIndicesd(MapTransform):
    """Flat indices of the thing voxels (`{key}_thing_indices`) and of the others (`{key}_other_indices`).

    For `RandCropByPosNegLabeld(fg_indices_key=..., bg_indices_key=...)`: lesions fill ~1 % of a
    CT, so crops centred on them at a fixed ratio teach the thing heads far sooner than uniform
    crops. Computed once per volume (before the random transforms, so a CacheDataset keeps them).
    """

    def __init__(self, keys: KeysCollection, label_set: LabelSet | str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_set = _as_label_set(label_set)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pair = torch.as_tensor(d[key])
            things = torch.isin(pair[0].round().long(), torch.as_tensor(self.label_set.thing_ids)).flatten()
            d[f"{key}_thing_indices"] = torch.nonzero(things).flatten()
            d[f"{key}_other_indices"] = torch.nonzero(~things).flatten()
        return d


class RepeatToChannelsd(MapTransform):
    """Repeat a single-channel image to `channels` (grey microscopy into an RGB network); others pass unchanged."""

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] == 1 and self.channels > 1:
                d[key] = image.repeat(self.channels, *([1] * (image.ndim - 1)))
            elif image.shape[0] != self.channels:
                from .errors import InputError

                source = image.meta.get("filename_or_obj", key) if isinstance(image, MetaTensor) else key
                raise InputError(source, f"{image.shape[0]} channels, the network takes 1 or {self.channels}")
        return d


class PanopticTargetsd(MapTransform):
    """Replace (or add as `target_key`) each pair by its packed training targets (`pack_targets`).

    Use it after the spatial augmentation, so centres and offsets match the cropped, flipped grid.
    The Gaussian width is in mm, converted with the pair's own spacing, or with `spacing` where
    the files carry none (microscopy PNGs: pass the scanner's pixel size).
    """

    def __init__(self, keys: KeysCollection, label_set: LabelSet | str, sigma_mm: float,
                 target_key: str | None = None, spacing: Sequence[float] | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_set = _as_label_set(label_set)
        self.sigma_mm = sigma_mm
        self.target_key = target_key
        self.spacing = spacing

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pair = d[key]
            spacing = self.spacing or _spacing(pair, pair.ndim - 1)
            packed = pack_targets(panoptic_targets(pair, self.label_set, spacing, self.sigma_mm))
            d[self.target_key or key] = MetaTensor(packed, meta=dict(pair.meta)) if isinstance(pair, MetaTensor) else packed
        return d


class PanopticPostprocessd(MapTransform):
    """Network output (C + 1 + ndim, *spatial) -> (2, *spatial) int32 pair, on the output's device.

    `mode="grouping"` is the center/offset grouping, `"components"` connected components of the
    argmax. The pair keeps the output's meta (so `Invertd` can take it back to the source grid);
    the instance scores go to `{key}_scores` and each instance's class and centre in patient mm to
    `{key}_centres` (for `source_grid_pair` after inversion). Sizes are in mm through the output's affine, or
    through `spacing` where the files carry none. `vote_sigma_mm` > 0 also takes centers from the
    offset votes where the heatmap has none (`postprocess.vote_centers`).
    """

    def __init__(self, keys: KeysCollection, label_set: LabelSet | str, center_threshold: float = 0.3,
                 nms_mm: float = 5.0, top_k: int = 500, min_volume_mm3: float = 0.0, mode: str = "grouping",
                 spacing: Sequence[float] | None = None, vote_sigma_mm: float = 0.0, vote_min: float = 10.0,
                 vote_gap_mm: float = 5.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("grouping", "components"):
            raise ValueError(f"mode must be 'grouping' or 'components', got {mode!r}")
        self.label_set = _as_label_set(label_set)
        self.config = PostprocessConfig(center_threshold, nms_mm, top_k, min_volume_mm3, vote_sigma_mm, vote_min,
                                        vote_gap_mm)
        self.mode = mode
        self.spacing = spacing

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            output = d[key]
            ndim = output.ndim - 1
            layout = HeadLayout(self.label_set.max_id + 1, ndim)
            if output.shape[0] != layout.channels:
                raise ValueError(f"'{key}' has {output.shape[0]} channels; the label set needs {layout.channels}")
            heads = layout.split(output.as_tensor() if isinstance(output, MetaTensor) else output)
            if self.mode == "grouping":
                pair, scores = group_instances(heads["semantic"], heads["center"], heads["offset"], self.label_set,
                                               self.spacing or _spacing(output, ndim), self.config)
            else:
                pair, scores = component_instances(heads["semantic"], self.label_set), {}
            d[key] = MetaTensor(pair, meta=dict(output.meta), applied_operations=list(output.applied_operations)) \
                if isinstance(output, MetaTensor) else pair
            d[f"{key}_scores"] = scores
            if isinstance(output, MetaTensor):
                d[f"{key}_centres"] = instance_centres(pair, output.affine.numpy())
        return d


class SavePanopticd(MapTransform):
    """Write each pair with `write_panoptic` as `output_dir/<case>` (label map, instance map, JSON).

    The case is the entry's `case`, else named after the pair's `filename_or_obj`; the pair should already be on the source
    grid (after `Invertd`); it is rounded back to integers, and instances that the inversion lost
    get their centre voxel back or are dropped (`source_grid_pair`; the count goes to the JSON).
    """

    def __init__(self, keys: KeysCollection, output_dir: str | os.PathLike, label_set: LabelSet | str,
                 output_postfix: str = "", extra: dict | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.label_set = _as_label_set(label_set)
        self.output_postfix = output_postfix
        self.extra = extra or {}

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from .io.panoptic import write_panoptic

        d = dict(data)
        for key in self.key_iterator(d):
            pair = d[key]
            source = pair.meta.get("filename_or_obj", "case") if isinstance(pair, MetaTensor) else "case"
            affine = pair.affine if isinstance(pair, MetaTensor) else None
            values, scores, dropped = source_grid_pair(d, key)
            stem = self.output_dir / f"{d.get('case') or case_name(source)}{self.output_postfix}"
            write_panoptic(MetaTensor(values, affine=affine), stem, self.label_set,
                           extra={"source": str(source), "scores": {str(k): v for k, v in scores.items()},
                                  "dropped_instances": len(dropped), **self.extra})
        return d


__all__ = ["integer_pair", "source_grid_pair", "LoadScand", "LoadPanopticd", "ThingIndicesd", "RepeatToChannelsd", "PanopticTargetsd", "PanopticPostprocessd",
           "SavePanopticd"]
