"""Setting an SAE-family module's weights from SAELens-named tensors (saved interp folders and imported ones)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def load_tensors(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Set an SAE-family module's parameters from SAELens-named tensors (`SAE.tensors`); a `threshold` sets
    JumpReLU's theta and BatchTopK's single inference threshold."""
    for name, param in module.named_parameters():
        if name in tensors:
            param.copy_(tensors[name])
    if "threshold" in tensors:
        module.log_threshold.copy_(tensors["threshold"].clamp_min(1e-12).log())
        module.batch_threshold.copy_(tensors["threshold"][0])
        module.threshold_ready.fill_(1.0)
