"""Teacher training (the flags and the recipe are described in :mod:`squeeze.args`)."""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from common.cli.errors import UserError
from common.cli.flags import device_spec, workers_from_args
from common.cli.paths import check_output_dir, check_output_file
from common.compute.accel import compile_model, loader_kwargs, resolve_precision
from common.compute.distributed import (
    broadcast_buffers,
    cleanup,
    init_distributed,
    reduce_metrics,
    shard,
    sum_over_ranks,
    unwrap,
    wrap_ddp,
)
from common.data.dataconfig import resolve_data_config
from common.data.datasets import check_class_count, get_dataset
from common.data.imagefolder import CORRUPT, ImageFolder, check_train_val
from common.data.transforms import train_transform, val_transform
from common.run.atomic import atomic_write_json
from common.run.manifest import build_manifest
from common.run.state import RunState, check_output, fingerprint, state_dir
from common.train.curves import Curves, epoch_scalars
from common.train.metrics import evaluate
from common.train.optim import SCHEDULER_KEY, param_groups
from common.train.seed import SeededItems, epoch_seed, sampler_seed, seed_everything, seed_worker
from models import build_model, make_meta, read_checkpoint, save_checkpoint
from models.registry import check_arch
from squeeze.args import get_args_parser  # the torch-free parser (python -m squeeze parses with it first)

STAGE = "squeeze"
# Arguments that do not change the teacher (besides common.run.state.NOT_RESULT, which holds --workers:
# every image's augmentation is a function of (seed, epoch, index) wherever it is drawn, SeededItems).
NOT_RESULT = {"output", "cache", "compile"}


def lr_at(step: int, total_steps: int, warmup_steps: int, warmup_start: float) -> float:
    """Multiplier of the base lr: linear warm-up from ``warmup_start`` to 1, then cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def report_path(output: str | Path) -> Path:
    """The metrics JSON beside the teacher (``teacher.pth`` -> ``teacher.json``): our manifest of it."""
    output = Path(output)
    return output.with_suffix(".json") if output.suffix else Path(str(output) + ".json")


def train_one_epoch(model, loader, optimizer, scheduler, device, scaler, precision, label_smoothing,
                    epoch: int, epochs: int) -> dict[str, float]:
    """One epoch; ``precision`` is a :class:`common.compute.accel.Precision` (autocast dtype, GradScaler or not)."""
    model.train()
    loss_sum = correct = total = 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=1.0)
    for it, (x, y) in enumerate(bar):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):  # before the step: the weights of the last good step are kept
            base_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
            amp_hint = " or run without --amp" if precision.enabled else ""
            raise UserError(f"non-finite training loss at epoch {epoch + 1}, iteration {it + 1}: the training "
                            f"diverged; lower --lr (now {base_lr:g}){amp_hint}; the teacher was not written")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.item() * y.numel()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{100 * correct / total:.1f}")
    loss_sum, correct, total = sum_over_ranks(loss_sum, correct, total)  # all processes' images
    dt = time.perf_counter() - t0
    return {"train_loss": loss_sum / max(total, 1), "train_top1": 100.0 * correct / max(total, 1),
            "epoch_seconds": dt, "images_per_second": total / max(dt, 1e-9)}


def resume_training(resume: str | None, state_file: Path, model, optimizer, scheduler, arch: str,
                    classes: list[str], world_size: int, load_extra=None) -> tuple[int, list[dict]]:
    """Load the training checkpoint (``state_file``, or the one ``--resume PATH`` names) into the model,
    optimiser and scheduler (``load_extra(ck)`` for the rest); ``(first epoch to run, history)``."""
    resume_from = state_file if resume in (None, "auto") else Path(resume)
    if resume not in (None, "auto") and not resume_from.is_file():
        raise UserError(f"{resume_from}: --resume checkpoint not found")
    if not resume_from.is_file():
        return 0, []
    ck = read_checkpoint(resume_from)
    if ck["meta"].get("classes") != classes or ck["meta"].get("arch") != arch:
        raise UserError(f"{resume_from}: --resume checkpoint is for another arch or class list")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck[SCHEDULER_KEY])
    if load_extra is not None:
        load_extra(ck)
    start_epoch, history = int(ck["epoch"]) + 1, list(ck.get("history", []))
    if int(ck.get("world_size", 1)) != world_size:
        print(f"note: {resume_from} was written by {ck.get('world_size', 1)} process(es), this run has "
              f"{world_size}: the run continues, but is exact only for the same number", file=sys.stderr)
    print(f"resumed from {resume_from} at epoch {start_epoch}", file=sys.stderr)
    return start_epoch, history


def main(argv=None) -> dict:
    return check_then_train(get_args_parser().parse_args(argv), STAGE, train)


def run_epochs(args: argparse.Namespace, ctx, run, loop, start_epoch: int, history: list[dict],
               curves_name: str) -> dict | None:
    """The epochs ``start_epoch`` .. ``--epochs`` of ``loop`` (squeeze's or squeeze.ssl's), appended to
    ``history`` and logged as curves (``--log-dir``, ``--wandb-project``); with ``--max-epochs-this-run``
    the run stops early and the result says where (``None`` when every epoch ran)."""
    curves = Curves(args.log_dir, curves_name, wandb_project=args.wandb_project, config=run_args_of(args),
                    purge_step=start_epoch + 1, main=ctx.is_main)
    with run.running(), curves:  # a failure before the first epoch's checkpoint leaves no state behind
        for epochs_run, epoch in enumerate(range(start_epoch, args.epochs)):
            if args.max_epochs_this_run is not None and epochs_run >= args.max_epochs_this_run:
                print(f"stopping after {epochs_run} epoch(s); run the same command to continue", file=sys.stderr)
                return {"stopped_at_epoch": epoch, "history": history}
            history.append(loop.run_epoch(epoch, history))
            curves.log(epoch + 1, epoch_scalars(history[-1]))
    return None


def check_then_train(args: argparse.Namespace, stage: str, train_fn) -> dict:
    """Check ``--output``, its report and the state folder beside it before any work (not after hours
    of training), then ``train_fn(args, ctx)`` in torchrun's process group (one process: just the device)."""
    output = check_output_file(args.output, "--output")
    check_output_file(report_path(output), "--output")
    check_output(output, stage, args.force, kind="file", manifest_file=report_path(output), flag="--output")
    check_output_dir(state_dir(output), "--output")
    if getattr(args, "log_dir", None):
        check_output_dir(args.log_dir, "--log-dir")
    ctx = init_distributed(device_spec(args))
    try:
        return train_fn(args, ctx)
    except UserError as exc:
        if CORRUPT in str(exc) and getattr(args, "skip_corrupt", True) is False:  # only squeeze has the flag
            raise UserError(f"{exc}, or pass --skip-corrupt to leave such files out") from None
        raise
    finally:
        cleanup()


