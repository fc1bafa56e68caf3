"""The contingency table of two panoptic pairs: every segment, its area, and every overlap.

A *segment* is a (label, instance) key: a thing instance, or one whole stuff class (instance
0), or background. Everything evaluation needs — IoU, Dice, matching, void handling,
lesion-wise counts — follows from this table, so the voxels are read once:

- a label confusion histogram over all voxels gives the overlaps of instance-0 segments
  (stuff with stuff, background, void);
- the few voxels where either side has an instance (the things) are gathered once and
  their (gt key, pred key) pairs counted.

It runs with torch on the pairs' device (CPU or GPU); numpy arrays are viewed without copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PanopticError


@dataclass(frozen=True)
class Contingency:
    """Segments of a ground-truth and a predicted pair and their overlaps (numpy, int64 voxel counts).

    `gt_segments`/`pred_segments` are (n, 3) arrays of (label, instance, area). `overlaps` is
    (k, 3): (gt segment row, pred segment row, intersecting voxels), only non-empty overlaps.
    Background (label 0) segments are kept: they carry the misses and false alarms.
    """

    gt_segments: np.ndarray
    pred_segments: np.ndarray
    overlaps: np.ndarray

    def dense(self) -> np.ndarray:
        """The overlaps as a dense (n_gt, n_pred) matrix."""
        out = np.zeros((len(self.gt_segments), len(self.pred_segments)), dtype=np.int64)
        out[self.overlaps[:, 0], self.overlaps[:, 1]] = self.overlaps[:, 2]
        return out


def _as_tensor(pair) -> torch.Tensor:
    if isinstance(pair, np.ndarray):
        pair = torch.from_numpy(np.ascontiguousarray(pair) if pair.dtype.byteorder not in "=|" else pair)
    pair = pair.as_subclass(torch.Tensor) if isinstance(pair, torch.Tensor) else torch.as_tensor(pair)
    if pair.dtype in (torch.uint16, torch.uint32, torch.uint64):
        pair = pair.to(torch.int64)
    return pair


def _histogram(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of small non-negative integer codes, in the narrowest dtype that torch counts fast."""
    if bins <= 256:
        codes = codes.to(torch.uint8)
    return torch.bincount(codes.reshape(-1), minlength=bins)[:bins]


def contingency(pred, gt, n_labels: int | None = None, backend: str | None = None) -> Contingency:
    """Build the contingency table of a predicted and a ground-truth pair of the same shape.

    `pred` and `gt` are (2, *spatial) integer pairs (torch tensors on one device, or numpy).
    `n_labels` (one more than the largest label id, e.g. from the label set) saves a pass;
    labels outside it are refused.
    CPU data goes through a compiled parallel kernel (`backend="numba"`); tensors on an
    accelerator through torch (`backend="torch"`, which also runs on the CPU).
    """
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    if pred.shape != gt.shape or pred.ndim < 3 or pred.shape[0] != 2:
        raise PanopticError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must both be (2, *spatial) pairs of one shape")
    if pred.device != gt.device:
        gt = gt.to(pred.device)
    gl, gi = gt[0].reshape(-1), gt[1].reshape(-1)
    pl, pi = pred[0].reshape(-1), pred[1].reshape(-1)
    if gl.numel() == 0:
        raise PanopticError("empty pairs")
    if n_labels is None:
        n_labels = max(int(gl.max()), int(pl.max())) + 1
    backend = backend or ("numba" if gl.device.type == "cpu" else "torch")
    if backend == "numba":
        from .._kernels import confusion_and_things

        confusion, sub = confusion_and_things(*(t.contiguous().numpy() for t in (gl, gi, pl, pi)), n_labels)
        if confusion is None:
            raise PanopticError(f"negative ids, or labels of {n_labels} or more (not in the label set)")
        pairs = _count_pairs(torch.from_numpy(sub), n_labels, int(sub[1].max(initial=0)) + 1, int(sub[3].max(initial=0)) + 1)
    elif backend == "torch":
        if min(int(t.min()) for t in (gl, gi, pl, pi)) < 0 or max(int(gl.max()), int(pl.max())) >= n_labels:
            raise PanopticError(f"negative ids, or labels of {n_labels} or more (not in the label set)")
        confusion, pairs = _torch_pass(gl, gi, pl, pi, n_labels, int(gi.max()) + 1, int(pi.max()) + 1)
    else:
        raise ValueError(f"unknown backend {backend!r} (expected 'numba' or 'torch')")
    return _table(confusion, pairs)


