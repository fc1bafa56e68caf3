"""Post-processing tuned on cached network outputs: the grouping knobs that give the best PQ_things.

After training, the out-of-fold network outputs of every case are kept (the raw heads tensor,
on the grid of the case's truth); `tune_postprocess` searches the centre threshold, the NMS
window, the minimum instance size and, where the bundle uses them, the offset-vote settings,
for the highest dataset-level PQ_things (ties broken by PQ over all classes), scored by the
project's own `panoptic_quality`. `cached_cases` reads the out-of-fold outputs training caches.

The search is coordinate descent over a small grid per knob, from the base config: one knob
at a time is swept with the others held, rounds repeat until none moves (at most
`MAX_ROUNDS`). The knobs interact weakly (the threshold and the window decide the peaks, the
size floor only removes instances), so a local optimum of the descent is the grid's optimum in
practice, and it costs the sum of the axis lengths per round instead of their product. A
point is grouped once: its scores are kept, so a revisited point costs nothing, and a change of
the minimum size alone reuses the last grouping (it only removes instances).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io.geometry import spacing_from_affine
from ..labels import LabelSet
from ..metrics import panoptic_quality
from ..nets import HeadLayout
from ..postprocess import PostprocessConfig, group_instances

MAX_ROUNDS = 4
GROUPING_KNOBS = ("center_threshold", "nms_mm", "top_k", "vote_sigma_mm", "vote_min", "vote_gap_mm")
KNOBS = GROUPING_KNOBS + ("min_size_mm",)
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
NMS_OF_DIAMETER = (0.25, 0.5, 0.75, 1.0)  # NMS windows tried, as fractions of the median true instance diameter
MIN_SIZE_OF_SMALLEST = (0.0, 0.1, 0.25, 0.5)  # minimum sizes tried, as fractions of the smallest true instance
VOTE_SCALES = (0.5, 1.0, 2.0)  # vote settings tried, as multiples of the base's


class TuneCase(NamedTuple):
    """One case's cached network output and its truth, on the same grid."""

    heads: torch.Tensor  # (C, *spatial): semantic logits | centre | offsets, as the network gives them
    truth: torch.Tensor  # (2, *spatial) panoptic pair
    spacing: Sequence[float]  # mm per spatial array axis


def cached_cases(paths: Iterable[str | os.PathLike]) -> list[TuneCase]:
    """The cases of out-of-fold outputs cached by training: one `torch.save`d dict per case with `pred`
    (the heads), `label` (the true pair on the same grid) and `affine` (of that grid, RAS), whose
    voxel sizes become the spacing."""
    cases = []
    for path in paths:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which
            raise InputError(path, f"not a cached network output ({type(e).__name__}: {e})") from None
        missing = [k for k in ("pred", "label", "affine") if not isinstance(record, dict) or k not in record]
        if missing:
            raise InputError(path, f"a cached network output needs {', '.join(missing)}")
        heads = torch.as_tensor(record["pred"])
        spacing = spacing_from_affine(np.asarray(record["affine"], dtype=float), heads.ndim - 1)
        cases.append(TuneCase(heads, torch.as_tensor(record["label"]), tuple(float(s) for s in spacing)))
    return cases


def tune_postprocess(
    cases: Iterable[TuneCase | tuple],
    label_set: LabelSet,
    base: PostprocessConfig,
    grid: Mapping[str, Sequence[float]] | None = None,
) -> tuple[PostprocessConfig, list[dict]]:
    """The config of the best PQ_things over `cases`, and a table of every point evaluated.

    `grid` maps knob names (fields of `PostprocessConfig`) to the values tried; knobs it leaves
    out stay at `base`'s. Without it the grid comes from the truth (`default_grid`). Each table
    row holds the knobs and `pq_things`, `pq`, `pq_stuff`, `sq_things`, `rq_things` (dataset
    level: counts summed over the cases), in evaluation order; the chosen point has `best: True`.
    """
    checked = [_checked_case(case, i, label_set) for i, case in enumerate(cases)]
    if not checked:
        raise InputError(None, "post-processing tuning needs at least one case")
    axes = default_grid(base, checked, label_set) if grid is None else _checked_grid(grid)
    search = _Search(checked, label_set)
    current = {knob: getattr(base, knob) for knob in axes}
    best = search.score(replace(base, **current))
    for _ in range(MAX_ROUNDS):
        moved = False
        for knob, values in axes.items():
            for value in values:
                point = replace(base, **{**current, knob: value})
                score = search.score(point)
                if score > best:
                    best, current, moved = score, {**current, knob: value}, True
        if not moved:
            break
    chosen = replace(base, **current)
    table = search.table(chosen)
    return chosen, table


