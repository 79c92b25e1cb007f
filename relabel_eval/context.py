"""What ``python -m relabel_eval`` and ``python -m relabel_eval.relabel`` share:
the data / teacher / augmentation flags, their resolution, and the batch iterator
that turns an epoch plan into mixed, normalised batches on the device.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from common.cli.errors import UserError
from common.cli.flags import workers_from_args
from common.compute.accel import Precision, resolve_precision
from common.compute.device import autocast, device_from_args
from common.data.dataconfig import resolve_data_config
from common.data.datasets import DatasetSpec, check_class_count, get_dataset
from common.train.optim import freeze
from models import check_arch, load_model
from relabel_eval.args import check_teacher_flags, teacher_arch_names, teacher_path_list
from relabel_eval.augment import SampleTransform
from relabel_eval.data import DistilledSet, load_distilled, make_train_loader
from relabel_eval.eval_protocols import DEFAULT_PROTOCOL, get_protocol, resolve_aug
from relabel_eval.mix import MixParams, apply_mix
from relabel_eval.plan import AugConfig, EpochPlan
from relabel_eval.protocol import auto_batch_size, released_special_case

IGNORED_FLAGS = ("mipc", "num_crop", "train_dir", "classes")


@dataclass
class Common:
    device: torch.device
    amp: bool
    spec: DatasetSpec
    data: DistilledSet
    teacher: nn.Module | None
    teacher_meta: dict
    input_size: int
    mean: tuple
    std: tuple
    aug: AugConfig
    workers: int
    precision: Precision = field(default_factory=lambda: Precision("cpu"))

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)


def resolve_common(args: argparse.Namespace, need_teacher: bool, stored: dict | None = None,
                   student_hint: str | None = None) -> Common:
    """Load the distilled set and (when needed) the teacher; settle input size, mean/std and augmentation.

    ``stored`` is a soft-label manifest (``--label-mode fkd``): its size, mean/std and
    augmentation are used instead of the flags, since the stored batches were made with them.
    """
    device = device_from_args(args)
    precision = resolve_precision(device, args.amp)
    amp = precision.enabled
    spec = get_dataset(args.dataset)
    if args.teacher_path is None and need_teacher:
        raise UserError("--teacher-path is required for soft labels (or use --label-mode hard / fkd)")
    data = load_distilled(args.syn_data_path, args.ipc)
    check_class_count(spec, len(data.classes), args.syn_data_path)
    if args.nclass and args.nclass != len(data.classes):
        raise UserError(f"--nclass {args.nclass} but {args.syn_data_path} has {len(data.classes)} class folders")
    teacher, meta = None, {}
    if args.teacher_path is not None and (need_teacher or stored is None):
        check_teacher_flags(args)
        paths, archs = teacher_path_list(args), teacher_arch_names(args)  # one --arch-name per teacher, or none
        teacher, meta = load_model(paths[0], arch=archs[0], classes=data.classes,
                                   device=device if need_teacher else "cpu")
        if need_teacher:
            teacher = freeze(teacher).to(memory_format=torch.channels_last)
            others = [freeze(load_model(p, arch=a, classes=data.classes, device=device)[0]).to(
                memory_format=torch.channels_last) for p, a in zip(paths[1:], archs[1:])]
            teacher = label_teacher([teacher, *others], getattr(args, "teacher_weights", None),
                                    getattr(args, "teacher_mode", "eval"), getattr(args, "teacher_bn_group", 0))
        else:
            teacher = None
    made_under = stored.get("protocol", DEFAULT_PROTOCOL) if stored is not None else None
    if stored is not None and args.protocol and args.protocol != made_under:
        raise UserError(f"--protocol {args.protocol} but the soft labels were made under --protocol {made_under}")
    args.protocol = args.protocol or made_under or DEFAULT_PROTOCOL
    if stored is not None:
        input_size, mean, std = stored["input_size"], stored["mean"], stored["std"]
        aug = AugConfig.from_dict(stored["aug"])
        if args.input_size and args.input_size != input_size:
            raise UserError(f"--input-size {args.input_size} but the soft labels were made at {input_size}")
    else:
        data_cfg = resolve_data_config(spec, student_hint, args.input_size, meta, image_root=args.syn_data_path)
        input_size, mean, std = data_cfg.input_size, data_cfg.mean, data_cfg.std
        try:
            scale = resolve_aug(get_protocol(args.protocol), args.factor, args.min_scale_crops, args.max_scale_crops)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        alpha = args.cutmix if args.mix_type == "cutmix" else args.mixup if args.mix_type == "mixup" else None
        plain = bool(getattr(args, "no_image_aug", False))
        if plain:
            given = [f for f, on in (("--use-rand-augment", args.use_rand_augment),
                                     ("--random-erasing-p", args.random_erasing_p > 0),
                                     ("--min-scale-crops", args.min_scale_crops is not None),
                                     ("--max-scale-crops", args.max_scale_crops != 1.0),
                                     (f"--protocol {args.protocol}", scale.shuffle_factor > 1)) if on]
            if given:
                raise UserError(f"--no-image-aug: drop {', '.join(given)} (each image is used whole, unflipped)")
        aug = AugConfig(int(input_size), scale.min_scale, scale.max_scale,
                        args.rand_augment_config if args.use_rand_augment else None,
                        args.random_erasing_p, args.mix_type, alpha, scale.shuffle_factor, plain)
    if aug.shuffle_factor > int(data.sizes.min()):
        raise UserError(f"--factor {aug.shuffle_factor}: larger than the smallest image side "
                        f"{int(data.sizes.min())} of {args.syn_data_path}")
    if aug.rand_augment:
        SampleTransform(aug.input_size, aug.rand_augment)._ra_for(32)  # a bad config string fails here, not in a worker
    workers = workers_from_args(args, device.type)
    return Common(device, amp, spec, data, teacher, meta, int(input_size), tuple(mean), tuple(std), aug, workers,
                  precision)


@contextlib.contextmanager
def bn_batch_statistics(model: nn.Module):
    """BatchNorm layers normalise with the batch's own statistics (train mode) and leave their running
    statistics and ``num_batches_tracked`` untouched; everything else keeps its mode (no dropout)."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.training, m.track_running_stats))
            m.training, m.track_running_stats = True, False  # F.batch_norm gets running stats None
    try:
        yield model
    finally:
        for m, training, track in saved:
            m.training, m.track_running_stats = training, track


