"""The tiled pipeline run on a truth instead of a network: what a perfect network would output.

`TruthHeads` is a `Predictor` whose input is a truth pair (label, instance) and whose heads are
that truth's training targets (one-hot logits, centre heatmap, offsets). `open_truth` reads the
truth that `medpanoptic phantom --wsi` writes beside its slide as such a two-channel slide, by
region. Together they test stitching without a network's errors, and measure the pipeline's
own memory and cost on slides far too large to run a network over on a CPU (the network's
memory is per tile: the same at any slide size).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..labels import LabelSet
from ..targets import panoptic_targets
from .slide import Box, check_box


class TruthHeads:
    """A `Predictor` over a slide whose two channels are a truth pair: its heads are the truth's targets."""

    device = torch.device("cpu")

    def __init__(self, label_set: LabelSet, pixel_size_mm: Sequence[float], sigma_mm: float = 0.002) -> None:
        self.label_set, self.pixel_size_mm, self.sigma_mm = label_set, tuple(pixel_size_mm), sigma_mm

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """The targets of the tile's truth, its ids renumbered 1..N first: a network's tile knows no
        slide-wide ids, and the targets' statistics are sized by the largest id (at 32k² a truth's ids
        reach 3e5: 240 MB of tables per tile, which is the oracle's memory, not the pipeline's)."""
        pair = np.rint(pixels).astype(np.int64)
        ids = np.union1d([0], pair[1])
        pair[1] = np.searchsorted(ids, pair[1])
        targets = panoptic_targets(pair, self.label_set, self.pixel_size_mm, self.sigma_mm)
        logits = torch.nn.functional.one_hot(targets["semantic"][0], self.label_set.max_id + 1).movedim(-1, 0)
        return torch.cat([10.0 * logits.float(), targets["center"], targets["offset"]])

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


class TruthSlide:
    """Two single-channel slides on one grid (a truth's label and instance images) read as one
    two-channel float32 slide, level 0 only."""

    channels = 2
    dtype = np.dtype(np.float32)

    def __init__(self, label, instance, path: str | os.PathLike | None = None) -> None:
        if label.shape != instance.shape or label.channels != 1 or instance.channels != 1:
            raise InputError(path, f"label {label.shape}x{label.channels} and instance {instance.shape}x"
                                   f"{instance.channels} images are not one single-channel grid")
        if not np.allclose(label.pixel_size_mm, instance.pixel_size_mm, rtol=1e-6):
            raise InputError(path, f"label and instance pixel sizes differ: {label.pixel_size_mm} vs {instance.pixel_size_mm}")
        self.path = None if path is None else Path(path)
        self.levels = label.levels[:1]
        self.pixel_size_mm = label.pixel_size_mm
        self._images = (label, instance)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.levels[0].shape

    def read(self, box: Box, level: int = 0) -> np.ndarray:
        box = check_box(self, box, level)
        return np.concatenate([image.read(box).astype(np.float32) for image in self._images], axis=-1)

    def close(self) -> None:
        for image in self._images:
            image.close()

    def __enter__(self) -> "TruthSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_truth(path: str | os.PathLike) -> TruthSlide:
    """The OME-Zarr truth folder of a whole-slide phantom (`label` and `instance` images) as a `TruthSlide`."""
    from .readers.zarr import OmeZarrSlide

    path = Path(path)
    for name in ("label", "instance"):
        if not (path / name).is_dir():
            raise InputError(path, f"not a truth folder: no {name!r} image in it")
    return TruthSlide(OmeZarrSlide(path / "label"), OmeZarrSlide(path / "instance"), path)
