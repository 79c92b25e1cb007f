"""Named transform presets and the normalised pixel space shared by all stages.

The mean/std come from the teacher's checkpoint meta (ImageNet's by default), so
ranking, recovery and evaluation normalise identically.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD


def val_resize_size(size: int) -> int:
    """``Resize(s * 8 // 7)`` before ``CenterCrop(s)``; 32 (CIFAR-scale) and below stay as they are."""
    return size if size <= 32 else size * 8 // 7


def val_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    return T.Compose([
        T.Resize(val_resize_size(size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    recipe: str = "auto"):
    """Teacher training augmentation (torchvision reference recipe).

    ``crop``: Resize(s) + RandomCrop(s, padding s/8) + flip (CIFAR recipe);
    ``rrc``: RandomResizedCrop(s) + flip (ImageNet recipe);
    ``auto``: ``crop`` for inputs of 32 or less, ``rrc`` above.
    """
    if recipe == "auto":
        recipe = "crop" if size <= 32 else "rrc"
    if recipe == "crop":
        aug = [T.Resize(size, antialias=True), T.CenterCrop(size), T.RandomCrop(size, padding=max(1, size // 8)),
               T.RandomHorizontalFlip()]
    elif recipe == "rrc":
        aug = [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]
    else:
        raise ValueError(f"unknown recipe {recipe}")
    return T.Compose([*aug, T.ToTensor(), T.Normalize(mean, std)])


def _stats(mean: Sequence[float], std: Sequence[float], like: torch.Tensor | None = None):
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    if like is not None:
        m, s = m.to(like.device, like.dtype), s.to(like.device, like.dtype)
    return m, s


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """[0, 1] pixels -> normalised space (works on CHW or NCHW)."""
    m, s = _stats(mean, std, x)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m, s = _stats(mean, std, x)
    return x * s + m


def pixel_bounds(mean=IMAGENET_MEAN, std=IMAGENET_STD, like: torch.Tensor | None = None):
    """Per-channel ``(lo, hi)`` of the valid pixel range in normalised space: ``[-m/s, (1-m)/s]``."""
    m, s = _stats(mean, std, like)
    return -m / s, (1 - m) / s


def to_pil(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Image.Image:
    """A normalised CHW tensor -> an 8-bit RGB image (rounded, clamped)."""
    x = denormalize(x.detach().float().cpu(), mean, std).clamp(0, 1)
    arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")


def pil_to_normalized(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD, size: int | None = None) -> torch.Tensor:
    """An RGB image -> normalised CHW tensor, resized to ``size`` (square) when given."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return normalize(T.functional.to_tensor(img), mean, std)