class LabelTeacher(nn.Module):
    """The teacher(s) soft labels come from: the weighted mean of their fp32 logits, each in eval mode or
    (``mode="train"``) with BN on batch statistics, over groups of ``bn_group`` images (0: the whole batch)."""

    def __init__(self, teachers: list[nn.Module], weights: list[float] | None, mode: str = "eval",
                 bn_group: int = 0):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.weights = None if weights is None else [float(w) / float(sum(weights)) for w in weights]
        self.mode, self.bn_group = mode, int(bn_group)

    def one(self, teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.mode != "train":
            return teacher(x).float()
        with bn_batch_statistics(teacher):
            if self.bn_group and self.bn_group < len(x):
                return torch.cat([teacher(c).float() for c in x.split(self.bn_group)])
            return teacher(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.one(t, x) for t in self.teachers]
        if len(outs) == 1:
            return outs[0]
        if self.weights is None:
            return torch.stack(outs).mean(0)
        return sum(w * o for w, o in zip(self.weights, outs))


def label_teacher(teachers: list[nn.Module], weights, mode: str, bn_group: int) -> nn.Module:
    """The one teacher itself (today's path, unchanged) unless there are several, weights or train mode."""
    if len(teachers) == 1 and mode == "eval":
        return teachers[0]
    return LabelTeacher(teachers, weights, mode, bn_group)


def first_arch_name(args: argparse.Namespace) -> str | None:
    """The first teacher's ``--arch-name`` (None: not given)."""
    return teacher_arch_names(args)[0]


def teacher_summary(args: argparse.Namespace) -> dict:
    """How the soft labels are made (for manifests and results)."""
    paths = getattr(args, "teacher_paths", None) or ([args.teacher_path] if args.teacher_path else [])
    return {"paths": [str(p) for p in paths], "weights": getattr(args, "teacher_weights", None),
            "mode": getattr(args, "teacher_mode", "eval"), "bn_group": getattr(args, "teacher_bn_group", 0)}


def teacher_inputs(args: argparse.Namespace) -> dict:
    """Manifest inputs: ``teacher`` (the first checkpoint), ``teacher_2`` ... for the others."""
    paths = getattr(args, "teacher_paths", None) or [args.teacher_path]
    return {("teacher" if i == 0 else f"teacher_{i + 1}"): p for i, p in enumerate(paths)}


def batch_size_for(args: argparse.Namespace, common: Common, stud_name: str) -> tuple[int, str]:
    """``(batch size, source)``: the flag, the protocol's, the released special case, or DELT's table."""
    if args.re_batch_size:
        return int(args.re_batch_size), "flag"
    proto = get_protocol(getattr(args, "protocol", None))
    if proto.batch_size:
        return int(min(proto.batch_size, len(common.data))), f"--protocol {proto.name}"
    special = released_special_case(common.spec.name, first_arch_name(args) or common.teacher_meta.get("arch"),
                                    stud_name)
    if "batch_size" in special:
        return int(special["batch_size"]), "released special case"
    return auto_batch_size(common.data.ipc, common.num_classes, common.spec.family), "table"


class BatchMaker:
    """Turns the DataLoader's per-image tensors of an epoch plan into normalised, mixed device batches.

    With ``world_size > 1`` (DDP under torchrun) process ``rank`` trains on positions
    ``rank, rank + world_size, ...`` of every batch of the (global) plan: it loads those images
    and their mixing partners, so each of its rows is mixed exactly as in a one-process run.
    """

    def __init__(self, common: Common, rank: int = 0, world_size: int = 1):
        self.common, self.rank, self.world_size = common, rank, world_size
        self.transform = SampleTransform(common.aug.input_size, common.aug.rand_augment, common.aug.erasing_p,
                                         common.aug.shuffle_factor)
        self.loader, self.sampler = make_train_loader(common.data, self.transform, common.workers,
                                                      device_type=common.device.type)
        dev = common.device
        self.mean = torch.tensor(common.mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(common.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)

    def own_rows(self, plan: EpochPlan, b: int) -> tuple[np.ndarray, float]:
        """Positions in batch ``b`` this process trains on, and the weight of its loss.

        The weight makes DDP's gradient average equal the whole batch's mean loss when the
        shares differ in size; a process with no share gets one row at weight 0 (every
        process must take part in every step).
        """
        s = plan.batch_slice(b)
        m = s.stop - s.start
        mine = np.arange(self.rank, m, self.world_size)
        if len(mine) == 0:
            return np.zeros(1, dtype=np.int64), 0.0
        return mine, len(mine) * self.world_size / m

    def _load_rows(self, plan: EpochPlan, b: int) -> np.ndarray:
        mine, _ = self.own_rows(plan, b)
        if plan.mix_type == "none":
            return mine
        return np.unique(np.concatenate([mine, plan.perms[plan.batch_slice(b)][mine]]))

    def batches(self, plan: EpochPlan) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, MixParams]]:
        """``(batch index, mixed normalised input (channels_last), labels, mixing)``."""
        distributed = self.world_size > 1
        self.sampler.set_plan(plan, self._load_rows if distributed else None)
        dev = self.common.device
        for b, (x, y) in enumerate(self.loader):
            x = x.to(dev, non_blocking=True)
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            if not distributed:
                mix = plan.mix(b).to(dev)
                yield b, apply_mix(x, mix), y.to(dev, non_blocking=True), mix
                continue
            mix = plan.mix(b)
            loaded, (mine, _) = self._load_rows(plan, b), self.own_rows(plan, b)
            own = torch.from_numpy(np.searchsorted(loaded, mine))
            xo, yo = x[own.to(dev)], y[own]
            if mix.mix_type != "none" and mix.perm is not None:
                partner = torch.from_numpy(np.searchsorted(loaded, mix.perm.numpy()[mine]))
                k = len(mine)
                swap = torch.cat([torch.arange(k, 2 * k), torch.arange(k)]).to(dev)
                xo = apply_mix(torch.cat([xo, x[partner.to(dev)]]), MixParams(mix.mix_type, swap, mix.lam,
                                                                              mix.box))[:k]
                mix = MixParams(mix.mix_type, torch.arange(k), mix.lam, mix.box, partner_labels=y[partner])
            yield b, xo.contiguous(memory_format=torch.channels_last), yo.to(dev, non_blocking=True), mix.to(dev)


