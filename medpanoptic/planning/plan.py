"""The plan: every training and post-processing decision for a dataset, with the reason drawn from its data.

`make_plan(dataset)` checks the dataset (all problems at once), fingerprints it and decides;
`load_plan(path)` reads a plan back and refuses one that does not follow the format
(`medpanoptic-plan/1`, see the issue #14 schema). Every decision is `{"value", "reason"}`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from .._version import __version__
from ..errors import InputError
from ..io.atomic import atomic_write_json
from ..labels import LabelSet

PLAN_FORMAT = "medpanoptic-plan/1"
DECISIONS = ("target_spacing_mm", "normalisation", "patch_size", "batch_size", "estimated_memory_gb", "network",
             "sigma_mm", "nms_mm", "min_size_mm", "center_threshold", "scale_augmentation", "folds", "epochs",
             "learning_rate", "samples_per_case")
LAYOUTS = ("msd", "nnunet_v2", "microscopy")
SIGMA_FRACTION = 0.5
"""0.5 x the equivalent radius = 0.25 x the diameter: the same rule as sigma_mm, applied per instance."""


# -- reading and writing ------------------------------------------------------------------------
def load_plan(path: str | os.PathLike) -> dict:
    """A plan written by `make_plan` / `medpanoptic plan`, validated; a bad one is refused with what is wrong."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read the plan ({e})") from None
    problems = plan_problems(plan)
    if problems:
        raise InputError(path, "not a valid plan: " + "; ".join(problems))
    return plan


def plan_problems(plan: object) -> list[str]:
    """What breaks the plan format, one phrase each (empty: a valid plan)."""
    if not isinstance(plan, dict):
        return ["a plan is a JSON object"]
    if plan.get("format") != PLAN_FORMAT:
        return [f"format is {plan.get('format')!r}, expected {PLAN_FORMAT!r}"]
    problems = [f"no '{key}'" for key in ("dataset", "label_set", "cases", "fingerprint", "decisions") if key not in plan]
    if problems:
        return problems
    dataset = plan["dataset"]
    if not isinstance(dataset, dict):
        return ["'dataset' must be an object"]
    if dataset.get("layout") not in LAYOUTS:
        problems.append(f"dataset layout {dataset.get('layout')!r} is not one of {', '.join(LAYOUTS)}")
    if dataset.get("spatial_dims") not in (2, 3):
        problems.append(f"dataset spatial_dims must be 2 or 3, got {dataset.get('spatial_dims')!r}")
    if not isinstance(dataset.get("channels"), list) or not dataset.get("channels"):
        problems.append("dataset channels must be a non-empty list")
    try:
        LabelSet.from_dict(plan["label_set"])
    except Exception as e:  # LabelSetError, or a malformed structure inside it
        problems.append(f"label_set: {e}")
    if not isinstance(plan["cases"], list) or not all(isinstance(c, dict) and {"case", "image", "label"} <= set(c)
                                                      for c in plan["cases"]):
        problems.append("cases must be a list of entries with 'case', 'image' and 'label'")
    else:
        problems += [f"case {c['case']!r}: path {p!r} leaves the dataset root" for c in plan["cases"]
                     for p in _entry_paths(c) if _climbs(p)]
    decisions = plan["decisions"]
    if not isinstance(decisions, dict):
        return problems + ["'decisions' must be an object"]
    for key in DECISIONS:
        d = decisions.get(key)
        if not isinstance(d, dict) or "value" not in d or not isinstance(d.get("reason"), str):
            problems.append(f"decision '{key}' needs a value and a reason")
    if not problems:
        problems += _value_problems(decisions, dataset["spatial_dims"], len(dataset["channels"]))
    return problems


def _entry_paths(entry: Mapping) -> list[str]:
    images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    return [p for p in [*images, entry["label"], entry.get("instance"), entry.get("classes")] if p is not None]


def _climbs(path: object) -> bool:
    """Whether an entry path is not a plain relative path inside the root (absolute, `..`, not a string)."""
    if not isinstance(path, str) or not path or "\x00" in path:
        return True
    p = Path(path)
    return p.is_absolute() or ".." in p.parts or (len(path) > 1 and path[1] == ":")


