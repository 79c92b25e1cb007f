"""Command-line flags every stage shares, torch-free (``--help`` and flag errors never import torch).

- ``--device auto|cpu|cuda|cuda:N`` and ``--gpu-device N``, the released scripts' GPU
  index, which means exactly ``--device cuda:N`` in every stage;
- ``--workers``: the DataLoader worker flag; ``workers_from_args`` picks every stage's count (its default is
  ``common.compute.accel.default_workers``);
- ``--dataset``, ``--data-path``, the architecture and ``--input-size`` of the commands that train on
  an ImageFolder (resolved by ``common.data.dataconfig.resolve_data_config``);
- ``--arch-name`` beside several teacher checkpoints (``recover --arch-path``, ``relabel_eval
  --teacher-path``): none, or one name per checkpoint (:func:`check_arch_names`, :func:`arch_per_path`).

``common.compute.device.device_from_args`` turns the device flags into a ``torch.device``.
"""
from __future__ import annotations

import argparse

from common.cli.argtypes import nonneg_int, positive_int
from common.cli.errors import UserError

NO_GPU = (None, "", "-1")  # the released scripts pass --gpu-device -1 for "no GPU index given"


def add_device_args(parser, default: str = "auto") -> None:
    """``--device`` and its alias ``--gpu-device N`` (= ``--device cuda:N``) on a parser or argument group."""
    parser.add_argument("--device", default=default,
                        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--gpu-device", default=None, metavar="N",
                        help="the released scripts' GPU index: exactly --device cuda:N (-1: not given)")


def add_data_args(parser, data_help: str, arch_default: str, arch_help: str, arch_flag: str = "--arch-name",
                  dataset_help: str = "registry name (normalisation, default input size)",
                  size_help: str = "default: the dataset's size for this arch") -> None:
    """``--dataset``, ``--data-path``, the architecture (``arch_flag``) and ``--input-size``."""
    parser.add_argument("--dataset", default="custom", help=dataset_help)
    parser.add_argument("--data-path", required=True, help=data_help)
    parser.add_argument(arch_flag, default=arch_default, help=arch_help)
    parser.add_argument("--input-size", type=positive_int, default=None, help=size_help)


def device_spec(args: argparse.Namespace) -> str:
    """The ``--device`` value after applying ``--gpu-device N`` (one rule for every stage)."""
    device = getattr(args, "device", "auto") or "auto"
    gpu = getattr(args, "gpu_device", None)
    if gpu is None or str(gpu).strip() in NO_GPU:
        return device
    first = str(gpu).split(",")[0].strip()  # "0,1" (a CUDA_VISIBLE_DEVICES-style list): the first index
    if not first.isdigit():
        raise UserError(f"--gpu-device {gpu}: expected a GPU index N (it means --device cuda:N)")
    spec = f"cuda:{int(first)}"
    if device not in ("auto", spec):
        raise UserError(f"--gpu-device {gpu} means --device {spec}, but --device {device} was also given; "
                        f"pass only one of them")
    return spec


def add_workers_arg(parser, help_extra: str = "") -> None:
    parser.add_argument("--workers", type=nonneg_int, default=None,
                        help="DataLoader workers (default: CPU min(4, cores - 1); CUDA all cores but one, up to 16)"
                        + help_extra)


def workers_from_args(args: argparse.Namespace, device_type: str, cpu_in_main: bool = False) -> int:
    """``--workers`` when given, else :func:`common.compute.accel.default_workers` for the device (the
    one worker rule: every stage picks its DataLoader workers here)."""
    from common.compute.accel import default_workers

    w = getattr(args, "workers", None)
    if w is None:
        return default_workers(device_type, cpu_in_main)
    if w < 0:
        raise UserError(f"--workers {w}: must be 0 or more")
    return int(w)


def add_curve_args(parser) -> None:
    """``--log-dir`` (TensorBoard event files, ``common.train.curves``) and ``--wandb-project``."""
    parser.add_argument("--log-dir", default=None,
                        help="write training curves here as TensorBoard event files (tensorboard --logdir DIR)")
    parser.add_argument("--wandb-project", default=None,
                        help="also log the curves to this Weights & Biases project (needs `pip install wandb`; "
                             "offline under --log-dir unless WANDB_API_KEY or WANDB_MODE is set)")


class ArchNames(argparse.Action):
    """``--arch-name A [B ...]``: one name is kept a plain string (recorded, and fingerprinted, as before
    several were accepted), several a list, one per checkpoint (``recover --arch-path``, ``relabel_eval
    --teacher-path``; checked by :func:`check_arch_names`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        values = list(values)
        setattr(namespace, self.dest, values[0] if len(values) == 1 else values)


def as_list(value) -> list:
    """A flag's value as a list: None -> [], one string (a single value kept plain) -> [it]."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_arch_names(args: argparse.Namespace, paths=None, paths_flag: str = "--arch-path") -> None:
    """``--arch-name``: none (each checkpoint records its architecture) or one name per checkpoint of
    ``paths_flag`` (``paths``, default ``args.arch_path``), in the same order; another count is a one-line
    error naming both flags."""
    names = as_list(args.arch_name)
    paths = as_list(args.arch_path if paths is None else paths)
    if names and paths and len(names) != len(paths):
        raise UserError(f"--arch-name: {len(names)} name(s) for {len(paths)} {paths_flag} checkpoint(s); give one "
                        f"--arch-name per {paths_flag}, in the same order, or none (each checkpoint records its "
                        f"architecture)")


def arch_per_path(names, n: int) -> list:
    """Each of ``n`` checkpoints' ``--arch-name`` (``names``: None, one plain string or a list, checked by
    :func:`check_arch_names`), in order; None: the architecture the checkpoint records."""
    names = as_list(names)
    return names if names else [None] * n
