"""Image -> sliding-window inference (Gaussian blending, AMP on GPU) -> grouping -> panoptic pair on the image's grid."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from .labels import LabelSet
from .postprocess import PostprocessConfig, group_instances


def panoptic_inference(
    image: torch.Tensor,
    net: torch.nn.Module,
    label_set: LabelSet,
    roi_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    config: PostprocessConfig = PostprocessConfig(),
    sw_batch_size: int = 2,
    overlap: float = 0.25,
    device: str | torch.device | None = None,
) -> tuple[MetaTensor, dict[int, float]]:
    """Segment one preprocessed (C, *spatial) image; returns the pair (with the image's affine) and instance scores.

    Runs on `device` (default: CUDA when available), with automatic mixed precision there.
    `spacing` (mm per voxel axis) defaults to the image affine's.
    """
    from .io.geometry import spacing_from_affine

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ndim = image.ndim - 1
    if spacing is None:
        spacing = spacing_from_affine(image.affine.numpy(), ndim) if isinstance(image, MetaTensor) else (1.0,) * ndim
    net = net.to(device).eval()
    x = torch.as_tensor(image).as_subclass(torch.Tensor)[None].float().to(device)
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
        output = sliding_window_inference(x, roi_size, sw_batch_size, net, overlap=overlap, mode="gaussian")
    heads = net.layout.split(output[0].float()) if hasattr(net, "layout") else None
    if heads is None:
        raise ValueError("the network needs a `layout` (HeadLayout) naming its output channels")
    pair, scores = group_instances(heads["semantic"], heads["center"], heads["offset"], label_set, spacing, config)
    affine = image.affine if isinstance(image, MetaTensor) else None
    return MetaTensor(pair.cpu(), affine=affine), scores
