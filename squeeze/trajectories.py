"""squeeze.trajectories: expert trajectories for trajectory matching (MTT/DATM/PAD).

    python -m squeeze.trajectories --data-path DATA --arch conv3_in --input-size 32 \
        --num-experts 10 --epochs 50 --difficulty runs/difficulty.order.json --output-dir runs/experts

Each expert is an instance-norm ConvNet trained from its own seed (``--seed`` + i)
with plain SGD (``--lr-teacher`` 0.01, momentum 0, batch 256, as the released
buffer scripts), differentiable augmentation (DSA) on each batch, optionally on
ZCA-whitened images. Its parameters after every epoch form one
``expert_XXX.pt`` tensor of shape ``[epochs + 1, n_params]`` (row 0 = the
initialisation; parameters flattened in ``model.parameters()`` order, which the
manifest records), written atomically; ``expert_XXX.json`` beside it holds its
val accuracy and time.

With ``--difficulty`` (the order file of ``rank_select.difficulty``) the experts
follow PAD's data curriculum, on each class's easy-to-hard list of n images, at
0-based epoch e: for e <= add_end_epoch the easiest int(p n) with
p = min(1, init_ratio + (1 - init_ratio) e / add_end_epoch); then all images until
rm_epoch_first; for rm_epoch_first < e <= rm_epoch_second all but the easiest
int(rm_easy_ratio_first n); afterwards all but the easiest int(rm_easy_ratio_second n)
(the released buffer_CL.py's rule, with n taken from the data). Without it every
epoch uses all images (the MTT/DATM experts).

Experts are split across processes with ``--num-shards/--shard-index`` (expert i
belongs to shard i mod num_shards) or, under torchrun, by RANK/WORLD_SIZE. An
interrupted expert resumes from ``.expert_XXX.partial.pt`` (saved every epoch);
finished experts are skipped, so re-running the same command completes the set.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from common.cli.argtypes import (
    float_range,
    momentum_float,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from common.cli.flags import add_data_args, add_device_args


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.trajectories", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "root with train/ and val/ ImageFolder trees", "conv3_in",
                  "expert architecture (conv3_in; conv4_in for 64 px)", arch_flag="--arch")
    p.add_argument("--num-experts", type=positive_int, default=100, help="(released README: 100)")
    p.add_argument("--epochs", type=positive_int, default=100, help="training epochs per expert (released README: 100)")
    p.add_argument("--lr-teacher", type=positive_float, default=0.01)
    p.add_argument("--momentum", type=momentum_float, default=0.0)
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    p.add_argument("--batch-train", type=positive_int, default=256)
    p.add_argument("--zca", action="store_true", help="train on ZCA-whitened images (fit saved as zca.pt)")
    p.add_argument("--dsa-strategy", default="color_crop_cutout_flip_scale_rotate",
                   help="DSA ops ('none' disables augmentation)")
    p.add_argument("--difficulty", default=None,
                   help="per-class easy-to-hard order file (rank_select.difficulty); enables the curriculum")
    p.add_argument("--init-ratio", type=float_range(0, 1, lo_open=True), default=0.75)
    p.add_argument("--add-end-epoch", type=nonneg_int, default=20)
    p.add_argument("--rm-epoch-first", type=nonneg_int, default=40)
    p.add_argument("--rm-epoch-second", type=nonneg_int, default=60)
    p.add_argument("--rm-easy-ratio-first", type=unit_float, default=0.1)
    p.add_argument("--rm-easy-ratio-second", type=unit_float, default=0.2)
    p.add_argument("--num-shards", type=positive_int, default=None, help="split experts across this many processes")
    p.add_argument("--shard-index", type=nonneg_int, default=None, help="this process's shard (0-based)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--max-epochs-this-run", type=positive_int, default=None,
                   help="stop each expert after this many epochs in this run (resume later); for time-boxed jobs")
    p.add_argument("--output-dir", required=True, help="directory of expert_XXX.pt files and manifest.json")
    add_device_args(p)
    return p


def curriculum_range(n: int, epoch: int, init_ratio: float = 0.75, add_end_epoch: int = 20,
                     rm_epoch_first: int = 40, rm_epoch_second: int = 60, rm_easy_ratio_first: float = 0.1,
                     rm_easy_ratio_second: float = 0.2) -> tuple[int, int]:
    """``(start, stop)`` in a class's easy-to-hard list of ``n`` images used at 0-based ``epoch``."""
    if epoch <= add_end_epoch:
        p = min(1.0, init_ratio + (1 - init_ratio) * epoch / add_end_epoch) if add_end_epoch > 0 else 1.0
        return 0, int(p * n)
    if epoch <= rm_epoch_first:
        return 0, n
    if epoch <= rm_epoch_second:
        return int(rm_easy_ratio_first * n), n
    return int(rm_easy_ratio_second * n), n


