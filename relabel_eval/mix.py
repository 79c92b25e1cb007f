"""CutMix / Mixup on a batch, and the two student losses (soft-label KD, hard-label CE).

As the released DELT/RDED code: one lambda and one CutMix box for the whole batch,
lambda ~ Beta(1, 1) for CutMix and Beta(0.8, 0.8) for Mixup, the box side
``int(side * sqrt(1 - lambda))`` centred at a uniform pixel and clipped to the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MixParams:
    """One batch's mixing: ``x' = mix(x, x[perm])``; ``box = (y1, y2, x1, x2)`` for CutMix.

    ``partner_labels``: the labels of ``x[perm]`` when the partners are not in the batch
    (a process's share of a batch under torchrun); ``labels[perm]`` otherwise.
    """

    mix_type: str
    perm: torch.Tensor | None = None
    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None
    partner_labels: torch.Tensor | None = None

    def to(self, device) -> MixParams:
        perm = None if self.perm is None else self.perm.to(device, non_blocking=True)
        partner = None if self.partner_labels is None else self.partner_labels.to(device, non_blocking=True)
        return MixParams(self.mix_type, perm, self.lam, self.box, partner)


def cutmix_box(H: int, W: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """Box ``(y1, y2, x1, x2)`` of side ``int(H * sqrt(1 - lam))`` around ``(cy, cx)`` (released ``rand_bbox``)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(H * cut), int(W * cut)
    y1, y2 = int(np.clip(cy - ch // 2, 0, H)), int(np.clip(cy + ch // 2, 0, H))
    x1, x2 = int(np.clip(cx - cw // 2, 0, W)), int(np.clip(cx + cw // 2, 0, W))
    return y1, y2, x1, x2


def box_lambda(box: tuple[int, int, int, int], H: int, W: int) -> float:
    """Share of the image outside the pasted box (CutMix's area-corrected lambda)."""
    y1, y2, x1, x2 = box
    return 1.0 - (y2 - y1) * (x2 - x1) / float(H * W)


def draw_mix(rng: np.random.Generator, batch: int, H: int, W: int, mix_type: str,
             alpha: float | None = None) -> dict:
    """Draw one batch's mixing parameters as plain numbers (stored in the epoch plan)."""
    if mix_type == "none":
        return {"perm": np.arange(batch), "lam": 1.0, "box": (0, 0, 0, 0)}
    a = alpha if alpha is not None else (1.0 if mix_type == "cutmix" else 0.8)
    perm = rng.permutation(batch)
    lam = float(rng.beta(a, a))
    box = (0, 0, 0, 0)
    if mix_type == "cutmix":
        box = cutmix_box(H, W, lam, int(rng.integers(H)), int(rng.integers(W)))
    return {"perm": perm, "lam": lam, "box": box}


def apply_mix(x: torch.Tensor, mix: MixParams) -> torch.Tensor:
    """The mixed batch (a new tensor; ``x`` is left unchanged)."""
    if mix.mix_type == "none" or mix.perm is None:
        return x
    if mix.mix_type == "mixup":
        return mix.lam * x + (1.0 - mix.lam) * x[mix.perm]
    y1, y2, x1, x2 = mix.box
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[mix.perm, :, y1:y2, x1:x2]
    return out


def target_lambda(mix: MixParams, H: int, W: int) -> float:
    """Label weight of each image's own class: CutMix uses the actual box area."""
    if mix.mix_type == "cutmix":
        return box_lambda(mix.box, H, W)
    if mix.mix_type == "mixup":
        return mix.lam
    return 1.0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            student_temperature: float | None = None) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T_s))`` with reduction batchmean and no T^2 factor (as released);
    ``T_s`` = ``T`` unless ``student_temperature`` is given (LPQLD's calibrated student temperature)."""
    T = float(temperature)
    Ts = T if student_temperature is None else float(student_temperature)
    return F.kl_div(F.log_softmax(student_logits.float() / Ts, dim=1),
                    F.softmax(teacher_logits.float() / T, dim=1), reduction="batchmean")


# LPQLD's calibrated alignment: candidate student temperatures (np.linspace(0.01, 1, 100))
LPQLD_STUDENT_TEMPERATURES = tuple(round(0.01 * (i + 1), 2) for i in range(100))


@torch.no_grad()
def student_temperature_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               temperature: float) -> torch.Tensor:
    """Per candidate student temperature (:data:`LPQLD_STUDENT_TEMPERATURES`) the summed (not yet
    batch-averaged) KL of ``softmax(t/T)`` against ``softmax(s/t_s)``: LPQLD refits its student temperature
    to the argmin of these on each epoch's last batch (summed over processes under DDP)."""
    target = F.softmax(teacher_logits.float() / float(temperature), dim=1)
    s = student_logits.detach().float()
    return torch.stack([F.kl_div(F.log_softmax(s / ts, dim=1), target, reduction="sum")
                        for ts in LPQLD_STUDENT_TEMPERATURES])


def mixed_ce(logits: torch.Tensor, labels: torch.Tensor, mix: MixParams, lam: float) -> torch.Tensor:
    """Hard-label loss on a mixed batch: ``lam * CE(y) + (1 - lam) * CE(y[perm])``."""
    logits = logits.float()
    loss = F.cross_entropy(logits, labels)
    if mix.mix_type == "none" or mix.perm is None or lam >= 1.0:
        return loss
    partner = mix.partner_labels if mix.partner_labels is not None else labels[mix.perm]
    return lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner)


def topk_to_logits(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full logit rows from stored top-k logits: other classes get -inf (softmax restricted to the top k)."""
    out = torch.full((values.shape[0], num_classes), float("-inf"), dtype=torch.float32, device=values.device)
    return out.scatter_(1, indices.long(), values.float())


def mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between raw logits, averaged over every element (``F.mse_loss``'s reduction mean;
    written out so that the teacher's inference-mode logits need not be saved for the backward)."""
    return (student_logits.float() - teacher_logits.float()).square().mean()


def soft_label_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    labels: torch.Tensor | None = None, mix: MixParams | None = None, lam: float = 1.0,
                    ce_weight: float = 0.0) -> torch.Tensor:
    """``kl``: :func:`kd_loss`; ``mse``: :func:`mse_loss`; ``mse+ce``: MSE + ``ce_weight`` x CE on each image's own
    class label, the mixing ignored (EDC's ``loss_type mse_gt``: ``partial_target``, not the CutMix-mixed label;
    ``mix`` and ``lam`` are accepted for the other kinds' signature)."""
    if kind == "kl":
        return kd_loss(student_logits, teacher_logits, temperature)
    loss = mse_loss(student_logits, teacher_logits)
    if kind == "mse+ce":
        loss = loss + ce_weight * F.cross_entropy(student_logits.float(), labels)
    return loss


def lpqld_temperature(epoch: int) -> float:
    """LPQLD's schedule: ``20 x 0.7^(epoch // 30)``, never below 2 (``epoch`` 0-based)."""
    return max(2.0, 20.0 * 0.7 ** (int(epoch) // 30))
