"""The MoCo v2 pre-training loop behind ``python -m squeeze.ssl`` (checkpoint and resume as squeeze)."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from common.cli.errors import UserError
from common.cli.flags import workers_from_args
from common.compute.accel import loader_kwargs
from common.compute.distributed import (
    all_gather_rows,
    broadcast_buffers,
    shard,
    sum_over_ranks,
    unwrap,
    wrap_ddp,
)
from common.data.dataconfig import resolve_data_config
from common.data.datasets import get_dataset
from common.data.imagefolder import ImageFolder, check_train_val
from common.data.transforms import val_transform
from common.run.atomic import atomic_write_json
from common.run.manifest import build_manifest
from common.run.state import RunState, fingerprint, state_dir
from common.train.optim import SCHEDULER_KEY
from common.train.seed import epoch_seed, sampler_seed, seed_everything, seed_worker
from models import build_backbone, make_meta, save_checkpoint
from models.registry import canonical_arch
from squeeze.moco import MoCo, TwoViews, extract_features, knn_top1, train_step, view_transform
from squeeze.train import (
    check_then_train,
    decode_once,
    lr_at,
    report_path,
    resume_training,
    run_args_of,
    run_epochs,
)


def last_path(output: str | Path) -> Path:
    """The training checkpoint, in the resume state beside the backbone (``ssl.pth`` -> ``ssl.pth.state/last.pth``)."""
    return state_dir(output) / "last.pth"


class Plain(torch.utils.data.Dataset):
    """``(transform(image), label)`` over another ImageFolder's (cached) images."""

    def __init__(self, base: ImageFolder, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.transform(self.base.load(i)), self.base.samples[i][1]


def build_moco(arch: str, size: int, args, gather: bool = False) -> tuple[MoCo, int, str]:
    """The MoCo module; ``gather``: enqueue the keys of every process (under torchrun)."""
    backbone, dim, head_name = build_backbone(arch, size)
    model = MoCo(backbone, dim, hidden_dim=args.proj_hidden_dim, out_dim=args.proj_dim, queue_size=args.queue_size,
                 temperature=args.temperature, gather_distributed=gather)
    return model, dim, head_name


def knn_eval(backbone, train_plain, val_ds, num_classes, device, workers) -> float:
    """kNN top-1 of val/ on train/ features; under torchrun each process extracts a share (gathered)."""
    def feats(ds):
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, shard(len(ds))), batch_size=256,
                                             num_workers=workers)
        f, y = extract_features(backbone, loader, device)
        return all_gather_rows(f), all_gather_rows(y)  # rank order: the shards' order

    tf, ty = feats(train_plain)
    vf, vy = feats(val_ds)
    return knn_top1(tf, ty, vf, vy, num_classes)


def run_epoch(model: MoCo, loader, optimizer, scheduler, device, moco_momentum: float, desc: str = "ssl",
              max_steps: int | None = None) -> tuple[float, int]:
    """One pass over ``(view_0, view_1, label)`` batches: ``(mean loss, images)``; a non-finite loss stops."""
    model.train()
    loss_sum, n = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, mininterval=1.0, disable=max_steps is not None)
    for step, (x0, x1, _) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        x0 = x0.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x1 = x1.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        loss = train_step(model, x0, x1, optimizer, moco_momentum)
        if scheduler is not None:
            scheduler.step()
        if not torch.isfinite(loss):
            raise UserError(f"non-finite MoCo loss ({desc}); lower --lr")
        loss_sum += float(loss) * x0.shape[0]
        n += x0.shape[0]
        bar.set_postfix(loss=f"{loss_sum / n:.3f}")
    return loss_sum / max(n, 1), n


STAGE = "squeeze.ssl"
# Arguments that do not change the backbone (besides common.run.state.NOT_RESULT). The worker count
# does not: every view is seeded by (seed, epoch, image, view), wherever it is drawn.
NOT_RESULT = {"output", "cache", "knn_every"}


def pretrain(args) -> dict:
    """``python -m squeeze.ssl``: the output checks and the process group as ``python -m squeeze``."""
    if Path(args.output).suffix != ".pth":
        raise UserError(f"{args.output}: --output must end in .pth")
    return check_then_train(args, STAGE, _pretrain)