def _torch_pass(gl, gi, pl, pi, n_labels: int, g_width: int, p_width: int):
    """The same pass in torch ops, for tensors on any device."""
    small = torch.uint8 if n_labels <= 16 else (torch.int32 if n_labels <= 46340 else torch.int64)
    codes = gl.to(small, copy=True).mul_(n_labels).add_(pl.to(small))  # a copy: never write into the inputs
    confusion = _histogram(codes, n_labels * n_labels).reshape(n_labels, n_labels).cpu().numpy().astype(np.int64)
    del codes
    where = torch.nonzero(gi.bitwise_or(pi) if gi.dtype == pi.dtype else (gi > 0) | (pi > 0)).flatten()
    sub = torch.stack([gl[where], gi[where], pl[where], pi[where]]).long()
    return confusion, _count_pairs(sub, n_labels, g_width, p_width)


def _count_pairs(sub: torch.Tensor, n_labels: int, g_width: int, p_width: int) -> np.ndarray:
    """(k, 5) rows (gt label, gt instance, pred label, pred instance, voxels) of the instance voxels."""
    g_key = sub[0] * g_width + sub[1]
    p_key = sub[2] * p_width + sub[3]
    p_keys_total = n_labels * p_width
    joint = g_key * p_keys_total + p_key
    del g_key, p_key
    if n_labels * g_width * p_keys_total <= max(1 << 16, 4 * joint.numel()):
        counts = torch.bincount(joint, minlength=1)
        joint = torch.nonzero(counts).flatten()
        counts = counts[joint]
    else:
        joint, counts = torch.unique(joint, return_counts=True)
    joint, counts = joint.cpu().numpy(), counts.cpu().numpy().astype(np.int64)
    g_key, p_key = np.divmod(joint, p_keys_total)
    return np.stack([g_key // g_width, g_key % g_width, p_key // p_width, p_key % p_width, counts], 1).reshape(-1, 5)


def _table(confusion: np.ndarray, pairs: np.ndarray) -> Contingency:
    """Segments and overlaps from the label confusion and the instance voxels' pairs."""
    counts = pairs[:, 4]
    # pure instance-0 overlaps: the confusion minus what the instance voxels contributed to it
    subset_confusion = np.zeros_like(confusion)
    np.add.at(subset_confusion, (pairs[:, 0], pairs[:, 2]), counts)
    stuff_overlap = confusion - subset_confusion

    gt_keys, gt_area = _segments(confusion.sum(1), pairs[:, 0], pairs[:, 1], counts)
    pred_keys, pred_area = _segments(confusion.sum(0), pairs[:, 2], pairs[:, 3], counts)
    gt_row = {k: r for r, k in enumerate(map(tuple, gt_keys.tolist()))}
    pred_row = {k: r for r, k in enumerate(map(tuple, pred_keys.tolist()))}

    rows = []
    a, b = np.nonzero(stuff_overlap)
    for g, p, n in zip(a.tolist(), b.tolist(), stuff_overlap[a, b].tolist()):
        rows.append((gt_row[(g, 0)], pred_row[(p, 0)], n))
    for g_l, g_i, p_l, p_i, n in pairs.tolist():
        rows.append((gt_row[(g_l, g_i)], pred_row[(p_l, p_i)], n))
    overlaps = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return Contingency(
        np.column_stack([gt_keys, gt_area]).astype(np.int64),
        np.column_stack([pred_keys, pred_area]).astype(np.int64),
        overlaps,
    )


def _segments(label_totals: np.ndarray, labels: np.ndarray, instances: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, instance) keys and areas: instance-0 segments first (by label), then things (by label, id).

    `labels`, `instances`, `counts` describe the instance voxels' pairs, one side of them.
    """
    things = instances > 0
    thing_code = labels[things] * (int(instances.max(initial=0)) + 1) + instances[things]
    codes, inverse = np.unique(thing_code, return_inverse=True)
    thing_area = np.bincount(inverse, weights=counts[things], minlength=len(codes)).astype(np.int64)
    width = int(instances.max(initial=0)) + 1
    thing_keys = np.stack([codes // width, codes % width], 1).astype(np.int64)
    per_label = np.bincount(thing_keys[:, 0], weights=thing_area, minlength=len(label_totals)).astype(np.int64)
    zero_area = label_totals - per_label[: len(label_totals)]
    zero_labels = np.flatnonzero(zero_area)
    zero_keys = np.stack([zero_labels, np.zeros_like(zero_labels)], 1)
    return np.concatenate([zero_keys, thing_keys]), np.concatenate([zero_area[zero_labels], thing_area])
