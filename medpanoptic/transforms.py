"""MONAI transforms around the package's functions: array transforms for scripts, and the thin
dictionary transforms over them that bundle configs use.

The work is done once, in `read_scan`, `read_panoptic`, `panoptic_targets`, `group_instances`,
`write_panoptic` and the array transforms `PanopticTargets`, `PanopticPostprocess` and
`SavePanoptic`; the `*d` classes only say which dictionary keys they read and write, as MONAI's
`RemoveSmallObjects` / `RemoveSmallObjectsd` do.

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
from monai.transforms import MapTransform, Transform

from .io.geometry import spacing_from_affine
from .io.inputs import case_name
from .labels import LabelSet
from .nets import HeadLayout
from .pair import integer_pair
from .postprocess import (
    Centres, PostprocessConfig, component_instances, deprecated_min_size, group_instances, instance_centres,
    restore_instances,
)
from .targets import pack_targets, panoptic_targets


def _as_label_set(label_set: LabelSet | str | os.PathLike) -> LabelSet:
    return label_set if isinstance(label_set, LabelSet) else LabelSet.load(label_set)


def _spacing(tensor: torch.Tensor, ndim: int) -> tuple[float, ...]:
    if isinstance(tensor, MetaTensor):
        return tuple(float(s) for s in spacing_from_affine(tensor.affine.numpy(), ndim))
    return (1.0,) * ndim


def restore_on_source_grid(pair: torch.Tensor, centres: Centres, scores: dict[int, float],
                           affine=None) -> tuple[torch.Tensor, dict[int, float], list[int]]:
    """A pair after `Invertd` as an int32 CPU pair, with the instances `PanopticPostprocess` found
    carried onto the source grid (`restore_instances`): ids 1..N, scores re-keyed, ids dropped.
    `affine` is the source grid's (default: the pair's own)."""
    if affine is None:
        affine = pair.affine if isinstance(pair, MetaTensor) else torch.eye(4)
    return restore_instances(integer_pair(pair), torch.as_tensor(affine).numpy(), centres, scores)


def source_grid_pair(data: Mapping[Hashable, object], key: str, affine=None) -> tuple[torch.Tensor, dict[int, float], list[int]]:
    """`restore_on_source_grid` of `data[key]`, with the `{key}_centres` and `{key}_scores` that
    `PanopticPostprocessd` left in the entry."""
    return restore_on_source_grid(data[key], data.get(f"{key}_centres", {}), data.get(f"{key}_scores", {}), affine)


class LoadScand(MapTransform):
    """Read each key's path with `read_scan` into a float32 (C, *spatial) MetaTensor (the series
    named by the entry's `series_key`, when a DICOM folder holds several); a list of paths is one
    case stored one file per channel (`read_scan_channels`: same grid, stacked). An image already
    loaded (a MetaTensor) passes through, so scripts can hand over scans they have read."""

    def __init__(self, keys: KeysCollection, series_key: str = "series_uid", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series_key = series_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from .io.scan import read_scan, read_scan_channels

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (list, tuple)):
                image = read_scan_channels(value, d.get("case") or None)
            else:
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


class PanopticTargets(Transform):
    """A (2, *spatial) pair -> its packed training targets (`pack_targets`), meta kept.

    Use it after the spatial augmentation, so centres and offsets match the cropped, flipped grid.
    The Gaussian width is in mm, converted with the pair's own spacing, or with `spacing` where
    the files carry none (microscopy PNGs: pass the scanner's pixel size). `sigma_fraction`
    widens the blob of large instances to that fraction of their equivalent radius.
    """

    def __init__(self, label_set: LabelSet | str, sigma_mm: float, spacing: Sequence[float] | None = None,
                 sigma_fraction: float | None = None) -> None:
        self.label_set = _as_label_set(label_set)
        self.sigma_mm = sigma_mm
        self.spacing = spacing
        self.sigma_fraction = sigma_fraction

    def __call__(self, pair: torch.Tensor) -> torch.Tensor:
        spacing = self.spacing or _spacing(pair, pair.ndim - 1)
        packed = pack_targets(panoptic_targets(pair, self.label_set, spacing, self.sigma_mm, self.sigma_fraction))
        return MetaTensor(packed, meta=dict(pair.meta)) if isinstance(pair, MetaTensor) else packed


POSTPROCESS_MODES = ("grouping", "components")


class PanopticPostprocess(Transform):
    """Network output (C + 1 + ndim, *spatial) -> ((2, *spatial) int32 pair, {id: score}, centres).

    `mode="grouping"` is the center/offset grouping (`group_instances`, with `config` and
    `backend`), `"components"` connected components of the argmax (no scores). The pair stays on
    the output's device and keeps its meta and applied operations (so `Invertd` can take it back
    to the source grid); the centres (each instance's class and centre in patient mm, for
    `restore_instances` after the inversion) are only known for a MetaTensor output. Sizes are in
    mm through the output's affine, or through `spacing` where the files carry none.
    """

    def __init__(self, label_set: LabelSet | str, config: PostprocessConfig | None = None, mode: str = "grouping",
                 spacing: Sequence[float] | None = None, backend: str = "auto") -> None:
        if mode not in POSTPROCESS_MODES:
            raise ValueError(f"mode must be 'grouping' or 'components', got {mode!r}")
        self.label_set = _as_label_set(label_set)
        self.config = config or PostprocessConfig()
        self.mode = mode
        self.spacing = spacing
        self.backend = backend

    def __call__(self, output: torch.Tensor, name: str = "output") -> tuple[torch.Tensor, dict[int, float], Centres]:
        ndim = output.ndim - 1
        layout = HeadLayout(self.label_set.max_id + 1, ndim)
        if output.shape[0] != layout.channels:
            raise ValueError(f"'{name}' has {output.shape[0]} channels; the label set needs {layout.channels}")
        heads = layout.split(output.as_tensor() if isinstance(output, MetaTensor) else output)
        if self.mode == "grouping":
            pair, scores = group_instances(heads["semantic"], heads["center"], heads["offset"], self.label_set,
                                           self.spacing or _spacing(output, ndim), self.config, self.backend)
        else:
            pair, scores = component_instances(heads["semantic"], self.label_set), {}
        if not isinstance(output, MetaTensor):
            return pair, scores, {}
        pair = MetaTensor(pair, meta=dict(output.meta), applied_operations=list(output.applied_operations))
        return pair, scores, instance_centres(pair.as_tensor(), output.affine.numpy())


class SavePanoptic(Transform):
    """Write a pair on the source grid with `write_panoptic` as `output_dir/<case>` (label map,
    instance map, JSON); returns the paths written.

    The case is `case`, else named after the pair's `filename_or_obj`. The pair should already be
    on the source grid (after `Invertd`): it is rounded back to integers, and the instances that
    the inversion lost (given their `centres` from `PanopticPostprocess`) get their centre voxel
    back or are dropped (`restore_instances`; the count goes to the JSON).
    """

    def __init__(self, output_dir: str | os.PathLike, label_set: LabelSet | str, output_postfix: str = "",
                 extra: dict | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.label_set = _as_label_set(label_set)
        self.output_postfix = output_postfix
        self.extra = extra or {}

    def __call__(self, pair: torch.Tensor, case: str | None = None, centres: Centres | None = None,
                 scores: dict[int, float] | None = None) -> dict[str, Path]:
        from .io.panoptic import write_panoptic

        source = pair.meta.get("filename_or_obj", "case") if isinstance(pair, MetaTensor) else "case"
        affine = pair.affine if isinstance(pair, MetaTensor) else None
        values, scores, dropped = restore_on_source_grid(pair, centres or {}, scores or {})
        stem = self.output_dir / f"{case or case_name(source)}{self.output_postfix}"
        return write_panoptic(MetaTensor(values, affine=affine), stem, self.label_set,
                              extra={"source": str(source), "scores": {str(k): v for k, v in scores.items()},
                                     "dropped_instances": len(dropped), **self.extra})


class PanopticTargetsd(MapTransform):
    """`PanopticTargets` on each key; the targets replace the pair, or go to `target_key`."""

    def __init__(self, keys: KeysCollection, label_set: LabelSet | str, sigma_mm: float,
                 target_key: str | None = None, spacing: Sequence[float] | None = None,
                 sigma_fraction: float | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.targets = PanopticTargets(label_set, sigma_mm, spacing, sigma_fraction)
        self.target_key = target_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.target_key or key] = self.targets(d[key])
        return d


class PanopticPostprocessd(MapTransform):
    """`PanopticPostprocess` on each key: the pair replaces the output, the scores go to
    `{key}_scores` and the centres to `{key}_centres` (for `source_grid_pair` after `Invertd`).

    The knobs are `PostprocessConfig`'s, flat for bundle configs (`min_volume_mm3` is the
    deprecated name of `min_size_mm`); a script passes a ready `postprocess` instead.
    """

    def __init__(self, keys: KeysCollection, label_set: LabelSet | str | None = None, center_threshold: float = 0.3,
                 nms_mm: float = 5.0, top_k: int = 500, min_size_mm: float = 0.0, mode: str = "grouping",
                 spacing: Sequence[float] | None = None, vote_sigma_mm: float = 0.0, vote_min: float = 10.0,
                 vote_gap_mm: float = 5.0, backend: str = "auto", min_volume_mm3: float | None = None,
                 postprocess: PanopticPostprocess | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if postprocess is None:
            if label_set is None:
                raise ValueError("PanopticPostprocessd needs a label_set (or a ready postprocess)")
            if min_volume_mm3 is not None:
                min_size_mm = deprecated_min_size(min_volume_mm3)
            config = PostprocessConfig(center_threshold=center_threshold, nms_mm=nms_mm, top_k=top_k,
                                       min_size_mm=min_size_mm, vote_sigma_mm=vote_sigma_mm, vote_min=vote_min,
                                       vote_gap_mm=vote_gap_mm)
            postprocess = PanopticPostprocess(label_set, config, mode, spacing, backend)
        self.postprocess = postprocess

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[f"{key}_scores"], centres = self.postprocess(d[key], name=str(key))
            if isinstance(d[key], MetaTensor):
                d[f"{key}_centres"] = centres
        return d


class SavePanopticd(MapTransform):
    """`SavePanoptic` on each key, with the entry's `case` and the `{key}_centres` / `{key}_scores`
    that `PanopticPostprocessd` left."""

    def __init__(self, keys: KeysCollection, output_dir: str | os.PathLike, label_set: LabelSet | str,
                 output_postfix: str = "", extra: dict | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.save = SavePanoptic(output_dir, label_set, output_postfix, extra)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            self.save(d[key], d.get("case"), d.get(f"{key}_centres", {}), d.get(f"{key}_scores", {}))
        return d


__all__ = ["restore_on_source_grid", "source_grid_pair", "PanopticTargets", "PanopticPostprocess", "SavePanoptic",
           "LoadScand", "LoadPanopticd", "ThingIndicesd", "RepeatToChannelsd", "PanopticTargetsd", "PanopticPostprocessd",
           "SavePanopticd"]