def _pretrain(args, ctx) -> dict:
    """MoCo v2 on ``--data-path``/train: resumes from the run state beside ``--output`` when one matches."""
    spec = get_dataset(args.dataset)
    device = ctx.device
    data = Path(args.data_path)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees "
                        f"(val/ scores the kNN check)")
    classes = check_train_val(data / "train", data / "val")
    arch = canonical_arch(args.arch_name)
    data_cfg = resolve_data_config(spec, arch, args.input_size, image_root=data / "train", classes=classes)
    size, mean, std = data_cfg.input_size, data_cfg.mean, data_cfg.std
    workers = workers_from_args(args, device.type, cpu_in_main=True)
    output = Path(args.output)
    base, views, train_plain, val_ds = load_views(args, ctx, data, classes, data_cfg)
    global_batch = args.batch_size * ctx.world_size  # --batch-size is per process

    seed_everything(args.seed)  # initial weights and the initial (random) queue are functions of --seed
    model, feature_dim, head_name = build_moco(arch, size, args, gather=ctx.distributed)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    total_steps = len(base) // global_batch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total_steps, 0, 1.0))
    # each process takes every world_size-th index of the epoch's permutation: together, one global batch
    sampler = torch.utils.data.DistributedSampler(views, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                                  seed=sampler_seed(args.seed), drop_last=True)
    run = RunState(output, STAGE, fingerprint(args, NOT_RESULT), restart=args.restart, check=ctx.is_main)
    start_epoch, history = resume_training(args.resume, last_path(output), model, optimizer, scheduler, arch,
                                           classes, ctx.world_size, lambda ck: model.load_queue_state(ck["queue"]))
    meta_base = dict(arch=arch, num_classes=0, input_size=size, classes=classes, dataset=spec.name, mean=mean,
                     std=std, teacher_kind="ssl-backbone", ssl_method="mocov2", feature_dim=feature_dim,
                     classifier_name=head_name)
    # the bank (up to 65536 keys) is kept equal by gathering the keys of every process before enqueueing,
    # the BatchNorm statistics by one broadcast per epoch: no buffer broadcast on every step
    net = wrap_ddp(model, broadcast_buffers=False)
    loop = SslEpochLoop(args, ctx, unwrap(net), net, optimizer, scheduler, views, sampler, train_plain, val_ds,
                        len(classes), workers, last_path(output), meta_base)
    procs = f" x {ctx.world_size} processes ({ctx.backend}), global batch {global_batch}" if ctx.distributed else ""
    print(f"squeeze.ssl: MoCo v2 {arch} on {data / 'train'} ({len(base)} images, input {size}, device {device}"
          f"{procs}, {args.epochs} epochs, batch {args.batch_size}, queue {args.queue_size})", file=sys.stderr)
    t_start = time.perf_counter()
    stopped = run_epochs(args, ctx, run, loop, start_epoch, history, f"squeeze_ssl_{output.stem}")
    if stopped is not None:
        return stopped
    if not ctx.is_main:
        knns = [h for h in history if "knn_top1" in h]
        return {"knn_top1": knns[-1]["knn_top1"] if knns else None, "history": history}
    report = write_backbone(output, loop, history, global_batch, time.perf_counter() - t_start)
    run.finish()
    print(f"backbone written to {output}: kNN top-1 {report['knn_top1']:.2f}% "
          f"(next: python -m squeeze.linear_probe --backbone {output} ...)")  # the result line: stdout
    return report


def load_views(args, ctx, data: Path, classes: list[str], data_cfg):
    """The training images (decoded once when ``--cache`` says so) as MoCo's two seeded views and as plain
    images for the kNN check, and the val images: ``(images, views, plain, val)``. Caps ``--queue-size``
    at the number of images."""
    size, mean, std = data_cfg.input_size, data_cfg.mean, data_cfg.std
    cache = decode_once(args.cache, data / "train")
    base = ImageFolder(data / "train", None, classes=classes, cache=cache)
    if len(base) < args.batch_size * ctx.world_size:
        raise UserError(f"{data / 'train'}: {len(base)} images, fewer than --batch-size {args.batch_size}"
                        + (f" x {ctx.world_size} processes" if ctx.distributed else ""))
    if args.queue_size > len(base):
        # a queue longer than the data holds stale keys of the same image, which become its own negatives
        print(f"squeeze.ssl: --queue-size {args.queue_size} capped at the {len(base)} training images",
              file=sys.stderr)
        args.queue_size = len(base)
    views = TwoViews(base, view_transform(size, mean, std, args.min_scale, args.blur_prob), seed=args.seed)
    train_plain = Plain(base, val_transform(size, mean, std))
    val_ds = ImageFolder(data / "val", val_transform(size, mean, std), classes=classes, cache=cache)
    return base, views, train_plain, val_ds


