"""Execution speed, chosen by the hardware: mixed precision, torch.compile, DataLoader sizing.

One policy for every stage (squeeze, recover, relabel_eval, rank_select):

- :func:`resolve_precision` turns ``--amp`` into what the device runs well. CUDA: bf16
  autocast where the GPU has bf16 (Ampere and later), else fp16 with a GradScaler. CPU:
  bf16 only with native bf16 units (AVX512-BF16 or AMX on x86, BF16 on Arm); elsewhere
  bf16 is emulated and about 5x slower than fp32, so ``--amp`` warns once and runs fp32.
- :func:`compile_model` is ``--compile``: ``torch.compile`` with a clean fallback; when
  compiling is impossible or fails, one warning and the eager model.
- :func:`default_workers` and :func:`loader_kwargs` size DataLoaders: on a GPU box the
  workers keep the GPU fed (all cores but one, split over the local torchrun processes,
  prefetch 4 batches, pinned memory); on a CPU the main process does the maths and at most
  a few workers decode and augment.

This module imports torch only inside functions, so argument parsers may import it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_WARNED: set[str] = set()

# /proc/cpuinfo flags that mean the CPU computes bf16 natively (x86: AVX512-BF16, AMX; Arm: BF16)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def warn_once(key: str, message: str) -> None:
    """Print ``warning: message`` to stderr the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (x86 ``flags``, Arm ``Features``); empty if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when bf16 matrix maths runs on dedicated units (AVX512-BF16/AMX, Arm BF16)."""
    flags = cpu_flags()
    if flags:
        return bool(flags & NATIVE_BF16_FLAGS)
    if sys.platform == "darwin":  # Apple silicon M2 and later
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5)
            return out.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            return False
    return False


@dataclass(frozen=True)
class Precision:
    """What ``--amp`` resolved to on a device: autocast dtype (None: fp32) and whether a GradScaler is needed."""

    device_type: str
    dtype: Any = None   # torch.bfloat16, torch.float16 or None (fp32, autocast off)
    scaler: bool = False

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def name(self) -> str:
        if self.dtype is None:
            return "fp32"
        return "bf16" if "bfloat16" in str(self.dtype) else "fp16"

    def autocast(self):
        """The autocast context (a no-op for fp32)."""
        import torch

        if self.dtype is None:
            return torch.autocast(device_type=self.device_type, enabled=False)
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        """A GradScaler, enabled only for fp16 (bf16 has fp32's range and needs none)."""
        import torch

        return torch.amp.GradScaler("cuda" if self.device_type == "cuda" else "cpu", enabled=self.scaler)


def cuda_has_bf16(device=None) -> bool:
    import torch

    try:
        if device is not None and getattr(device, "index", None) is not None:
            major, _ = torch.cuda.get_device_capability(device)
            return major >= 8
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without including_emulation
        return bool(torch.cuda.is_bf16_supported())


def amp_dtype(device):
    """The autocast dtype ``--amp`` means on ``device`` (bf16 where native, fp16 on older GPUs);
    None when the device has no fast reduced precision (fp32)."""
    import torch

    dev_type = getattr(device, "type", str(device).split(":")[0])
    if dev_type == "cuda":
        return torch.bfloat16 if cuda_has_bf16(device) else torch.float16
    if dev_type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def resolve_precision(device, amp: bool | None, flag: str = "--amp") -> Precision:
    """``--amp`` on ``device``: True, False, or None (the default: on for CUDA, off elsewhere).

    On a CPU without native bf16, or a device without autocast support, a requested
    ``--amp`` warns once and gives fp32.
    """
    dev_type = getattr(device, "type", str(device).split(":")[0])
    if amp is None:
        amp = dev_type == "cuda"
    if not amp:
        return Precision(dev_type)
    dtype = amp_dtype(device)
    if dtype is None:
        if dev_type == "cpu":
            warn_once("amp-cpu", f"{flag}: this CPU has no native bf16 (AVX512-BF16 or AMX); bf16 would be emulated "
                                 f"and several times slower, so it runs in fp32")
        else:
            warn_once(f"amp-{dev_type}", f"{flag}: no mixed precision on {dev_type}; running fp32")
        return Precision(dev_type)
    import torch

    return Precision(dev_type, dtype, scaler=dtype == torch.float16)


def compile_model(model, enabled: bool, what: str = "model"):
    """``torch.compile(model)`` when ``enabled``; on any failure, one warning and ``model`` (eager).

    Compilation happens lazily at the first call; errors there (no C++ compiler, an
    unsupported op, an old GPU for Triton) fall back to eager for the failing frames
    (``torch._dynamo.config.suppress_errors``) instead of stopping the run.
    """
    if not enabled:
        return model
    import torch

    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        return torch.compile(model)
    except Exception as exc:  # noqa: BLE001 - any reason compiling is impossible here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warn_once(f"compile-{what}", f"--compile: torch.compile of the {what} failed ({first}); running eager")
        return model


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device_type: str = "cpu", cpu_in_main: bool = False) -> int:
    """DataLoader workers per process when ``--workers`` is not given (the one rule of every stage).

    CUDA: every core but one per process (cores split over torchrun's LOCAL_WORLD_SIZE
    processes), capped at 16, at least 2. CPU: the main process computes, so workers only
    decode and augment: cores - 1, capped at 4 (1 on a 2-core machine, 0 on one core); 0 for a
    stage that augments in the main process on a CPU (``cpu_in_main``: squeeze's trainers, whose
    decoded images are cached, so augmenting them there is cheaper than shipping them from workers).
    """
    per_proc = max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    if device_type == "cuda":
        return max(2, min(16, per_proc - 1))
    if device_type == "cpu" and cpu_in_main:
        return 0
    return max(0, min(4, per_proc - 1))


def loader_kwargs(device_type: str, workers: int, persistent: bool = True) -> dict:
    """DataLoader keyword arguments for ``workers`` on a device: pinned memory on CUDA, prefetch 4
    batches per worker on CUDA (2 on CPU), workers kept alive between epochs when ``persistent``."""
    kw: dict = {"num_workers": workers, "pin_memory": device_type == "cuda"}
    if workers > 0:
        kw["prefetch_factor"] = 4 if device_type == "cuda" else 2
        kw["persistent_workers"] = persistent
    return kw
