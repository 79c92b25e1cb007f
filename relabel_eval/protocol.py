"""The DELT/RDED evaluation protocol as small functions: lr table, parameter groups,
half-cosine schedule, batch-size table, temperature (the no-weight-decay rule is ``common.train.optim``).

Values follow the released ``argument.py`` of RDED and DELT (docs/methods/delt.md,
"Evaluation"); where the released code has no answer (an IPC outside its table,
a student outside its lr table) the choice made here is stated next to it.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from common.train.optim import param_groups
from models import canonical_arch

# AdamW lr per student, exactly the released table (DELT evaluation/argument.py).
ADAMW_LR_TABLE = {
    "vgg11": 5e-4,
    "conv3": 1e-3, "conv4": 1e-3, "conv5": 1e-3, "conv6": 1e-3,
    "resnet18": 1e-3, "resnet18_modified": 1e-3,
    "resnet50": 1e-3, "resnet101": 1e-3, "resnet101_modified": 1e-3,
    "efficientnet_b0": 2e-3,
    "mobilenet_v2": 2.5e-3, "mobilenet_v2_modified": 2.5e-3,
    "alexnet": 1e-4,
    "vit_b_16": 1e-4, "swin_v2_t": 1e-4,
}
# Students outside the table (the released code leaves lr at 0 and trains nothing):
# the family's value by name prefix, else 1e-3 (the conv / ResNet value).
_PREFIX_LR = (("vit_", 1e-4), ("swin", 1e-4), ("vgg", 5e-4), ("mobilenet_v2", 2.5e-3),
              ("efficientnet", 2e-3), ("conv", 1e-3), ("resnet", 1e-3))
DEFAULT_ADAMW_LR = 1e-3

# Batch size by IPC (DELT's table); 30..100 all map to 100.
BATCH_TABLE = {1: 10, 10: 50, 20: 50, 30: 100, 40: 100, 50: 100, 100: 100}

TEMPERATURE = {"cutmix": 20.0, "mixup": 4.0, "none": 4.0}  # "none": standard KD temperature (not in the release)
MIX_ALPHA = {"cutmix": 1.0, "mixup": 0.8}


def adamw_lr_for(stud_name: str) -> tuple[float, str]:
    """``(lr, source)`` for a student; source is ``table``, ``prefix`` or ``default``."""
    name = canonical_arch(stud_name)
    if name in ADAMW_LR_TABLE:
        return ADAMW_LR_TABLE[name], "table"
    for prefix, lr in _PREFIX_LR:
        if name.startswith(prefix):
            return lr, "prefix"
    return DEFAULT_ADAMW_LR, "default"


def auto_batch_size(ipc: int, num_classes: int, family: str = "custom") -> int:
    """DELT's batch-size table.

    IPC 1 -> 10, 10/20 -> 50, 30..100 -> 100; other IPCs take the nearest row (ties go
    to the larger IPC; the released code leaves them at 0 and crashes). Doubled for
    exactly 100 or 1000 classes; Tiny-ImageNet (family ``tiny``) always 100; never
    above ``ipc * num_classes``.
    """
    ipc = max(1, int(ipc))
    if 30 <= ipc <= 100:
        bs = 100
    elif ipc in BATCH_TABLE:
        bs = BATCH_TABLE[ipc]
    else:
        row = min(BATCH_TABLE, key=lambda r: (abs(r - ipc), -r))
        bs = BATCH_TABLE[row]
    if num_classes in (100, 1000):
        bs *= 2
    if family == "tiny":
        bs = 100
    return int(min(bs, ipc * num_classes))


def released_special_case(dataset: str, arch_name: str | None, stud_name: str) -> dict[str, float]:
    """The released argument.py's one special experiment: CIFAR-100 conv3 -> conv3 uses
    batch 25 and lr 2e-3 (applied only where batch size / lr are automatic)."""
    if dataset == "cifar100" and arch_name and canonical_arch(arch_name) == "conv3" \
            and canonical_arch(stud_name) == "conv3":
        return {"batch_size": 25, "adamw_lr": 2e-3}
    return {}


def default_temperature(mix_type: str) -> float:
    return TEMPERATURE[mix_type]


def lr_factor(epoch: int, total_epochs: int, cos: bool = True) -> float:
    """Multiplier of the base lr for ``epoch`` (0-based), stepped once per epoch.

    Cosine (the protocol): ``0.5 * (1 + cos(pi * e / (2 E)))``, a half cosine from 1 to
    0.5 at ``e = E``; ``cos="full"``: ``0.5 * (1 + cos(pi * e / E))``, from 1 to 0 (FADRM's IPC 50 runs);
    linear: ``1 - e / E``; 0 beyond ``E`` (as released).
    """
    if epoch > total_epochs:
        return 0.0
    if cos == "full":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / total_epochs))
    if cos:
        return 0.5 * (1.0 + math.cos(math.pi * epoch / total_epochs / 2))
    return 1.0 - epoch / total_epochs


def make_optimizer(model: nn.Module, sgd: bool = False, adamw_lr: float = 1e-3, adamw_weight_decay: float = 0.01,
                   learning_rate: float = 0.1, momentum: float = 0.9,
                   weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    if sgd:
        return torch.optim.SGD(param_groups(model, weight_decay), lr=learning_rate, momentum=momentum)
    return torch.optim.AdamW(param_groups(model, adamw_weight_decay), lr=adamw_lr, betas=(0.9, 0.999))


def make_scheduler(optimizer: torch.optim.Optimizer, total_epochs: int, cos: bool = True):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, total_epochs, cos))


def apply_bn_double_update(model: nn.Module) -> dict[str, float]:
    """Give every BatchNorm layer that tracks running statistics the momentum of two updates.

    The released DELT/RDED loop runs an extra no-grad forward in train mode on each
    (in-place mixed) batch right before the training forward, with the same weights,
    so both forwards see the same batch statistics and the running statistics move
    twice: ``r <- (1 - m)^2 r + (1 - (1 - m)^2) s``. One update with momentum
    ``1 - (1 - m)^2`` (0.19 for PyTorch's 0.1) gives the same running mean and
    variance without the forward. Layers with ``momentum=None`` (cumulative average)
    are left alone. Returns ``{layer name: new momentum}``.
    """
    from relabel_eval.eval_protocols import double_update_momentum

    changed = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum is not None:
            m.momentum = double_update_momentum(m.momentum)
            changed[name] = m.momentum
    return changed


def eval_epochs(total_epochs: int, every: int) -> list[int]:
    """0-based epochs after which the student is validated: every ``every`` epochs and the last."""
    every = max(1, int(every))
    out = [e for e in range(total_epochs) if (e + 1) % every == 0]
    if total_epochs > 0 and (not out or out[-1] != total_epochs - 1):
        out.append(total_epochs - 1)
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