def train(args: argparse.Namespace, ctx) -> dict:
    """Train a teacher on ``--data-path``: resumes from the run state beside ``--output`` when one matches."""
    spec = get_dataset(args.dataset)
    device = ctx.device
    if args.sync_bn and ctx.distributed and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")
    output = Path(args.output)  # checked in main(), before any work
    data, classes, arch, data_cfg = resolve_data(args, spec)
    size, mean, std = data_cfg.input_size, data_cfg.mean, data_cfg.std
    seed_everything(args.seed)  # the initial weights are a function of --seed
    model = build_model(arch, len(classes), size).to(device).to(memory_format=torch.channels_last)
    precision = resolve_precision(device, args.amp)
    # CPU: the decoded images are cached and augmenting them in the main process is cheaper than workers
    workers = workers_from_args(args, device.type, cpu_in_main=True)
    train_ds, val_ds, val_loader = load_images(args, ctx, data, classes, data_cfg, workers)
    global_batch = args.batch_size * ctx.world_size  # --batch-size is per process
    # every image's augmentation is a function of (seed, epoch, index): the same in any process or worker
    train_items = SeededItems(train_ds, args.seed)
    sampler = torch.utils.data.DistributedSampler(train_items, num_replicas=ctx.world_size, rank=ctx.rank,
                                                  shuffle=True, seed=sampler_seed(args.seed), drop_last=True)
    optimizer, scheduler = make_schedule(args, model, len(train_ds) // global_batch)
    scaler = precision.grad_scaler()
    run = RunState(output, STAGE, fingerprint(args, NOT_RESULT), restart=args.restart,
                   check=ctx.is_main)

    def load_scaler(ck):
        if "scaler" in ck and precision.scaler:
            scaler.load_state_dict(ck["scaler"])

    start_epoch, history = resume_training(args.resume, run.path("last.pth"), model, optimizer, scheduler, arch,
                                           classes, ctx.world_size, load_scaler)
    meta_base = dict(arch=arch, num_classes=len(classes), input_size=size, classes=classes, dataset=spec.name,
                     mean=mean, std=std)
    net = wrap_ddp(model, args.sync_bn)  # DistributedDataParallel under torchrun, the model itself otherwise
    loop = EpochLoop(args, ctx, unwrap(net), compile_model(net, args.compile, "teacher"), optimizer, scheduler,
                     scaler, precision, train_items, sampler, val_loader, workers, run.path("last.pth"), meta_base)
    procs = f" x {ctx.world_size} processes ({ctx.backend}), global batch {global_batch}" if ctx.distributed else ""
    print(f"squeeze: {arch} on {data} ({len(classes)} classes, {len(train_ds)} train / {len(val_ds)} val, "
          f"input {size}, device {device} ({precision.name}){procs}, {args.epochs} epochs)", file=sys.stderr)
    t_start = time.perf_counter()
    stopped = run_epochs(args, ctx, run, loop, start_epoch, history, f"squeeze_{output.stem}")
    if stopped is not None:
        return stopped
    if not ctx.is_main:
        final = history[-1] if history else {}
        return {"val_top1": final.get("val_top1"), "history": history}
    report = write_teacher(output, loop, history, global_batch, time.perf_counter() - t_start)
    run.finish()
    print(f"teacher written to {output}: val top-1 {report['val_top1']:.2f}%")
    return report


def resolve_data(args: argparse.Namespace, spec) -> tuple[Path, list[str], str, object]:
    """``--data-path`` (with train/ and val/ of the same classes), the architecture and the data
    configuration (input size, mean, std): ``(data root, classes, arch, DataConfig)``."""
    data = Path(args.data_path)
    if not data.exists():
        raise UserError(f"{data}: --data-path does not exist")
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees "
                        f"(python -m common.prepare writes them)")
    classes = check_train_val(data / "train", data / "val")
    check_class_count(spec, len(classes), data / "train")
    arch = check_arch(args.arch_name, "--arch-name")
    data_cfg = resolve_data_config(spec, arch, args.input_size, image_root=data / "train", classes=classes,
                                   skip_corrupt=args.skip_corrupt)
    return data, classes, arch, data_cfg