def default_grid(base: PostprocessConfig, cases: Sequence[TuneCase], label_set: LabelSet) -> dict[str, tuple]:
    """The values tried per knob, from the base config and the truth's instance sizes.

    Thresholds span the heatmap's range; NMS windows are fractions of the median true instance
    diameter (a window wider than an instance merges neighbours); minimum sizes are fractions of
    the smallest true instance (what is smaller than that is noise); the vote settings are
    scaled around the base's, and tried only where the base uses votes. The base's own values
    are always among them.
    """
    sizes = _true_sizes(cases, label_set)
    ndim = cases[0].heads.ndim - 1
    grid: dict[str, tuple] = {"center_threshold": _with(THRESHOLDS, base.center_threshold)}
    if sizes.size:
        diameter = _equivalent_diameter(float(np.median(sizes)), ndim)
        grid["nms_mm"] = _with([diameter * f for f in NMS_OF_DIAMETER], base.nms_mm)
        grid["min_size_mm"] = _with([float(sizes.min()) * f for f in MIN_SIZE_OF_SMALLEST], base.min_size_mm)
    if base.vote_sigma_mm > 0:
        grid["vote_sigma_mm"] = _with([0.0] + [base.vote_sigma_mm * f for f in VOTE_SCALES], base.vote_sigma_mm)
        grid["vote_min"] = _with([base.vote_min * f for f in VOTE_SCALES], base.vote_min)
    return grid


class _Score(NamedTuple):
    """What the search maximises: PQ_things, then PQ (NaN, "no thing anywhere", ranks lowest)."""

    pq_things: float
    pq: float

    @classmethod
    def of(cls, summary: Mapping[str, float]) -> "_Score":
        return cls(*(-math.inf if math.isnan(summary[k]) else summary[k] for k in ("pq_things", "pq")))


class _Search:
    """Scores of configs over the cases, each point grouped once; the last grouping kept for size changes."""

    def __init__(self, cases: Sequence[TuneCase], label_set: LabelSet) -> None:
        self.label_set = label_set
        layout = HeadLayout(label_set.max_id + 1, cases[0].heads.ndim - 1)
        self.cases = [(layout.split(c.heads.detach().float().cpu().contiguous()), c.truth, c.spacing) for c in cases]
        self.rows: dict[tuple, dict] = {}
        self._grouped: tuple[tuple, list[tuple[np.ndarray, np.ndarray]]] | None = None

    def score(self, config: PostprocessConfig) -> _Score:
        key = _key(config, KNOBS)
        if key not in self.rows:
            quality = None
            for (pair, sizes), (_, truth, _) in zip(self._grouping(config), self.cases):
                q = panoptic_quality(_without_small(pair, sizes, config.min_size_mm), truth, self.label_set)
                quality = q if quality is None else quality + q
            summary = quality.summary()
            self.rows[key] = {**{k: getattr(config, k) for k in KNOBS},
                              **{k: summary[k] for k in ("pq_things", "pq", "pq_stuff", "sq_things", "rq_things")}}
        return _Score.of(self.rows[key])

    def table(self, chosen: PostprocessConfig) -> list[dict]:
        best = _key(chosen, KNOBS)
        return [{**row, "best": key == best} for key, row in self.rows.items()]

    def _grouping(self, config: PostprocessConfig) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each case's pair grouped with no size floor, and its instances' sizes (mm³ or mm², by id)."""
        key = _key(config, GROUPING_KNOBS)
        if self._grouped is None or self._grouped[0] != key:
            unfloored = replace(config, min_size_mm=0.0)
            grouped = []
            for heads, _, spacing in self.cases:
                pair, _ = group_instances(heads["semantic"], heads["center"], heads["offset"], self.label_set,
                                          spacing, unfloored)
                pair = pair.numpy()
                voxel = float(np.prod(np.asarray(spacing, dtype=float)[:pair.ndim - 1]))
                grouped.append((pair, np.bincount(pair[1].ravel()) * voxel))
            self._grouped = (key, grouped)
        return self._grouped[1]


def _without_small(pair: np.ndarray, sizes: np.ndarray, min_size_mm: float) -> np.ndarray:
    """`pair` without the instances under `min_size_mm`: their voxels become background, as in grouping."""
    small = sizes < min_size_mm
    small[0] = False
    if not small.any():
        return pair
    drop = small[pair[1]]
    kept = pair.copy()
    kept[0][drop] = 0
    kept[1][drop] = 0
    return kept


def _key(config: PostprocessConfig, knobs: Sequence[str]) -> tuple:
    return tuple(getattr(config, k) for k in knobs)


def _with(values: Iterable[float], base_value: float) -> tuple[float, ...]:
    """The values, rounded to 6 significant digits (readable tables), with the base's, sorted and distinct."""
    return tuple(sorted({float(f"{v:.6g}") for v in values} | {float(base_value)}))


