"""The SRe2L recovery loss: cross-entropy plus BatchNorm statistic matching.

``loss = CE(teacher(aug(x)), y) + r_bn * sum_l w_l (||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2)``
over every BatchNorm2d of the teacher (downsample BNs included), with mu_l, var_l the
per-channel mean and biased variance of the BN layer's input over (N, H, W) and
``w = first_bn_multiplier`` for the first BN, 1 for the others. Norms, not squared
norms; variance, not std.

The released hook computes the variance after ``permute(1, 0, 2, 3).contiguous()
.reshape(C, -1)``, a full copy of every BN input (and another in backward); here one
fused ``torch.var_mean`` reduces over (0, 2, 3) in place, in fp32 even under autocast.
"""
from __future__ import annotations

import torch
from torch import nn


def bn_stat_term(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` over (N, H, W), biased variance."""
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every BatchNorm2d in module order (the first is the one the multiplier weights)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


class BNStatLoss:
    """Forward hooks on the teacher's BN layers; ``loss()`` after a forward gives the weighted sum.

    Use as a context manager (hooks removed on exit) or call ``remove()``.
    """

    def __init__(self, model: nn.Module, first_bn_multiplier: float = 10.0):
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError("model has no BatchNorm2d layer")
        self.weights = [float(first_bn_multiplier)] + [1.0] * (len(self.layers) - 1)
        self.terms: list[torch.Tensor | None] = [None] * len(self.layers)
        self.handles = [layer.register_forward_hook(self._hook(k)) for k, layer in enumerate(self.layers)]

    def _hook(self, k: int):
        def hook(module: nn.BatchNorm2d, inputs, output):
            self.terms[k] = bn_stat_term(inputs[0], module.running_mean, module.running_var)
        return hook

    def loss(self) -> torch.Tensor:
        if any(t is None for t in self.terms):
            raise RuntimeError("BNStatLoss.loss() called before a forward pass through every BN layer")
        total = sum(w * t for w, t in zip(self.weights, self.terms))
        self.terms = [None] * len(self.layers)
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> BNStatLoss:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
