"""One distributed setup for every stage: torchrun (or srun) environment, process group, device, muting.

The shape of torchvision's classification reference (``init_distributed_mode``):

- the launch is read from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (torchrun, also with
  ``--nnodes``), else from ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID``
  (the tasks of an ``srun`` step; ``MASTER_ADDR`` and ``MASTER_PORT`` must then be exported
  by the job script). A plain ``python`` in an sbatch script is one process, whatever
  ``--ntasks`` the allocation has;
- the backend is NCCL when the processes use CUDA, gloo on CPU;
- each process takes the GPU of its local rank (``cuda:LOCAL_RANK``) unless ``--device cuda:N``
  names one;
- on every rank but 0, ``print`` and tqdm progress bars are muted (``print(..., force=True)``
  and lines starting with ``error``/``warning`` still get through);
- :func:`is_main_process`, :func:`save_on_main`, :func:`barrier` and the reduce / gather helpers
  are no-ops (or the identity) in a single process.

A single process started without torchrun (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) touches
nothing: no process group, no muting, the device exactly as ``--device`` says.

This module imports torch only inside functions, so argument parsers may import it.
"""
from __future__ import annotations

import builtins
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

from common.cli.errors import UserError
from common.compute.device import device_for
from common.compute.launch import DistInfo, dist_info


@dataclass
class DistContext:
    """The result of :func:`init_distributed`: this process's rank, world and device."""

    info: DistInfo
    device: Any  # torch.device
    backend: str | None = None  # None: no process group (single process, or process_group=False)

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def local_rank(self) -> int:
        return self.info.local_rank

    @property
    def distributed(self) -> bool:
        return self.info.distributed

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0


_CTX: DistContext | None = None
_ORIG_PRINT = builtins.print
_ORIG_TQDM_INIT = None
_PRINT_PATCHED = False


def _mute(muted: bool) -> None:
    """``print`` accepts ``force=``; when ``muted`` it prints only with ``force=True`` or for an
    error/warning line, and tqdm bars are disabled (torchvision's ``setup_for_distributed``)."""
    global _ORIG_TQDM_INIT, _PRINT_PATCHED

    def dist_print(*args, force: bool = False, **kwargs):
        if not muted or force or (args and str(args[0]).lstrip().lower().startswith(("error", "warning"))):
            _ORIG_PRINT(*args, **kwargs)

    builtins.print = dist_print
    _PRINT_PATCHED = True
    if not muted:
        return
    try:
        from tqdm import std
    except ImportError:  # pragma: no cover - tqdm is a requirement
        return
    if _ORIG_TQDM_INIT is None:
        _ORIG_TQDM_INIT = std.tqdm.__init__
        orig = _ORIG_TQDM_INIT

        def quiet_init(self, *args, **kwargs):
            kwargs["disable"] = True
            orig(self, *args, **kwargs)

        std.tqdm.__init__ = quiet_init


def _unmute() -> None:
    global _ORIG_TQDM_INIT, _PRINT_PATCHED
    if _PRINT_PATCHED:
        builtins.print = _ORIG_PRINT
        _PRINT_PATCHED = False
    if _ORIG_TQDM_INIT is not None:
        from tqdm import std

        std.tqdm.__init__ = _ORIG_TQDM_INIT
        _ORIG_TQDM_INIT = None


def init_distributed(device="auto", *, process_group: bool = True, mute: bool = True,
                     timeout_s: float | None = None, environ=None) -> DistContext:
    """Set up this process: device per local rank, process group (NCCL on CUDA, gloo on CPU), muting.

    ``process_group=False`` reads the launch and sets the device without joining a group (for
    stages whose ranks never talk, such as ``recover``'s class shards); ``mute=False`` keeps
    every rank's prints and bars. ``timeout_s`` bounds
    every collective (default: torch's, 10 min for NCCL / 30 min for gloo; the environment
    variable ``DIST_TIMEOUT_S`` overrides it). In a single process this only resolves
    ``device``.
    """
    global _CTX
    info = dist_info(environ)
    dev = device_for(device, info)
    backend = None
    if info.distributed:
        import torch
        import torch.distributed as dist

        env = os.environ if environ is None else environ
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if process_group:
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
            if missing and info.launcher == "slurm":
                raise UserError(f"under srun, export {' and '.join(missing)} in the job script (e.g. MASTER_ADDR="
                                f"$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1), MASTER_PORT=29500)")
            if missing:
                raise UserError("RANK/WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are not; launch with torchrun")
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if timeout_s is None and env.get("DIST_TIMEOUT_S"):
                timeout_s = float(env["DIST_TIMEOUT_S"])
            kw = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
            if not dist.is_initialized():
                if environ is not None:  # explicit environment (tests): pass the rendezvous by URL
                    kw["init_method"] = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
                else:
                    kw["init_method"] = "env://"
                if dev.type == "cuda":
                    kw["device_id"] = dev
                dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, **kw)
        if mute:
            _mute(info.rank != 0)
    _CTX = DistContext(info, dev, backend)
    return _CTX


