"""The MoCo v2 pre-training loop behind ``python -m squeeze.ssl`` (checkpoint and resume as squeeze)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common.accel import default_workers
from common.atomic import atomic_write_json
from common.datasets import get_dataset, resolve_input_size
from common.errors import UserError
from common.imagefolder import ImageFolder, check_train_val, infer_input_size
from common.manifest import build_manifest
from common.seed import seed_everything, seed_worker
from common.transforms import val_transform
from models import build_backbone, make_meta, read_checkpoint, save_checkpoint
from models.registry import canonical_arch
from squeeze.moco import MoCo, TwoViews, extract_features, knn_top1, train_step, view_transform
from squeeze.train import last_path, lr_at


class Plain(torch.utils.data.Dataset):
    """``(transform(image), label)`` over another ImageFolder's (cached) images."""

    def __init__(self, base: ImageFolder, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.transform(self.base.load(i)), self.base.samples[i][1]


def build_moco(arch: str, size: int, args) -> tuple[MoCo, int, str]:
    backbone, dim, head_name = build_backbone(arch, size)
    queue = args.queue_size
    model = MoCo(backbone, dim, hidden_dim=args.proj_hidden_dim, out_dim=args.proj_dim, queue_size=queue,
                 temperature=args.temperature)
    return model, dim, head_name


def knn_eval(backbone, train_plain, val_ds, num_classes, device, workers) -> float:
    mk = lambda ds: torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)  # noqa: E731
    tf, ty = extract_features(backbone, mk(train_plain), device)
    vf, vy = extract_features(backbone, mk(val_ds), device)
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


