"""Knowing when a scan lies outside what a bundle was trained on.

A bundle keeps the fingerprint of its training images (`configs/fingerprint.json`, made by
`domain_fingerprint`); at inference `check_domain` compares a scan with it and gives the
reasons, in words, why the scan is far outside (an empty list: nothing to say). A network
answers whatever it is given: a chest CT at 3 mm run through a model trained on 1 mm phantoms
gives hundreds of "lesions" without a word, so the word has to come from here.

What counts as "far" is stated once, in `TOLERANCES`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import InputError
from .io.geometry import spacing_from_affine

FINGERPRINT_FORMAT = "medpanoptic-fingerprint/1"
FINGERPRINT_FILE = "fingerprint.json"  # in a bundle's configs/
PERCENTILES = (1, 5, 50, 95, 99)
_MAX_SAMPLES = 2_000_000  # voxels per image behind the percentiles: a regular subsample of larger images


@dataclass(frozen=True)
class Tolerances:
    """How far from the training range a scan may lie before it is reported.

    `spacing` and `field_of_view`: a factor beyond the training min/max (2: from half the smallest
    to twice the largest seen), because the pre-processing resamples and pads, and a network
    trained with scale augmentation copes with a factor of about 1.5, not with 3 or 10.
    `intensity`: how far one of the scan's percentiles may lie outside the envelope of the training
    images' percentiles, as a fraction of the training's typical p1-p99 range; a quarter of it
    is far more than scanner-to-scanner drift, and far less than a change of modality or window.
    `field_of_view_2d`: whether 2D images are judged on field of view at all. They are not: a 2D
    picture (a micrograph, a slide tile) of any size is segmented window by window, and its size
    says nothing about what is in it, whereas a 3D scan's extent says which anatomy it covers
    (a whole chest is not a 10 cm phantom). 2D images are still judged on pixel size.
    """

    spacing: float = 2.0
    field_of_view: float = 2.0
    field_of_view_2d: bool = False
    intensity: float = 0.25


TOLERANCES = Tolerances()


@dataclass(frozen=True)
class DomainCheck:
    """The outcome of `check_domain` for one scan: ok when there is no reason to worry."""

    reasons: tuple[str, ...] = ()
    checked: bool = True  # False: the bundle has no fingerprint, nothing was compared

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reasons": list(self.reasons), **({} if self.checked else {"checked": False})}

    def summary(self) -> str:
        """One cell of `cases.csv`: "ok", or the reasons joined by "; "."""
        return "ok" if self.ok else "; ".join(self.reasons)


# -- the fingerprint ----------------------------------------------------------------------------
def _range(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"min": _round(v.min()), "median": _round(np.median(v)), "max": _round(v.max())}


def _round(value: float) -> float:
    """Six significant digits: a readable fingerprint, and far finer than any tolerance."""
    return float(f"{float(value):.6g}")


def _samples(channel: torch.Tensor) -> np.ndarray:
    flat = channel.detach().reshape(-1).cpu().numpy()
    step = max(1, math.ceil(flat.size / _MAX_SAMPLES))
    return flat[::step].astype(np.float64)


def image_percentiles(image: torch.Tensor) -> list[dict]:
    """Per channel: the whole-image percentiles `PERCENTILES` and the value range."""
    out = []
    for channel in image:
        values = _samples(channel)
        q = np.percentile(values, PERCENTILES)
        out.append({**{f"p{p}": float(v) for p, v in zip(PERCENTILES, q)},
                    "min": float(values.min()), "max": float(values.max())})
    return out


def image_spacing(image: torch.Tensor) -> np.ndarray:
    """Voxel size in mm along each array axis (1 mm where the tensor carries no affine)."""
    ndim = image.ndim - 1
    affine = getattr(image, "affine", None)
    return np.ones(ndim) if affine is None else spacing_from_affine(np.asarray(affine, dtype=float), ndim)


def domain_fingerprint(images: Iterable[torch.Tensor], modality: str | None = None) -> dict:
    """A readable summary of training images (channel-first MetaTensors): spatial dims, channel
    counts, spacing and field of view in mm per array axis (min/median/max over the cases),
    whole-image intensity percentiles per channel (min/median/max over the cases of each
    percentile, grouped by channel count), the modality, and the number of cases."""
    dims, channels, spacings, fovs = set(), set(), [], []
    intensity: dict[int, list[list[dict]]] = {}
    seen_modality = set()
    n = 0
    for image in images:
        n += 1
        dims.add(image.ndim - 1)
        if len(dims) > 1:
            raise InputError(_name(image), f"training images of {sorted(dims)} spatial dims: one bundle takes one")
        channels.add(int(image.shape[0]))
        spacing = image_spacing(image)
        spacings.append(spacing)
        fovs.append(spacing * np.asarray(image.shape[1:], dtype=float))
        intensity.setdefault(int(image.shape[0]), []).append(image_percentiles(image))
        if getattr(image, "meta", {}).get("modality"):
            seen_modality.add(str(image.meta["modality"]))
    if n == 0:
        raise InputError(None, "no training images to fingerprint")
    return {
        "format": FINGERPRINT_FORMAT,
        "n_cases": n,
        "spatial_dims": dims.pop(),
        "channels": sorted(channels),
        "modality": modality or (seen_modality.pop() if len(seen_modality) == 1 else None),
        "spacing_mm": [_range(axis) for axis in np.stack(spacings).T],
        "field_of_view_mm": [_range(axis) for axis in np.stack(fovs).T],
        "intensity": {str(c): [_channel_envelope([case[ch] for case in cases]) for ch in range(c)]
                      for c, cases in sorted(intensity.items())},
    }


def _channel_envelope(per_case: list[dict]) -> dict:
    return {key: _range([case[key] for case in per_case]) for key in per_case[0]}


def _name(image) -> str:
    return str(getattr(image, "meta", {}).get("filename_or_obj", "image"))


def load_fingerprint(bundle: str | os.PathLike) -> dict | None:
    """The bundle's `configs/fingerprint.json`, or None if it has none; a malformed one is refused."""
    path = Path(bundle) / "configs" / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        fingerprint = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not a readable fingerprint ({e})") from None
    if not isinstance(fingerprint, dict) or fingerprint.get("format") != FINGERPRINT_FORMAT:
        raise InputError(path, f"not a {FINGERPRINT_FORMAT} document")
    missing = [k for k in ("spatial_dims", "channels", "spacing_mm", "field_of_view_mm", "intensity") if k not in fingerprint]
    if missing:
        raise InputError(path, f"the fingerprint lacks {', '.join(missing)}")
    return fingerprint


