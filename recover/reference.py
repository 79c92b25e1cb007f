"""A straightforward loop written the way the released SRe2L/CDA/DELT ``recover`` code works.

Kept as an oracle: the tests check that :func:`recover.loop.recover_batch` computes the
same images, and ``bench/recover_speed.py`` measures how much faster that loop is. It
uses forward hooks whose variance goes through ``permute(1, 0, 2, 3).contiguous()
.reshape(C, -1)``, Python-list indexing of the active images, a per-channel clip loop,
the released per-iteration ``inputs.data.clone()`` of the (dead) best-image tracking
and a ``loss.item()`` sync every iteration. Not used by ``python -m recover``.
"""
from __future__ import annotations

import math
import random
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import transforms as T

from recover.augment import min_crop_scale
from recover.schedule import Schedule


class ReleasedBNHook:
    """SRe2L's ``BNFeatureHook``: the layer's term from a permuted copy of its input."""

    def __init__(self, module: nn.BatchNorm2d):
        self.hook = module.register_forward_hook(self.hook_fn)
        self.r_feature: torch.Tensor | None = None

    def hook_fn(self, module, inputs, output):
        nch = inputs[0].shape[1]
        mean = inputs[0].mean([0, 2, 3])
        var = inputs[0].permute(1, 0, 2, 3).contiguous().reshape([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)

    def close(self) -> None:
        self.hook.remove()


def released_augment(input_size: int, jitter: int) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """torchvision transforms built and applied to the batch each iteration, global RNGs."""
    def aug(x: torch.Tensor, min_crop: float) -> torch.Tensor:
        fn = T.Compose([T.RandomResizedCrop(input_size, scale=(min_crop, 1.0), antialias=True),
                        T.RandomHorizontalFlip()])
        x = fn(x)
        off1, off2 = random.randint(0, jitter), random.randint(0, jitter)
        return torch.roll(x, shifts=(off1, off2), dims=(2, 3))
    return aug


def reference_recover_batch(teacher: nn.Module, init: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                            lr: float, r_bn: float, first_bn_multiplier: float, easy2hard_mode: str,
                            milestone: float, mean, std,
                            aug: Callable[[torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
    """The released ``get_images`` loop (lr cosine over the batch's total iterations)."""
    hooks = [ReleasedBNHook(m) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    inputs = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([inputs], lr=lr, betas=[0.5, 0.9], eps=1e-8)
    total = schedule.total_iterations
    best_cost = 1e4
    try:
        for iteration in range(total):
            active = schedule.rounds[iteration // schedule.round_length]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * iteration / total)) * lr
            min_crop = min_crop_scale(iteration, total, easy2hard_mode, milestone)
            inputs_jit = aug(inputs[active], min_crop)
            optimizer.zero_grad()
            outputs = teacher(inputs_jit)
            loss_ce = F.cross_entropy(outputs, labels[active])
            rescale = [first_bn_multiplier] + [1.0] * (len(hooks) - 1)
            loss_bn = sum(h.r_feature * rescale[k] for k, h in enumerate(hooks)) if hooks else 0.0
            loss = loss_ce + r_bn * loss_bn
            loss.backward()
            optimizer.step()
            for c in range(3):  # the released clip(): one clamp per channel
                m, s = mean[c], std[c]
                inputs.data[:, c] = torch.clamp(inputs.data[:, c], -m / s, (1 - m) / s)
            if best_cost > loss.item() or iteration == 1:  # dead best-image tracking, as released
                _ = inputs.data.clone()
    finally:
        for h in hooks:
            h.close()
    return inputs.detach()
