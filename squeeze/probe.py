"""The linear probe behind ``python -m squeeze.linear_probe``: frozen backbone in eval mode, trained classifier.

Under torchrun the frozen backbone's work is shared and the classifier is the one process's:

- ``--train-aug none``: each process extracts the features of whole batches ``rank, rank + world, ...``
  of min(256, ``--batch-size``) images (the very batches one process forms), and every process gathers
  all of them;
- augmented: each step's global batch of ``--batch-size`` images (the same epoch permutation in every
  process) is cut into one contiguous share per process; each process loads its share (every image's
  augmentation is a function of (seed, epoch, index): :class:`common.train.seed.SeededItems`), runs the
  frozen backbone on it, and every process gathers the whole batch's features in batch order;
- every process then takes the same SGD step on the same features: the classifier is replicated, not
  averaged (a linear head on a frozen backbone costs nothing next to the backbone), so no gradient is
  reduced and the result is one process's with the same ``--batch-size``;
- validation: each process evaluates its whole batches (as above) and the counts are summed.

Rank 0 alone writes the resume state, the checkpoint and the report.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from common.cli.errors import UserError
from common.cli.flags import device_spec, workers_from_args
from common.compute.distributed import all_gather_rows, broadcast_object, init_distributed, reduce_metrics
from common.data.dataconfig import resolve_data_config
from common.data.datasets import get_dataset
from common.data.imagefolder import ImageFolder, check_train_val
from common.data.transforms import train_transform, val_transform
from common.run.atomic import atomic_torch_save, atomic_write_json
from common.run.manifest import build_manifest, sha256_file
from common.run.safe_load import safe_torch_load
from common.run.state import RunState, check_output, fingerprint
from common.train.metrics import evaluate
from common.train.optim import SCHEDULER_KEY, freeze
from common.train.seed import SeededItems, epoch_seed, seed_everything, seed_worker
from models import build_model, classifier_layer, classifier_name, make_meta, penultimate_features, save_checkpoint
from models.external_ssl import read_linear_classifier, read_ssl_checkpoint
from models.registry import canonical_arch
from squeeze.train import decode_once, lr_at

STAGE = "squeeze.linear_probe"
# Arguments that do not change the classifier (besides common.run.state.NOT_RESULT); the backbone enters by content.
NOT_RESULT = {"output", "cache"}

SSL_METHOD = {"mocov2": "mocov2", "mocov3": "mocov3", "swav": "swav", "dino": "dino", "lightly": "lightly",
              "lincls": "lincls"}


def load_backbone_into(model: nn.Module, backbone_sd: dict, source: str) -> None:
    """Load backbone weights into a full classifier model: everything but the classifier must match."""
    head = classifier_name(model)
    try:
        missing, unexpected = model.load_state_dict(backbone_sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:120])
        raise UserError(f"{source}: backbone weights do not fit a {type(model).__name__} ({detail[:160]}); "
                        f"check --arch-name") from None
    missing = [k for k in missing if not k.startswith(head + ".")]
    if missing or unexpected:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise UserError(f"{source}: backbone weights do not fit a {type(model).__name__} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected; {first}); check --arch-name")


def frozen_state(model: nn.Module, head: str) -> dict[str, torch.Tensor]:
    """A copy of every backbone parameter and buffer (BN running statistics included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(head + ".")}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, now[k])]
    if changed:
        raise RuntimeError(f"linear probe changed frozen backbone tensors: {changed[:3]}")


def freeze_backbone(model: nn.Module) -> nn.Linear:
    """Everything but the classifier frozen; the whole model in eval mode (BN statistics never update)."""
    fc = classifier_layer(model)
    freeze(model)
    for p in fc.parameters():
        p.requires_grad_(True)
    model.eval()
    return fc


EXTRACT_BATCH = 256  # at most this many images per frozen forward pass (feature extraction, validation)


