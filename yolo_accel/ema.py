"""Exponential moving average of model weights (YOLOv5's ModelEMA), as an nn.Module so its state dict comes free."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .distributed import DTensor, full_tensor, local_tensor, sharded_like


class ModelEMA(nn.Module):
    """Keeps `module`, a smoothed copy of a model: v = d * v + (1 - d) * current, d = decay * (1 - exp(-updates / tau)).

    The ramp makes early updates follow the model closely (YOLOv5: decay 0.9999, tau 2000).
    Under FSDP (`follow_shards`) each process smooths only its shard of each parameter, and `gather` makes `module`
    whole again before it is used (validated, saved, its state taken).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau = decay, tau
        self.register_buffer("updates", torch.tensor(updates, dtype=torch.int64))
        self.shards: dict[str, torch.Tensor] = {}  # parameter name -> smoothed shard (a DTensor), under FSDP

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-int(self.updates) / self.tau))

    def follow_shards(self, sharded: nn.Module) -> None:
        """From now on smooth shards cut like `sharded`'s parameters (FSDP DTensors), starting from `module`."""
        self.shards = {k: v.detach().clone() for k, v in sharded.state_dict().items() if isinstance(v, DTensor)}
        self._cut_shards()

    @torch.no_grad()
    def _cut_shards(self) -> None:
        own = self.module.state_dict()
        for k, shard in self.shards.items():
            shard.copy_(sharded_like(own[k], shard))

    @torch.no_grad()
    def gather(self) -> None:
        """Copy the smoothed shards, gathered whole, into `module` (a collective under FSDP; nothing otherwise)."""
        own = self.module.state_dict()
        for k, shard in self.shards.items():
            own[k].copy_(full_tensor(shard))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend in the floating-point parameters and buffers of `model` (unwrapped, same architecture; under FSDP
        this process's shards of its parameters)."""
        self.updates += 1
        d = self.current_decay()
        theirs = model.state_dict()
        pairs = [(local_tensor(self.shards.get(k, v)), local_tensor(theirs[k].detach()))
                 for k, v in self.module.state_dict().items() if v.dtype.is_floating_point]
        smoothed, current = [a for a, _ in pairs], [b for _, b in pairs]
        torch._foreach_mul_(smoothed, d)  # one fused pass per step instead of two kernels per tensor
        torch._foreach_add_(smoothed, current, alpha=1 - d)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict, assign)
        self._cut_shards()
        return result

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
