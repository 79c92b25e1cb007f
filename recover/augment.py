"""Differentiable augmentation of the images being optimised, and CDA's crop curriculum.

Faithful behaviour (SRe2L/CDA/DELT released code): torchvision's RandomResizedCrop
and RandomHorizontalFlip applied to the batched tensor, i.e. ONE crop box and ONE
flip decision for the whole batch per iteration, then ``torch.roll`` by offsets
drawn from ``[0, jitter]``. Random draws come from a ``random.Random`` owned by the
batch, so a batch's result depends only on its seed, never on what ran before.
"""
from __future__ import annotations

import math
import random

import torch
from torchvision.transforms import functional as TF

from recover.args import EASY2HARD_MODES  # defined beside the flag that takes it

MIN_SCALE = 0.08  # RandomResizedCrop's default lower scale, the end of the curriculum
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def min_crop_scale(iteration: int, total: int, mode: str = "cosine", milestone: float = 0.0) -> float:
    """CDA's easy-to-hard curriculum for RandomResizedCrop's lower scale bound.

    While ``iteration < milestone * total`` the bound goes from 1.0 to 0.08 (step: stays
    1.0; linear; cosine ``0.08 + 0.92 (1 + cos(pi it / (m total))) / 2``), then 0.08.
    ``milestone`` 0 (the released default) switches the curriculum off.
    """
    horizon = milestone * total
    if iteration >= horizon:
        return MIN_SCALE
    if mode == "step":
        return 1.0
    if mode == "linear":
        return MIN_SCALE + (1.0 - MIN_SCALE) * (1.0 - iteration / horizon)
    if mode == "cosine":
        return MIN_SCALE + (1.0 - MIN_SCALE) * (1.0 + math.cos(math.pi * iteration / horizon)) / 2.0
    raise ValueError(f"easy2hard mode must be one of {EASY2HARD_MODES}, not {mode}")


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], rng: random.Random,
                            ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` drawn as torchvision's ``RandomResizedCrop.get_params`` does
    (10 tries of area and log-uniform aspect, then a centre crop), from ``rng``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_flip_roll(x: torch.Tensor, size: int, min_scale: float, jitter: int, rng: random.Random) -> torch.Tensor:
    """One crop box, one flip decision and one roll for all of ``x`` (NCHW)."""
    top, left, h, w = random_resized_crop_box(x.shape[-2], x.shape[-1], (min_scale, 1.0), rng)
    x = TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        x = x.flip(-1)
    if jitter > 0:
        off1, off2 = rng.randint(0, jitter), rng.randint(0, jitter)
        x = torch.roll(x, shifts=(off1, off2), dims=(2, 3))
    return x


def augment(x: torch.Tensor, size: int, min_scale: float, jitter: int, rng: random.Random,
            per_image: bool = False) -> torch.Tensor:
    """The recovery augmentation; ``per_image`` draws a box, flip and roll for each image."""
    if not per_image:
        return crop_flip_roll(x, size, min_scale, jitter, rng)
    return torch.cat([crop_flip_roll(x[k:k + 1], size, min_scale, jitter, rng) for k in range(x.shape[0])])