def teacher_logits(teacher: nn.Module, x: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    """The frozen teacher's fp32 logits, in inference mode (no autograd records, no version counters)."""
    with torch.inference_mode(), autocast(device, amp):
        return teacher(x).float()


def warn_ignored(args: argparse.Namespace, also: tuple[str, ...] = ()) -> None:
    """One note naming the flags given that this command does not use (``also``: this command's own)."""
    ignored = IGNORED_FLAGS + also + (() if get_protocol(getattr(args, "protocol", None)).needs_factor
                                      else ("factor",))
    used = [f"--{k.replace('_', '-')}" for k in ignored if getattr(args, k, None) not in (None, "")]
    if used:
        print(f"note: {', '.join(used)} accepted for the released scripts and ignored", file=sys.stderr, flush=True)


def student_archs(values: list[str] | None, fallback: str | None) -> list[str]:
    """``--stud-name a b`` or ``--stud-name a,b``; default: the teacher's architecture."""
    names = [n for v in (values or []) for n in str(v).split(",") if n.strip()]
    if not names:
        if not fallback:
            raise UserError("--stud-name is required when no teacher checkpoint gives an architecture")
        names = [fallback]
    return [check_arch(n.strip(), "--stud-name") for n in names]


def default_output(syn_path: str, label_mode: str) -> Path:
    return Path("runs") / "relabel_eval" / f"{Path(syn_path).resolve().name}_{label_mode}.json"
