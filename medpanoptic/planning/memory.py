"""How much memory one training step of a planned `PanopticNet` (DynUNet backbone) needs, before it runs.

The model, per training sample:

    activations = ACTIVATION_VALUES_PER_FEATURE_VOXEL * sum over levels (voxels at the level x filters)
                + LOSS_VALUES_PER_OUTPUT_VOXEL * patch voxels x output channels

values of `bytes_per_value` each (float32), times `BACKWARD_TRANSIENT` for the gradients alive
during the backward pass, plus 16 bytes per parameter (weights, gradients, AdamW's two moments)
and `ALLOCATOR_SLACK` (a fraction on top: allocator rounding, convolution workspace).
The result is the peak of the step's tensors (what `torch.cuda.max_memory_allocated` reports), so a
budget means the same on GPU and CPU; it was a fixed 0.5 GB guess before, which left nothing of a
small budget (0.3 GB planned an 8x8x8 patch) and meant nothing on CPU. A GPU's CUDA context
(a few hundred MB) lies outside it: `scripts/bench/gpu_training.py` leaves room for it.

`ACTIVATION_VALUES_PER_FEATURE_VOXEL` was calibrated by counting the bytes of the tensors
autograd saves for backward (`saved_tensor_bytes`) in a forward pass of residual DynUNets with
instance norm: 11.6-14.8 values per (voxel x filter) over 2D and 3D, isotropic and anisotropic
topologies, 16-512 filters; `PanopticLoss` adds 3.0 values per output voxel and channel.
The measurement does not see the transient gradients of the backward pass: `BACKWARD_TRANSIENT`
is a margin for them, not a fitted figure. `tests/test_plan.py` checks the model against that measurement on
networks it was not fitted on; `scripts/bench/gpu_training.py` (with a GPU, AMP on) against
`torch.cuda.max_memory_allocated` over a real training run. `ALLOCATOR_SLACK` is a margin too,
until that run has calibrated it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ACTIVATION_VALUES_PER_FEATURE_VOXEL = 13.0
LOSS_VALUES_PER_OUTPUT_VOXEL = 3.0
BACKWARD_TRANSIENT = 1.15
OPTIMISER_BYTES_PER_PARAMETER = 16
ALLOCATOR_SLACK = 0.1
GB = 1024**3


def level_voxels(patch: Sequence[int], strides: Sequence[Sequence[int]]) -> list[float]:
    """Voxels of the feature maps at each level of the network, for one patch."""
    size = np.asarray(patch, dtype=float)
    out = []
    for stride in strides:
        size = size / np.asarray(stride, dtype=float)
        out.append(float(np.prod(size)))
    return out


def activation_values(patch: Sequence[int], strides: Sequence[Sequence[int]], filters: Sequence[int],
                      out_channels: int) -> float:
    """Values autograd keeps for one sample's backward pass (the model's activation term)."""
    features = sum(v * f for v, f in zip(level_voxels(patch, strides), filters))
    return ACTIVATION_VALUES_PER_FEATURE_VOXEL * features + LOSS_VALUES_PER_OUTPUT_VOXEL * float(np.prod(patch)) * out_channels


def parameter_count(spatial_dims: int, in_channels: int, n_classes: int, network: dict) -> int:
    """Parameters of the planned network, counted on PyTorch's meta device (nothing is allocated)."""
    import torch

    from ..nets import PanopticNet

    with torch.device("meta"):
        net = PanopticNet(spatial_dims, in_channels, n_classes, filters=network["filters"],
                          strides=network["strides"], kernel_size=network["kernel_size"])
    return int(sum(p.numel() for p in net.parameters()))


def estimate_memory_gb(patch: Sequence[int], batch_size: int, network: dict, spatial_dims: int, in_channels: int,
                       n_classes: int, bytes_per_value: int = 4, overhead_gb: float = 0.0,
                       parameters: int | None = None, slack: float = ALLOCATOR_SLACK) -> float:
    """Peak memory (GiB) of one training step: activations of `batch_size` patches, parameters and optimiser.

    `slack` is the fraction added for the allocator and workspaces, `overhead_gb` any fixed cost on top.
    """
    out_channels = n_classes + 1 + spatial_dims
    activations = batch_size * activation_values(patch, network["strides"], network["filters"], out_channels)
    if parameters is None:
        parameters = parameter_count(spatial_dims, in_channels, n_classes, network)
    total = activations * bytes_per_value * BACKWARD_TRANSIENT + parameters * OPTIMISER_BYTES_PER_PARAMETER
    return total * (1 + slack) / GB + overhead_gb


def saved_tensor_bytes(net, x) -> int:
    """Bytes of the distinct storages autograd saves for backward in `net(x)` (a measurement, not a model)."""
    import torch

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return int(sum(storages.values()))
