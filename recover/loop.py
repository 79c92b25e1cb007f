"""The optimisation of one batch of synthetic images (SRe2L / CDA / DELT EarlyLate).

Per iteration: lr from the cosine, crop bound from the curriculum, the round's active
images only through augmentation and the frozen teacher, CE + BN-statistic loss,
one Adam step over the whole batch tensor (images that have not joined get a zero
gradient and, with zero Adam state, stay exactly where they are), clamp every
image to the valid pixel range. The last iterate is the result.

``amp``: the teacher's forward under autocast in ``amp_dtype`` (bf16, or fp16 on GPUs
without bf16, where a GradScaler keeps the images' gradients from underflowing; a step
whose scaled gradient overflowed is skipped, as torch.amp does).

Options past DELT (all off by default, which leaves the loop above unchanged):

- ``stage_sizes`` (FADRM, docs/methods/fadrm.md): the batch's iterations are cut into equal
  stages (``recover.schedule.stage_bounds``); stage k optimises the images at size S_k (the
  crop's output is S_k too); at each boundary the images are resized (bilinear) to the next
  size and, with ``residual_alpha`` A, mixed back with the initial images at that size:
  ``x <- (1 - A) x + A x0``. Adam is rebuilt at each stage (fresh moments, as released); the lr
  cosine runs over all iterations. The initial images enter stage 0 resized to S_0.
- several teachers: iteration ``it`` uses teacher ``it % n`` (FADRM+'s rotation, restarted
  for every batch); each has its own BN-statistic loss.
- ``bn_match`` class / mix and ``stats_momentum`` (EDC, docs/methods/edc.md): see
  ``recover.losses``; the class groups of each round are built once.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from common.compute.device import autocast
from common.train.optim import freeze
from recover.augment import augment, min_crop_scale
from recover.losses import BNStatLoss, ClassStats, class_groups
from recover.schedule import Schedule, lr_at, stage_bounds

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
    stage_sizes: tuple[int, ...] = ()  # FADRM's resolution stages; () = one stage at input_size
    residual_alpha: float = 0.0  # x <- (1 - A) x + A x0 at each stage boundary
    bn_match: str = "global"  # "global", "class" or "mix" (recover.losses.BNStatLoss)
    class_bn_weight: float = 0.5  # W of "mix": (1 - W) global + W class
    stats_momentum: float = 0.0  # EMA of the matched statistics across iterations; 0 = off


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


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of NCHW ``x`` to ``size`` x ``size`` (FADRM's ``F.interpolate``); same size: ``x``."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def residual_mix(x: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) x + alpha x0``; alpha 0 returns ``x`` itself."""
    if not alpha:
        return x
    return (1.0 - alpha) * x + alpha * x0


def recover_batch(teacher: nn.Module | Sequence[nn.Module], init: torch.Tensor, labels: torch.Tensor,
                  schedule: Schedule, cfg: LoopConfig, rng: random.Random, bounds: tuple[torch.Tensor, torch.Tensor],
                  on_iteration: Callable[[int, int], None] | None = None, check_every: int = 1,
                  class_stats: Sequence[ClassStats | None] | None = None) -> BatchResult:
    """Optimise ``init`` (N, 3, S, S, normalised, on the teacher's device) along ``schedule``.

    ``teacher``: one model, or several used in turn (iteration ``it`` uses ``teacher[it % n]``);
    ``class_stats``: per teacher, its :class:`recover.losses.ClassStats` (``cfg.bn_match`` class / mix).
    ``bounds`` = per-channel (lo, hi) of the valid pixel range, shaped (1, 3, 1, 1).
    ``on_iteration(iteration, active_count)`` is called after every step (progress bars).
    A non-finite loss raises :class:`NonFiniteLoss` (checked every ``check_every`` iterations
    to spare CUDA syncs; the iteration reported is the first non-finite one).
    """
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    stats = list(class_stats) if class_stats is not None else [None] * len(teachers)
    if len(stats) != len(teachers):
        raise ValueError(f"{len(stats)} class statistics for {len(teachers)} teacher(s)")
    device = init.device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    sizes = tuple(cfg.stage_sizes) or (cfg.input_size,)
    if cfg.stage_sizes and sizes[-1] != init.shape[-1]:
        raise ValueError(f"the last stage size {sizes[-1]} must be the images' size {init.shape[-1]}")
    x = resize(init.detach(), sizes[0]).clone().contiguous(memory_format=memory_format).requires_grad_(True)
    labels = labels.to(device)
    lo, hi = bounds[0].to(device), bounds[1].to(device)
    optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    total = schedule.total_iterations
    starts = stage_bounds(total, len(sizes))
    stage = 0
    losses = torch.empty(total, device=device)
    bn_terms = torch.zeros(total, device=device)  # r_bn * BN loss per iteration: names the flag on divergence
    active_idx = [torch.tensor(r, device=device, dtype=torch.long) for r in schedule.rounds]
    everyone = [len(r) == schedule.size for r in schedule.rounds]
    bns: list[BNStatLoss] = []
    groups: dict = {}  # per round, the class groups of its active images (class / mix matching)
    label_list = labels.tolist()
    fp16 = cfg.amp and cfg.amp_dtype == "fp16"
    amp_dtype = torch.float16 if fp16 else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16) if fp16 else None
    checked = 0
    try:
        if cfg.r_bn > 0:
            for t, cs in zip(teachers, stats):
                bns.append(BNStatLoss(t, cfg.first_bn_multiplier, cfg.bn_match, cs, cfg.class_bn_weight,
                                      cfg.stats_momentum))
        for it in range(total):
            while it >= starts[stage + 1]:  # a stage boundary: resize, mix back, fresh Adam (built once per stage)
                stage += 1
                with torch.no_grad():
                    x = residual_mix(resize(x.detach(), sizes[stage]), resize(init, sizes[stage]),
                                     cfg.residual_alpha)
                x = x.contiguous(memory_format=memory_format).requires_grad_(True)
                optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
            r = schedule.round_of(it)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg.lr, it, total, schedule.round_length, cfg.round_lr_reset)
            xa, ya = (x, labels) if everyone[r] else (x.index_select(0, active_idx[r]), labels[active_idx[r]])
            xa = augment(xa, sizes[stage], min_crop_scale(it, total, cfg.easy2hard_mode, cfg.milestone),
                         cfg.jitter, rng, cfg.per_image_augment)
            t = it % len(teachers)
            bn = bns[t] if bns else None
            if bn is not None and cfg.bn_match != "global":
                if r not in groups:
                    groups[r] = class_groups([label_list[p] for p in schedule.rounds[r]], device)
                bn.set_groups(groups[r])
            with autocast(device, cfg.amp, amp_dtype):
                logits = teachers[t](xa.contiguous(memory_format=memory_format))
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
        for bn in bns:
            bn.remove()
    return BatchResult(x.detach().contiguous(), losses.cpu())
