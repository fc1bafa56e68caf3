"""The panoptic loss: Dice + cross-entropy on the semantic head, MSE on the center heatmap,
L1 on the offsets of thing voxels only; the three weighted and summed."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from .nets import HeadLayout
from .targets import unpack_targets


class PanopticLoss(torch.nn.Module):
    """Loss of a `PanopticNet` output against packed targets (`pack_targets`, batched), as MONAI engines call it."""

    def __init__(self, layout: HeadLayout, semantic_weight: float = 1.0, center_weight: float = 200.0,
                 offset_weight: float = 0.01) -> None:
        super().__init__()
        self.layout = layout
        self.weights = (semantic_weight, center_weight, offset_weight)
        self.semantic = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        heads = self.layout.split(output)
        t = unpack_targets(target, self.layout.spatial_dims)
        semantic, center, offset, offset_weight = t["semantic"], t["center"], t["offset"], t["offset_weight"]
        semantic_loss = self.semantic(heads["semantic"], semantic)
        center_loss = torch.mean((heads["center"] - center) ** 2)
        mask = offset_weight.expand_as(offset)
        offset_loss = (torch.abs(heads["offset"] - offset) * mask).sum() / mask.sum().clamp(min=1.0)
        w_sem, w_center, w_offset = self.weights
        return w_sem * semantic_loss + w_center * center_loss + w_offset * offset_loss
