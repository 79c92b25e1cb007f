"""The optimisation of one batch of synthetic images (SRe2L / CDA / DELT EarlyLate).

Per iteration: lr from the cosine, crop bound from the curriculum, the round's active
images only through augmentation and the frozen teacher, CE + BN-statistic loss,
one Adam step over the whole batch tensor (images that have not joined get a zero
gradient and, with zero Adam state, stay exactly where they are), clamp every
image to the valid pixel range. The last iterate is the result.

``amp``: the teacher's forward under autocast in ``amp_dtype`` (bf16, or fp16 on GPUs
without bf16, where a GradScaler keeps the images' gradients from underflowing; a step
whose scaled gradient overflowed is skipped, as torch.amp does).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from common.compute.device import autocast
from common.train.optim import freeze
from recover.augment import augment, min_crop_scale
from recover.losses import BNStatLoss
from recover.schedule import Schedule, lr_at

ADAM_BETAS = (0.5, 0.9)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class LoopConfig:
    input_size: int
    lr: float = 0.25
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    jitter: int = 0
    easy2hard_mode: str = "cosine"
    milestone: float = 0.0
    round_lr_reset: bool = False
    per_image_augment: bool = False
    amp: bool = False
    amp_dtype: str = "bf16"  # "bf16" or "fp16" (with a GradScaler)
    channels_last: bool = True


class NonFiniteLoss(Exception):
    """``cause``: ``"r_bn"`` when the weighted BN-statistic term is non-finite, else ``"ce"``."""

    def __init__(self, iteration: int, cause: str = "ce"):
        super().__init__(f"non-finite loss at iteration {iteration} ({cause})")
        self.iteration = iteration
        self.cause = cause


@dataclass
class BatchResult:
    images: torch.Tensor  # final iterate, normalised, on the loop's device
    losses: torch.Tensor  # (total_iterations,) fp32 on CPU


def prepare_teacher(teacher: nn.Module, channels_last: bool = True) -> nn.Module:
    """Eval mode, frozen: only the images receive gradients."""
    freeze(teacher)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def recover_batch(teacher: nn.Module, init: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                  cfg: LoopConfig, rng: random.Random, bounds: tuple[torch.Tensor, torch.Tensor],
                  on_iteration: Callable[[int, int], None] | None = None, check_every: int = 1) -> BatchResult:
    """Optimise ``init`` (N, 3, S, S, normalised, on the teacher's device) along ``schedule``.

    ``bounds`` = per-channel (lo, hi) of the valid pixel range, shaped (1, 3, 1, 1).
    ``on_iteration(iteration, active_count)`` is called after every step (progress bars).
    A non-finite loss raises :class:`NonFiniteLoss` (checked every ``check_every`` iterations
    to spare CUDA syncs; the iteration reported is the first non-finite one).
    """
    device = init.device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = init.detach().clone().contiguous(memory_format=memory_format).requires_grad_(True)
    labels = labels.to(device)
    lo, hi = bounds[0].to(device), bounds[1].to(device)
    optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    total = schedule.total_iterations
    losses = torch.empty(total, device=device)
    bn_terms = torch.zeros(total, device=device)  # r_bn * BN loss per iteration: names the flag on divergence
    active_idx = [torch.tensor(r, device=device, dtype=torch.long) for r in schedule.rounds]
    everyone = [len(r) == schedule.size for r in schedule.rounds]
    bn = BNStatLoss(teacher, cfg.first_bn_multiplier) if cfg.r_bn > 0 else None
    fp16 = cfg.amp and cfg.amp_dtype == "fp16"
    amp_dtype = torch.float16 if fp16 else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16) if fp16 else None
    checked = 0
    try:
        for it in range(total):
            r = schedule.round_of(it)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg.lr, it, total, schedule.round_length, cfg.round_lr_reset)
            xa, ya = (x, labels) if everyone[r] else (x.index_select(0, active_idx[r]), labels[active_idx[r]])
            xa = augment(xa, cfg.input_size, min_crop_scale(it, total, cfg.easy2hard_mode, cfg.milestone),
                         cfg.jitter, rng, cfg.per_image_augment)
            with autocast(device, cfg.amp, amp_dtype):
                logits = teacher(xa.contiguous(memory_format=memory_format))
                loss = F.cross_entropy(logits.float(), ya)
                if bn is not None:
                    bn_term = cfg.r_bn * bn.loss()
                    loss = loss + bn_term
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            with torch.no_grad():
                x.clamp_(lo, hi)
                losses[it] = loss.detach()
                if bn is not None:
                    bn_terms[it] = bn_term.detach().float()
            if (it + 1) % check_every == 0 or it + 1 == total:
                bad = (~torch.isfinite(losses[checked:it + 1])).nonzero()
                if len(bad):
                    first = checked + int(bad[0])
                    raise NonFiniteLoss(first, "r_bn" if not torch.isfinite(bn_terms[first]) else "ce")
                checked = it + 1
            if on_iteration is not None:
                on_iteration(it, len(schedule.rounds[r]))
    finally:
        if bn is not None:
            bn.remove()
    return BatchResult(x.detach().contiguous(), losses.cpu())