@dataclass
class SslEpochLoop:
    """What one MoCo epoch touches; :meth:`run_epoch` is a function of (weights, optimiser, queue, seed,
    epoch), so a resumed run equals an uninterrupted one."""
    args: argparse.Namespace
    ctx: object
    model: MoCo  # the plain module: validated and saved
    net: nn.Module  # what trains (DDP under torchrun), sharing its parameters with ``model``
    optimizer: torch.optim.Optimizer
    scheduler: object
    views: TwoViews
    sampler: torch.utils.data.DistributedSampler
    train_plain: Plain
    val_ds: ImageFolder
    num_classes: int
    workers: int
    state_file: Path
    meta_base: dict

    def run_epoch(self, epoch: int, history: list[dict]) -> dict:
        """Train epoch ``epoch`` (and score kNN when due), print its line and checkpoint it: its stats."""
        args, ctx, device = self.args, self.ctx, self.ctx.device
        seed_everything(epoch_seed(args.seed, epoch, ctx.rank))
        self.views.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(self.views, batch_size=args.batch_size, sampler=self.sampler,
                                             drop_last=True, worker_init_fn=seed_worker,
                                             **loader_kwargs(device.type, self.workers, persistent=False))
        t0 = time.perf_counter()
        loss, n = run_epoch(self.net, loader, self.optimizer, self.scheduler, device, args.moco_momentum,
                            f"ssl epoch {epoch + 1}/{args.epochs}")
        loss_sum, n = sum_over_ranks(loss * n, n)
        loss = loss_sum / max(n, 1)
        broadcast_buffers(self.model)  # rank 0's BatchNorm statistics (and the same bank) everywhere
        dt = time.perf_counter() - t0
        stats = {"epoch": epoch + 1, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                 "epoch_seconds": dt, "images_per_second": n / max(dt, 1e-9)}
        if epoch + 1 == args.epochs or (args.knn_every > 0 and (epoch + 1) % args.knn_every == 0):
            stats["knn_top1"] = knn_eval(self.model.backbone, self.train_plain, self.val_ds, self.num_classes,
                                         device, self.workers)
        knn = f" | kNN top-1 {stats['knn_top1']:.2f}%" if "knn_top1" in stats else ""
        print(f"ssl epoch {epoch + 1}/{args.epochs}: loss {stats['loss']:.4f}{knn} | {dt:.1f}s "
              f"({stats['images_per_second']:.0f} img/s)", file=sys.stderr)
        if ctx.is_main:
            save_checkpoint(self.state_file, self.model, make_meta(**self.meta_base), epoch=epoch,
                            optimizer=self.optimizer.state_dict(), **{SCHEDULER_KEY: self.scheduler.state_dict()},
                            queue=self.model.queue_state(), history=history + [stats], args=run_args_of(args),
                            world_size=ctx.world_size)
        return stats


def write_backbone(output: Path, loop: SslEpochLoop, history: list[dict], global_batch: int,
                   seconds_this_run: float) -> dict:
    """The backbone checkpoint (its meta records the recipe and the last kNN top-1) and its report: the report."""
    args, meta_base = loop.args, loop.meta_base
    run_args = run_args_of(args)
    knns = [h for h in history if "knn_top1" in h]
    knn_final = knns[-1]["knn_top1"] if knns else None
    recipe = {k: run_args[k] for k in RESULT_ARGS_ if k in run_args}
    save_checkpoint(output, loop.model.backbone, make_meta(**meta_base, knn_top1=knn_final, epochs=args.epochs,
                                                           recipe=recipe))
    report = build_manifest(STAGE, run_args, inputs={"backbone": output}, method="mocov2", arch=meta_base["arch"],
                            input_size=meta_base["input_size"], classes=meta_base["classes"], knn_top1=knn_final,
                            world_size=loop.ctx.world_size, global_batch_size=global_batch,
                            loss_curve=[h["loss"] for h in history],
                            knn_curve=[{"epoch": h["epoch"], "knn_top1": h["knn_top1"]} for h in knns],
                            train_seconds_this_run=seconds_this_run,
                            train_seconds_total=sum(h["epoch_seconds"] for h in history), history=history)
    atomic_write_json(report_path(output), report)
    return report


RESULT_ARGS_ = ("arch_name", "input_size", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                "moco_momentum", "temperature", "queue_size", "proj_hidden_dim", "proj_dim", "min_scale",
                "blur_prob", "seed", "dataset")
