"""From the network's heads to a panoptic pair, in torch on whatever device the heads are on.

`group_instances` (bottom-up, Panoptic-DeepLab): argmax -> thing mask -> center peaks (max-pool
non-maximum suppression, threshold, top-k; optionally more centers from the peaks of the offset
votes that the heatmap missed) -> each thing voxel joins the peak nearest to where
its offset points (foreground voxels only, in chunks: never a centers x voxels tensor over a
whole CT) -> instance class by majority vote -> instances below a size (mm³ in 3D, mm² in 2D)
dropped -> stuff keeps instance 0 -> a confidence score per instance.

Two implementations of the same grouping, chosen by `backend=`: "compiled" (one numba pass
over the voxels, CPU) and "torch" (any device); "auto" takes the compiled pass for CPU heads.

`component_instances` is the baseline and fallback: connected components of each thing class
of the argmax.

`instance_centres` and `restore_instances` carry the instances found on the network's grid
through the inversion onto the source grid, where nearest-neighbour sampling can miss the
smallest: each keeps at least its centre voxel, or is dropped by name, and ids stay 1..N.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .io.geometry import ras_to_voxel, spacing_from_affine, voxel_to_ras
from .labels import LabelSet
from .pair import consecutive_ids, instance_ids, instances_from_semantic

log = logging.getLogger(__name__)

CHUNK = 1 << 18  # thing voxels assigned per step; with K centers, a CHUNK x K distance block
BACKENDS = ("auto", "torch", "compiled")
GATHER_COST = 25  # a gathered window voxel costs about 25 shifted-maximum taps (measured on CPU, 2D and 3D)


@dataclass(frozen=True, kw_only=True)
class PostprocessConfig:
    """Knobs of the grouping, in physical units where they have one. Keyword-only: seven floats
    in a row are too easy to pass in the wrong slot.

    `min_size_mm` is the smallest instance kept, in mm³ for volumes and in mm² for images
    (voxel count times the voxel's physical size). `min_volume_mm3` is its old name: still
    accepted, with a `DeprecationWarning`.
    """

    center_threshold: float = 0.3
    nms_mm: float = 5.0  # window of the peak non-maximum suppression
    top_k: int = 500
    min_size_mm: float = 0.0  # mm³ (3D) or mm² (2D)
    vote_sigma_mm: float = 0.0  # > 0: also look for centers in the offset votes (`vote_centers`); 0: heatmap only
    vote_min: float = 10.0  # votes within about a sigma that such a center needs
    vote_gap_mm: float = 5.0  # how far from every heatmap peak it must lie
    min_volume_mm3: float | None = field(default=None, repr=False, compare=False)  # deprecated: min_size_mm

    def __post_init__(self) -> None:
        if self.min_volume_mm3 is not None:
            object.__setattr__(self, "min_size_mm", float(deprecated_min_size(self.min_volume_mm3, stacklevel=4)))
            object.__setattr__(self, "min_volume_mm3", None)


def deprecated_min_size(min_volume_mm3: float, stacklevel: int = 3) -> float:
    """`min_volume_mm3` (the old name, an area in 2D) as `min_size_mm`, with a `DeprecationWarning`."""
    warnings.warn("min_volume_mm3 is deprecated: use min_size_mm (mm³ in 3D, mm² in 2D)", DeprecationWarning,
                  stacklevel=stacklevel)
    return min_volume_mm3


def find_centers(center: torch.Tensor, spacing: Sequence[float], config: PostprocessConfig) -> torch.Tensor:
    """(K, ndim) voxel coordinates of the heatmap's peaks, strongest first.

    A peak is a voxel above the threshold that is the maximum of the NMS window around it. Two
    ways give the same peaks, and the cheaper one for this heatmap is taken: gathering the windows
    of the voxels above the threshold only (a few milliseconds where a dense max-pool over a whole
    CT costs a second), or a separable window maximum, one axis after the other (a box's maximum is the
    maximum of its rows' maxima), when many voxels are candidates, as on a tile of dense nuclei.
    """
    heat = center[0] if center.ndim == len(spacing) + 1 else center
    ndim = heat.ndim
    # the window spans nms_mm, but at least one voxel either side: thick slices still get suppression across them
    half = [min(max(1, int(round(config.nms_mm / (2 * s)))), n - 1) for s, n in zip(spacing[:ndim], heat.shape)]
    candidates = torch.nonzero(heat > config.center_threshold)
    if candidates.shape[0] == 0:
        return candidates
    window = [2 * h + 1 for h in half]
    if GATHER_COST * candidates.shape[0] * math.prod(window) > heat.numel() * sum(window):
        peaks = candidates[heat[tuple(candidates.T)].float() >= _window_max(heat, half)[tuple(candidates.T)]]
    else:
        peaks = _gathered_peaks(heat, candidates, half)
    order = torch.argsort(heat[tuple(peaks.T)], descending=True)[: config.top_k]
    return peaks[order]


def _window_max(heat: torch.Tensor, half: Sequence[int]) -> torch.Tensor:
    """The maximum of the (2h+1)-wide box around every voxel (outside the grid counts as -inf), axis by
    axis, as running maxima of shifted views: ~1 ns per voxel and tap on a CPU, where torch's
    stride-1 max-pool costs tens."""
    out = heat.float()
    for axis, h in enumerate(half):
        n = out.shape[axis]
        padded = out.new_full([s + 2 * h if a == axis else s for a, s in enumerate(out.shape)], float("-inf"))
        padded.narrow(axis, h, n).copy_(out)
        result = padded.narrow(axis, 0, n).clone()
        for shift in range(1, 2 * h + 1):
            torch.maximum(result, padded.narrow(axis, shift, n), out=result)
        out = result
    return out


def _gathered_peaks(heat: torch.Tensor, candidates: torch.Tensor, half: Sequence[int]) -> torch.Tensor:
    """The candidates that are the maximum of their window, windows gathered in chunks."""
    ndim = heat.ndim
    padded = F.pad(heat.float()[None, None], [h for h in reversed(half) for _ in (0, 1)], value=float("-inf"))[0, 0]
    steps = torch.stack(torch.meshgrid(*[torch.arange(-h, h + 1, device=heat.device) for h in half], indexing="ij"), -1)
    steps = steps.reshape(-1, ndim) + torch.as_tensor(half, device=heat.device)
    strides = torch.as_tensor(padded.stride(), device=heat.device)
    flat = padded.reshape(-1)
    per_chunk = max(1, CHUNK // steps.shape[0])
    peaks = []
    for start in range(0, candidates.shape[0], per_chunk):
        chunk = candidates[start:start + per_chunk]
        around = flat[((chunk[:, None, :] + steps[None]) * strides).sum(-1)]
        peaks.append(chunk[heat[tuple(chunk.T)].float() >= around.max(dim=1).values])
    return torch.cat(peaks)


def _pointed(voxels: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(N, ndim) float: where each of the (N, ndim) voxels' offsets point, in voxels."""
    return voxels.float() + offset[(slice(None),) + tuple(voxels.T)].T.float()


def vote_centers(pointed: torch.Tensor, shape: Sequence[int], centers: torch.Tensor,
                 spacing: Sequence[float], config: PostprocessConfig) -> torch.Tensor:
    """`centers` plus the centers that the heatmap missed but the offsets point at.

    A small lesion touching a large one can lie on the large one's heatmap slope and get no
    peak of its own, while its voxels' offsets still point at its own center. Each thing voxel
    votes where its offset points; the votes are blurred by a Gaussian of `vote_sigma_mm` whose
    weights peak at 1 (a peak's value is about the votes within a sigma), and blurred peaks with
    at least `vote_min` votes and `vote_gap_mm` from every heatmap peak become centers too.
    `pointed` is (N, ndim): each thing voxel plus its offset, in voxels, on a grid of `shape`.
    """
    ndim = pointed.shape[1]
    shape = torch.as_tensor(list(shape), device=pointed.device)
    scale = torch.as_tensor(list(spacing)[:ndim], dtype=torch.float32, device=pointed.device)
    target = torch.minimum(torch.round(pointed).long().clamp(min=0), shape - 1)
    radius = [max(1, int(3 * config.vote_sigma_mm / float(s) + 0.5)) for s in scale]
    low = torch.clamp(target.min(0).values - torch.as_tensor(radius, device=target.device), min=0)
    high = torch.minimum(target.max(0).values + torch.as_tensor(radius, device=target.device) + 1, shape)
    votes = torch.zeros(tuple((high - low).tolist()), dtype=torch.float32, device=target.device)
    votes.index_put_(tuple((target - low).T), torch.ones(len(target), device=target.device), accumulate=True)
    blurred = votes[None, None]
    conv = F.conv3d if ndim == 3 else F.conv2d
    for axis, (r, s) in enumerate(zip(radius, scale.tolist())):
        x = torch.arange(-r, r + 1, dtype=torch.float32, device=target.device) * s
        kernel = torch.exp(-0.5 * (x / config.vote_sigma_mm) ** 2).reshape([1, 1] + [-1 if a == axis else 1 for a in range(ndim)])
        blurred = conv(blurred, kernel, padding=[r if a == axis else 0 for a in range(ndim)])
    # the blurred votes are a heatmap whose values count votes: its peaks need `vote_min` of them
    vote_peaks = PostprocessConfig(center_threshold=config.vote_min, nms_mm=config.nms_mm, top_k=config.top_k)
    peaks = find_centers(blurred[0, 0], spacing, vote_peaks)
    peaks = peaks + low
    if centers.shape[0] and peaks.shape[0]:
        peaks = peaks[torch.cdist(peaks.float() * scale, centers.float() * scale).min(dim=1).values > config.vote_gap_mm]
    return torch.cat([centers, peaks.to(centers.dtype)])


def group_instances(
    semantic_logits: torch.Tensor,
    center: torch.Tensor,
    offset: torch.Tensor,
    label_set: LabelSet,
    spacing: Sequence[float],
    config: PostprocessConfig = PostprocessConfig(),
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[int, float]]:
    """(2, *spatial) int32 pair and {instance id: confidence} from the three heads of one image.

    `semantic_logits` is (C, *sp) with channel index = class id, `center` (1, *sp), `offset`
    (ndim, *sp) in voxels. Distances between voxels and centers are measured in mm.
    `backend`: "compiled" is one parallel numba pass over the voxels (`_kernels.assign_to_centers`;
    heads elsewhere are copied to the CPU and the pair comes back to their device), "torch" runs
    on the heads' device, "auto" takes "compiled" for CPU heads and "torch" for others. Both
    give the same pair and scores (tests/test_network.py compares them).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if backend == "auto":
        backend = "compiled" if semantic_logits.device.type == "cpu" else "torch"
    if backend == "torch":
        return _group_with_torch(semantic_logits, center, offset, label_set, spacing, config)
    device = semantic_logits.device
    pair, scores = _group_on_cpu(*(t.detach().cpu() for t in (semantic_logits, center, offset)), label_set, spacing, config)
    return pair.to(device), scores


def _group_with_torch(semantic_logits, center, offset, label_set, spacing, config) -> tuple[torch.Tensor, dict[int, float]]:
    """The grouping in torch on the heads' device, thing voxels in chunks."""
    semantic = torch.argmax(semantic_logits, dim=0)
    ndim = semantic.ndim
    scale = torch.as_tensor(list(spacing)[:ndim], dtype=torch.float32, device=semantic.device)
    things = torch.as_tensor(label_set.thing_ids, device=semantic.device)
    thing_mask = torch.isin(semantic, things)
    instance = torch.zeros_like(semantic, dtype=torch.int32)
    scores: dict[int, float] = {}
    centers = find_centers(center, spacing, config)
    voxels = torch.nonzero(thing_mask)
    pointed = _pointed(voxels, offset)
    if config.vote_sigma_mm > 0 and voxels.shape[0]:
        centers = vote_centers(pointed, semantic.shape, centers, spacing, config)
    if centers.shape[0] and voxels.shape[0]:
        target = pointed * scale
        anchors = centers.float() * scale
        owner = torch.empty(voxels.shape[0], dtype=torch.long, device=semantic.device)
        for start in range(0, voxels.shape[0], CHUNK):
            owner[start:start + CHUNK] = torch.cdist(target[start:start + CHUNK], anchors).argmin(dim=1)
        ids = owner + 1
        instance[tuple(voxels.T)] = ids.to(torch.int32)
        # class of each instance: majority vote of its voxels' argmax among the thing classes
        n_ids = centers.shape[0] + 1
        votes = torch.zeros(n_ids, int(things.max()) + 1, device=semantic.device)
        votes.index_put_((ids, semantic[tuple(voxels.T)]), torch.ones_like(ids, dtype=torch.float32), accumulate=True)
        winner = votes.argmax(dim=1)
        semantic[tuple(voxels.T)] = winner[ids]
        counts = torch.bincount(ids, minlength=n_ids)
        voxel_size = float(torch.prod(scale))  # mm³, or mm² in 2D
        too_small = counts.float() * voxel_size < config.min_size_mm
        drop = too_small[ids]
        semantic[tuple(voxels[drop].T)] = 0
        instance[tuple(voxels[drop].T)] = 0
        confidence = torch.zeros(n_ids, device=semantic.device)
        # softmax only where it is needed: the thing voxels' class probability
        thing_logits = semantic_logits[(slice(None),) + tuple(voxels.T)].float()
        class_probability = torch.softmax(thing_logits, dim=0).gather(0, winner[ids][None])[0]
        confidence.index_add_(0, ids, class_probability)
        peak = center.reshape(-1, *semantic.shape)[0][tuple(centers.T)]
        for i in torch.nonzero((counts > 0) & ~too_small).flatten().tolist():
            scores[i] = float(peak[i - 1] * confidence[i] / counts[i])
    else:
        semantic[thing_mask] = 0
    instance, scores = _renumber(instance, scores)
    return torch.stack([semantic.to(torch.int32), instance]), scores


def _group_on_cpu(semantic_logits, center, offset, label_set, spacing, config) -> tuple[torch.Tensor, dict[int, float]]:
    """The same grouping as the torch path: argmax, nearest center and the votes fused in one pass over the voxels."""
    import numpy as np

    from ._kernels import assign_to_centers, relabel

    logits = np.ascontiguousarray(semantic_logits.detach().float().numpy())
    ndim = logits.ndim - 1
    scale = np.asarray(list(spacing)[:ndim], dtype=np.float32)
    centers = find_centers(center, spacing, config)
    is_thing = np.zeros(logits.shape[0], dtype=np.bool_)
    is_thing[[t for t in label_set.thing_ids if t < logits.shape[0]]] = True
    offsets = np.ascontiguousarray(offset.detach().float().numpy())
    semantic, owner, votes, probability = assign_to_centers(logits, offsets, centers.numpy(), scale, is_thing)
    if config.vote_sigma_mm > 0 and np.any(owner):
        voxels = torch.from_numpy(np.stack(np.unravel_index(np.flatnonzero(owner), logits.shape[1:]), axis=1))
        pointed = _pointed(voxels, offset)
        more = vote_centers(pointed, logits.shape[1:], centers, spacing, config)
        if more.shape[0] > centers.shape[0]:  # a second pass only when the votes found centers
            centers = more
            semantic, owner, votes, probability = assign_to_centers(logits, offsets, centers.numpy(), scale, is_thing)
    counts = votes.sum(axis=1)
    winner = votes.argmax(axis=1)
    too_small = counts * float(np.prod(scale)) < config.min_size_mm
    heat = center.reshape(-1, *logits.shape[1:])[0]
    peak = heat[tuple(centers.T)].float().numpy() if len(centers) else np.zeros(0, np.float32)
    scores = {}
    for i in np.nonzero((counts > 0) & ~too_small)[0].tolist():
        scores[i] = float(peak[i - 1] * (probability[i, winner[i]] / counts[i]))
    order = sorted(scores, key=lambda i: -scores[i])
    new_id = np.zeros(len(counts), np.int32)
    new_id[order] = np.arange(1, len(order) + 1)
    new_class = np.where(new_id > 0, winner, 0)
    instance = relabel(semantic, owner, new_class, new_id)
    shape = logits.shape[1:]
    pair = torch.stack([torch.from_numpy(semantic.reshape(shape)), torch.from_numpy(instance.reshape(shape))])
    return pair, {new: scores[old] for new, old in enumerate(order, start=1)}


def _renumber(instance: torch.Tensor, scores: dict[int, float]) -> tuple[torch.Tensor, dict[int, float]]:
    """Instance ids 1..N in order of decreasing score."""
    order = sorted(scores, key=lambda i: -scores[i])
    lut = torch.zeros(int(instance.max()) + 1, dtype=torch.int32, device=instance.device)
    for new, old in enumerate(order, start=1):
        lut[old] = new
    return lut[instance.long()], {new: scores[old] for new, old in enumerate(order, start=1)}


def component_instances(semantic_logits: torch.Tensor, label_set: LabelSet, connectivity: int | None = None) -> torch.Tensor:
    """(2, *spatial) pair from the argmax alone: instances are connected components of each thing class."""
    semantic = torch.argmax(semantic_logits, dim=0)
    label = semantic.cpu().numpy()
    instance = instances_from_semantic(label, label_set.thing_ids, connectivity)
    return torch.stack([semantic.to(torch.int32), torch.from_numpy(instance).to(semantic.device)])


Centres = dict[int, tuple[int, tuple[float, ...]]]
"""{instance id: (class id, RAS mm position of its centre voxel)}."""


def instance_centres(pair: torch.Tensor, affine) -> Centres:
    """Class and patient position (RAS mm) of each instance's centre voxel: the member voxel nearest
    (in mm) to its centroid — a voxel of the instance even where a curved lesion's centroid is not.

    Recorded on the grid the instances were found on, so that `restore_instances` can still place
    an instance that inversion onto a coarser source grid would lose.
    """
    from ._kernels import instance_summary

    arr = np.asarray(pair.detach().cpu() if torch.is_tensor(pair) else pair)
    label, instance = arr[0], arr[1]
    ids = instance_ids(instance)
    if ids.size == 0:
        return {}
    affine = np.asarray(affine, dtype=float)
    summary = instance_summary(label, instance, ids, spacing_from_affine(affine, instance.ndim))
    centre = summary["centre"]
    ras = voxel_to_ras(affine, centre)
    return {int(i): (int(label[tuple(c)]), tuple(float(v) for v in position))
            for i, c, position in zip(ids.tolist(), centre, ras)}


def restore_instances(pair: torch.Tensor, affine, centres: Centres,
                      scores: dict[int, float]) -> tuple[torch.Tensor, dict[int, float], list[int]]:
    """The pair on the source grid with every instance found kept, ids 1..N, scores keyed by the new ids.

    Nearest-neighbour inversion onto a coarser grid misses instances smaller than its voxels. Each
    missing instance of `centres` gets the source voxel holding its centre, when that lies inside
    the grid and belongs to no other instance (best-scored first: lower ids win a shared voxel);
    any other is dropped, logged, and its id (as found) returned. `affine` is the source grid's.
    """
    present = set(instance_ids(pair[1]).tolist())
    missing = [i for i in sorted(centres) if i not in present]
    dropped: list[int] = []
    if missing:
        pair = pair.clone()
        shape = tuple(pair.shape[1:])
        positions = np.array([centres[i][1] for i in missing])
        voxels = np.rint(ras_to_voxel(np.asarray(affine, dtype=float), positions, len(shape))).astype(np.int64)
        for i, voxel in zip(missing, voxels.tolist()):
            where = tuple(voxel)
            if all(0 <= v < n for v, n in zip(voxel, shape)) and int(pair[1][where]) == 0:
                pair[0][where], pair[1][where] = centres[i][0], i
            else:
                dropped.append(i)
    if dropped:
        log.warning("%d instance(s) found on the network's grid have no voxel on the source grid and were "
                    "dropped (ids as found: %s)", len(dropped), dropped)
    instance, new_ids = consecutive_ids(pair[1])
    pair = torch.stack([pair[0], instance])
    return pair, {new_ids[old]: value for old, value in scores.items() if old in new_ids}, dropped
