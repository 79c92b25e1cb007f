"""Small datasets held as one tensor, and one SGD epoch over such a tensor.

Trajectory matching (PAD/MTT) and the difficulty scores train ConvNets on whole
CIFAR/Tiny-ImageNet-scale training sets many times; decoding the ImageFolder once
into ``[N, 3, s, s]`` (the val transform: resize, centre crop, normalise) and
augmenting on the tensor with DSA is what the released code does and is fast.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD


def load_tensor_dataset(root: str | os.PathLike, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD, classes: Sequence[str] | None = None,
                        what: str = "data path", progress: bool = True, per_class: int | None = None):
    """``(x [N,3,s,s] float32, y [N] int64, rel_paths, classes)`` in file order (class, then name);
    ``per_class``: only the first that many files of each class are read."""
    from tqdm import tqdm

    from common.cli.errors import bar_vanishes_on_error
    from common.data.imagefolder import ImageFolder
    from common.data.transforms import val_transform

    ds = ImageFolder(root, val_transform(size, mean, std), classes=classes, per_class=per_class, what=what)
    with tqdm(range(len(ds)), desc=f"loading {Path(root).name}", unit="img", disable=not progress,
              dynamic_ncols=True) as bar, bar_vanishes_on_error(bar):  # a bad image: the error line alone
        xs = [ds[i][0] for i in bar]
    x = torch.stack(xs) if xs else torch.zeros(0, 3, size, size)
    y = torch.tensor(ds.targets, dtype=torch.long)
    rel = [Path(p).relative_to(Path(root)).as_posix() for p, _ in ds.samples]
    return x, y, rel, list(ds.classes)


def sgd_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
              optimizer: torch.optim.Optimizer, batch_size: int, generator: torch.Generator,
              augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
              device: torch.device | str = "cpu") -> tuple[float, float]:
    """One epoch over ``indices`` (shuffled by ``generator``), cross-entropy; returns (mean loss, accuracy)."""
    model.train()
    perm = indices[torch.randperm(len(indices), generator=generator)]
    total, correct, loss_sum = 0, 0, 0.0
    for start in range(0, len(perm), batch_size):
        idx = perm[start:start + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        if augment is not None:
            xb = augment(xb, generator)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(idx)
        correct += (out.argmax(1) == yb).sum().item()
        total += len(idx)
    return loss_sum / max(total, 1), correct / max(total, 1)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
             device: torch.device | str = "cpu") -> float:
    model.eval()
    correct = 0
    for s in range(0, len(x), batch_size):
        correct += (model(x[s:s + batch_size].to(device)).argmax(1).cpu() == y[s:s + batch_size]).sum().item()
    return correct / max(len(x), 1)