def _value_problems(decisions: dict, dims: int, channels: int) -> list[str]:
    """Values the training code relies on: lengths per axis, positive numbers."""
    problems = []
    value = {k: decisions[k]["value"] for k in DECISIONS}
    for key in ("target_spacing_mm", "patch_size"):
        v = value[key]
        if not isinstance(v, list) or len(v) != dims or not all(isinstance(x, (int, float)) and x > 0 for x in v):
            problems.append(f"{key} must be {dims} positive numbers, got {v!r}")
    if not isinstance(value["normalisation"], list) or len(value["normalisation"]) != channels:
        problems.append(f"normalisation must have one entry per channel ({channels})")
    network = value["network"]
    if not isinstance(network, dict) or not {"filters", "kernel_size", "strides"} <= set(network):
        problems.append("network needs filters, kernel_size and strides")
    elif not (len(network["filters"]) == len(network["kernel_size"]) == len(network["strides"])):
        problems.append("network filters, kernel_size and strides must have one entry per level")
    for key in ("batch_size", "folds", "epochs", "samples_per_case"):
        if not isinstance(value[key], int) or value[key] < 1:
            problems.append(f"{key} must be a positive integer, got {value[key]!r}")
    for key in ("sigma_mm", "nms_mm", "learning_rate"):
        if not isinstance(value[key], (int, float)) or not math.isfinite(value[key]) or value[key] <= 0:
            problems.append(f"{key} must be a positive number, got {value[key]!r}")
    entry = decisions.get("steps_per_epoch")  # optional: plans before it pass over the cases once an epoch
    steps = entry.get("value") if isinstance(entry, dict) else entry
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        problems.append(f"steps_per_epoch must be a positive integer or null, got {steps!r}")
    return problems


def save_plan(plan: Mapping, path: str | os.PathLike) -> Path:
    """Write a plan atomically (refusing an invalid one: a plan on disk is always loadable)."""
    problems = plan_problems(json.loads(json.dumps(plan)))
    if problems:
        raise InputError(path, "refusing to write an invalid plan: " + "; ".join(problems))
    atomic_write_json(path, plan)
    return Path(path)


# -- making the plan ---------------------------------------------------------------------------------
ANISOTROPY_RATIO = 3.0
MIN_PATCH = 8
MAX_BATCH = 64
BATCH_DATASET_FRACTION = 0.05
SHIPPED_CENTER_THRESHOLD = 0.3
DEFAULT_LEARNING_RATE = 2e-3
DEFAULT_EPOCHS = 300
DEFAULT_SAMPLES_PER_CASE = 2
DEVICES = ("gpu", "cpu")
CPU_PLAN = {"memory_gb": 0.5, "base_filters": 16, "max_filters": 128, "steps_per_epoch": 50, "epochs": 40}
"""What a plan for CPU training changes: on two to sixteen cores time, not memory, is the limit.
nnU-Net's 32-320 filters over a patch filling 24 GB take seconds a step there; 16-128 filters over
a patch of about 0.5 GB of tensors take about half a second on 2 cores, and epochs of a fixed 50
steps keep the whole-case validation a small share of the time however few the cases."""


def _decision(value, reason: str) -> dict:
    return {"value": value, "reason": reason}


def _mm(values) -> str:
    return "x".join(f"{v:.3g}" for v in values)


def make_plan(dataset, gpu_memory_gb: float | None = None, things=None, *, fingerprint: dict | None = None,
              base_filters: int | None = None, use_data_analyzer: bool = True, device: str = "gpu") -> dict:
    """The plan of a dataset (a `Dataset` or its root path): checked, fingerprinted, every decision with its reason.

    `gpu_memory_gb` is the memory one training step may use (default 24, or 0.5 for `device="cpu"`);
    `things` overrides the declared thing classes (root path only); `fingerprint` skips the
    reading (one made by `dataset_fingerprint` for this dataset); `base_filters` is the first
    level's width (nnU-Net: 32; 16 on CPU); `device` is what training will run on (`CPU_PLAN`).
    """
    from .check import check_dataset
    from .datasets import Dataset, load_dataset
    from .fingerprint import dataset_fingerprint

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    on_cpu = device == "cpu"
    if gpu_memory_gb is None:
        gpu_memory_gb = CPU_PLAN["memory_gb"] if on_cpu else 24.0
    if base_filters is None:
        base_filters = CPU_PLAN["base_filters"] if on_cpu else 32
    if not gpu_memory_gb > 0:
        raise ValueError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset, things=things)
    if fingerprint is None:
        check_dataset(dataset)
        fingerprint = dataset_fingerprint(dataset, use_data_analyzer=use_data_analyzer)
    spacing = target_spacing(fingerprint)
    decisions = {"target_spacing_mm": spacing,
                 "normalisation": normalisation(dataset, fingerprint)}
    decisions.update(patch_batch_network(dataset, fingerprint, spacing["value"], gpu_memory_gb, base_filters,
                                         CPU_PLAN["max_filters"] if on_cpu else None))
    decisions.update(instance_decisions(dataset, fingerprint))
    decisions.update(schedule(dataset, fingerprint, device))
    return {
        "format": PLAN_FORMAT,
        "medpanoptic_version": __version__,
        "dataset": dataset.describe(),
        "label_set": dataset.label_set.to_dict(),
        "cases": [dict(c) for c in dataset.cases],
        "fingerprint": fingerprint,
        "decisions": decisions,
    }


