"""Distilled set in memory, validation set, and the DataLoader that follows an epoch plan."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from common.cli.errors import UserError
from common.compute.accel import loader_kwargs
from common.data.imagefolder import ImageFolder, check_same_classes, find_classes, list_class_files
from common.data.transforms import val_transform
from relabel_eval.augment import SampleTransform
from relabel_eval.plan import EpochPlan

VAL_CACHE_BYTES = 4 << 30  # preprocessed val tensors kept in memory up to this size, else streamed


@dataclass
class DistilledSet:
    root: Path
    classes: list[str]
    files: list[str]            # paths relative to root, in index order
    labels: np.ndarray          # (N,)
    arrays: list[np.ndarray]    # decoded uint8 HxWx3 images
    sizes: np.ndarray           # (N, 2) H, W

    def __len__(self) -> int:
        return len(self.files)

    @property
    def ipc(self) -> int:
        """Images per class (the largest class when they differ)."""
        return int(np.bincount(self.labels, minlength=len(self.classes)).max())


def count_images(root: str | os.PathLike, what: str = "distilled set") -> dict[str, int]:
    root = Path(root)
    return {c: len(list_class_files(root / c)) for c in find_classes(root, what)}


def load_distilled(root: str | os.PathLike, ipc: int | None = None, what: str = "--syn-data-path") -> DistilledSet:
    """The first ``ipc`` files (sorted) of every class, decoded once into memory.

    Stops with one line for an empty class folder or a class with fewer than ``ipc`` images.
    """
    root = Path(root)
    counts = count_images(root, what)
    for cls, n in counts.items():
        if n == 0:
            raise UserError(f"{root / cls}: class folder of {what} has no images")
        if ipc and n < ipc:
            raise UserError(f"{root / cls}: only {n} image(s) in this class but --ipc {ipc}")
    ds = ImageFolder(root, per_class=ipc or None, cache=True, what=what)
    files = [str(Path(p).relative_to(root)) for p, _ in ds.samples]
    arrays = list(ds.arrays)
    sizes = np.array([a.shape[:2] for a in arrays], dtype=np.int64).reshape(-1, 2)
    return DistilledSet(root, list(ds.classes), files, np.asarray(ds.targets, dtype=np.int64), arrays, sizes)


class PlannedDataset(torch.utils.data.Dataset):
    """Items are addressed by plan records ``(index, top, left, h, w, flip, seed)``."""

    def __init__(self, data: DistilledSet, transform: SampleTransform):
        self.arrays, self.labels, self.transform = data.arrays, data.labels, transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, record):
        idx = record[0]
        return self.transform(self.arrays[idx], record), int(self.labels[idx])


class PlanBatchSampler:
    """Yields the batches of the current plan; ``set_plan`` before each epoch.

    ``rows(plan, b)``, when given, picks the positions of batch ``b`` this process loads
    (its share under torchrun and their mixing partners); all of them otherwise.
    """

    def __init__(self) -> None:
        self.plan: EpochPlan | None = None
        self.rows = None

    def set_plan(self, plan: EpochPlan, rows=None) -> None:
        self.plan, self.rows = plan, rows

    def __iter__(self) -> Iterator[list[tuple]]:
        for b in range(self.plan.num_batches):
            records = self.plan.records(b)
            yield records if self.rows is None else [records[i] for i in self.rows(self.plan, b)]

    def __len__(self) -> int:
        return self.plan.num_batches if self.plan is not None else 0


def make_train_loader(data: DistilledSet, transform: SampleTransform, workers: int,
                      device_type: str = "cpu") -> tuple[torch.utils.data.DataLoader, PlanBatchSampler]:
    """Workers persist across epochs; on CUDA batches are pinned and prefetched (common.compute.accel)."""
    sampler = PlanBatchSampler()
    loader = torch.utils.data.DataLoader(PlannedDataset(data, transform), batch_sampler=sampler,
                                         **loader_kwargs(device_type, workers))
    return loader, sampler


class ValSet:
    """Validation images preprocessed once (Resize(s*8/7) + CenterCrop + normalise); streamed if too big."""

    def __init__(self, root: str | os.PathLike, classes: Sequence[str], input_size: int, mean, std,
                 val_ipc: int | None = None, workers: int = 0, batch_size: int = 256, pin_memory: bool = False):
        root = Path(root)
        check_same_classes(classes, find_classes(root, "--val-dir"), "the distilled set", f"--val-dir {root}")
        self.dataset = ImageFolder(root, val_transform(input_size, mean, std), classes=classes,
                                   per_class=val_ipc or None, what="--val-dir")
        self.batch_size, self.workers, self.pin_memory = batch_size, workers, pin_memory
        self.x: torch.Tensor | None = None
        self.y = torch.as_tensor(self.dataset.targets, dtype=torch.long)
        if len(self.dataset) * 3 * input_size * input_size * 4 <= VAL_CACHE_BYTES:
            xs = [x for x, _ in tqdm(self._loader(), desc="val images", leave=False,
                                     disable=len(self.dataset) < 5000)]
            self.x = torch.cat(xs)
            if pin_memory:  # CUDA: page-locked, so each batch's copy is asynchronous
                self.x, self.y = self.x.pin_memory(), self.y.pin_memory()

    def __len__(self) -> int:
        return len(self.dataset)

    def _loader(self):
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                                           num_workers=self.workers, pin_memory=self.pin_memory)

    def batches(self, rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """All validation batches, or every ``world_size``-th image from ``rank`` (a process's share)."""
        if self.x is not None:
            x, y = (self.x, self.y) if world_size == 1 else (self.x[rank::world_size], self.y[rank::world_size])
            for s in range(0, len(y), self.batch_size):
                yield x[s:s + self.batch_size], y[s:s + self.batch_size]
        elif world_size == 1:
            yield from self._loader()
        else:
            yield from torch.utils.data.DataLoader(
                torch.utils.data.Subset(self.dataset, range(rank, len(self.dataset), world_size)),
                batch_size=self.batch_size, shuffle=False, num_workers=self.workers)
