"""Top-1 / top-5 accuracy of a model over batches: the one evaluation loop every stage shares."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from common.compute.device import autocast


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, amp: bool = False,
             progress: bool = False, desc: str = "val") -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy over ``(x, y)`` batches.

    The model runs in eval mode and gets its previous mode back afterwards.
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == y[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(dim=1).sum())
        total += y.numel()
    model.train(was_training)
    total_ = max(total, 1)
    return {"top1": 100.0 * correct1 / total_, "top5": 100.0 * correct5 / total_, "loss": loss_sum / total_,
            "images": total}