def batch_shard(n: int, batch: int, rank: int, world_size: int) -> list[int]:
    """The indices of the whole batches ``rank, rank + world_size, ...`` of ``range(n)`` cut in ``batch``es:
    each process sees exactly the batches one process would form (so the same numbers come out)."""
    return [i for b in range(rank * batch, n, world_size * batch) for i in range(b, min(n, b + batch))]


def _features(model, dataset, device, workers: int, batch: int, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features and labels of every item of ``dataset`` in order, ``batch`` images per forward pass;
    under torchrun each process extracts its :func:`batch_shard` and all are gathered (every process gets
    the whole)."""
    mine = batch_shard(len(dataset), batch, rank, world_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch,
                                         num_workers=workers)
    feats, labels = [], []
    for x, y in tqdm(loader, desc="features", leave=False, mininterval=1.0):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        feats.append(penultimate_features(model, x).float())
        labels.append(y.to(device))
    dim = classifier_layer(model).in_features
    f = torch.cat(feats) if feats else torch.zeros((0, dim), device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device)
    if world_size == 1:
        return f, y
    order = torch.tensor([i for r in range(world_size) for i in batch_shard(len(dataset), batch, r, world_size)],
                         device=device)
    gathered = all_gather_rows(f)
    f_all = torch.empty_like(gathered)
    f_all[order] = gathered
    y_all = torch.empty(len(dataset), dtype=torch.int64, device=device)
    y_all[order] = all_gather_rows(y)
    return f_all, y_all


class Diverged(UserError):
    """The probe's loss became non-finite or exploded: an error, never a teacher."""


def exploded(loss: float, num_classes: int) -> bool:
    """Non-finite, or far above any loss a converging run sees: 1000 x the loss of a uniform guess, ln(C)."""
    return not math.isfinite(loss) or loss > 1000.0 * math.log(max(num_classes, 2))


def read_probe_state(state_file: Path, fc: nn.Linear, epochs: int) -> dict:
    """The probe's resume state (weights only), every part checked against ``fc`` and ``epochs``."""
    advice = "pass --restart to discard it and start over"
    st = safe_torch_load(state_file, what="the linear probe's resume state", advice=advice)

    def bad(why: str) -> UserError:
        return UserError(f"{state_file}: not a usable linear-probe resume state ({why}); {advice}")

    keys = {"fc", "optimizer", SCHEDULER_KEY, "epoch", "history"}
    if not isinstance(st, dict) or not keys <= set(st):
        raise bad(f"expected a dict with the keys {', '.join(sorted(keys))}")
    shapes = {k: tuple(v.shape) for k, v in fc.state_dict().items()}
    sd, opt, epoch, history = st["fc"], st["optimizer"], st["epoch"], st["history"]
    if not isinstance(sd, dict) or {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)} != shapes:
        raise bad(f"the classifier is not {shapes.get('weight')} (classes x features) with a bias")
    bufs = [v.get("momentum_buffer") for v in (opt.get("state") or {}).values()] if isinstance(opt, dict) else None
    if bufs is None or not isinstance(opt.get("param_groups"), list) or not isinstance(st[SCHEDULER_KEY], dict) or \
            any(b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) not in shapes.values())
                for b in bufs):
        raise bad("the optimiser or scheduler state does not fit the classifier")
    if any(not torch.isfinite(t).all() for t in [*sd.values(), *(b for b in bufs if b is not None)]):
        raise bad("non-finite classifier or optimiser tensors")
    if isinstance(epoch, torch.Tensor):
        epoch = epoch.item()
    if not isinstance(epoch, int) or not 0 <= epoch < epochs or not isinstance(history, list) or \
            len(history) != epoch + 1 or not all(isinstance(h, dict) for h in history):
        raise bad(f"epoch {epoch!r} with {len(history) if isinstance(history, list) else '?'} history record(s), "
                  f"for a run of {epochs} epochs")
    return {**st, "epoch": epoch}