# -- the check ----------------------------------------------------------------------------------
def check_domain(fingerprint: dict, image: torch.Tensor, spacing: Sequence[float] | None = None,
                 tolerances: Tolerances = TOLERANCES) -> list[str]:
    """The reasons `image` lies far outside the training images of `fingerprint` (none: inside).

    Each reason names the quantity, the scan's value and the training range. `spacing` (mm per
    array axis) replaces the image's own, e.g. a pixel size given by the user; without it, an
    image whose reader found no pixel size (meta `pixel_size_known` False) is not judged on
    spacing or field of view, which it does not know.
    """
    ndim, n_channels = image.ndim - 1, int(image.shape[0])
    dims = int(fingerprint["spatial_dims"])
    if ndim != dims:
        return [f"a {ndim}D image, training saw {dims}D images"]
    reasons = []
    modality = _modality(image)
    if modality and fingerprint.get("modality") and modality.upper() != str(fingerprint["modality"]).upper():
        reasons.append(f"modality {modality}, training saw {fingerprint['modality']}")
    seen = [int(c) for c in fingerprint["channels"]]
    if n_channels not in seen:
        reasons.append(f"{n_channels} channel(s), training saw {' or '.join(map(str, seen))}")
    known = spacing is not None or getattr(image, "meta", {}).get("pixel_size_known", True)
    if known:
        voxel = np.asarray(spacing, dtype=float) if spacing is not None else image_spacing(image)
        fov = voxel * np.asarray(image.shape[1:], dtype=float)
        reasons += _outside_ranges("spacing", voxel, fingerprint["spacing_mm"], tolerances.spacing, "mm")
        if dims == 3 or tolerances.field_of_view_2d:
            reasons += _outside_ranges("field of view", fov, fingerprint["field_of_view_mm"], tolerances.field_of_view,
                                       "mm")
    envelope = fingerprint["intensity"].get(str(n_channels))
    if envelope is not None:
        for c, (scan, trained) in enumerate(zip(image_percentiles(image), envelope)):
            reason = _intensity_reason(c, scan, trained, tolerances.intensity)
            if reason:
                reasons.append(reason)
    return reasons


def _modality(image) -> str | None:
    value = getattr(image, "meta", {}).get("modality")
    return str(value) if value else None


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _span(lo: float, hi: float) -> str:
    """A training range in words: "2-2.5", "-1014 to -1013", or one value when both round alike."""
    if _fmt(lo) == _fmt(hi):
        return _fmt(lo)
    return f"{_fmt(lo)}{'-' if lo >= 0 else ' to '}{_fmt(hi)}"


def _outside_ranges(quantity: str, values: np.ndarray, ranges: list[dict], factor: float, unit: str) -> list[str]:
    reasons = []
    for axis, (value, trained) in enumerate(zip(values, ranges)):
        lo, hi = float(trained["min"]), float(trained["max"])
        if value < lo / factor or value > hi * factor:
            reasons.append(f"{quantity} along axis {axis} is {_fmt(value)} {unit}, training saw {_span(lo, hi)} {unit}")
    return reasons


def _intensity_reason(channel: int, scan: dict, trained: dict, tolerance: float) -> str | None:
    """The percentile of `scan` farthest outside the training envelope, if beyond `tolerance`
    of the training's typical p1-p99 range."""
    scale = max(float(trained["p99"]["median"]) - float(trained["p1"]["median"]), 1e-6)
    worst, distance = None, 0.0
    for p in PERCENTILES:
        key = f"p{p}"
        lo, hi, value = float(trained[key]["min"]), float(trained[key]["max"]), float(scan[key])
        excess = max(lo - value, value - hi, 0.0) / scale
        if excess > distance:
            worst, distance = (key, value, lo, hi), excess
    if worst is None or distance <= tolerance:
        return None
    key, value, lo, hi = worst
    return (f"intensity {key} of channel {channel} is {_fmt(value)}, training saw {_span(lo, hi)} "
            f"({distance:.1f}x the training p1-p99 range outside it)")


def domain_check(fingerprint: dict | None, image: torch.Tensor, spacing: Sequence[float] | None = None) -> DomainCheck:
    """`check_domain` as a `DomainCheck`; a bundle without a fingerprint gives an unchecked, ok one."""
    if fingerprint is None:
        return DomainCheck(checked=False)
    return DomainCheck(tuple(check_domain(fingerprint, image, spacing)))


__all__ = ["TOLERANCES", "Tolerances", "DomainCheck", "domain_fingerprint", "check_domain", "domain_check",
           "load_fingerprint", "image_percentiles", "FINGERPRINT_FORMAT", "FINGERPRINT_FILE"]