def decode_once(cache: str, train_dir: Path) -> bool:
    """``--cache``: ``yes``, ``no``, or ``auto`` (decode every image into memory when ``train_dir`` holds at
    most 60,000 files; only then is the tree walked to count them)."""
    if cache != "auto":
        return cache == "yes"
    return sum(1 for f in train_dir.rglob("*") if f.is_file()) <= 60000


def load_images(args: argparse.Namespace, ctx, data: Path, classes: list[str], data_cfg, workers: int):
    """The training and validation images (decoded once into memory when ``--cache`` says so) and the
    validation loader of this process's share: ``(train set, val set, val loader)``."""
    size, mean, std = data_cfg.input_size, data_cfg.mean, data_cfg.std
    cache = decode_once(args.cache, data / "train")
    train_ds = ImageFolder(data / "train", train_transform(size, mean, std, args.train_aug), classes=classes,
                           cache=cache, skip_corrupt=args.skip_corrupt)
    val_ds = ImageFolder(data / "val", val_transform(size, mean, std), classes=classes, cache=cache,
                         skip_corrupt=args.skip_corrupt)
    if len(train_ds) < args.batch_size * ctx.world_size:
        raise UserError(f"{data / 'train'}: {len(train_ds)} images, fewer than --batch-size {args.batch_size}"
                        + (f" x {ctx.world_size} processes" if ctx.distributed else ""))
    # each process validates a disjoint share; the counts are summed over processes
    val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_ds, shard(len(val_ds))), batch_size=256,
                                             **loader_kwargs(ctx.device.type, workers))
    return train_ds, val_ds, val_loader


def make_schedule(args: argparse.Namespace, model: nn.Module, steps_per_epoch: int):
    """SGD (no weight decay on BatchNorm and biases) and its per-step schedule: linear warm-up, then cosine."""
    total_steps = steps_per_epoch * args.epochs  # drop_last: every step has a full batch
    warmup_steps = min(int(args.warmup_epochs * steps_per_epoch), max(0, total_steps - 1))
    optimizer = torch.optim.SGD(param_groups(model, args.weight_decay), lr=args.lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, total_steps, warmup_steps, args.warmup_start))
    return optimizer, scheduler


