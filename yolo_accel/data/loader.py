"""Samplers, collate and DataLoader construction; ready for Accelerate's batch sharding."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import multiprocessing.util
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, get_worker_info
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from .dataset import POOL_DEPTH, POOL_STRIDE, Key, YoloDataset


class EpochSampler(Sampler):
    """Yields (epoch, index) keys: an order drawn from (seed, epoch), optionally weighted per image.

    The epoch travels with each key so worker processes need no state updates to reproduce a sample.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.epoch = 0
        self.weights: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_weights(self, weights: np.ndarray | None) -> None:
        """Image weights for --image-weights: the next epochs draw `size` indices with replacement by weight."""
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        elif self.shuffle:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        epoch = self.epoch
        for i in order.tolist():
            yield epoch, i


class PoolBatchSampler(BatchSampler):
    """Batches of keys, each key carrying its batch's place in the epoch and its mosaic partner pool: the indices
    of the batches POOL_STRIDE, 2 x POOL_STRIDE, ... POOL_DEPTH x POOL_STRIDE places earlier in the order, one block
    of batch-size slots each (-1 where there is no such batch or it was short). The epoch's first batches reach
    back into the previous epoch's order, made up to a whole number of strides so each place keeps its worker; only
    the first epoch of a run (or of an order drawn by image weights) starts with empty slots.

    The pool is made here, where the order is known, so a batch stays a function of (seed, epoch, its keys): the
    same with any number of workers and processes, and after a resume (skipped batches are still drawn, the
    previous epoch's order drawn again). Workers build every n-th batch, so one builds all of a pool's batches when
    the loader processes in all (workers x processes) divide POOL_STRIDE, and then decodes a training image about
    once per epoch.
    """

    def __iter__(self) -> Iterator[list[Key]]:
        history = self.previous_batches()
        while len(history) % POOL_STRIDE:  # places missing from the last stride repeat the batch a stride earlier
            history.append(history[-POOL_STRIDE] if len(history) >= POOL_STRIDE else [])
        start = len(history)  # where this epoch's batches begin in `history`
        for k, batch in enumerate(super().__iter__()):
            slots = []
            for depth in range(1, POOL_DEPTH + 1):
                j = start + k - depth * POOL_STRIDE
                block = history[j] if j >= 0 else []
                slots += block + [-1] * (self.batch_size - len(block))
            pool = tuple(slots)  # one object for the whole batch: pickled once on its way to a worker
            history.append([index for _, index in batch])
            yield [Key(epoch, index, k, pool) for epoch, index in batch]

    def previous_batches(self) -> list[list[int]]:
        """The image indices of the previous epoch's batches: none before the first epoch, or when image weights
        draw the order (the previous one then depended on weights of that time)."""
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler) or sampler.epoch == 0 or sampler.weights is not None:
            return []
        previous = EpochSampler(len(sampler), sampler.shuffle, sampler.seed)
        previous.set_epoch(sampler.epoch - 1)
        order = [index for _, index in previous]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return batches[:-1] if self.drop_last and batches and len(batches[-1]) < self.batch_size else batches


class Batch(NamedTuple):
    """What the loaders yield."""

    images: torch.Tensor  # uint8 (B, 3, H, W) RGB, channels-last in memory (as the model runs)
    targets: torch.Tensor  # (N, 6) = (image index in batch, class, x, y, w, h normalised)
    paths: tuple[str, ...]
    shapes: tuple  # per image: None (mosaic) or ((h0, w0), ((gain_h, gain_w), (pad_x, pad_y)))
    hsv_gains: torch.Tensor | None  # (B, 3) float64 HSV gains still to apply (apply_hsv_batch), or None


def collate(samples: list) -> Batch:
    """Samples from YoloDataset.__getitems__ -> a Batch. Images are copied once, (H, W, 3) as they come, into one
    block; inside a worker that block is shared memory, so it reaches the main process without another copy.
    Viewed as (B, 3, H, W) it is channels-last, the layout the model runs in."""
    images, labels, paths, shapes, gains = zip(*samples)
    for i, lb in enumerate(labels):
        lb[:, 0] = i
    block = torch.empty((len(images), *images[0].shape), dtype=torch.uint8)
    if get_worker_info() is not None:
        block.share_memory_()
    out = block.numpy()
    for i, image in enumerate(images):
        out[i] = image
    hsv_gains = torch.from_numpy(np.stack(gains)) if gains[0] is not None else None
    if get_worker_info() is not None:
        release_freed_memory()
    return Batch(block.permute(0, 3, 1, 2), torch.cat(labels, 0), paths, shapes, hsv_gains)


TRIM_SLACK = 64 << 20  # resident bytes a worker may gain before release_freed_memory trims its heap
_trim_above = 0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim  # glibc only
    except (OSError, AttributeError, TypeError):
        return None


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_freed_memory() -> None:
    """Give the pages of freed heap memory back to the OS (glibc's malloc_trim) once this process has grown by
    TRIM_SLACK since the last time. Image buffers of many sizes come and go around the decoded images a worker holds
    for its pools, and the holes they leave kept its resident memory creeping up (+50 to +100 MB per worker over 20
    epochs of phone photos); a trim after every batch kept it flat but cost a quarter of the throughput on
    COCO-sized images (the pages are faulted in again), so it waits for the growth. Elsewhere than glibc, nothing."""
    global _trim_above
    trim = _malloc_trim()
    if trim is not None and resident_bytes() > _trim_above:
        trim(0)
        _trim_above = resident_bytes() + TRIM_SLACK


