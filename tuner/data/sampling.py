"""Seeding and batch order.

Augmentation is a pure function of (seed, epoch, image index): each sample seeds its own transform.
So results do not depend on the number of loader workers or ranks, a run stopped mid-epoch resumes
with exactly the images it would have seen, and the feature cache can name its augmented views.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

_RNG_LOCK = threading.Lock()


@contextmanager
def seeded(seed: int):
    """Run a block with torch's global RNG seeded, then restore it.

    torchvision's random transforms draw from the process-wide generator, so a block is seeded by
    setting that generator; the lock keeps another thread (another studio session) from drawing from
    it meanwhile, which would change both threads' results.
    """
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: a pure function of run seed, epoch and index."""
    return (seed * 1_000_003 + epoch * 10_007 + index * 7_919 + 12_345) % (2**63 - 1)


class EpochBatchSampler:
    """Batches of (index, epoch) keys: shuffled or class-balanced per epoch, sharded across ranks.

    The order is a pure function of (seed, epoch), so `start_batch` can resume mid-epoch. Ranks take
    interleaved slices of one global order (rank r gets positions r, r+W, ...), so W ranks with batch
    B/W see exactly the images one process sees with batch B. A final batch of one is dropped when
    `drop_single` is set, because BatchNorm cannot train on a single image.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 balanced: bool = False, rank: int = 0, world_size: int = 1, drop_single: bool = True):
        self.labels = list(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.balanced = balanced
        self.rank = rank
        self.world_size = world_size
        self.drop_single = drop_single
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def order(self, epoch: int) -> list[int]:
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.balanced:
            counts = np.bincount(self.labels)
            weights = torch.tensor([1.0 / counts[y] for y in self.labels], dtype=torch.float64)
            order = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.world_size > 1:
            # Pad by repeating the order from its start (cyclically, for sets smaller than the world)
            # so every rank gets as many samples and takes as many steps.
            target = -(-len(order) // self.world_size) * self.world_size
            padded = (order * -(-target // max(len(order), 1)))[:target]
            order = padded[self.rank::self.world_size]
        return order

    def batches(self, epoch: int) -> list[list[int]]:
        order = self.order(epoch)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_single and len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches(self.epoch)[self.start_batch:]:
            yield [(i, self.epoch) for i in batch]

    def __len__(self) -> int:
        return max(0, len(self.batches(self.epoch)) - self.start_batch)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, normalised to average 1 over the samples."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)
