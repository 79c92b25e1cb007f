"""``--device auto|cpu|cuda|cuda:N``: the device is a flag, never hard-coded.

The flags themselves (``--device``, ``--gpu-device N`` = ``cuda:N``) are defined in the
torch-free ``common.cli.flags``; this module turns them into a :class:`torch.device` (torch is
imported inside the functions).
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from common.cli.errors import UserError

if TYPE_CHECKING:
    import torch

    from common.compute.launch import DistInfo


def device_from_args(args: argparse.Namespace) -> torch.device:
    """The device of ``--device`` / ``--gpu-device``; under torchrun, ``auto`` means ``cuda:LOCAL_RANK``
    (``common.compute.distributed``'s rule)."""
    from common.cli.flags import device_spec
    from common.compute.launch import dist_info

    return device_for(device_spec(args), dist_info())


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a ``--device`` value into a :class:`torch.device`, with a clear error."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("--device mps: MPS is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    raise UserError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """AMP context for the device; a no-op when disabled. Default dtype: what ``--amp`` means there
    (:func:`common.compute.accel.amp_dtype`: bf16 on GPUs that have it, else fp16; bf16 on CPU)."""
    import torch

    if not enabled:
        return torch.autocast(device_type=device.type, enabled=False)
    if dtype is None:
        from common.compute.accel import amp_dtype

        dtype = amp_dtype(device) or torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_for(spec, info: DistInfo):
    """``--device`` resolved for this rank: a bare ``cuda`` (or ``auto`` with CUDA) means ``cuda:LOCAL_RANK``."""
    import torch


    if isinstance(spec, torch.device):
        device = spec
    else:
        s = (spec or "auto").strip().lower()
        if info.distributed and s in ("auto", "cuda") and torch.cuda.is_available():
            s = f"cuda:{info.local_rank % torch.cuda.device_count()}"
        device = resolve_device(s)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return device
