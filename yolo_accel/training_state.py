"""TrainingState: everything that changes while a run trains, saved and restored as one thing.

`state_dict()` gives tensors and JSON-able values only and `load_state_dict()` takes exactly that back; state.py
writes them to a snapshot folder (safetensors + JSON). The per-process parts, written by every process for
itself, are the random generators (`rng` and the global ones) and the gradients accumulated since the last
optimizer step (`pending_gradients()` / `load_pending_gradients()`).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import (
    from_local,
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    load_full_state_dict,
    local_tensor,
)
from .ema import ModelEMA

LOGGER = logging.getLogger("yolo_accel")


@dataclass
class LoopState:
    """Counters that make a run resumable at any batch."""

    epoch: int = 0
    batch: int = 0  # batches of this epoch already done by this process
    step: int = 0  # batches done since the start of training (YOLOv5's ni)
    last_opt_step: int = -1
    mean_loss: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


class EarlyStopping:
    """The run's best fitness, and YOLOv5's rule: stop after `patience` epochs without reaching it again."""

    def __init__(self, patience: int = 30, best_fitness: float = 0.0, best_epoch: int = 0):
        self.patience = patience if patience > 0 else math.inf
        self.best_fitness, self.best_epoch = best_fitness, best_epoch
        self.possible_stop = False
        self.improved = False  # the last epoch recorded matched or beat the best (YOLOv5 saves best.pt on ties)

    def __call__(self, epoch: int, fitness_value: float) -> bool:
        """Record this epoch's fitness; True when training should stop."""
        self.improved = fitness_value >= self.best_fitness
        if self.improved:
            self.best_epoch, self.best_fitness = epoch, fitness_value
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= (self.patience - 1)
        stop = delta >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                        f"Best results observed at epoch {self.best_epoch}; best model saved as best.safetensors.")
        return stop


@dataclass
class TrainingState:
    """The model being trained (as prepared by Accelerate), its EMA, optimizer, LR schedule, grad scaler, early
    stopping, loop counters, the loop's own random generator (multi-scale draws) and per-class mAPs (image
    weights); `planned_epochs` is the length the LR schedule was planned for."""

    model: nn.Module
    unwrapped: nn.Module
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Any  # torch GradScaler or None
    stopper: EarlyStopping
    planned_epochs: int
    rng: random.Random
    loop: LoopState = field(default_factory=LoopState)
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def state_dict(self, keep: bool = True) -> dict[str, Any]:
        """{"model", "ema", "optimizer": state dicts; "trainer": JSON-able counters, schedule, scaler, stopper}.
        Full tensors also when the model is sharded (FSDP): then every process must call it, and those that will
        not write it pass keep=False (each gathered tensor is dropped at once)."""
        self.ema.gather()
        return {
            "model": full_state_dict(self.unwrapped, keep),
            "ema": self.ema.state_dict(),
            "optimizer": full_optimizer_state(self.optimizer, keep),
            "trainer": {
                "loop": asdict(self.loop),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "stopper": {"best_fitness": self.stopper.best_fitness, "best_epoch": self.stopper.best_epoch},
                "maps": self.maps.tolist(),
                "planned_epochs": self.planned_epochs,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The inverse of state_dict(); the model's tensors must fit (check them first: checkpoint.check_state_dict)."""
        load_full_state_dict(self.unwrapped, state["model"])
        if state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        load_full_optimizer_state(self.optimizer, state["optimizer"])
        trainer = state["trainer"]
        self.loop = LoopState(**trainer["loop"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        if trainer.get("scaler") and self.scaler is not None:
            self.scaler.load_state_dict(trainer["scaler"])
        self.stopper.best_fitness = trainer["stopper"]["best_fitness"]
        self.stopper.best_epoch = trainer["stopper"]["best_epoch"]
        self.maps = np.array(trainer["maps"])
        self.planned_epochs = trainer["planned_epochs"]

    def pending_gradients(self) -> dict[str, torch.Tensor]:
        """Gradients summed since the last optimizer step (this process's own, under no_sync; under FSDP its shard of
        the reduced ones); empty right after a step."""
        if self.loop.step - 1 <= self.loop.last_opt_step:
            return {}
        return {k: local_tensor(p.grad) for k, p in self.unwrapped.named_parameters() if p.grad is not None}

    def load_pending_gradients(self, gradients: dict[str, torch.Tensor]) -> None:
        """Put saved pending gradients back, each in its parameter's device, memory layout and sharding."""
        for key, grad in gradients.items():
            param = self.unwrapped.get_parameter(key)
            param.grad = from_local(torch.empty_like(local_tensor(param)).copy_(grad), param)