def curriculum_indices(orders: Sequence[Sequence[int]], epoch: int, **kw):
    """Dataset indices used at ``epoch``: each class's slice of its easy-to-hard list."""
    import torch

    parts = []
    for order in orders:
        a, b = curriculum_range(len(order), epoch, **kw)
        parts.append(torch.as_tensor(list(order[a:b]), dtype=torch.long))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def read_order(path: str | os.PathLike, classes: Sequence[str], rel_paths: Sequence[str]) -> list[list[int]]:
    """Map an order file's per-class path lists onto dataset indices; it must list exactly the data's images."""
    import json

    from common.cli.errors import UserError

    try:
        with open(path) as f:
            doc = json.load(f)
        order = doc["order"]
    except FileNotFoundError:
        raise UserError(f"{path}: --difficulty order file not found (rank_select.difficulty writes it)") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a difficulty order file (expected JSON with an 'order' map)") from None
    if list(order) != list(classes):
        raise UserError(f"{path}: classes differ from the data's class folders; re-run rank_select.difficulty")
    index = {p: i for i, p in enumerate(rel_paths)}
    out = []
    for cls in classes:
        paths = order[cls]
        missing = [p for p in paths if p not in index]
        if missing or len(set(paths)) != sum(1 for p in rel_paths if p.split("/", 1)[0] == cls):
            raise UserError(f"{path}: class {cls} does not list exactly the data's images "
                            f"({'e.g. ' + missing[0] if missing else 'counts differ'}); re-run rank_select.difficulty")
        out.append([index[p] for p in paths])
    return out


