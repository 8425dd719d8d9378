"""Samplers, collate and DataLoader construction; ready for Accelerate's batch sharding."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, default_collate

from .dataset import YoloDataset


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


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
    """-> images uint8 (B, 3, H, W), targets (N, 6) = (image index in batch, class, x, y, w, h), paths, shapes."""
    images, labels, paths, shapes = zip(*batch)
    for i, lb in enumerate(labels):
        lb[:, 0] = i
    # default_collate stacks straight into shared memory inside a worker, saving a copy of the batch
    return default_collate(images), torch.cat(labels, 0), paths, shapes


def build_dataloader(dataset: YoloDataset, batch_size: int, workers: int = 8, shuffle: bool = False,
                     seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over `dataset` with an EpochSampler; `batch_size` is per process.

    Call `loader.batch_sampler.sampler.set_epoch(e)` (or the Accelerate-prepared loader's `set_epoch`) each epoch.
    Workers persist across epochs (as YOLOv5's InfiniteDataLoader): keys carry the epoch and the sampler lives in
    the main process, so nothing in a worker needs updating; changes to the dataset object after the first epoch
    do not reach them.
    """
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    num_workers = min(os.cpu_count() or 1, workers, batch_size if batch_size > 1 else 0)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)