def init_worker(worker_id: int) -> None:
    """One OpenCV thread per worker process (the workers are the parallelism), as YOLOv5 runs its loaders.

    A stop signal sent to the whole process group (Ctrl-C, `timeout`, a scheduler's SIGTERM) is the main process's
    to act on: it finishes the batch, saves, then closes its workers. A worker killed by it instead would make the
    main process fail mid-batch ("DataLoader worker ... killed by signal") without saving, so workers ignore
    SIGINT and outlive SIGTERM until their loader is closing.
    """
    cv2.setNumThreads(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, outlive_sigterm)


@atexit.register  # after multiprocessing's own exit hook (imported above), so it runs first
def close_loader_workers() -> None:
    """At interpreter exit, close the workers of every DataLoader still open (a script that took a batch with
    `next(iter(loader))`, a loop left with `break`, persistent workers kept in a global).

    Python's exit sends SIGTERM to the daemonic worker processes and waits for them; ours outlive that signal
    until their loader is closing (`init_worker`), so without this the process would wait for ever instead of
    exiting. Closing them the way DataLoader does (set the done event, join) lets them leave."""
    if not multiprocessing.active_children():
        return
    for iterator in [o for o in gc.get_objects() if issubclass(type(o), _MultiProcessingDataLoaderIter)]:
        iterator._shutdown_workers()


def outlive_sigterm(signum: int, frame: FrameType | None) -> None:
    """A worker's SIGTERM handler: ignored while its DataLoader runs; a clean exit once the loader is closing (it
    may have come from the group signal but run late, or from DataLoader terminating a worker slow to leave; an
    exit by the signal would be reported by the main process as a killed worker); the default outside a DataLoader
    worker loop."""
    while frame is not None:
        if frame.f_code.co_name == "_worker_loop":  # torch.utils.data._utils.worker
            closing = frame.f_locals.get("done_event")
            if closing is not None and not closing.is_set():
                return
            os._exit(0)
        frame = frame.f_back
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


class LoaderWorkerLost(RuntimeError):
    """A DataLoader worker process died (killed by a signal, as the OOM killer does); the message says what to do."""


def loader_worker_lost(err: BaseException) -> bool:
    """Whether `err` is DataLoader's report of a worker that died."""
    return isinstance(err, RuntimeError) and "DataLoader worker (pid" in str(err)


def lost_worker_report(err: BaseException) -> BaseException | None:
    """DataLoader's report of the dead worker behind `err`, or None when no worker died. `err` is that report, or
    an EOFError / ConnectionError from a batch the worker had in flight when it died (the main process could not
    fetch its shared memory from the dead sender): DataLoader's own check of its workers then names the worker,
    once the kernel has finished ending it."""
    if loader_worker_lost(err):
        return err
    if not isinstance(err, (EOFError, ConnectionError)):
        return None
    for _ in range(40):
        try:
            torch._C._error_if_any_worker_fails()
        except RuntimeError as report:
            if loader_worker_lost(report):
                return report
        time.sleep(0.05)
    return None


def describe_lost_worker(err: BaseException) -> str:
    """'a data loader worker (pid 123) was killed by signal SIGKILL' from DataLoader's message."""
    text = str(err)
    pids = re.search(r"\(pids?\(?s?\)? ([\d, ]+)\)", text)
    killed = re.search(r"killed by signal: ([\w ]+)", text)
    who = f"a data loader worker (pid {pids.group(1)})" if pids else "a data loader worker"
    if killed:
        return f"{who} was killed by a signal ({killed.group(1).strip().rstrip('.')})"
    return f"{who} exited unexpectedly"


@contextlib.contextmanager
def worker_failures_between_batches() -> Iterator[None]:
    """Report a dead loader worker where the loop can save, not wherever the main process happens to be.

    DataLoader installs a SIGCHLD handler that raises its "worker ... killed by signal" error at once, inside
    whatever runs (a backward pass, an optimizer step half applied), which leaves nothing consistent to save. While
    this block runs the handler is off; DataLoader still finds a dead worker when it waits for its batch (it checks
    them every few seconds), so the error comes out of the loader, between batches. Main thread only (signals);
    a no-op elsewhere."""
    from torch.utils.data._utils import signal_handling

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal_handling,
                                                                                 "_SIGCHLD_handler_set"):
        yield
        return
    installed, previous = signal_handling._SIGCHLD_handler_set, signal.getsignal(signal.SIGCHLD)
    signal_handling._SIGCHLD_handler_set = True  # DataLoader then leaves SIGCHLD alone
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGCHLD, previous)
        signal_handling._SIGCHLD_handler_set = installed


def build_dataloader(dataset: YoloDataset, batch_size: int, workers: int = 8, shuffle: bool = False,
                     seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over `dataset` with an EpochSampler; `batch_size` is per process.

    Call `loader.batch_sampler.sampler.set_epoch(e)` (or the Accelerate-prepared loader's `set_epoch`) each epoch.
    Workers persist across epochs (as YOLOv5's InfiniteDataLoader): keys carry the epoch and the sampler lives in
    the main process, so nothing in a worker needs updating; changes to the dataset object after the first epoch
    do not reach them.
    """
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    batches = (PoolBatchSampler if dataset.mosaic else BatchSampler)(sampler, batch_size=batch_size, drop_last=False)
    num_workers = min(os.cpu_count() or 1, workers, batch_size if batch_size > 1 else 0)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, worker_init_fn=init_worker)