def cleanup() -> None:
    """Leave the process group (if any) and restore printing; safe to call more than once."""
    global _CTX
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
    _unmute()
    _CTX = None


# ------------------------------------------------------------------------------------------ queries

def is_initialized() -> bool:
    """True when a process group is up (torch.distributed initialised)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    if is_initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return _CTX.rank if _CTX is not None else 0


def get_world_size() -> int:
    if is_initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    return get_rank() == 0


def shard(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's share of ``n`` items: every ``world_size``-th index from ``rank`` (no padding)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return range(rank, n, world_size)


# ------------------------------------------------------------------------------------------ actions

def on_main(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0 only (its result there, None elsewhere)."""
    return fn(*args, **kwargs) if is_main_process() else None


def save_on_main(obj, path) -> None:
    """``torch.save`` (atomically) on rank 0 only."""
    if is_main_process():
        from common.run.atomic import atomic_torch_save

        atomic_torch_save(obj, path)


def barrier() -> None:
    if is_initialized():
        import torch.distributed as dist

        if dist.get_backend() == "nccl" and _CTX is not None and _CTX.device.type == "cuda":
            dist.barrier(device_ids=[_CTX.device.index])
        else:
            dist.barrier()


def _comm_device():
    import torch

    if _CTX is not None and _CTX.backend == "nccl":
        return _CTX.device
    return torch.device("cpu")


def all_reduce_sum(tensor):
    """Sum ``tensor`` over ranks (in place, returned); the identity in a single process."""
    if not is_initialized():
        return tensor
    import torch.distributed as dist

    dev = _comm_device()
    if tensor.device != dev:
        t = tensor.to(dev)
        dist.all_reduce(t)
        tensor.copy_(t)
    else:
        dist.all_reduce(tensor)
    return tensor


def sum_over_ranks(*values: float) -> list[float]:
    """Sum plain numbers over ranks (float64); the values themselves in a single process."""
    if not is_initialized():
        return [float(v) for v in values]
    import torch

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return all_reduce_sum(t).tolist()


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_initialized():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(tensor):
    """Every rank's ``tensor`` (same trailing shape and dtype, any number of rows, none included)
    concatenated in rank order; the tensor itself in a single process. Travels as tensors on the
    group's device (padded to the longest share), not pickled; the result is on ``tensor``'s device."""
    if not is_initialized():
        return tensor
    import torch
    import torch.distributed as dist

    dev = _comm_device()
    n = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=dev)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    if max(counts) == 0:
        return tensor
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]), device=dev)
    padded[:tensor.shape[0]] = tensor.to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(tensor.device)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_metrics(res: dict) -> dict:
    """Combine :func:`common.train.metrics.evaluate` results of disjoint shards into the whole set's."""
    if not is_initialized():
        return res
    n = res["images"]
    c1, c5, loss, total = sum_over_ranks(res["top1"] * n / 100.0, res["top5"] * n / 100.0, res["loss"] * n, n)
    total_ = max(total, 1.0)
    return {**res, "top1": 100.0 * round(c1) / total_, "top5": 100.0 * round(c5) / total_, "loss": loss / total_,
            "images": int(round(total))}


def broadcast_buffers(model) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before validating or saving."""
    if not is_initialized():
        return
    import torch.distributed as dist

    dev = _comm_device()
    for buf in model.buffers():
        if buf.device == dev:
            dist.broadcast(buf, src=0)
        else:
            t = buf.to(dev)
            dist.broadcast(t, src=0)
            buf.copy_(t)


def wrap_ddp(model, sync_bn: bool = False, broadcast_buffers: bool = True):
    """``DistributedDataParallel(model)`` when a process group is up (optionally with SyncBatchNorm);
    the model itself otherwise. The wrapped module is ``unwrap(model)``. ``broadcast_buffers=False``:
    no broadcast of rank 0's buffers before every forward (the caller keeps them equal)."""
    if not is_initialized():
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    dev = _CTX.device if _CTX is not None else torch.device("cpu")
    if sync_bn:
        if dev.type != "cuda":
            raise UserError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dev.type == "cuda":
        return DistributedDataParallel(model, device_ids=[dev.index], output_device=dev.index,
                                       broadcast_buffers=broadcast_buffers)
    return DistributedDataParallel(model, broadcast_buffers=broadcast_buffers)


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)
