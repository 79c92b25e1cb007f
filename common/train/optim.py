"""Small training rules every stage shares: which parameters are decayed, how a teacher is frozen,
and the checkpoint key of the lr scheduler."""
from __future__ import annotations

from torch import nn

# Key of the lr scheduler's state in every training checkpoint (the torchvision reference's name).
SCHEDULER_KEY = "lr_scheduler"


def split_decay_params(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of trainable parameters with and without weight decay.

    Decay only conv and linear weights (name contains ``weight``, more than one
    dimension); biases and BatchNorm/LayerNorm scales get none, as the released
    ``get_parameters`` and the torchvision reference's ``--norm-weight-decay 0``.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if ("weight" in name and p.ndim > 1) else no_decay).append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups: ``weight_decay`` on conv/linear weights, 0 on norms and biases."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay_params(model)
    return [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]


def freeze(model: nn.Module) -> nn.Module:
    """A teacher: eval mode (BatchNorm uses its running statistics) and no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
