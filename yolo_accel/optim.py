"""Optimizer with YOLOv5's three parameter groups, its LR schedules, and the warmup ramp."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import WarmupHyp

NOMINAL_BATCH = 64  # YOLOv5 accumulates gradients up to this many images per optimizer step


def auto_optimizer(images: int, batch_size: int, epochs: int, nc: int) -> tuple[str, float, float]:
    """--optimizer auto, Ultralytics 8's rule: (name, lr0, momentum). Runs under 10k optimizer iterations (counted
    at a batch of at least NOMINAL_BATCH) get AdamW with lr0 = 0.002 * 5 / (4 + nc), longer ones SGD with 0.01."""
    iterations = math.ceil(images / max(batch_size, NOMINAL_BATCH)) * epochs
    return ("SGD", 0.01, 0.9) if iterations > 10000 else ("AdamW", round(0.002 * 5 / (4 + nc), 6), 0.9)


def accumulate_steps(batch_size: int) -> int:
    """Batches summed per optimizer step after warmup: max(round(64 / batch), 1)."""
    return max(round(NOMINAL_BATCH / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int) -> float:
    """YOLOv5 scales decay by the images per optimizer step relative to the nominal 64."""
    return weight_decay * batch_size * accumulate_steps(batch_size) / NOMINAL_BATCH


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """(biases, decayed weights, norm weights), walking modules in order as YOLOv5 does."""
    biases, weights, norm_weights = [], [], []
    norms = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(param)
            elif name == "weight" and isinstance(module, norms):
                norm_weights.append(param)
            else:
                weights.append(param)
    return biases, weights, norm_weights


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """Group 0 biases (no decay), group 1 weights (decay), group 2 norm weights (no decay); logged as x/lr0..2."""
    biases, weights, norm_weights = parameter_groups(model)
    if name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"optimizer must be SGD, Adam or AdamW, got {name!r}")
    optimizer.add_param_group({"params": weights, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    return optimizer


def lr_lambda(epochs: int, lrf: float, cosine: bool = False) -> Callable[[int], float]:
    """Per-epoch LR factor: linear 1 -> lrf, or a cosine one-cycle 1 -> lrf over `epochs`."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


@dataclass(frozen=True)
class Warmup:
    """The first `batches` batches ramp LRs, momentum and gradient accumulation, per YOLOv5."""

    batches: int
    bias_lr: float  # group 0 starts here; the other groups start at 0
    momentum: float  # starting momentum, rising to the hyp's
    final_momentum: float
    batch_size: int

    @classmethod
    def plan(cls, warmup: WarmupHyp, momentum: float, batches_per_epoch: int, batch_size: int,
             epochs: int | None = None) -> Warmup:
        """To `momentum` over YOLOv5's max(warmup_epochs of batches, 100) batches or, given the run's `epochs`,
        Ultralytics 8's min(warmup_epochs, epochs - 1) epochs of batches (the anchor-free recipe); none if
        warmup_epochs is 0."""
        if epochs is None:
            batches = max(round(warmup.warmup_epochs * batches_per_epoch), 100) if warmup.warmup_epochs > 0 else 0
        else:
            batches = round(min(warmup.warmup_epochs, max(epochs - 1, 0)) * batches_per_epoch)
        return cls(batches, warmup.warmup_bias_lr, warmup.warmup_momentum, momentum, batch_size)

    def accumulate(self, step: int) -> int:
        """Batches per optimizer step at global batch `step`."""
        if step <= self.batches:
            return max(1, int(np.interp(step, [0, self.batches], [1, NOMINAL_BATCH / self.batch_size]).round()))
        return accumulate_steps(self.batch_size)

    def apply(self, optimizer: torch.optim.Optimizer, step: int, epoch_factor: float) -> None:
        """Set each group's lr (and momentum) for global batch `step` during warmup; no-op afterwards."""
        if step > self.batches:
            return
        ramp = [0, self.batches]
        for j, group in enumerate(optimizer.param_groups):
            start = self.bias_lr if j == 0 else 0.0
            group["lr"] = float(np.interp(step, ramp, [start, group["initial_lr"] * epoch_factor]))
            if "momentum" in group:
                group["momentum"] = float(np.interp(step, ramp, [self.momentum, self.final_momentum]))