def run_args_of(args: argparse.Namespace) -> dict:
    """The flags a checkpoint and the report record (not those that only steer this call)."""
    return {k: v for k, v in vars(args).items() if k not in ("resume", "max_epochs_this_run", "restart", "force")}


@dataclass
class EpochLoop:
    """What one epoch of a teacher's training touches; :meth:`run_epoch` is a pure function of (weights,
    optimiser state, seed, epoch), so a resumed run equals an uninterrupted one."""
    args: argparse.Namespace
    ctx: object
    model: nn.Module  # the plain model: validated and saved
    train_model: nn.Module  # what trains (DDP and/or compiled), sharing its parameters with ``model``
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    precision: object
    train_items: SeededItems
    sampler: torch.utils.data.DistributedSampler
    val_loader: torch.utils.data.DataLoader
    workers: int
    state_file: Path
    meta_base: dict

    def run_epoch(self, epoch: int, history: list[dict]) -> dict:
        """Train and validate epoch ``epoch``, print its line and checkpoint it (with ``history``): its stats."""
        args, ctx, device = self.args, self.ctx, self.ctx.device
        seed_everything(epoch_seed(args.seed, epoch, ctx.rank))
        self.sampler.set_epoch(epoch)
        self.train_items.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(self.train_items, batch_size=args.batch_size, sampler=self.sampler,
                                             drop_last=True, worker_init_fn=seed_worker,
                                             **loader_kwargs(device.type, self.workers, persistent=False))
        stats = train_one_epoch(self.train_model, loader, self.optimizer, self.scheduler, device, self.scaler,
                                self.precision, args.label_smoothing, epoch, args.epochs)
        broadcast_buffers(self.model)  # rank 0's BatchNorm statistics are the ones validated and saved
        val = reduce_metrics(evaluate(self.model, self.val_loader, device, amp=self.precision.enabled))
        stats.update({"epoch": epoch + 1, "val_top1": val["top1"], "val_top5": val["top5"],
                      "val_loss": val["loss"], "lr": self.optimizer.param_groups[0]["lr"]})
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {stats['train_loss']:.3f} "
              f"top-1 {stats['train_top1']:.1f}% | val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}% | "
              f"{stats['epoch_seconds']:.1f}s ({stats['images_per_second']:.0f} img/s)", file=sys.stderr)
        if ctx.is_main:
            save_checkpoint(self.state_file, self.model, make_meta(**self.meta_base, val_top1=val["top1"]),
                            epoch=epoch, optimizer=self.optimizer.state_dict(),
                            **{SCHEDULER_KEY: self.scheduler.state_dict()}, scaler=self.scaler.state_dict(),
                            history=history + [stats], args=run_args_of(args), world_size=ctx.world_size)
        return stats


def write_teacher(output: Path, loop: EpochLoop, history: list[dict], global_batch: int,
                  seconds_this_run: float) -> dict:
    """The teacher checkpoint (its meta records the recipe) and its report beside it: the report."""
    args, ctx, meta_base = loop.args, loop.ctx, loop.meta_base
    run_args = run_args_of(args)
    final = history[-1] if history else {}
    val_top1 = final.get("val_top1")
    meta = make_meta(**meta_base, val_top1=val_top1, val_top5=final.get("val_top5"), epochs=args.epochs,
                     recipe={k: run_args[k] for k in ("lr", "batch_size", "weight_decay", "momentum",
                                                      "warmup_epochs", "label_smoothing", "train_aug", "seed")})
    save_checkpoint(output, loop.model, meta)
    report = build_manifest("squeeze", run_args, inputs={"teacher": output}, val_top1=val_top1,
                            val_top5=final.get("val_top5"), arch=meta_base["arch"], input_size=meta_base["input_size"],
                            classes=meta_base["classes"], precision=loop.precision.name, world_size=ctx.world_size,
                            global_batch_size=global_batch, train_seconds_this_run=seconds_this_run,
                            train_seconds_total=sum(h["epoch_seconds"] for h in history), history=history)
    atomic_write_json(report_path(output), report)
    return report
