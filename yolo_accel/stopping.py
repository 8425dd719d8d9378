"""How a training run stops before its end and stays resumable: a stop signal (SIGINT, SIGTERM) finishes the
batch, saves and ends the run; a loader worker that died saves where the loop stands and says why it likely died."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .data.loader import LoaderWorkerLost, describe_lost_worker, lost_worker_report

LOGGER = logging.getLogger("yolo_accel")


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving its state; args[0] is the run folder to --resume."""


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after each batch; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        LOGGER.warning(f"\n{signal.Signals(signum).name} received: saving the training state after this batch")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def saved_when_a_worker_dies(save: Callable[[], None], loop: Any, batches_per_epoch: int, processes: int,
                             save_dir: Path) -> Iterator[None]:
    """A loader worker that died (the OOM killer's SIGKILL, usually) stops the run with LoaderWorkerLost. Inside an
    epoch's batches `save()` stores the state where `loop` (epoch, batch) stands, between batches (the loader
    reports the death there: data.loader.worker_failures_between_batches), so --resume continues exactly; elsewhere
    (validation, or with several processes, whose peers are not at a save) the latest snapshot is what remains."""
    try:
        yield
    except (RuntimeError, EOFError, ConnectionError) as raised:
        err = lost_worker_report(raised)
        if err is None:
            raise
        saved = 0 < loop.batch < batches_per_epoch and processes == 1
        if saved:
            save()
        where = (f"the training state is saved at epoch {loop.epoch}, batch {loop.batch}" if saved else
                 "the latest snapshot is kept")
        raise LoaderWorkerLost(
            f"{describe_lost_worker(err)} during epoch {loop.epoch}; {where}. Memory is the usual cause (the "
            f"kernel's OOM killer): lower --workers or --batch-size, or leave out --cache ram. Continue with: "
            f"yolo-accel train --resume {save_dir}") from None