def resolve_shard(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``--num-shards/--shard-index``, else the launch (torchrun/srun) as common.compute.distributed reads it."""
    from common.cli.errors import UserError
    from common.compute.distributed import dist_info

    launch = dist_info()
    num_shards = launch.world_size if num_shards is None else num_shards
    shard_index = launch.rank if shard_index is None else shard_index
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    return num_shards, shard_index


def flat_params(model) -> object:
    import torch

    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def expert_path(out: Path, i: int) -> Path:
    return out / f"expert_{i:03d}.pt"


def train_expert(i: int, args, x, y, xv, yv, orders, num_classes: int, arch: str, size: int, device, out: Path):
    """Train expert ``i`` (resuming from its partial file) and write its trajectory."""
    import time

    import torch
    from tqdm import tqdm

    from common.ops.dsa import dsa, make_generator
    from common.run.atomic import atomic_torch_save, atomic_write_json
    from common.train.memdata import accuracy, sgd_epoch
    from models import build_model

    partial = out / f".expert_{i:03d}.partial.pt"
    torch.manual_seed(args.seed + i)
    model = build_model(arch, num_classes, size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr_teacher, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    gen = make_generator(10_000 + args.seed + i)
    rows = [flat_params(model)]
    epoch0, elapsed = 0, 0.0
    if partial.is_file():
        st = torch.load(partial, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        rows = list(st["trajectory"])
        epoch0, elapsed = st["epoch"], st.get("elapsed", 0.0)
        print(f"expert {i}: resuming at epoch {epoch0}", file=sys.stderr)
    strategy = args.dsa_strategy
    aug = None if strategy.lower() == "none" else (lambda xb, g: dsa(xb, strategy, generator=g))
    kw = dict(init_ratio=args.init_ratio, add_end_epoch=args.add_end_epoch, rm_epoch_first=args.rm_epoch_first,
              rm_epoch_second=args.rm_epoch_second, rm_easy_ratio_first=args.rm_easy_ratio_first,
              rm_easy_ratio_second=args.rm_easy_ratio_second)
    sizes, acc = [], None
    t0 = time.time()
    stop = args.epochs if args.max_epochs_this_run is None else min(args.epochs, epoch0 + args.max_epochs_this_run)
    for e in tqdm(range(epoch0, stop), desc=f"expert {i}", initial=epoch0, total=args.epochs,
                  dynamic_ncols=True):
        idx = curriculum_indices(orders, e, **kw) if orders is not None else torch.arange(len(x))
        loss, acc = sgd_epoch(model, x, y, idx, opt, args.batch_train, gen, aug, device)
        rows.append(flat_params(model))
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                           "trajectory": torch.stack(rows), "epoch": e + 1,
                           "elapsed": elapsed + time.time() - t0}, partial)
    if stop < args.epochs:
        return None
    val = accuracy(model, xv, yv, device=device)
    sizes = [len(curriculum_indices(orders, e, **kw)) if orders is not None else len(x) for e in range(args.epochs)]
    atomic_torch_save(torch.stack(rows).float(), expert_path(out, i))
    atomic_write_json(out / f"expert_{i:03d}.json", {
        "expert": i, "seed": args.seed + i, "epochs": args.epochs, "val_top1": 100.0 * val,
        "last_train_acc": None if acc is None else 100.0 * acc, "subset_sizes": sizes,
        "seconds": elapsed + time.time() - t0})
    partial.unlink(missing_ok=True)
    return val


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    from common.cli.errors import UserError

    for flag in ("num_experts", "epochs", "batch_train"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.lr_teacher <= 0:
        raise UserError("--lr-teacher must be positive")
    if not 0 < args.init_ratio <= 1:
        raise UserError("--init-ratio must be in (0, 1]")
    for flag in ("rm_easy_ratio_first", "rm_easy_ratio_second"):
        if not 0 <= getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be in [0, 1)")
    from common.ops.dsa import parse_strategy

    try:
        parse_strategy(args.dsa_strategy)
    except ValueError as exc:
        raise UserError(f"--dsa-strategy: {exc}") from None
    num_shards, shard = resolve_shard(args.num_shards, args.shard_index)
    data = Path(args.data_path)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --output-dir exists and is not a directory")

    import json

    from common.compute.device import device_from_args
    from common.data.dataconfig import resolve_data_config
    from common.data.datasets import check_class_count, get_dataset
    from common.data.imagefolder import check_train_val
    from common.ops.zca import ZCA
    from common.run.atomic import atomic_write_json
    from common.run.manifest import build_manifest, read_manifest
    from common.run.state import describe_diff, fingerprint
    from common.train.memdata import load_tensor_dataset
    from models import build_model
    from models.registry import canonical_arch

    spec = get_dataset(args.dataset)
    device = device_from_args(args)
    classes = check_train_val(data / "train", data / "val")
    check_class_count(spec, len(classes), data / "train")
    arch = canonical_arch(args.arch)
    size = resolve_data_config(spec, arch, args.input_size, image_root=data / "train").input_size
    x, y, rel, _ = load_tensor_dataset(data / "train", size, spec.mean, spec.std, classes)
    xv, yv, _, _ = load_tensor_dataset(data / "val", size, spec.mean, spec.std, classes)
    orders = read_order(args.difficulty, classes, rel) if args.difficulty else None
    model = build_model(arch, len(classes), size)
    layout = [[n, list(p.shape)] for n, p in model.named_parameters()]
    # the experts' settings (common.run.state's rule); more experts or other shards may join a folder later
    result_args = fingerprint(args, ("num_shards", "shard_index", "output_dir", "num_experts"))
    old = read_manifest(out)
    if old is not None:
        if old.get("stage") != "squeeze.trajectories":
            raise UserError(f"{out}: holds another stage's output; choose a new --output-dir")
        if old.get("result_args") != result_args:
            raise UserError(f"{out}: experts there were trained with other settings "
                            f"({describe_diff(old.get('result_args') or {}, result_args)}); "
                            f"choose a new --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    if args.zca:
        zca_file = out / "zca.pt"
        zca = ZCA.fit(x)
        if shard == 0 or not zca_file.exists():
            zca.save(zca_file)
        x, xv = zca.whiten(x), zca.whiten(xv)
    manifest = build_manifest("squeeze.trajectories", args, result_args=result_args, arch=arch, input_size=size,
                              classes=classes, mean=list(spec.mean), std=list(spec.std),
                              n_params=sum(p.numel() for p in model.parameters()), param_layout=layout,
                              zca="zca.pt" if args.zca else None, curriculum=orders is not None,
                              class_sizes=[int((y == c).sum()) for c in range(len(classes))])
    atomic_write_json(out / "manifest.json", manifest)
    mine = [i for i in range(args.num_experts) if i % num_shards == shard]
    accs = {}
    for i in mine:
        if expert_path(out, i).is_file():
            continue
        acc = train_expert(i, args, x, y, xv, yv, orders, len(classes), arch, size, device, out)
        if acc is not None:
            accs[i] = acc
    done = sorted(p.name for p in out.glob("expert_*.pt"))
    summary = {"output_dir": str(out), "experts_done": len(done), "trained_now": {str(k): round(100 * v, 2)
                                                                                  for k, v in accs.items()},
               "shard": shard, "num_shards": num_shards}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from common.cli.errors import run_cli

    sys.exit(run_cli(main))
