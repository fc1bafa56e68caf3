"""`PanopticNet`: a MONAI backbone with one output tensor whose channel groups are the heads.

One tensor (semantic logits | center heatmap | offsets) keeps the network a plain MONAI
network: `sliding_window_inference` stitches it, `verify_net_in_out` checks it and
TorchScript exports it unchanged. `HeadLayout` names the channel groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from monai.networks.nets import DynUNet, SegResNet


@dataclass(frozen=True)
class HeadLayout:
    """Channels of the output: `n_classes` semantic logits (index = class id), 1 center, `spatial_dims` offsets."""

    n_classes: int
    spatial_dims: int

    @property
    def channels(self) -> int:
        return self.n_classes + 1 + self.spatial_dims

    @property
    def semantic(self) -> slice:
        return slice(0, self.n_classes)

    @property
    def center(self) -> slice:
        return slice(self.n_classes, self.n_classes + 1)

    @property
    def offset(self) -> slice:
        return slice(self.n_classes + 1, self.channels)

    def split(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads of an output (B, channels, *spatial) or (channels, *spatial), as views."""
        dim = 1 if output.ndim == self.spatial_dims + 2 else 0
        return {name: output.narrow(dim, part.start, part.stop - part.start)
                for name, part in (("semantic", self.semantic), ("center", self.center), ("offset", self.offset))}


class PanopticNet(torch.nn.Module):
    """A 2D or 3D panoptic network: DynUNet (default) or SegResNet with the heads as one output tensor."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        n_classes: int,
        backbone: str = "dynunet",
        filters: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[Sequence[int] | int] | None = None,
        kernel_size: Sequence[Sequence[int] | int] | None = None,
    ) -> None:
        """`strides` and `kernel_size` (DynUNet): one entry per level, an int or one per axis; the
        defaults are 1 then 2 everywhere, and 3 everywhere (a planned anisotropic topology gives
        e.g. kernel [3, 3, 1] and stride [2, 2, 1] on the first levels of 0.7x0.7x5 mm data)."""
        super().__init__()
        self.layout = HeadLayout(n_classes, spatial_dims)
        if backbone == "dynunet":
            strides = strides or [1] + [2] * (len(filters) - 1)
            kernel_size = kernel_size or [3] * len(filters)
            if not len(strides) == len(kernel_size) == len(filters):
                raise ValueError(f"filters ({len(filters)}), strides ({len(strides)}) and kernel_size "
                                 f"({len(kernel_size)}) need one entry per level")
            self.backbone = DynUNet(
                spatial_dims=spatial_dims, in_channels=in_channels, out_channels=self.layout.channels,
                kernel_size=list(kernel_size), strides=strides, upsample_kernel_size=strides[1:],
                filters=list(filters), norm_name="instance", res_block=True,
            )
        elif backbone == "segresnet":
            self.backbone = SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=self.layout.channels,
                                      init_filters=filters[0], blocks_down=[1] * (len(filters) - 1) + [2],
                                      blocks_up=[1] * (len(filters) - 1))
        else:
            raise ValueError(f"unknown backbone {backbone!r} (expected 'dynunet' or 'segresnet')")
        self._quiet_auxiliary_heads()

    def _quiet_auxiliary_heads(self) -> None:
        """Start the center and offset channels at exactly zero ("no centers, no offsets").

        With random initial values the center MSE (weighted x200) is hundreds of times the
        semantic loss at the first steps, and its gradients wash out the shared features before
        the semantic head has learnt anything; zeroed heads start from a small loss and train
        alongside the semantics.
        """
        last = [m for m in self.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))
                and m.out_channels == self.layout.channels][-1]
        with torch.no_grad():
            last.weight[self.layout.n_classes:] = 0.0
            if last.bias is not None:
                last.bias[self.layout.n_classes:] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
