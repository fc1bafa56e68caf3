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
    return problems


def save_plan(plan: Mapping, path: str | os.PathLike) -> Path:
    """Write a plan atomically (refusing an invalid one: a plan on disk is always loadable)."""
    problems = plan_problems(json.loads(json.dumps(plan)))
    if problems:
        raise InputError(path, "refusing to write an invalid plan: " + "; ".join(problems))
    atomic_write_json(path, plan)
    return Path(path)