def fit_classifier(model: nn.Module, fc: nn.Linear, batches_of_epoch, steps_per_epoch: int, epochs: int, lr: float,
                   momentum: float, weight_decay: float, device, features_given: bool, state_file: Path | None = None,
                   max_epochs_this_run: int | None = None, saved: dict | None = None) -> list[dict] | None:
    """SGD + cosine on ``fc`` only; ``batches_of_epoch(e)`` yields (x or features, y). The model stays in eval.

    With ``state_file``, every epoch saves ``fc``, the optimiser, the scheduler and the history there; a call
    given that state back (``saved``, from :func:`read_probe_state`) continues after its epoch (each epoch's
    batches are a function of the epoch, so the result equals an uninterrupted run). Returns None when
    ``max_epochs_this_run`` stopped it early.
    A non-finite or exploding loss (checked every step) raises :class:`Diverged`.
    """
    opt = torch.optim.SGD(fc.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, 0, 1.0))
    history, start = [], 0
    if saved is not None:
        fc.load_state_dict(saved["fc"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved[SCHEDULER_KEY])
        start, history = saved["epoch"] + 1, list(saved["history"])
        print(f"resumed the linear probe from {state_file} at epoch {start}", file=sys.stderr)
    for epoch in range(start, epochs):
        if max_epochs_this_run is not None and epoch - start >= max_epochs_this_run:
            print(f"stopping after {epoch - start} epoch(s); run the same command to continue", file=sys.stderr)
            return None
        assert not model.training
        loss_sum, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
        for step, (x, y) in enumerate(batches_of_epoch(epoch)):
            y = y.to(device)
            if features_given:
                f = x
            else:
                f = penultimate_features(model, x.to(device).contiguous(memory_format=torch.channels_last))
            logits = fc(f)
            loss = nn.functional.cross_entropy(logits, y)
            value = float(loss.detach())
            if exploded(value, fc.out_features):
                raise Diverged(f"the linear probe diverged: training loss {value:.3g} at epoch {epoch + 1}, step "
                               f"{step + 1} (non-finite or exploding); lower --lr (now {lr:g}); nothing was written")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += value * y.numel()
            correct += int((logits.argmax(1) == y).sum())
            n += y.numel()
        if not all(torch.isfinite(p).all() for p in fc.parameters()):
            raise Diverged(f"the linear probe diverged: non-finite classifier weights after epoch {epoch + 1}; "
                           f"lower --lr (now {lr:g}); nothing was written")
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(n, 1),
                        "train_top1": 100.0 * correct / max(n, 1), "lr": opt.param_groups[0]["lr"],
                        "epoch_seconds": time.perf_counter() - t0})
        if state_file is not None:
            atomic_torch_save({"fc": fc.state_dict(), "optimizer": opt.state_dict(),
                               SCHEDULER_KEY: sched.state_dict(), "epoch": epoch, "history": history}, state_file)
    return history


