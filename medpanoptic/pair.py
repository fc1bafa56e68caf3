"""The panoptic pair: a (2, *spatial) integer MetaTensor, channel 0 = label, channel 1 = instance.

Helpers to build and check pairs, to gather their statistics in one pass (`pair_stats`), and to
encode them as one integer per voxel (`label * divisor + instance`). Patient coordinates are
io's business: the instance table is `medpanoptic.io.table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from .errors import PanopticError
from .labels import LabelSet

LABEL, INSTANCE = 0, 1
"""Channel indices of the pair."""

PANOPTIC_DIVISOR = 1000
"""Default divisor of the single-integer encoding (Cityscapes / Panoptic-DeepLab convention)."""


def make_pair(label, instance, affine=None, meta: dict | None = None) -> MetaTensor:
    """Stack a label map and an instance map (spatial arrays of one shape) into a pair MetaTensor."""
    label_t = torch.as_tensor(np.asarray(label) if not torch.is_tensor(label) else label)
    instance_t = torch.as_tensor(np.asarray(instance) if not torch.is_tensor(instance) else instance)
    if label_t.shape != instance_t.shape:
        raise PanopticError(f"label map {tuple(label_t.shape)} and instance map {tuple(instance_t.shape)} differ in shape")
    dtype = torch.int32 if max(_max(label_t), _max(instance_t)) <= 2**31 - 1 else torch.int64
    data = torch.stack([label_t.as_subclass(torch.Tensor).to(dtype), instance_t.as_subclass(torch.Tensor).to(dtype)])
    if affine is None and isinstance(label, MetaTensor):
        affine = label.affine
    pair = MetaTensor(data, affine=affine, meta=dict(meta or {}))
    return pair


def _max(t: torch.Tensor) -> int:
    return int(t.max()) if t.numel() else 0


def integer_pair(pair: torch.Tensor) -> torch.Tensor:
    """A pair back as a plain int32 CPU tensor: inverse resampling (nearest) hands it back as floats."""
    values = pair.as_tensor() if isinstance(pair, MetaTensor) else torch.as_tensor(pair)
    if values.is_floating_point():
        values = torch.round(values.float())
    return values.to(torch.int32).cpu()


@dataclass(frozen=True)
class PairStats:
    """What one pass over a pair learns (CPU): label histograms and, per instance id, its voxel
    count, centroid, bounding box and the smallest and largest label among its voxels."""

    label_voxels: np.ndarray  # (2, n_labels): voxels of each label with instance 0 / with an instance
    instance_voxels: np.ndarray  # (n_ids,)
    coordinate_sums: np.ndarray  # (n_ids, 3)
    box_low: np.ndarray  # (n_ids, 3) inclusive voxel index
    box_high: np.ndarray  # (n_ids, 3) inclusive voxel index
    label_low: np.ndarray  # (n_ids,)
    label_high: np.ndarray  # (n_ids,)

    @property
    def ids(self) -> np.ndarray:
        return np.flatnonzero(self.instance_voxels)


def pair_stats(pair, n_labels: int | None = None) -> PairStats | None:
    """`PairStats` of a CPU pair in one compiled pass; None if an id is negative or a label >= `n_labels`."""
    from ._kernels import gather_stats

    arr = np.asarray(pair.detach().cpu() if torch.is_tensor(pair) else pair)
    label, instance = arr[LABEL], arr[INSTANCE]
    if label.size == 0:
        return None
    n_labels = n_labels or int(label.max()) + 1
    n_ids = max(int(instance.max()), 0) + 1
    result = gather_stats(label, instance, n_labels, n_ids)
    if result is None:
        return None
    hist, count, total, low, high = result
    return PairStats(hist, count, total, low[:, :3], high[:, :3], low[:, 3], high[:, 3])


CHECK_BACKENDS = ("auto", "torch", "compiled")


def check_pair(pair: torch.Tensor, label_set: LabelSet | None = None, source: str = "panoptic pair",
               backend: str = "auto") -> PairStats | None:
    """Refuse a malformed pair: shape, dtype, negative ids, unknown labels, instances on
    background or stuff, thing voxels without an instance, an instance id spanning two classes.

    `backend="compiled"` gathers everything the rules need in one numba pass (`pair_stats`) and
    returns it, so that callers need not pass over the voxels again; `"torch"` checks the same
    rules, in the same order and with the same messages, on the pair's device (and returns
    None); `"auto"` is "compiled" for CPU pairs and "torch" for others.
    """
    if backend not in CHECK_BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (expected one of {', '.join(CHECK_BACKENDS)})")
    pair = check_layout(pair, source)
    if pair.numel() == 0:
        return None
    if backend == "auto":
        backend = "compiled" if pair.device.type == "cpu" else "torch"
    if backend == "torch":
        _check_with_torch(pair, label_set, source)
        return None
    return _check_compiled(pair.cpu(), label_set, source)


def check_layout(pair, source: str = "panoptic pair") -> torch.Tensor:
    """The pair as a plain tensor, refused unless it is (2, *spatial) with 2 or 3 spatial axes and integer."""
    pair = torch.as_tensor(pair).as_subclass(torch.Tensor)  # plain tensor: no meta bookkeeping per op
    if pair.ndim not in (3, 4) or pair.shape[0] != 2:
        raise PanopticError(f"{source}: expected shape (2, *spatial) with 2 or 3 spatial axes, got {tuple(pair.shape)}")
    if pair.dtype.is_floating_point or pair.dtype == torch.bool:
        raise PanopticError(f"{source}: expected an integer dtype, got {pair.dtype}")
    return pair


def _check_compiled(pair: torch.Tensor, label_set: LabelSet | None, source: str) -> PairStats:
    """The rules of `check_pair` from one compiled pass; the stats gathered are returned."""
    n_labels = label_set.max_id + 1 if label_set else None
    stats = pair_stats(pair, n_labels)
    if stats is None:  # the pass stops at a negative id or a label beyond the set: say which
        if int(pair.min()) < 0:
            raise PanopticError(f"{source}: negative label or instance ids")
        beyond = torch.unique(pair[LABEL][pair[LABEL] >= n_labels]).tolist()
        raise PanopticError(f"{source}: label ids {beyond} are not in the label set {label_set.ids}")
    ids = stats.ids
    _check_rules(*stats.label_voxels, ids, stats.label_low[ids], stats.label_high[ids], label_set, source)
    return stats


def check_segments(segments: np.ndarray, label_set: LabelSet | None = None, source: str = "panoptic pair") -> None:
    """The rules of `check_pair` (but shape, dtype and negative ids, which a counting pass refuses
    first) from the segments a pair holds: (label, instance, voxels) rows, as a contingency
    table lists them. A caller that has counted them need not pass over the voxels again."""
    segments = np.asarray(segments, dtype=np.int64).reshape(-1, 3)
    segments = segments[segments[:, 2] > 0]
    labels, instances, voxels = segments.T
    n_labels = max(int(labels.max(initial=0)), label_set.max_id if label_set else 0) + 1
    without = np.bincount(labels[instances == 0], weights=voxels[instances == 0], minlength=n_labels)
    with_instance = np.bincount(labels[instances > 0], weights=voxels[instances > 0], minlength=n_labels)
    things = instances > 0
    ids, where = np.unique(instances[things], return_inverse=True)
    low = np.full(len(ids), np.iinfo(np.int64).max)
    high = np.full(len(ids), -1)
    np.minimum.at(low, where, labels[things])
    np.maximum.at(high, where, labels[things])
    _check_rules(without, with_instance, ids, low, high, label_set, source)


def _check_rules(without: np.ndarray, with_instance: np.ndarray, ids: np.ndarray, label_low: np.ndarray,
                 label_high: np.ndarray, label_set: LabelSet | None, source: str) -> None:
    """The rules of `check_pair` on what a pass counted: per label its voxels without / with an
    instance, and per instance id (`ids`) the smallest and largest label among its voxels."""
    if label_set is not None:
        unknown = [v for v in np.flatnonzero(without + with_instance).tolist() if v and v not in label_set]
        if unknown:
            raise PanopticError(f"{source}: label ids {unknown} are not in the label set {label_set.ids}")
    if with_instance[0]:
        raise PanopticError(f"{source}: instance ids on background (label 0) voxels")
    if label_set is not None:
        if any(with_instance[c] for c in label_set.stuff_ids if c < len(with_instance)):
            raise PanopticError(f"{source}: stuff classes must carry instance 0")
        if any(without[c] for c in label_set.thing_ids if c < len(without)):
            raise PanopticError(f"{source}: thing voxels with instance 0")
    bad = ids[label_low != label_high].tolist()
    if bad:
        raise PanopticError(f"{source}: instance ids {bad[:10]} span more than one class")


def _check_with_torch(pair: torch.Tensor, label_set: LabelSet | None, source: str) -> None:
    """The rules of `check_pair` in torch ops on the pair's device."""
    label, instance = pair[LABEL].reshape(-1), pair[INSTANCE].reshape(-1)
    label_max = int(label.max())
    if int(label.min()) < 0 or int(instance.min()) < 0:
        raise PanopticError(f"{source}: negative label or instance ids")
    if label_set is not None:
        # labels missing from the set can only be present when some id up to the maximum is missing
        unknown = []
        if any(v not in label_set for v in range(1, label_max + 1)):
            unknown = [v for v in torch.unique(label).tolist() if v and v not in label_set]
        if unknown:
            raise PanopticError(f"{source}: label ids {unknown} are not in the label set {label_set.ids}")
    foreground = torch.nonzero(instance).flatten()
    ids, fg_labels = instance[foreground].long(), label[foreground].long()
    if bool((fg_labels == 0).any()):
        raise PanopticError(f"{source}: instance ids on background (label 0) voxels")
    if label_set is not None:
        if label_set.stuff_ids and bool(torch.isin(fg_labels, torch.as_tensor(label_set.stuff_ids, device=label.device)).any()):
            raise PanopticError(f"{source}: stuff classes must carry instance 0")
        thing_voxels = sum(int(torch.count_nonzero(label == t)) for t in label_set.thing_ids if t <= label_max)
        if thing_voxels != foreground.numel():
            raise PanopticError(f"{source}: thing voxels with instance 0")
    if ids.numel():
        lo = torch.full((int(ids.max()) + 1,), torch.iinfo(torch.int64).max, device=ids.device).scatter_reduce(0, ids, fg_labels, "amin")
        hi = torch.full_like(lo, -1).scatter_reduce(0, ids, fg_labels, "amax")
        bad = torch.nonzero((hi >= 0) & (lo != hi)).flatten().tolist()
        if bad:
            raise PanopticError(f"{source}: instance ids {bad[:10]} span more than one class")