def _equivalent_diameter(size: float, ndim: int) -> float:
    """The diameter (mm) of the disc (2D, size in mm²) or ball (3D, mm³) of that size."""
    return math.sqrt(4 * size / math.pi) if ndim == 2 else (6 * size / math.pi) ** (1 / 3)


def _true_sizes(cases: Sequence[TuneCase], label_set: LabelSet) -> np.ndarray:
    """Sizes (mm³ or mm²) of every thing instance of the truth."""
    sizes = []
    for case in cases:
        truth = np.asarray(case.truth)
        things = np.isin(truth[0], label_set.thing_ids) & (truth[1] > 0)
        counts = np.bincount(truth[1][things].astype(np.int64).ravel())
        voxel = float(np.prod(np.asarray(case.spacing, dtype=float)[:truth.ndim - 1]))
        sizes.append(counts[counts > 0] * voxel)
    return np.concatenate(sizes) if sizes else np.zeros(0)


def _checked_case(case: TuneCase | tuple, index: int, label_set: LabelSet) -> TuneCase:
    """The case as a `TuneCase` of CPU tensors, refused by name when its parts do not fit together."""
    heads, truth, spacing = case
    heads, truth = torch.as_tensor(heads).detach().cpu(), torch.as_tensor(truth).detach().cpu()
    ndim = heads.ndim - 1
    channels = HeadLayout(label_set.max_id + 1, ndim).channels
    where = f"tuning case {index}"
    if ndim not in (2, 3) or heads.shape[0] != channels:
        raise InputError(None, f"{where}: heads of shape {tuple(heads.shape)}; the label set needs "
                               f"({channels}, *spatial) for a 2D or 3D output")
    if tuple(truth.shape) != (2, *heads.shape[1:]):
        raise InputError(None, f"{where}: truth of shape {tuple(truth.shape)} is not a pair on the heads' grid "
                               f"{tuple(heads.shape[1:])}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) < ndim or not all(math.isfinite(s) and s > 0 for s in spacing[:ndim]):
        raise InputError(None, f"{where}: spacing {spacing} is not {ndim} positive sizes in mm")
    return TuneCase(heads, truth.to(torch.int32), spacing[:ndim])


def _checked_grid(grid: Mapping[str, Sequence[float]]) -> dict[str, tuple]:
    """The grid with its knobs named as in `PostprocessConfig`, each with at least one valid value."""
    fields = asdict(PostprocessConfig())
    checked = {}
    for knob, values in grid.items():
        if knob not in KNOBS:
            raise InputError(None, f"tuning grid: unknown knob {knob!r} (known: {', '.join(KNOBS)})")
        kind = type(fields[knob])
        values = tuple(kind(v) for v in values)
        if not values:
            raise InputError(None, f"tuning grid: no values for {knob!r}")
        if not all(math.isfinite(v) and v >= 0 for v in values) or (knob in ("nms_mm", "top_k") and min(values) <= 0):
            raise InputError(None, f"tuning grid: {knob!r} needs finite values >= 0 (> 0 for nms_mm and top_k), "
                                   f"got {values}")
        checked[knob] = values
    return checked