def target_spacing(fingerprint: dict) -> dict:
    """The median spacing; with nnU-Net's anisotropy rule for the coarsest axis."""
    median = np.asarray(fingerprint["spacing_mm"]["median"], dtype=float)
    p10 = np.asarray(fingerprint["spacing_mm"]["p10"], dtype=float)
    target = median.copy()
    unit = " (nominal: the pictures state no pixel size, so the plan works in pixels of 1 µm)" \
        if fingerprint.get("pixel_size_nominal") else ""
    ratio = float(median.max() / median.min())
    if ratio > ANISOTROPY_RATIO:
        axis = int(median.argmax())
        others = np.delete(median, axis)
        target[axis] = max(float(p10[axis]), float(others.max()))
        reason = (f"median spacing {_mm(median)} mm is anisotropic (axis {axis} {ratio:.1f}x coarser than the finest, "
                  f"> {ANISOTROPY_RATIO:g}): that axis takes the 10th percentile of its spacings ({p10[axis]:.3g} mm, "
                  f"not finer than the other axes), the others the median{unit}")
    else:
        reason = f"the median spacing of the cases ({_mm(median)} mm; coarsest/finest {ratio:.2f} <= {ANISOTROPY_RATIO:g}){unit}"
    return _decision([float(round(t, 6)) for t in target], reason)


def normalisation(dataset, fingerprint: dict) -> dict:
    """CT channels and pictures: the foreground's 0.5-99.5 percentile window then its z-score; others: per-image z-score."""
    rows, why = [], []
    things = {t["channel"]: t for t in fingerprint.get("things_intensity", [])}  # fingerprints before it: none
    for stats in fingerprint["intensity"]:
        name = stats["channel"]
        window, widened = _window(stats, things.get(name))
        is_ct = name.upper() == "CT" or (dataset.modality == "CT" and len(dataset.channels) == 1)
        if _is_picture(dataset):
            rows.append({"channel": name, "scheme": "fixed", "clip": window,
                         "mean": stats["mean"], "std": max(stats["std"], 1e-6)})
            why.append(f"{name}: pictures are segmented tile by tile (whole slides), so every tile and image takes one "
                       f"scale, the foreground's: window [{window[0]:.4g}, {window[1]:.4g}] (its 0.5-99.5 percentiles{widened}), z-score with "
                       f"mean {stats['mean']:.4g} and std {stats['std']:.4g} (a per-image z-score would stretch a "
                       "tile of glass into tissue)")
        elif is_ct:
            rows.append({"channel": name, "scheme": "ct", "clip": window,
                         "mean": stats["mean"], "std": max(stats["std"], 1e-6)})
            why.append(f"{name}: CT values are physical (HU), so one window for all scans, [{window[0]:.4g}, "
                       f"{window[1]:.4g}]: the foreground's 0.5-99.5 percentiles{widened}, then z-score with the foreground "
                       f"mean {stats['mean']:.4g} and std {stats['std']:.4g}")
        else:
            rows.append({"channel": name, "scheme": "zscore", "clip": None, "mean": None, "std": None})
            why.append(f"{name}: {dataset.modality} intensities have no absolute unit, so each image is z-scored on its own")
    return _decision(rows, "; ".join(why) + f" (statistics: {fingerprint.get('intensity_source', 'direct')})")


