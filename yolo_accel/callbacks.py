"""Hooks into the training loop for users who need to step in: log elsewhere, stop early on their own rule, ship
weights as they are saved. Event names are YOLOv5's and Ultralytics'.

    def stop_when_good(event):
        if event.metrics["metrics/mAP_0.5"] > 0.9:
            event.stop = True

    model = YOLO("yolov5n")
    model.add_callback("on_fit_epoch_end", stop_when_good)
    model.train(data="my.yaml")

Hooks run on the main process only, in the order added, with one TrainingEvent; a hook's exception ends training
(it is the user's code, so its traceback is shown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS = {
    "on_train_start": "before the first epoch (model, save_dir, epochs)",
    "on_train_epoch_start": "before each epoch's batches (epoch)",
    "on_train_batch_end": "after each batch (epoch, batch, losses)",
    "on_train_epoch_end": "after an epoch's batches, before validation (epoch, losses, lrs)",
    "on_val_end": "after each validation in training (epoch, metrics)",
    "on_fit_epoch_end": "after validation and the results row (epoch, metrics: results.csv's columns; may stop)",
    "on_model_save": "after the epoch's weights are written (epoch, weights: the files)",
    "on_train_end": "after the final validation (save_dir, metrics of best.safetensors)",
}


@dataclass
class TrainingEvent:
    """What a hook gets. Set `stop = True` (at an epoch's end) to end training after that epoch, as early stopping
    does: weights, state and the final validation as usual."""

    name: str
    epoch: int
    epochs: int
    save_dir: Path
    model: Any = None  # the EMA model (what gets validated and saved)
    batch: int | None = None
    losses: list[float] = field(default_factory=list)  # the loss items, running means over the epoch
    lrs: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    weights: list[Path] = field(default_factory=list)
    stop: bool = False


class Callbacks:
    """Hooks by event name."""

    def __init__(self) -> None:
        self.hooks: dict[str, list[Callable[[TrainingEvent], None]]] = {name: [] for name in EVENTS}

    def add(self, event: str, hook: Callable[[TrainingEvent], None]) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}; events: {', '.join(EVENTS)}")
        if not callable(hook):
            raise TypeError(f"a callback must be callable, got {type(hook).__name__}")
        self.hooks[event].append(hook)

    def __bool__(self) -> bool:
        return any(self.hooks.values())

    def run(self, event: str, **values: Any) -> TrainingEvent:
        """Call every hook of `event` with one TrainingEvent; returns it (with `stop` as the hooks left it)."""
        info = TrainingEvent(name=event, **values)
        for hook in self.hooks[event]:
            hook(info)
        return info
