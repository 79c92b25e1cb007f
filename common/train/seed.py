"""Seeding of python, numpy and torch in one call."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive python/numpy seeds from torch's per-worker seed."""
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def sampler_seed(seed: int) -> int:
    """Seed of a run's distributed sampler (its shuffle order): one value per run seed."""
    return int(seed) * 100003


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of epoch ``epoch`` on process ``rank``: distinct per (seed, epoch, rank) and a function of
    them only, so a resumed epoch draws what the uninterrupted one drew."""
    return sampler_seed(seed) + int(epoch) + 7919 * int(rank)


_M64 = (1 << 64) - 1


def item_seed(*keys: int) -> int:
    """A 63-bit seed that is a function of the integer ``keys`` only (e.g. seed, epoch, index):
    splitmix64 over the keys, cheap enough to call per image."""
    h = 0
    for k in keys:
        h = (h ^ (int(k) & _M64)) + 0x9E3779B97F4A7C15 & _M64
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _M64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _M64
        h ^= h >> 31
    return h >> 1


class SeededItems(torch.utils.data.Dataset):
    """Item ``i`` of a dataset, drawn under a random state that is a function of ``(seed, epoch, i)``.

    Random augmentation then depends on which image is loaded, not on which process or
    worker loads it or in which order: a run is the same for any number of DataLoader
    workers or torchrun processes, and a resumed epoch draws what the uninterrupted one
    drew. Torch's CPU generator (which torchvision's random transforms use) is restored after
    each item.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        with seeded(item_seed(self.seed, self.epoch, i), python=False, numpy=False):
            return self.dataset[i]


@contextlib.contextmanager
def seeded(seed: int, python: bool = True, numpy: bool = True, torch_cpu: bool = True) -> Iterator[None]:
    """Seed the chosen global RNGs (python's ``random``, numpy's, torch's CPU generator) for a block and
    restore their previous states after it, so a draw depends on ``seed`` only and the caller's streams
    are untouched. Torch's CPU generator is seeded directly: ``torch.manual_seed`` would also visit
    every accelerator backend, about 100x slower per call."""
    gen = torch.default_generator
    py = random.getstate() if python else None
    np_state = np.random.get_state() if numpy else None
    t = gen.get_state() if torch_cpu else None
    if python:
        random.seed(int(seed))
    if numpy:
        np.random.seed(int(seed) % (2**32))
    if torch_cpu:
        gen.manual_seed(int(seed))
    try:
        yield
    finally:
        if python:
            random.setstate(py)
        if numpy:
            np.random.set_state(np_state)
        if torch_cpu:
            gen.set_state(t)
