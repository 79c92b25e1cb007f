"""Loading the ranker (DELT) or observer (RDED) and running it fast.

Both stages take a checkpoint written by ``squeeze`` (arch, classes, input size and
normalisation in its meta), an RDED/SRe2L-style ``{"model": state_dict}`` file, or
bare weights plus an architecture name. The data's class folders are checked
against the checkpoint by :func:`models.load_model` (one-line error on mismatch).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from common.cli.errors import UserError
from common.compute.device import autocast
from common.data.dataconfig import resolve_data_config
from common.data.datasets import DatasetSpec
from common.train.optim import freeze
from models import checkpoint_meta, load_model, read_checkpoint
from models.registry import canonical_arch

_PLAIN_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class Ranker:
    model: nn.Module
    meta: dict
    path: str
    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device


def model_path_from_args(args: argparse.Namespace, role: str) -> str | None:
    """The one weights path given by ``--<role>-path`` or ``--<role>-weights`` (None when neither)."""
    path, weights, arch = (getattr(args, f"{role}_{k}") for k in ("path", "weights", "arch"))
    if path and weights:
        raise UserError(f"--{role}-path and --{role}-weights are alternatives; give one")
    if weights and not arch:
        raise UserError(f"--{role}-weights needs --{role}-arch (bare weights do not record their architecture)")
    return path or weights


def resolve_arch(requested: str | None, meta: dict, state_dict: dict, path: str | os.PathLike) -> str | None:
    """The architecture to build, reconciling a flag with what the checkpoint records.

    The released DELT/RDED scripts pass ``resnet18`` for a ResNet-18-modified ranker
    (they patch the stem by dataset); a plain ResNet name whose checkpoint is the
    modified variant (by meta, or by a 3x3 ``conv1`` kernel) means the modified one.
    """
    meta_arch = meta.get("arch")
    if requested is None:
        return meta_arch
    req = canonical_arch(requested)
    modified = f"{req}_modified" if req in _PLAIN_RESNETS else None
    if meta_arch:
        if modified and canonical_arch(meta_arch) == modified:
            return modified
        return req
    conv1 = state_dict.get("conv1.weight")
    if modified and conv1 is not None and conv1.ndim == 4 and conv1.shape[-1] == 3:
        print(f"note: {path}: {requested} weights have a 3x3 stem; building {modified}", file=sys.stderr)
        return modified
    return req


def load_ranker(path: str | os.PathLike, arch: str | None, classes: Sequence[str], spec: DatasetSpec,
                input_size: int | None, device: torch.device, role: str = "ranker") -> Ranker:
    """Load the model for scoring, with normalisation and input size from its meta.

    Input size, mean and std: ``common.data.dataconfig.resolve_data_config`` (the flag, else the
    checkpoint's meta or weights, else the dataset registry's default for the architecture).
    """
    if not path:
        raise UserError(f"--{role}-path (or --{role}-arch with --{role}-weights) is required")
    ckpt = read_checkpoint(path)
    meta = ckpt["meta"]
    arch = resolve_arch(arch, meta, ckpt["model"], path)
    if not arch:
        raise UserError(f"{path}: checkpoint does not record its architecture; pass --{role}-arch")
    del ckpt
    size = resolve_data_config(spec, arch, input_size, checkpoint_meta(path, arch), flag="--input-size").input_size
    model, meta = load_model(path, arch=arch, classes=list(classes), input_size=size, device=device)
    model = prepare_for_inference(model, device)
    return Ranker(model, meta, str(Path(path)), meta["arch"], size, tuple(meta["mean"]), tuple(meta["std"]),
                  device)


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode, frozen, channels_last (faster convolutions on CUDA and on recent CPUs)."""
    freeze(model)
    return model.to(device=device, memory_format=torch.channels_last)


def forward_logits(ranker: Ranker, x: torch.Tensor) -> torch.Tensor:
    """float32 logits for a normalised NCHW batch; fp16 autocast on CUDA only."""
    x = x.to(ranker.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(ranker.device, enabled=ranker.device.type == "cuda"):
        return ranker.model(x).float()
