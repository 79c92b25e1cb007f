"""The SRe2L recovery loss: cross-entropy plus BatchNorm statistic matching.

``loss = CE(teacher(aug(x)), y) + r_bn * sum_l w_l (||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2)``
over every BatchNorm2d of the teacher (downsample BNs included), with mu_l, var_l the
per-channel mean and biased variance of the BN layer's input over (N, H, W) and
``w = first_bn_multiplier`` for the first BN, 1 for the others. Norms, not squared
norms; variance, not std.

Speed: the released hook computes the variance after ``permute(1, 0, 2, 3).contiguous()
.reshape(C, -1)``, a full copy of every BN input, and autograd then runs BN's backward,
the variance's backward (several full-size temporaries) and a sum of the two. Here each
BN of the (frozen, eval-mode) teacher is swapped for :class:`StatBatchNorm` while the
loss is in use: one autograd function gives the BN output ``x * scale + shift`` and the
batch mean/variance (two-pass, as exact as ``torch.var_mean``), and its backward is one
fused expression ``gy * scale + x * a + b``.

Class-aware matching (EDC, ``match="class"`` or ``"mix"``): the images of each class in the
batch (``set_groups``) have their own per-channel mean and variance compared with that
class's recorded statistics (``squeeze.class_stats``), summed over the classes present;
``mix`` weighs ``(1 - W)`` global + ``W`` class. ``momentum`` M > 0 matches an exponential
moving average of each matched statistic across iterations instead of the current one,
``ema <- M ema + (1 - M) s`` (no gradient), with the gradient of the current ``s``
(``ema + s - s.detach()``), as EDC's hooks do. The plain global path (M = 0) is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from recover.args import BN_MATCH_MODES as MATCH_MODES  # one list, in the torch-free parser


@dataclass
class ClassStats:
    """A teacher's recorded per-class BN-input statistics, one (num_classes, channels) tensor per
    BatchNorm2d layer in module order (``squeeze.class_stats``)."""
    mean: list[torch.Tensor]
    var: list[torch.Tensor]

    def to(self, device) -> ClassStats:
        return ClassStats([m.to(device) for m in self.mean], [v.to(device) for v in self.var])


@dataclass
class ClassGroups:
    """The classes of a batch's images: ``labels`` (G,) the distinct labels in order of first
    appearance, ``index`` (N,) each image's group, ``counts`` (G, 1) images per group."""
    labels: torch.Tensor
    index: torch.Tensor
    counts: torch.Tensor


def class_groups(labels: Sequence[int], device=None) -> ClassGroups:
    """Group the images of a batch by label (built once per EarlyLate round, not per iteration)."""
    order: dict[int, int] = {}
    index = [order.setdefault(int(c), len(order)) for c in labels]
    counts = torch.bincount(torch.tensor(index), minlength=len(order)).float().unsqueeze(1)
    return ClassGroups(torch.tensor(list(order), dtype=torch.long, device=device),
                       torch.tensor(index, dtype=torch.long, device=device), counts.to(device))


def grouped_mean_var(x: torch.Tensor, groups: ClassGroups) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group (class) of images, the per-channel mean and biased variance over (images, H, W), (G, C)
    each, in fp32, two passes and vectorised over the groups (every image has the same H x W, so a
    class's mean is the mean of its images' means)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    n, c = x.shape[:2]
    zeros = torch.zeros(len(groups.labels), c, dtype=dtype, device=x.device)
    mean = zeros.index_add(0, groups.index, x.mean(dim=(2, 3), dtype=dtype)) / groups.counts
    dev = (x if x.dtype == dtype else x.to(dtype)) - mean.index_select(0, groups.index).view(n, c, 1, 1)
    var = zeros.index_add(0, groups.index, dev.square().mean(dim=(2, 3))) / groups.counts
    return mean, var


