"""Quality-control pictures: look at a result before trusting its numbers.

- `qc_montage`: one PNG per case; for a 3D scan, axial slices through the largest instances
  and the largest stuff region (for a 2D image, the image itself), the image windowed in grey,
  contours coloured by class, each instance numbered at its centre.
- `cohort_overview`: one PNG per cohort: thing count and total thing volume per case.

Drawn with matplotlib's non-interactive Agg canvas, so they work on headless cluster nodes.
Text that comes from data (case ids, class names) is drawn literally (`parse_math=False`):
matplotlib would otherwise read `a$b$` as TeX and fail on `x$^$`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..labels import LabelSet
from ..pair import PairStats, pair_stats
from .atomic import atomic_paths


def _figure(n_panels: int, panel_inches: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_inches * n_panels, panel_inches + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _grey(image: np.ndarray, is_ct: bool) -> np.ndarray:
    if is_ct:  # a soft-tissue window shows organs and lesions
        lo, hi = -160.0, 240.0
    else:
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def _choose_slices(label: np.ndarray, instance: np.ndarray, label_set: LabelSet, n: int,
                   stats: PairStats | None = None) -> list[int]:
    """Axial indices through the largest thing instances, then through the largest stuff class.

    Sizes come from `stats` (the pair's `pair_stats`), else from one pass over the pair."""
    stats = stats if stats is not None else pair_stats(np.stack([label, instance]))
    slices: list[int] = []
    if stats is not None and len(stats.ids):
        order = sorted(stats.ids.tolist(), key=lambda i: -stats.instance_voxels[i])
        for i in order:
            k = int(round(stats.coordinate_sums[i, 2] / stats.instance_voxels[i]))
            if all(abs(k - s) > 1 for s in slices):
                slices.append(k)
            if len(slices) == n - 1:
                break
    stuff_voxels = _stuff_voxels(label, label_set, stats)
    stuff = [c for c in label_set.stuff_ids if stuff_voxels[c]]
    if stuff:
        biggest = max(stuff, key=lambda c: stuff_voxels[c])
        ks = np.nonzero((label == biggest).any(axis=(0, 1)))[0]
        slices.append(int(ks[len(ks) // 2]))
    if not slices:
        slices.append(label.shape[2] // 2)
    return sorted(set(slices))[:n]


def _stuff_voxels(label: np.ndarray, label_set: LabelSet, stats: PairStats | None) -> dict[int, int]:
    """Voxels of each stuff class, read off `stats` when it has them."""
    if stats is None:
        return {c: int(np.count_nonzero(label == c)) for c in label_set.stuff_ids}
    without_instance = stats.label_voxels[0]
    return {c: int(without_instance[c]) if c < len(without_instance) else 0 for c in label_set.stuff_ids}


def _panel(ax, image2d: np.ndarray, label2d: np.ndarray, instance2d: np.ndarray, label_set: LabelSet, title: str) -> None:
    rgb = np.repeat(image2d[..., None], 3, axis=-1) if image2d.ndim == 2 else image2d
    segment = label2d.astype(np.int64) * (int(instance2d.max()) + 1) + instance2d
    edge = np.zeros(segment.shape, dtype=bool)
    edge[1:, :] |= segment[1:, :] != segment[:-1, :]
    edge[:-1, :] |= segment[1:, :] != segment[:-1, :]
    edge[:, 1:] |= segment[:, 1:] != segment[:, :-1]
    edge[:, :-1] |= segment[:, 1:] != segment[:, :-1]
    overlay = rgb.copy()
    for c in label_set:
        where = edge & (label2d == c.id)
        overlay[where] = np.asarray(c.color, dtype=float) / 255.0
    ax.imshow(np.swapaxes(overlay, 0, 1), origin="lower", interpolation="nearest")
    for inst in np.unique(instance2d[instance2d > 0]).tolist():
        ii, jj = np.nonzero(instance2d == inst)
        ax.text(ii.mean(), jj.mean(), str(inst), color="yellow", fontsize=8, ha="center", va="center",
                fontweight="bold")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def qc_montage(image, pair, label_set: LabelSet, path: str | os.PathLike, title: str = "", n_slices: int = 3,
               stats: PairStats | None = None) -> Path:
    """Write the case's QC montage PNG (see the module docstring); returns its path.

    `stats` is the pair's `pair_stats`, when already gathered."""
    values = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    arr = np.asarray(pair.detach().cpu() if hasattr(pair, "detach") else pair)
    label, instance = arr[0], arr[1]
    is_ct = str(getattr(image, "meta", {}).get("source_format", "")).startswith("dicom") or float(values.min()) < -500
    if label.ndim == 2:
        shown = np.moveaxis(values, 0, -1) / 255.0 if values.shape[0] == 3 else _grey(values[0], False)
        panels = [(np.clip(shown, 0, 1), label, instance, f"{int(instance.max())} instance(s)")]
    else:
        grey = _grey(values[0], is_ct)
        panels = [(grey[:, :, k], label[:, :, k], instance[:, :, k], f"slice k={k}")
                  for k in _choose_slices(label, instance, label_set, n_slices, stats)]
    fig = _figure(len(panels))
    for i, (img, lab, inst, name) in enumerate(panels):
        _panel(fig.add_subplot(1, len(panels), i + 1), img, lab, inst, label_set, name)
    legend = "   ".join(f"{c.name} ({c.kind})" for c in label_set)
    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize=9, parse_math=False)
    path = Path(path)
    with atomic_paths(path) as (tmp,):
        fig.savefig(tmp, format="png")
    return path


def _save_png(fig, path: str | os.PathLike) -> Path:
    """Lay out and write a figure as PNG, atomically."""
    fig.tight_layout()
    path = Path(path)
    with atomic_paths(path) as (tmp,):
        fig.savefig(tmp, format="png")
    return path


def cohort_overview(cases: Sequence[str], counts: Sequence[int], volumes_ml: Sequence[float],
                    path: str | os.PathLike, thing_name: str = "things") -> Path:
    """Bar plots of the thing count and total thing volume (mL) per case."""
    fig = _figure(2, panel_inches=max(4.0, 0.25 * len(cases)))
    x = np.arange(len(cases))
    for i, (values, ylabel) in enumerate([(counts, f"{thing_name} per case"), (volumes_ml, f"{thing_name} volume (mL)")]):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.bar(x, values, color="#4c72b0")
        ax.set_xticks(x, cases, rotation=90, fontsize=7, parse_math=False)
        ax.set_ylabel(ylabel, parse_math=False)
    fig.suptitle(f"cohort overview: {len(cases)} case(s)")
    return _save_png(fig, path)


def pq_per_case_plot(cases: Sequence[str], pq: Sequence[float], path: str | os.PathLike) -> Path:
    """A bar per case of its panoptic quality (0..1): the cases that pull the mean down stand out."""
    fig = _figure(1, panel_inches=max(4.0, 0.25 * len(cases)))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(cases))
    ax.bar(x, [0.0 if v != v else v for v in pq], color="#4c72b0")  # a NaN PQ (nothing to score) draws no bar
    ax.set_xticks(x, cases, rotation=90, fontsize=7, parse_math=False)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("PQ")
    ax.set_title(f"panoptic quality per case: {len(cases)} case(s)")
    return _save_png(fig, path)