def encode_panoptic(pair: torch.Tensor, divisor: int = PANOPTIC_DIVISOR) -> torch.Tensor:
    """One integer per voxel, `label * divisor + instance`; refuses instance ids >= divisor."""
    instance = pair[INSTANCE]
    if instance.numel() and int(instance.max()) >= divisor:
        raise PanopticError(
            f"instance id {int(instance.max())} does not fit divisor {divisor}: raise the divisor "
            f"(e.g. {10 ** len(str(int(instance.max())))}) instead of letting ids wrap"
        )
    return pair[LABEL].long() * divisor + instance.long()


def decode_panoptic(panoptic: torch.Tensor, divisor: int = PANOPTIC_DIVISOR) -> torch.Tensor:
    """Inverse of `encode_panoptic`: a (2, *spatial) int64 pair."""
    panoptic = panoptic.long()
    return torch.stack([panoptic // divisor, panoptic % divisor])


def relabel_sequential(instance: np.ndarray) -> np.ndarray:
    """Instance ids renumbered 1..N in order of first appearance along the flattened array; 0 stays 0."""
    ids, first = np.unique(instance.ravel(), return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first)]
    lut = np.zeros(int(instance.max()) + 1 if instance.size else 1, dtype=np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[instance].astype(instance.dtype, copy=False)


def instance_ids(instance) -> np.ndarray:
    """The instance ids (> 0) that have at least one voxel, ascending (one counting pass, not a sort).

    A numpy array is counted by numpy: the slide writer's thread calls this, and a PyTorch operation
    there would give that thread an OpenMP team of its own (see `wsi.infer.read_ahead`)."""
    if isinstance(instance, np.ndarray):
        values = instance.reshape(-1)
        return np.flatnonzero(np.bincount(values)[1:]) + 1 if values.size else np.zeros(0, dtype=np.int64)
    values = torch.as_tensor(instance).as_subclass(torch.Tensor).reshape(-1)
    if values.numel() == 0:
        return np.zeros(0, dtype=np.int64)
    counts = torch.bincount(values if values.dtype in (torch.uint8, torch.int64) else values.long())
    return torch.nonzero(counts[1:]).flatten().cpu().numpy() + 1


def consecutive_ids(instance: torch.Tensor) -> tuple[torch.Tensor, dict[int, int]]:
    """Instance ids renumbered 1..N in their present order, and the map {old id: new id}.

    Keeping the order keeps meaning: ids ranked by score (as grouping numbers them) stay ranked.
    """
    present = instance_ids(instance)
    lut = torch.zeros(int(present[-1]) + 1 if present.size else 1, dtype=torch.int64, device=instance.device)
    lut[torch.as_tensor(present, device=instance.device)] = torch.arange(1, len(present) + 1, device=instance.device)
    renumbered = lut[instance.long()].to(instance.dtype)
    return renumbered, {int(old): new for new, old in enumerate(present.tolist(), start=1)}


def instances_from_semantic(label: np.ndarray, thing_ids: Sequence[int], connectivity: int | None = None) -> np.ndarray:
    """Instance map from a semantic map: connected components of each thing class, ids 1..N over all classes.

    `connectivity` is cc3d's (2D: 4 or 8, 3D: 6, 18 or 26); the default is full connectivity
    (8 or 26), which never splits a lesion that touches itself only at a corner.
    """
    import cc3d

    label = np.asarray(label)
    if connectivity is None:
        connectivity = 8 if label.ndim == 2 else 26
    things = np.where(np.isin(label, np.asarray(list(thing_ids))), label, 0)
    if not things.any():
        return np.zeros(label.shape, dtype=np.int32)
    components = cc3d.connected_components(things, connectivity=connectivity)
    return components.astype(np.int32, copy=False)
