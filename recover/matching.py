"""Trajectory matching (MTT / DATM / PAD): the tensor-level core.

A student network is a function of one flat parameter vector (the layout of an
expert trajectory row): :func:`functional_forward` splits the vector into the
module's parameter shapes and calls ``torch.func.functional_call``, so the unrolled
SGD steps of :func:`unroll` stay differentiable with respect to the synthetic
images, their soft labels and the student learning rate.

The matching loss (:func:`matching_loss`) is
``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` over the
parameter entries kept by a mask:
- ``depth`` (PAD's paper, the default): drop the first ``ratio`` fraction of the flat
  vector, i.e. the shallowest layers' parameters (the vector follows module order);
- ``loss`` (the released PAD.py): drop the ``ratio`` fraction of entries with the
  smallest student-target error.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.ops.dsa import dsa


class ParamLayout:
    """Names and shapes of a module's parameters, in ``model.parameters()`` order."""

    def __init__(self, model: nn.Module):
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in model.named_parameters()]
        self.numels = [math.prod(s) for s in self.shapes]
        self.n_params = sum(self.numels)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, s, t in zip(self.names, self.shapes, torch.split(flat, self.numels))}

    def layer_bounds(self) -> list[tuple[str, int, int]]:
        out, start = [], 0
        for n, k in zip(self.names, self.numels):
            out.append((n, start, start + k))
            start += k
        return out


def functional_forward(model: nn.Module, layout: ParamLayout, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, layout.unflatten(flat), (x,))


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Released PAD's criterion: mean over the batch of -sum softmax(target) * log_softmax(logits)."""
    return -(F.softmax(target_logits, dim=1) * F.log_softmax(logits, dim=1)).sum() / logits.shape[0]


def batch_order(n: int, batch: int, steps: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches for ``steps`` student steps: a fresh permutation split into ``batch`` chunks, popped
    from the end as the released code does."""
    out: list[torch.Tensor] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(n, generator=generator), batch))
        out.append(chunks.pop())
    return out


def unroll(model: nn.Module, layout: ParamLayout, start: torch.Tensor, images: torch.Tensor,
           labels: torch.Tensor, lr: torch.Tensor, syn_steps: int, batch_syn: int,
           generator: torch.Generator | None = None, dsa_strategy: str = "none") -> torch.Tensor:
    """``syn_steps`` SGD steps of the student from ``start`` on the synthetic set; returns the last params.

    ``labels`` are soft-label logits ``[N, C]`` (the target is their softmax). The graph
    is kept (``create_graph=True``), so the result is differentiable in ``images``,
    ``labels`` and ``lr``.
    """
    flat = start.detach().clone().requires_grad_(True)
    for idx in batch_order(len(images), batch_syn, syn_steps, generator):
        x = images[idx]
        if dsa_strategy and dsa_strategy.lower() != "none":
            x = dsa(x, dsa_strategy, generator=generator)
        loss = soft_cross_entropy(functional_forward(model, layout, flat, x), labels[idx])
        grad = torch.autograd.grad(loss, flat, create_graph=True)[0]
        flat = flat - lr * grad
    return flat


def keep_mask(n_params: int, ratio: float, kind: str = "depth", errors: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the parameter entries that enter the loss."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), not {ratio}")
    k = int(ratio * n_params)
    if kind == "depth":
        return torch.arange(k, n_params)
    if kind == "loss":
        if errors is None:
            raise ValueError("the loss mask needs the per-parameter errors")
        return torch.sort(errors.detach())[1][k:]
    raise ValueError(f"unknown mask {kind}; use depth or loss")


def matching_loss(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor, ratio: float = 0.0,
                  kind: str = "depth") -> torch.Tensor:
    """Normalised parameter-matching loss over the entries kept by the mask."""
    errors = (student - target).pow(2)
    keep = keep_mask(len(student), ratio, kind, errors)
    dist = (start - target).pow(2)[keep].sum()
    return errors[keep].sum() / dist


def start_epoch_upper(iteration: int, min_start: int, current_max: int, max_start: int, expansion_end: int) -> int:
    """Exclusive upper bound of the start epoch at ``iteration`` (DATM/PAD's growing window)."""
    if expansion_end <= 0:
        return max(max_start, min_start + 1)
    upper = current_max + int((max_start - current_max) * iteration / expansion_end)
    return max(min(upper, max_start), min_start + 1)


@torch.no_grad()
def expert_logits(model: nn.Module, layout: ParamLayout, params: Sequence[torch.Tensor], x: torch.Tensor,
                  batch: int = 256) -> torch.Tensor:
    """``[E, N, C]`` logits of each expert parameter vector on ``x``."""
    out = []
    for flat in params:
        out.append(torch.cat([functional_forward(model, layout, flat, x[s:s + batch])
                              for s in range(0, len(x), batch)]))
    return torch.stack(out)


def init_soft_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the experts' logits over the experts that classify each image correctly
    (all experts for an image none of them gets right)."""
    correct = (logits.argmax(2) == labels.view(1, -1)).float()  # [E, N]
    none = correct.sum(0) == 0
    correct[:, none] = 1.0
    return (logits * correct.unsqueeze(2)).sum(0) / correct.sum(0).unsqueeze(1)


def select_correct(preds: torch.Tensor, label: int, ipc: int, order: torch.Tensor) -> tuple[list[int], int]:
    """Pick ``ipc`` candidates (in ``order``) that the experts classify as ``label``: those right under
    expert 0 first, then expert 1, ... (the released rule); missing ones are filled from the remaining
    candidates. ``preds`` is ``[E, n]``; returns (indices, how many were filled)."""
    chosen: list[int] = []
    for e in range(preds.shape[0]):
        for i in order.tolist():
            if len(chosen) == ipc:
                break
            if preds[e, i] == label and i not in chosen:
                chosen.append(i)
    filled = 0
    for i in order.tolist():
        if len(chosen) == ipc:
            break
        if i not in chosen:
            chosen.append(i)
            filled += 1
    return chosen, filled