def train_probe(args, ctx=None) -> dict:
    """The probe; ``ctx`` is :func:`common.compute.distributed.init_distributed`'s (None: one process
    on ``--device``)."""
    if ctx is None:
        ctx = init_distributed(device_spec(args), process_group=False, mute=False)
    device, rank, world = ctx.device, ctx.rank, ctx.world_size
    spec = get_dataset(args.dataset)
    data, output = Path(args.data_path), Path(args.output)
    if output.suffix != ".pth":
        raise UserError(f"{output}: --output must end in .pth")
    check_output(output, STAGE, args.force, kind="file", manifest_file=output.with_suffix(".json"), flag="--output")
    check_output(output.with_suffix(".json"), STAGE, args.force, kind="file", flag="--output's report")
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees")
    classes = check_train_val(data / "train", data / "val")
    backbone_sd, layout, head, bmeta = read_ssl_checkpoint(args.backbone)
    arch = args.arch_name or bmeta.get("arch")
    if not arch:
        raise UserError(f"{args.backbone}: a {layout} checkpoint does not name its architecture; pass --arch-name "
                        f"(e.g. resnet50)")
    arch = canonical_arch(arch)
    if bmeta.get("arch") and canonical_arch(bmeta["arch"]) != arch:
        raise UserError(f"{args.backbone}: backbone is a {bmeta['arch']} but --arch-name says {args.arch_name}")
    data_cfg = resolve_data_config(spec, arch, args.input_size, bmeta, image_root=data / "train", classes=classes)
    size = data_cfg.input_size
    if bmeta.get("input_size") and args.input_size and int(args.input_size) != int(bmeta["input_size"]):
        print(f"warning: backbone was pre-trained at {bmeta['input_size']} px, probing at {args.input_size}",
              file=sys.stderr)
    mean, std = data_cfg.mean, data_cfg.std
    if args.linear_path:
        head = read_linear_classifier(args.linear_path)
    workers = workers_from_args(args, device.type, cpu_in_main=True)

    seed_everything(args.seed)
    model = build_model(arch, len(classes), int(size))
    load_backbone_into(model, backbone_sd, str(args.backbone))
    fc = classifier_layer(model)
    head_name = classifier_name(model)
    if head is not None:
        if tuple(head["weight"].shape) != tuple(fc.weight.shape):
            raise UserError(f"{args.linear_path or args.backbone}: linear classifier is "
                            f"{tuple(head['weight'].shape)}, the data and backbone need {tuple(fc.weight.shape)} "
                            f"(classes x features)")
        with torch.no_grad():
            fc.weight.copy_(head["weight"])
            fc.bias.copy_(head["bias"])
    else:
        nn.init.normal_(fc.weight, 0.0, 0.01)
        nn.init.zeros_(fc.bias)
    model = model.to(device).to(memory_format=torch.channels_last)
    fc = freeze_backbone(model)
    before = frozen_state(model, head_name)

    cache = decode_once(args.cache, data / "train")
    val_ds = ImageFolder(data / "val", val_transform(int(size), mean, std), classes=classes, cache=cache)
    extract = min(EXTRACT_BATCH, args.batch_size)  # images per frozen forward pass (features, validation)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_ds, batch_shard(len(val_ds), extract,
                                                                                     rank, world)),
                                             batch_size=extract, num_workers=workers)
    history: list[dict] = []
    t0 = time.perf_counter()
    trained = head is None
    run, saved = None, None
    if trained:  # the resume state is an input: checked before anything is said or written
        run = RunState(output, STAGE, fingerprint(args, NOT_RESULT, backbone_sha256=sha256_file(args.backbone)),
                       restart=args.restart, check=ctx.is_main)
        state = run.path("probe.pt")
        if state.exists() and not state.is_file():
            raise UserError(f"{state}: exists and is not a file (the linear probe's resume state goes there); "
                            f"remove it")
        if broadcast_object(run.resumed) and state.exists():  # rank 0 checked the state (and may have reset it)
            saved = read_probe_state(state, fc, args.epochs)
    print(f"squeeze.linear_probe: {arch} backbone ({layout}) from {args.backbone}, {len(classes)} classes, input "
          f"{size}, " + ("released classifier" if head is not None else f"{args.epochs} epochs, aug {args.train_aug}")
          + (f", {world} processes ({ctx.backend})" if ctx.distributed else ""), file=sys.stderr)
    if trained:
        aug = args.train_aug
        tf = val_transform(int(size), mean, std) if aug == "none" else train_transform(int(size), mean, std, aug)
        train_ds = ImageFolder(data / "train", tf, classes=classes, cache=cache)
        steps = -(-len(train_ds) // args.batch_size)
        if aug == "none":
            with torch.no_grad():
                feats, labels = _features(model, train_ds, device, workers, extract, rank, world)

            def batches(epoch):
                g = torch.Generator().manual_seed(epoch_seed(args.seed, epoch))
                order = torch.randperm(len(labels), generator=g).to(device)
                for i in range(0, len(order), args.batch_size):
                    idx = order[i:i + args.batch_size]
                    yield feats[idx], labels[idx]
        else:
            items = SeededItems(train_ds, args.seed)  # an image's augmentation: a function of (seed, epoch, index)
            dim = fc.in_features

            def batches(epoch):
                items.set_epoch(epoch)
                g = torch.Generator().manual_seed(epoch_seed(args.seed, epoch))
                order = torch.randperm(len(items), generator=g)
                # this process's contiguous share of each global batch (all of it in one process)
                shares = [order[i:i + args.batch_size].tensor_split(world)[rank].tolist()
                          for i in range(0, len(order), args.batch_size)]
                loader = iter(torch.utils.data.DataLoader(items, batch_sampler=[s for s in shares if s],
                                                          num_workers=workers, worker_init_fn=seed_worker))
                for share in tqdm(shares, desc=f"probe epoch {epoch + 1}/{args.epochs}", leave=False,
                                  mininterval=1.0):
                    if share:
                        x, y = next(loader)
                        with torch.no_grad():
                            f = penultimate_features(model, x.to(device).contiguous(memory_format=torch.channels_last))
                        y = y.to(device)
                    else:  # a last batch smaller than the number of processes
                        f = torch.zeros((0, dim), device=device)
                        y = torch.zeros(0, dtype=torch.int64, device=device)
                    yield all_gather_rows(f.float()), all_gather_rows(y)
        try:
            with run.running():  # a failure before the first epoch's checkpoint leaves no state behind
                history = fit_classifier(model, fc, batches, steps, args.epochs, args.lr, args.momentum,
                                         args.weight_decay, device, features_given=True,
                                         state_file=run.path("probe.pt") if ctx.is_main else None, saved=saved,
                                         max_epochs_this_run=args.max_epochs_this_run)
        except Diverged:
            run.discard()  # a diverged run is an error, not a result: its epochs are of no use to a rerun
            raise
        if history is None:
            return {"stopped": True}
    val = reduce_metrics(evaluate(model, val_loader, device))  # each process's batches, the counts summed
    assert_unchanged(model, before)  # the SC-DD invariant: BN statistics are the self-supervised ones
    if not ctx.is_main:  # rank 0 writes the teacher, the report and removes the state
        return {"val_top1": val["top1"], "history": history}
    method = bmeta.get("ssl_method") or SSL_METHOD.get(layout, layout)
    meta = make_meta(arch, len(classes), int(size), classes=classes, dataset=spec.name, mean=mean, std=std,
                     val_top1=val["top1"], val_top5=val["top5"], teacher_kind="ssl-linear-probe",
                     ssl_method=method, ssl_layout=layout,
                     backbone={"path": str(args.backbone), "sha256": sha256_file(args.backbone),
                               "knn_top1": bmeta.get("knn_top1")},
                     linear_path=str(args.linear_path) if args.linear_path else None,
                     probe={k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                                                          "train_aug", "seed")} if trained else None)
    save_checkpoint(output, model, meta)
    report = build_manifest("squeeze.linear_probe", args, inputs={"backbone": args.backbone, "teacher": output},
                            teacher_kind="ssl-linear-probe", ssl_method=method, ssl_layout=layout, arch=arch,
                            input_size=int(size), classes=classes, val_top1=val["top1"], val_top5=val["top5"],
                            seconds=time.perf_counter() - t0, history=history)
    atomic_write_json(output.with_suffix(".json"), report)
    if trained:
        run.finish()
    print(f"teacher written to {output}: val top-1 {val['top1']:.2f}% (frozen {method} backbone, BN statistics "
          f"unchanged)", file=sys.stderr)
    print(f"linear probe: val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}% -> {output}")
    return report