def _window(foreground: dict, things: dict | None) -> tuple[list[float], str]:
    """The foreground's 0.5-99.5 percentile window, widened to the things' own where they lie outside it.

    nnU-Net's window serves semantic segmentation, where the foreground is mostly the classes to
    find. Here the things are a small share of it (lesions in a liver, nuclei in tissue): a
    hyperdense lesion can lie wholly above the foreground's 99.5th percentile, and clipped there it
    loses its rim (the partial-volume values that place its edge) and its contrast to a touching
    neighbour."""
    low, high = float(foreground["p00_5"]), float(foreground["p99_5"])
    if not things:
        return [low, high], ""
    window = [min(low, float(things["p00_5"])), max(high, float(things["p99_5"]))]
    if window == [low, high]:
        return window, ""
    return window, (f" [{low:.4g}, {high:.4g}] widened to the thing voxels' own 0.5-99.5 percentiles, so that "
                    "no thing is clipped")


def _is_picture(dataset) -> bool:
    """Microscopy and every 2D dataset: worked on in pixels, and tiled when large (as `bundle.in_pixels`)."""
    return dataset.layout == "microscopy" or dataset.spatial_dims == 2


def patch_batch_network(dataset, fingerprint: dict, spacing: list[float], gpu_memory_gb: float,
                        base_filters: int, max_filters: int | None = None) -> dict:
    """The largest patch (up to the median image at the target spacing) and batch that fit the memory budget."""
    from .memory import estimate_memory_gb, parameter_count
    from .topology import (
        MIN_FEATURE_MAP,
        MIN_LEVELS,
        divisor,
        fit_patch,
        plan_topology,
        smallest_patch,
    )

    dims, n_classes = dataset.spatial_dims, dataset.label_set.max_id + 1
    in_channels = len(dataset.channels)
    median_mm = np.asarray(fingerprint["size_mm"]["median"], dtype=float)
    median_shape = np.maximum(np.round(median_mm / np.asarray(spacing)), 1).astype(int)
    patch = smallest_patch(spacing, list(median_shape))
    floor = smallest_patch(spacing, [MIN_PATCH] * dims)  # no axis shrinks below MIN_PATCH or MIN_LEVELS levels
    grown = patch != list(median_shape)
    shrunk = False
    while True:
        network = plan_topology(spacing, patch, base_filters, max_filters)
        patch = fit_patch(patch, network["strides"])
        params = parameter_count(dims, in_channels, n_classes, network)
        memory = estimate_memory_gb(patch, 2, network, dims, in_channels, n_classes, parameters=params)
        if memory <= gpu_memory_gb:
            break
        steps = divisor(network["strides"])
        room = [p / m if p - s >= f else 0.0 for p, m, s, f in zip(patch, median_shape, steps, floor)]
        axis = int(np.argmax(room))
        if room[axis] == 0.0:
            break
        patch[axis] = max(MIN_PATCH, patch[axis] - steps[axis])
        shrunk = True
    fixed = estimate_memory_gb(patch, 0, network, dims, in_channels, n_classes, parameters=params)
    per_sample = estimate_memory_gb(patch, 1, network, dims, in_channels, n_classes, parameters=params) - fixed
    fit = int((gpu_memory_gb - fixed) // max(per_sample, 1e-12))
    if fit < 1:
        raise InputError(dataset.root, f"a memory budget of {gpu_memory_gb:g} GB is too small for dataset "
                         f"'{dataset.name}': the smallest {MIN_LEVELS}-level network ({_mm(patch)} voxels, batch 1) "
                         f"needs {fixed + per_sample:.3g} GB")
    total_voxels = float(np.prod(median_shape)) * max(1, len(dataset.cases))
    cap = max(2, int(BATCH_DATASET_FRACTION * total_voxels // float(np.prod(patch))))
    batch = max(1, min(fit, cap, MAX_BATCH))
    memory = estimate_memory_gb(patch, batch, network, dims, in_channels, n_classes, parameters=params)
    patch_reason = (f"the median image at the target spacing is {_mm(median_shape)} voxels; "
                    + (f"grown to {MIN_LEVELS} network levels (crops padded); " if grown else "")
                    + (f"shrunk along its longest axes (relative to that median) to fit {gpu_memory_gb:g} GB with a batch of 2"
                       if shrunk else "it fits the memory budget whole")
                    + f", rounded to multiples of the downsampling ({_mm(divisor(network['strides']))})")
    batch_reason = (f"{fit} patch(es) would fit {gpu_memory_gb:g} GB; capped at {min(cap, MAX_BATCH)} so that a batch "
                    f"covers at most {BATCH_DATASET_FRACTION:.0%} of the dataset's voxels (nnU-Net's rule, at least 2)")
    if fit < 2:
        batch_reason = f"only {max(fit, 0)} patch(es) of the smallest useful size fit {gpu_memory_gb:g} GB: batch 1"
    memory_reason = (f"memory model (planning.memory): activations {batch} x {_mm(patch)} voxels over "
                     f"{len(network['filters'])} levels, {params:,} parameters with AdamW, float32, plus "
                     "allocator slack; the peak of the step's tensors, on GPU or CPU alike (a GPU's CUDA context "
                     "is outside it); checked against a measured forward/backward (tests)")
    width = "" if max_filters is None else f"filters {base_filters}-{max_filters} for training on CPU (planning.plan.CPU_PLAN); "
    network_reason = (f"{width}{len(network['filters'])} levels: stride 2 only on axes within 2x of the finest spacing with room "
                      f"for {MIN_FEATURE_MAP} voxels after halving, kernel 1 on axes still >2x coarser (nnU-Net's rule for DynUNet); "
                      f"strides {network['strides']}")
    return {"patch_size": _decision([int(p) for p in patch], patch_reason),
            "batch_size": _decision(int(batch), batch_reason),
            "estimated_memory_gb": _decision(round(float(memory), 3), memory_reason),
            "network": _decision(network, network_reason)}


def _smallest_thing(fingerprint: dict) -> tuple[str, dict]:
    sized = {name: t for name, t in fingerprint["things"].items() if t["n_instances"]}
    if not sized:
        raise InputError(None, "the dataset has no thing instance: nothing to plan the instance heads from")
    name = min(sized, key=lambda n: sized[n]["diameter_mm"]["median"])
    return name, sized[name]


def instance_decisions(dataset, fingerprint: dict) -> dict:
    """Centre sigma, NMS radius, minimum size and scale augmentation from the instance sizes."""
    name, thing = _smallest_thing(fingerprint)
    d = thing["diameter_mm"]
    size_key = "size_mm3" if dataset.spatial_dims == 3 else "size_mm2"
    unit = "mm^3" if dataset.spatial_dims == 3 else "mm^2"
    sigma = 0.25 * d["median"]
    nms = 0.5 * d["p10"]
    min_size = 0.5 * thing[size_key]["p01"]
    all_d = [t["diameter_mm"] for t in fingerprint["things"].values() if t["n_instances"]]
    spread = max(x["p90"] for x in all_d) / max(min(x["p10"] for x in all_d), 1e-12)
    nominal = bool(fingerprint.get("pixel_size_nominal"))
    if nominal:
        scale, why = [0.6, 1.6], "the pictures state no pixel size, so the network must also see other magnifications"
    elif spread > 2.0:
        scale, why = [0.7, 1.4], f"instance diameters vary {spread:.1f}x (10th to 90th percentile, > 2)"
    else:
        scale, why = [0.85, 1.15], f"instance diameters vary only {spread:.1f}x (10th to 90th percentile)"
    smallest = f"the smallest thing class '{name}' (median diameter {d['median']:.4g} mm, 10th percentile {d['p10']:.4g} mm)"
    return {
        "sigma_mm": _decision(round(sigma, 6), f"0.25 x the median equivalent diameter of {smallest}"),
        "sigma_fraction": _decision(SIGMA_FRACTION, "size-aware centres: an instance's blob is this fraction of its own "
                                                    "equivalent radius (never below sigma_mm), so the median instance "
                                                    "gets sigma_mm and a large one a wide single peak, not several"),
        "nms_mm": _decision(round(nms, 6), f"0.5 x the 10th-percentile diameter of {smallest}: two centres closer "
                                           "than that belong to one instance"),
        "min_size_mm": _decision(float(f"{min_size:.4g}"), f"0.5 x the 1st percentile of the true sizes of '{name}' "
                                                          f"({thing[size_key]['p01']:.4g} {unit}); {unit}"),
        "center_threshold": _decision(SHIPPED_CENTER_THRESHOLD, "the shipped bundles' value, a starting point: "
                                                                "tuned after training on the out-of-fold outputs"),
        "scale_augmentation": _decision(scale, f"random zoom range: {why}"),
        "resampling_augmentation": resampling_augmentation(nominal),
    }


def resampling_augmentation(nominal: bool) -> dict:
    """Blur and a down-up resampling of the image: what a picture without a pixel size looks like once
    the scale estimate has rescaled it (an enlarged small one is soft, a shrunk large one has smoothed
    noise). Scans that state their pixel size are resampled alike in training and inference: none."""
    if not nominal:
        return _decision(None, "the scans state their pixel size: training and inference resample them alike")
    value = {"prob": 0.2, "blur_sigma_px": [0.3, 0.8], "low_resolution_zoom": [0.55, 1.0]}
    return _decision(value, "the pictures state no pixel size: at inference they are rescaled by an estimated "
                            "factor, so the network also sees blurred and down-up resampled pictures")


def schedule(dataset, fingerprint: dict, device: str = "gpu") -> dict:
    """Folds (every validation fold must hold things), epochs and their length, learning rate, crops per case."""
    with_things = int(fingerprint.get("cases_with_things", len(dataset.cases)))
    folds = min(5, with_things) if with_things >= 2 else 1
    fold_reason = ("5-fold cross-validation" if folds == 5 else
                   f"{folds} fold(s): only {with_things} case(s) hold things, and every validation fold needs one")
    if device == "cpu":
        epochs = _decision(CPU_PLAN["epochs"], f"CPU schedule: {CPU_PLAN['epochs']} x {CPU_PLAN['steps_per_epoch']} "
                                               "steps (cosine decay), about 20 minutes of 2 cores for a 48x64x32 3D "
                                               "patch; `medpanoptic train --epochs` overrides")
        steps = _decision(CPU_PLAN["steps_per_epoch"], "CPU schedule: a fixed number of steps between validations "
                                                       "(drawn with replacement from the training cases, as nnU-Net's "
                                                       "250-step epochs), so that a small dataset's epochs are not a "
                                                       "few steps each")
    else:
        epochs = _decision(DEFAULT_EPOCHS, "default schedule (cosine decay); `medpanoptic train --epochs` overrides")
        steps = _decision(None, "one pass over the training cases' crops per epoch")
    return {
        "folds": _decision(folds, fold_reason + f" ({len(dataset.cases)} cases)"),
        "epochs": epochs,
        "steps_per_epoch": steps,
        "learning_rate": _decision(DEFAULT_LEARNING_RATE, "AdamW at the shipped bundles' rate, with cosine decay"),
        "samples_per_case": _decision(DEFAULT_SAMPLES_PER_CASE, "random crops per loaded case and epoch, "
                                                               "centred on things at 2:1 (as the shipped bundles)"),
    }


def summary_lines(plan: Mapping) -> list[str]:
    """A short human summary of a plan's decisions (what `medpanoptic plan` prints)."""
    ds, d = plan["dataset"], plan["decisions"]
    value = {k: v["value"] for k, v in d.items()}
    things = ", ".join(f"{n} ({t['n_instances']}, median {t['diameter_mm'].get('median', 0):.3g} mm)"
                       for n, t in plan["fingerprint"]["things"].items())
    net = value["network"]
    unit = "mm^3" if ds["spatial_dims"] == 3 else "mm^2"
    return [
        (f"dataset:     {ds['name']} ({ds['layout']}, {ds['n_cases']} cases, {ds['spatial_dims']}D, "
         f"channels {', '.join(ds['channels'])}; modality {ds['modality']})"),
        f"things:      {things}",
        f"spacing:     {_mm(value['target_spacing_mm'])} mm",
        (f"patch:       {_mm(value['patch_size'])} voxels, batch {value['batch_size']}, "
         f"~{value['estimated_memory_gb']:.2f} GB"),
        f"network:     DynUNet, {len(net['filters'])} levels, filters {net['filters']}, strides {net['strides']}",
        (f"instances:   sigma {value['sigma_mm']:.3g} mm, NMS {value['nms_mm']:.3g} mm, "
         f"min size {value['min_size_mm']:.3g} {unit}, scale augmentation {value['scale_augmentation']}"),
        (f"training:    {value['folds']} fold(s), {value['epochs']} epochs"
         + (f" of {value['steps_per_epoch']} steps" if value.get("steps_per_epoch") else "")
         + f", learning rate {value['learning_rate']:g}"),
    ]
