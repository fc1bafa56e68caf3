"""Test-time averaging of the network's one output tensor: over flips of the input and over fold networks.

Both wrappers are `torch.nn.Module`s with the network's own input and output (and its `layout`),
so `sliding_window_inference`, `verify_net_in_out` and bundle configs take them unchanged. The
average is taken per window, as a running sum: never a stack of whole-image outputs.

Everything is averaged before grouping: semantic logits, centre heatmap and offsets. An offset
is a displacement in voxels along an array axis, so in a flipped image it points the other way
along the flipped axis: the output of a flipped input is flipped back and those offset
channels change sign before they join the sum.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .errors import InputError
from .nets import HeadLayout


def flip_subsets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of `axes` (spatial array axes), the empty one (no flip) first: 2**len(axes) flips."""
    axes = sorted(set(int(a) for a in axes))
    return [subset for size in range(len(axes) + 1) for subset in combinations(axes, size)]


def unflip(output: torch.Tensor, flip: Sequence[int], layout: HeadLayout) -> torch.Tensor:
    """The (B, channels, *spatial) output of an input flipped along the spatial axes `flip`, on the
    unflipped grid: flipped back, and the offsets along the flipped axes pointing the other way."""
    if not flip:
        return output
    restored = output.flip([2 + a for a in flip])
    for axis in flip:
        restored[:, layout.offset.start + axis] *= -1
    return restored


class FlipAveraged(torch.nn.Module):
    """`network`'s output averaged over the input flipped along every subset of `axes` (flip TTA).

    `axes` are spatial array axes of the network's input (0 = the first spatial axis); `None`
    means all of them (4 passes in 2D, 8 in 3D).
    """

    def __init__(self, network: torch.nn.Module, axes: Sequence[int] | None = None) -> None:
        super().__init__()
        self.network = network
        self.layout: HeadLayout = network.layout
        ndim = self.layout.spatial_dims
        axes = range(ndim) if axes is None else list(axes)
        outside = [a for a in axes if not 0 <= int(a) < ndim]
        if outside:
            raise ValueError(f"flip axes {outside} are not spatial axes of a {ndim}D network (0..{ndim - 1})")
        self.flips = flip_subsets(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for flip in self.flips:
            output = self.network(x.flip([2 + a for a in flip]) if flip else x).float()
            output = unflip(output, flip, self.layout)
            total = output.clone() if total is None else total.add_(output)
        return total / len(self.flips)


class MeanOfNetworks(torch.nn.Module):
    """The mean output of several networks of one layout (the folds of a cross-validation)."""

    def __init__(self, networks: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not networks:
            raise ValueError("an ensemble needs at least one network")
        layouts = {n.layout for n in networks}
        if len(layouts) > 1:
            raise ValueError(f"the networks of an ensemble must share one head layout, got {sorted(map(str, layouts))}")
        self.networks = torch.nn.ModuleList(networks)
        self.layout: HeadLayout = networks[0].layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for network in self.networks:
            output = network(x).float()
            total = output.clone() if total is None else total.add_(output)
        return total / len(self.networks)


def averaged(networks: Sequence[torch.nn.Module], tta: bool | Sequence[int] = False) -> torch.nn.Module:
    """What inference runs: one network as it is, several as their mean; with `tta` (True: every spatial
    axis; or the axes listed) flip-averaged around that. Flips wrap the ensemble: each flipped input is
    passed once through every network."""
    network = networks[0] if len(networks) == 1 else MeanOfNetworks(networks)
    if not tta:
        return network
    return FlipAveraged(network, None if tta is True else tta)


# -- which weights and flips: a bundle's folds, the command line's --folds and --tta-axes --------------
_FOLD = re.compile(r"fold_(\d+)")


def bundle_folds(bundle: Path) -> dict[int, Path]:
    """{fold: weights} of the fold ensemble a bundle holds (`models/fold_<k>/model.pt`), by fold."""
    models = bundle / "models"
    found = {int(m.group(1)): d / "model.pt" for d in (models.iterdir() if models.is_dir() else ())
             if (m := _FOLD.fullmatch(d.name)) and (d / "model.pt").is_file()}
    return dict(sorted(found.items()))


def model_weights(bundle: Path, folds: str | Iterable[int] | None = None) -> list[Path]:
    """The weights inference averages: `folds` "all" or fold numbers (`models/fold_<k>/model.pt`);
    `None`: `models/model.pt` where the bundle has one, else every fold it holds."""
    single = bundle / "models" / "model.pt"
    available = bundle_folds(bundle)
    if folds is None:
        if single.is_file() or not available:
            if not single.is_file():
                raise InputError(single, "missing: not a medpanoptic bundle folder")
            return [single]
        return list(available.values())
    if folds == "all":
        if not available:
            raise InputError(bundle / "models", "no fold_<k>/model.pt: the bundle holds no fold ensemble")
        return list(available.values())
    wanted = parse_folds(folds) if isinstance(folds, str) else [int(k) for k in folds]
    missing = [k for k in wanted if k not in available]
    if missing or not wanted:
        held = ", ".join(map(str, available)) or "none"
        raise InputError(bundle / "models", f"fold(s) {', '.join(map(str, missing)) or '(none given)'} not in "
                                            f"this bundle (its folds: {held})")
    return [available[k] for k in dict.fromkeys(wanted)]


def _all_or_indices(text: str, option: str, example: str) -> str | list[int]:
    """An option written as "all" or as non-negative integers separated by commas; refused in words otherwise."""
    if text.strip() == "all":
        return "all"
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise InputError(None, f"{option} {text!r}: expected 'all' or {example}")
    return values


def parse_folds(text: str) -> str | list[int]:
    """`--folds` as written: "all", or fold numbers separated by commas ("0,2")."""
    return _all_or_indices(text, "--folds", "fold numbers such as 0,2")


def parse_tta(text: str) -> bool | list[int]:
    """`--tta` as written: "all" (every spatial axis), or the spatial axes to flip along ("0,1")."""
    axes = _all_or_indices(text, "--tta", "spatial axes such as 0,1")
    return True if axes == "all" else axes