def pretrain(args) -> dict:
    from common.device import resolve_device

    spec = get_dataset(args.dataset)
    device = resolve_device(args.device)
    data = Path(args.data_path)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees "
                        f"(val/ scores the kNN check)")
    classes = check_train_val(data / "train", data / "val")
    arch = canonical_arch(args.arch_name)
    fallback = infer_input_size(data / "train") if args.input_size is None and spec.num_classes is None else None
    size = resolve_input_size(spec, arch, args.input_size, fallback=fallback)
    mean, std = spec.mean, spec.std
    workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else default_workers("cuda"))
    output = Path(args.output)
    if output.suffix != ".pth":
        raise UserError(f"{output}: --output must end in .pth")

    n_train = sum(1 for f in (data / "train").rglob("*") if f.is_file())
    cache = args.cache == "yes" or (args.cache == "auto" and n_train <= 60000)
    base = ImageFolder(data / "train", None, classes=classes, cache=cache)
    if len(base) < args.batch_size:
        raise UserError(f"{data / 'train'}: {len(base)} images, fewer than --batch-size {args.batch_size}")
    if args.queue_size > len(base):
        # a queue longer than the data holds stale keys of the same image, which become its own negatives
        print(f"squeeze.ssl: --queue-size {args.queue_size} capped at the {len(base)} training images",
              file=sys.stderr)
        args.queue_size = len(base)
    views = TwoViews(base, view_transform(size, mean, std, args.min_scale, args.blur_prob), seed=args.seed)
    train_plain = Plain(base, val_transform(size, mean, std))
    val_ds = ImageFolder(data / "val", val_transform(size, mean, std), classes=classes, cache=cache)

    seed_everything(args.seed)  # initial weights and the initial (random) queue are functions of --seed
    model, feature_dim, head_name = build_moco(arch, size, args)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    steps_per_epoch = len(base) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total_steps, 0, 1.0))

    run_args = {k: v for k, v in vars(args).items() if k not in ("resume", "max_epochs_this_run")}
    state_file = last_path(output) if args.resume in (None, "auto") else Path(args.resume)
    start_epoch, history = 0, []
    if args.resume is not None:
        if not state_file.is_file():
            if args.resume != "auto":
                raise UserError(f"{state_file}: --resume checkpoint not found")
            print(f"no training checkpoint at {state_file}; starting from scratch", file=sys.stderr)
        else:
            ck = read_checkpoint(state_file)
            old = ck.get("args") or {}
            changed = [k for k in RESULT_ARGS_ if k in old and old[k] != run_args.get(k)]
            if ck["meta"].get("arch") != arch or ck["meta"].get("classes") != classes or changed:
                what = ", ".join(f"--{k.replace('_', '-')}" for k in changed) or "arch or class list"
                raise UserError(f"{state_file}: --resume checkpoint was made with other settings ({what}); "
                                f"use the same flags or another --output")
            model.load_state_dict(ck["model"])
            model.load_queue_state(ck["queue"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["lr_scheduler"])
            start_epoch, history = int(ck["epoch"]) + 1, list(ck.get("history", []))
            print(f"resumed from {state_file} at epoch {start_epoch}", file=sys.stderr)

    meta_base = dict(arch=arch, num_classes=0, input_size=size, classes=classes, dataset=spec.name, mean=mean,
                     std=std, teacher_kind="ssl-backbone", ssl_method="mocov2", feature_dim=feature_dim,
                     classifier_name=head_name)
    print(f"squeeze.ssl: MoCo v2 {arch} on {data / 'train'} ({len(base)} images, input {size}, device {device}, "
          f"{args.epochs} epochs, batch {args.batch_size}, queue {args.queue_size})", file=sys.stderr)
    t_start = time.perf_counter()
    epochs_run = 0
    for epoch in range(start_epoch, args.epochs):
        if args.max_epochs_this_run is not None and epochs_run >= args.max_epochs_this_run:
            print(f"stopping after {epochs_run} epoch(s); continue with --resume", file=sys.stderr)
            return {"stopped_at_epoch": epoch, "history": history}
        seed_everything(args.seed * 100003 + epoch)
        views.set_epoch(epoch)
        g = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        loader = torch.utils.data.DataLoader(views, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=workers, generator=g, worker_init_fn=seed_worker,
                                             pin_memory=device.type == "cuda")
        t0 = time.perf_counter()
        loss, n = run_epoch(model, loader, optimizer, scheduler, device, args.moco_momentum,
                            f"ssl epoch {epoch + 1}/{args.epochs}")
        dt = time.perf_counter() - t0
        stats = {"epoch": epoch + 1, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                 "epoch_seconds": dt, "images_per_second": n / max(dt, 1e-9)}
        last = epoch + 1 == args.epochs
        if last or (args.knn_every > 0 and (epoch + 1) % args.knn_every == 0):
            stats["knn_top1"] = knn_eval(model.backbone, train_plain, val_ds, len(classes), device, workers)
        history.append(stats)
        knn = f" | kNN top-1 {stats['knn_top1']:.2f}%" if "knn_top1" in stats else ""
        print(f"ssl epoch {epoch + 1}/{args.epochs}: loss {stats['loss']:.4f}{knn} | {dt:.1f}s "
              f"({stats['images_per_second']:.0f} img/s)", file=sys.stderr)
        save_checkpoint(state_file, model, make_meta(**meta_base), epoch=epoch, optimizer=optimizer.state_dict(),
                        lr_scheduler=scheduler.state_dict(), queue=model.queue_state(), history=history,
                        args=run_args)
        epochs_run += 1

    knns = [h for h in history if "knn_top1" in h]
    knn_final = knns[-1]["knn_top1"] if knns else None
    recipe = {k: run_args[k] for k in RESULT_ARGS_ if k in run_args}
    save_checkpoint(output, model.backbone, make_meta(**meta_base, knn_top1=knn_final, epochs=args.epochs,
                                                      recipe=recipe))
    report = build_manifest("squeeze.ssl", run_args, inputs={"backbone": output}, method="mocov2", arch=arch,
                            input_size=size, classes=classes, knn_top1=knn_final,
                            loss_curve=[h["loss"] for h in history],
                            knn_curve=[{"epoch": h["epoch"], "knn_top1": h["knn_top1"]} for h in knns],
                            train_seconds_this_run=time.perf_counter() - t_start,
                            train_seconds_total=sum(h["epoch_seconds"] for h in history), history=history)
    atomic_write_json(output.with_suffix(".json"), report)
    print(f"backbone written to {output}: kNN top-1 {knn_final:.2f}% "
          f"(next: python -m squeeze.linear_probe --backbone {output} ...)", file=sys.stderr)
    return report


RESULT_ARGS_ = ("arch_name", "input_size", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                "moco_momentum", "temperature", "queue_size", "proj_hidden_dim", "proj_dim", "min_scale",
                "blur_prob", "seed", "dataset")
