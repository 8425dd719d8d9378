"""Exponential moving average of model weights (YOLOv5's ModelEMA), as an nn.Module so its state dict comes free."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA(nn.Module):
    """Keeps `module`, a smoothed copy of a model: v = d * v + (1 - d) * current, d = decay * (1 - exp(-updates / tau)).

    The ramp makes early updates follow the model closely (YOLOv5: decay 0.9999, tau 2000).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau = decay, tau
        self.register_buffer("updates", torch.tensor(updates, dtype=torch.int64))

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-int(self.updates) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend in the floating-point parameters and buffers of `model` (unwrapped, same architecture)."""
        self.updates += 1
        d = self.current_decay()
        theirs = model.state_dict()
        pairs = [(v, theirs[k].detach()) for k, v in self.module.state_dict().items() if v.dtype.is_floating_point]
        smoothed, current = [a for a, _ in pairs], [b for _, b in pairs]
        torch._foreach_mul_(smoothed, d)  # one fused pass per step instead of two kernels per tensor
        torch._foreach_add_(smoothed, current, alpha=1 - d)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

