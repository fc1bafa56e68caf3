"""A dataset's fingerprint: what the plan is decided from, in readable units.

- geometry per spatial array axis (spacing in mm, shape in voxels), the axes the network sees;
- foreground intensity statistics per channel (percentiles, mean, std), from MONAI Auto3DSeg's
  `DataAnalyzer` for the volume layouts (MSD, nnU-Net v2: NIfTI, one file per channel or one
  multi-channel file), so the numbers are the ones the MONAI ecosystem computes;
- what only panoptic needs, per thing class: instances per case, instance sizes (equivalent
  diameter in mm and in voxels, volume in mm^3 or area in mm^2) and the fraction of instances
  touching another instance, and the intensity statistics of the thing voxels alone (the plan
  widens the intensity window to them: things are a small share of the foreground).

Where `DataAnalyzer` does not serve, the same statistics are computed directly from the loaded
cases (`intensity_source` says which): microscopy datasets, whose truth is an instance mask
(with a class table), not the semantic label map `DataAnalyzer` counts classes in, and whose
PNG pictures state no pixel size (its spacing would be a silent 1 mm); and 2D datasets in
general, which it was not written for. Geometry is always taken from our own reader, per
array axis: `DataAnalyzer` reorients to RAS first, so its spacing is per patient axis.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from ..io.geometry import spacing_from_affine
from .datasets import Dataset
from .transforms import load_case

log = logging.getLogger("medpanoptic.planning")

FOREGROUND_SAMPLES_PER_CASE = 20000
"""Foreground voxels sampled per case for the direct intensity statistics (a fixed seed: reproducible)."""
PERCENTILES = {"p00_5": 0.5, "p01": 1.0, "p10": 10.0, "median": 50.0, "p90": 90.0, "p99_5": 99.5}


def dataset_fingerprint(dataset: Dataset, use_data_analyzer: bool = True) -> dict:
    """The fingerprint of a checked dataset (see the module docstring); reads every case once."""
    spacings, shapes, samples, thing_samples, nominal = [], [], defaultdict(list), defaultdict(list), False
    things: dict[int, list[dict]] = defaultdict(list)
    per_case_counts: dict[int, list[int]] = defaultdict(list)
    rng, thing_rng = np.random.default_rng(0), np.random.default_rng(1)
    for entry in dataset.cases:
        image, pair = load_case(entry, dataset.label_set, dataset.root)
        ndim = dataset.spatial_dims
        spacing = spacing_from_affine(image.affine.numpy(), ndim)
        spacings.append(spacing)
        shapes.append(image.shape[1:])
        nominal = nominal or bool(image.meta.get("pixel_size_nominal"))
        label, instance = pair.numpy()
        _sample_foreground(image.numpy(), label > 0, rng, samples)
        _sample_foreground(image.numpy(), np.isin(label, dataset.label_set.thing_ids), thing_rng, thing_samples)
        touching = touching_instances(instance)
        for class_id in dataset.label_set.thing_ids:
            rows = _instances_of(label, instance, class_id, spacing, touching)
            things[class_id] += rows
            per_case_counts[class_id].append(len(rows))
    spacings_a, shapes_a = np.asarray(spacings, dtype=float), np.asarray(shapes, dtype=float)
    fingerprint = {
        "n_cases": len(dataset.cases),
        "spacing_mm": _axis_summary(spacings_a),
        "shape": _axis_summary(shapes_a),
        "size_mm": _axis_summary(spacings_a * shapes_a),
        "pixel_size_nominal": nominal,
        "intensity": _direct_intensity(dataset.channels, samples),
        "intensity_source": "direct (foreground voxels sampled from every case)",
        "things_intensity": _direct_intensity(dataset.channels, thing_samples),
        "things": {dataset.label_set[c].name: _thing_summary(things[c], per_case_counts[c], dataset.spatial_dims)
                   for c in dataset.label_set.thing_ids},
        "cases_with_things": int(sum(any(per_case_counts[c][i] for c in dataset.label_set.thing_ids)
                                     for i in range(len(dataset.cases)))),
    }
    if use_data_analyzer and dataset.layout != "microscopy" and dataset.spatial_dims == 3:
        analysed = data_analyzer_intensity(dataset)
        if analysed is not None:
            fingerprint["intensity"] = analysed
            fingerprint["intensity_source"] = "monai.apps.auto3dseg.DataAnalyzer (foreground, per channel)"
    return fingerprint


# -- intensity ----------------------------------------------------------------------------------
def _sample_foreground(image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, samples: dict) -> None:
    where = np.flatnonzero(foreground)
    if where.size > FOREGROUND_SAMPLES_PER_CASE:
        where = rng.choice(where, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    for c in range(image.shape[0]):
        samples[c].append(image[c].reshape(-1)[where])


def _direct_intensity(channels: list[str], samples: dict) -> list[dict]:
    out = []
    for c, name in enumerate(channels):
        values = np.concatenate(samples[c]) if samples.get(c) else np.zeros(1, np.float32)
        row = {"channel": name, "mean": float(values.mean()), "std": float(values.std()),
               "min": float(values.min()), "max": float(values.max())}
        row.update({k: float(np.percentile(values, q)) for k, q in PERCENTILES.items()})
        out.append(row)
    return out


def data_analyzer_intensity(dataset: Dataset) -> list[dict] | None:
    """Foreground intensity per channel from Auto3DSeg's `DataAnalyzer` (None if it fails: the direct figures stay).

    Its per-case figures are pooled: percentiles as the median over cases, the mean as the
    mean of case means, the std from the pooled variance of the case means and stds.
    """
    from monai.apps.auto3dseg import DataAnalyzer

    datalist = {"training": [{"image": [str(dataset.path(p)) for p in e["image"]], "label": str(dataset.path(e["label"]))}
                             for e in dataset.cases]}
    analyzer_log = logging.getLogger("monai.apps.auto3dseg.data_analyzer")  # its INFO lines go to stdout
    level = analyzer_log.level
    analyzer_log.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            analyzer = DataAnalyzer(datalist, "", output_path=str(Path(tmp) / "datastats.yaml"), device="cpu",
                                    worker=0, label_key="label")
            result = analyzer.get_all_case_stats()
        except Exception as e:  # a third-party analyser: its failure must not stop the plan
            log.warning("DataAnalyzer failed (%s: %s); intensity statistics computed directly", type(e).__name__, e)
            return None
        finally:
            analyzer_log.setLevel(level)
    cases = [case["image_foreground_stats"]["intensity"] for case in result["stats_by_cases"]]
    out = []
    for c, name in enumerate(dataset.channels):
        rows = [case[c] for case in cases if len(case) > c]
        if not rows:
            return None
        means = np.array([r["mean"] for r in rows])
        stds = np.array([r["stdev"] for r in rows])
        row = {"channel": name, "mean": float(means.mean()), "std": float(np.sqrt((stds**2).mean() + means.var())),
               "min": float(min(r["min"] for r in rows)), "max": float(max(r["max"] for r in rows))}
        keys = {"p00_5": "percentile_00_5", "p10": "percentile_10_0", "median": "median", "p90": "percentile_90_0",
                "p99_5": "percentile_99_5"}
        row.update({k: float(np.median([r[v] for r in rows])) for k, v in keys.items()})
        out.append(row)
    return out


# -- instances -----------------------------------------------------------------------------------
def touching_instances(instance: np.ndarray) -> set[int]:
    """Ids of the instances that share a face with another instance (face neighbours along each axis)."""
    touching: set[int] = set()
    for axis in range(instance.ndim):
        a = np.moveaxis(instance, axis, 0)
        left, right = a[:-1], a[1:]
        meet = (left != right) & (left > 0) & (right > 0)
        touching.update(np.unique(left[meet]).tolist())
        touching.update(np.unique(right[meet]).tolist())
    return touching


def _instances_of(label: np.ndarray, instance: np.ndarray, class_id: int, spacing: np.ndarray,
                  touching: set[int]) -> list[dict]:
    """Size of each instance of `class_id`: voxels, mm^3 (mm^2 in 2D), equivalent diameter in mm and voxels."""
    ids = instance[(label == class_id) & (instance > 0)]
    if ids.size == 0:
        return []
    values, counts = np.unique(ids, return_counts=True)
    voxel = float(np.prod(spacing))
    rows = []
    for inst, n in zip(values.tolist(), counts.tolist()):
        rows.append({"voxels": n, "size_mm": n * voxel, "diameter_mm": equivalent_diameter(n * voxel, label.ndim),
                     "diameter_px": equivalent_diameter(n, label.ndim), "touching": inst in touching})
    return rows


def equivalent_diameter(size: float, ndim: int) -> float:
    """The diameter of the ball (3D) or disc (2D) of volume or area `size`."""
    return float((6.0 * size / np.pi) ** (1 / 3) if ndim == 3 else (4.0 * size / np.pi) ** 0.5)


def _distribution(values: Iterable[float]) -> dict:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {}
    out = {k: float(np.percentile(v, q)) for k, q in PERCENTILES.items() if k != "p00_5"}
    return {"min": float(v.min()), **out, "max": float(v.max())}


def _thing_summary(rows: list[dict], per_case: list[int], ndim: int) -> dict:
    return {
        "n_instances": len(rows),
        "instances_per_case": _distribution(per_case),
        "diameter_mm": _distribution(r["diameter_mm"] for r in rows),
        "diameter_px": _distribution(r["diameter_px"] for r in rows),
        f"size_{'mm3' if ndim == 3 else 'mm2'}": _distribution(r["size_mm"] for r in rows),
        "size_voxels": _distribution(r["voxels"] for r in rows),
        "touching_fraction": float(np.mean([r["touching"] for r in rows])) if rows else 0.0,
        "cases_with_instances": int(sum(1 for n in per_case if n)),
    }


def _axis_summary(values: np.ndarray) -> dict:
    """Per-axis median, 10th percentile, min and max of (cases, axes) values."""
    return {"median": np.median(values, 0).tolist(), "p10": np.percentile(values, 10, axis=0).tolist(),
            "min": values.min(0).tolist(), "max": values.max(0).tolist()}