def bn_stat_term(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` over (N, H, W), biased variance
    (the plain definition, used to check the fused path)."""
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


def channel_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W) in fp32, two passes (mean, then
    mean of squared deviations): faster than ``torch.var_mean`` on CPU, same precision."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    mean = x.mean(dim=(0, 2, 3), dtype=dtype)
    dev = (x if x.dtype == dtype else x.to(dtype)) - mean.view(1, -1, 1, 1)
    return mean, dev.square_().mean(dim=(0, 2, 3))


class _BatchNormWithStats(torch.autograd.Function):
    """``(x * scale + shift, mean(x), var(x))`` with a single fused backward."""

    @staticmethod
    def forward(ctx, x, scale, shift):
        mean, var = channel_mean_var(x)
        view = (1, -1, 1, 1)
        y = torch.addcmul(shift.to(x.dtype).view(view), x, scale.to(x.dtype).view(view))
        ctx.save_for_backward(x, scale, mean)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, gmean, gvar):
        x, scale, mean = ctx.saved_tensors
        m = x.numel() // x.shape[1]
        # d mean / dx = 1/M; d var / dx = 2 (x - mean) / M
        a = 2.0 * gvar / m
        b = gmean / m - a * mean
        view = (1, -1, 1, 1)
        gx = torch.addcmul(b.to(x.dtype).view(view), x, a.to(x.dtype).view(view))
        gx.addcmul_(gy, scale.to(gy.dtype).view(view))
        return gx, None, None


class StatBatchNorm(nn.Module):
    """An eval-mode BatchNorm2d that also records its input's statistic term."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("BatchNorm2d without running statistics: nothing to match")
        self.bn = bn
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
        self.register_buffer("scale", scale.detach().float(), persistent=False)
        self.register_buffer("shift", shift.detach().float(), persistent=False)
        self.term: torch.Tensor | None = None
        self.match = "global"
        self.class_mean: torch.Tensor | None = None  # (num_classes, C) for class / mix matching
        self.class_var: torch.Tensor | None = None
        self.class_weight = 0.5
        self.momentum = 0.0
        self.groups: ClassGroups | None = None
        self.ema: dict = {}

    def _ema(self, key, mean: torch.Tensor, var: torch.Tensor,
             labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The matched statistics: the current ones, or with ``momentum`` their EMA (value) carrying the
        current ones' gradient. ``labels``: rows of per-class statistics, each class with its own EMA."""
        if not self.momentum:
            return mean, var
        md, vd = mean.detach().float(), var.detach().float()
        if labels is None:
            prev = self.ema.get(key)
            if prev is not None:
                md = self.momentum * prev[0] + (1.0 - self.momentum) * md
                vd = self.momentum * prev[1] + (1.0 - self.momentum) * vd
            self.ema[key] = (md, vd)
        else:  # per class: a class seen before continues its average, a new one starts from its statistics
            if key not in self.ema:
                k = self.class_mean.shape[0]
                self.ema[key] = (torch.zeros(k, md.shape[1], device=md.device), torch.zeros_like(self.class_var),
                                 torch.zeros(k, 1, dtype=torch.bool, device=md.device))
            em, ev, seen = self.ema[key]
            was = seen.index_select(0, labels)
            md = torch.where(was, self.momentum * em.index_select(0, labels) + (1.0 - self.momentum) * md, md)
            vd = torch.where(was, self.momentum * ev.index_select(0, labels) + (1.0 - self.momentum) * vd, vd)
            em.index_copy_(0, labels, md)
            ev.index_copy_(0, labels, vd)
            seen.index_fill_(0, labels, True)
        return md + (mean - mean.detach()), vd + (var - var.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.match == "class":  # the batch-wide statistics are not matched: the affine BN output only
            view = (1, -1, 1, 1)
            y = torch.addcmul(self.shift.to(x.dtype).view(view), x, self.scale.to(x.dtype).view(view))
        else:
            y, mean, var = _BatchNormWithStats.apply(x, self.scale, self.shift)
        if self.match == "global" and not self.momentum:  # the plain, fused path
            self.term = (torch.linalg.vector_norm(mean - self.bn.running_mean)
                         + torch.linalg.vector_norm(var - self.bn.running_var))
            return y
        term = None
        if self.match != "class":
            m, v = self._ema("global", mean, var)
            term = (torch.linalg.vector_norm(m - self.bn.running_mean)
                    + torch.linalg.vector_norm(v - self.bn.running_var))
            if self.match == "mix":
                term = (1.0 - self.class_weight) * term
        if self.match != "global":
            if self.groups is None:
                raise RuntimeError("class-aware BN matching without class groups (BNStatLoss.set_groups)")
            labels = self.groups.labels
            m, v = self._ema("class", *grouped_mean_var(x, self.groups), labels=labels)
            per_class = (torch.linalg.vector_norm(m - self.class_mean.index_select(0, labels), dim=1)
                         + torch.linalg.vector_norm(v - self.class_var.index_select(0, labels), dim=1)).sum()
            if self.match == "mix":
                per_class = self.class_weight * per_class
            term = per_class if term is None else term + per_class
        self.term = term
        return y


def named_bn_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """Every BatchNorm2d with its module name, in module order (the first is the one the multiplier weights;
    ``squeeze.class_stats`` records its statistics in this order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every BatchNorm2d in module order."""
    return [m for _, m in named_bn_layers(model)]


class BNStatLoss:
    """Swaps the teacher's BN layers for :class:`StatBatchNorm`; ``loss()`` after a forward gives
    the weighted sum. Use as a context manager or call ``remove()`` to put the BN layers back.
    The teacher must be in eval mode with frozen parameters (as recovery uses it)."""

    def __init__(self, model: nn.Module, first_bn_multiplier: float = 10.0, match: str = "global",
                 class_stats: ClassStats | None = None, class_weight: float = 0.5, momentum: float = 0.0):
        if match not in MATCH_MODES:
            raise ValueError(f"match must be one of {MATCH_MODES}, not {match!r}")
        if match != "global" and class_stats is None:
            raise ValueError(f"match {match!r} needs the class statistics")
        self.swapped: list[tuple[nn.Module, str, nn.BatchNorm2d, StatBatchNorm]] = []
        for full_name, child in named_bn_layers(model):  # module order
            prefix, _, name = full_name.rpartition(".")
            parent = model.get_submodule(prefix)
            wrapper = StatBatchNorm(child)
            setattr(parent, name, wrapper)
            self.swapped.append((parent, name, child, wrapper))
        if not self.swapped:
            raise ValueError("model has no BatchNorm2d layer")
        self.weights = [float(first_bn_multiplier)] + [1.0] * (len(self.swapped) - 1)
        if match != "global" and len(class_stats.mean) != len(self.swapped):
            self.remove()
            raise ValueError(f"class statistics for {len(class_stats.mean)} BN layer(s), the model has "
                             f"{len(self.swapped)}")
        for k, (_, _, bn, w) in enumerate(self.swapped):
            w.match, w.class_weight, w.momentum = match, float(class_weight), float(momentum)
            if match != "global":
                cm, cv = class_stats.mean[k], class_stats.var[k]
                if cm.shape[-1] != bn.num_features or cv.shape != cm.shape:
                    self.remove()
                    raise ValueError(f"class statistics of BN layer {k}: shape {tuple(cm.shape)}, the layer has "
                                     f"{bn.num_features} channels")
                device = bn.running_mean.device
                w.class_mean, w.class_var = cm.to(device).float(), cv.to(device).float()

    def set_groups(self, groups: ClassGroups) -> None:
        """The class groups of the images of the next forward (class / mix matching)."""
        for _, _, _, w in self.swapped:
            w.groups = groups

    def loss(self) -> torch.Tensor:
        terms = [w.term for _, _, _, w in self.swapped]
        if any(t is None for t in terms):
            raise RuntimeError("BNStatLoss.loss() called before a forward pass through every BN layer")
        for _, _, _, w in self.swapped:
            w.term = None
        return sum(k * t for k, t in zip(self.weights, terms))

    def remove(self) -> None:
        for parent, name, bn, _ in self.swapped:
            setattr(parent, name, bn)
        self.swapped = []

    def __enter__(self) -> BNStatLoss:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
