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

Experts are split across processes with ``--num-shards/--shard-index`` or, under torchrun,
by RANK/WORLD_SIZE (``common.compute.shards``: expert i belongs to shard i mod num_shards).
The resume state lives beside the output (``common.run.state``): ``OUT.state/expert_XXX.pt``
(model, optimiser, generator, trajectory so far; saved every epoch, loaded weights-only) and
``OUT.state/done/``. Re-running the same command completes the set; other settings are refused
by name (``--restart`` discards an unfinished run, its experts included); a folder this command
did not write is never written into without ``--force``. Every expert file found is checked (a
finite ``[epochs + 1, n_params]`` tensor) before it counts as finished. A diverging expert (a
non-finite loss) stops the run with one line and leaves no file of it behind.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("squeeze.args:trajectories_parser", "squeeze.trajectories"))

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from common.cli.errors import UserError
from common.compute.shards import resolve_shard, shard_items
from squeeze.args import trajectories_parser

STAGE = "squeeze.trajectories"
# besides common.run.state.NOT_RESULT: where the experts go and how many / which of them this process trains
# (more experts or other shards may join a folder later)
NOT_RESULT = ("num_shards", "shard_index", "output_dir", "num_experts")
get_args_parser = trajectories_parser  # torch-free, in squeeze.args (python -m answers before torch is imported)
__all__ = ["curriculum_range", "curriculum_indices", "read_order", "resolve_shard", "main"]


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


def curriculum_kwargs(args) -> dict[str, Any]:
    return dict(init_ratio=args.init_ratio, add_end_epoch=args.add_end_epoch, rm_epoch_first=args.rm_epoch_first,
                rm_epoch_second=args.rm_epoch_second, rm_easy_ratio_first=args.rm_easy_ratio_first,
                rm_easy_ratio_second=args.rm_easy_ratio_second)


def read_order(path: str | os.PathLike, classes: Sequence[str], rel_paths: Sequence[str]) -> list[list[int]]:
    """Map an order file's per-class path lists onto dataset indices; it must list exactly the data's images."""
    try:
        with open(path) as f:
            doc = json.load(f)
        order = doc["order"]
        if not isinstance(order, dict) or not all(isinstance(v, list) for v in order.values()):
            raise TypeError
    except FileNotFoundError:
        raise UserError(f"{path}: --difficulty order file not found (rank_select.difficulty writes it)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: --difficulty is a folder; give the .order.json file rank_select.difficulty "
                        f"wrote") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a difficulty order file (expected JSON with an 'order' map)") from None
    if list(order) != list(classes):
        raise UserError(f"{path}: classes differ from the data's class folders; re-run rank_select.difficulty")
    index = {p: i for i, p in enumerate(rel_paths)}
    out = []
    for cls in classes:
        paths = order[cls]
        missing = [p for p in paths if p not in index]
        if missing or len(set(paths)) != len(paths) or \
                len(paths) != sum(1 for p in rel_paths if p.split("/", 1)[0] == cls):
            raise UserError(f"{path}: class {cls} does not list exactly the data's images "
                            f"({'e.g. ' + str(missing[0]) if missing else 'counts differ'}); "
                            f"re-run rank_select.difficulty")
        out.append([index[p] for p in paths])
    return out


def flat_params(model) -> object:
    import torch

    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def expert_path(out: Path, i: int) -> Path:
    return out / f"expert_{i:03d}.pt"


def unit(i: int) -> str:
    return f"expert_{i:03d}"


# ----------------------------------------------------------------------------- inputs

@dataclass
class Data:
    """What the experts are trained on: the data's description (read first, cheaply), then its tensors
    (ZCA-whitened with ``--zca``)."""

    classes: list[str]
    arch: str
    size: int
    mean: list[float]
    std: list[float]
    n_params: int
    layout: list
    orders: list[list[int]] | None = None
    x: Any = None
    y: Any = None
    xv: Any = None
    yv: Any = None
    zca: Any = None


def inspect_data(args) -> Data:
    """Check every input (DSA ops, data folders, architecture, order file) without decoding the images."""
    from common.data.dataconfig import resolve_data_config
    from common.data.datasets import check_class_count, get_dataset
    from common.data.imagefolder import check_train_val, make_samples
    from common.ops.dsa import parse_strategy
    from models import build_model
    from models.registry import canonical_arch

    try:
        parse_strategy(args.dsa_strategy)
    except ValueError as exc:
        raise UserError(f"--dsa-strategy: {exc}") from None
    data = Path(args.data_path)
    spec = get_dataset(args.dataset)
    classes = check_train_val(data / "train", data / "val")
    check_class_count(spec, len(classes), data / "train")
    arch = canonical_arch(args.arch)
    size = resolve_data_config(spec, arch, args.input_size, image_root=data / "train").input_size
    model = build_model(arch, len(classes), size)
    layout = [[n, list(p.shape)] for n, p in model.named_parameters()]
    d = Data(list(classes), arch, size, list(spec.mean), list(spec.std), sum(p.numel() for p in model.parameters()),
             layout)
    if args.difficulty:
        _, samples = make_samples(data / "train", classes, what="--data-path")
        d.orders = read_order(args.difficulty, classes, [Path(p).relative_to(data / "train").as_posix()
                                                         for p, _ in samples])
    return d


def load_tensors(args, d: Data) -> None:
    """Decode the train and val images into ``d`` (whitened with ``--zca``)."""
    from common.ops.zca import ZCA
    from common.train.memdata import load_tensor_dataset

    data = Path(args.data_path)
    d.x, d.y, _, _ = load_tensor_dataset(data / "train", d.size, d.mean, d.std, d.classes)
    d.xv, d.yv, _, _ = load_tensor_dataset(data / "val", d.size, d.mean, d.std, d.classes)
    if args.zca:
        d.zca = ZCA.fit(d.x)
        d.x, d.xv = d.zca.whiten(d.x), d.zca.whiten(d.xv)


# ----------------------------------------------------------------------------- the output folder

def read_trajectory(path: Path, n_params: int, epochs: int | None, fix: str):
    """An expert file, loaded weights-only: a finite float ``[epochs + 1, n_params]`` tensor (any number of
    rows from 2 when ``epochs`` is None); else one line ending with ``fix``. Also read by
    recover.trajectory_matching."""
    import torch

    from common.run.safe_load import safe_torch_load

    t = safe_torch_load(path, what="expert trajectory", advice=fix)
    rows = "epochs+1" if epochs is None else epochs + 1
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[1] != n_params or \
            (t.shape[0] < 2 if epochs is None else t.shape[0] != epochs + 1):
        found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise UserError(f"{path}: not an expert of these settings (expected a [{rows}, {n_params}] tensor, "
                        f"found {found}); {fix}")
    if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
        raise UserError(f"{path}: expert trajectory holds non-finite values; {fix}")
    return t


def check_expert(path: Path, epochs: int, n_params: int) -> None:
    """A finished expert: a finite float ``[epochs + 1, n_params]`` tensor and its JSON record; else one line."""
    fix = "remove it (and its .json) to train this expert again"
    read_trajectory(path, n_params, epochs, fix)
    try:
        json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path.with_suffix('.json')}: the record of this expert is missing or unreadable; {fix}") \
            from None


def finished_experts(out: Path, run, num_experts: int, epochs: int, n_params: int) -> list[int]:
    """The experts already in ``out``, each checked before it counts (the size recorded by this run's done
    marker spares re-reading a file this run wrote)."""
    done = []
    for i in range(num_experts):
        f = expert_path(out, i)
        if not f.is_file():
            continue
        rec = run.done(unit(i))
        if not (rec and rec.get("size") == f.stat().st_size):
            check_expert(f, epochs, n_params)
        done.append(i)
    return done


def check_folder(out: Path, settings: dict, force: bool) -> bool:
    """A folder of ours holds experts of these settings (else refused by name); True: replace it (--force)."""
    from common.run.manifest import read_manifest
    from common.run.state import describe_diff

    old = read_manifest(out) if out.is_dir() else None
    if old is None or old.get("stage") != STAGE:
        return force and out.exists()  # check_output refused a folder not ours without --force
    if old.get("result_args") != settings:
        if force:
            return True
        raise UserError(f"--output-dir {out}: experts there were trained with other settings "
                        f"({describe_diff(old.get('result_args') or {}, settings)}); choose a new --output-dir, "
                        f"or pass --force to replace them")
    return False


def publish_expert(out: Path, i: int, trajectory, record: dict, manifest: dict, zca, run) -> None:
    """Write expert ``i`` (and, with the first expert, zca.pt and manifest.json) into ``out``, atomically."""
    from common.run.atomic import atomic_torch_save, atomic_write_json
    from common.run.manifest import read_manifest

    out.mkdir(parents=True, exist_ok=True)
    if zca is not None and not (out / "zca.pt").is_file():
        zca.save(out / "zca.pt")
    if (read_manifest(out) or {}).get("result_args") != manifest["result_args"] or not run.done_units():
        atomic_write_json(out / "manifest.json", manifest)
    atomic_torch_save(trajectory, expert_path(out, i))
    atomic_write_json(out / f"{unit(i)}.json", record)
    run.mark_done(unit(i), {"size": expert_path(out, i).stat().st_size})
    run.path(f"{unit(i)}.pt").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- one expert

def read_resume(path: Path, epochs: int, n_params: int) -> dict:
    """An expert's resume file, loaded weights-only and checked (its trajectory so far fits these settings)."""
    import torch

    from common.run.safe_load import safe_torch_load

    fix = "pass --restart to discard this run's state"
    st = safe_torch_load(path, what="expert resume file", advice=fix)
    try:
        traj, epoch = st["trajectory"], int(st["epoch"])
        ok = (isinstance(st["model"], dict) and isinstance(st["optimizer"], dict) and traj.ndim == 2
              and traj.shape[1] == n_params and traj.shape[0] == epoch + 1 and 0 < epoch <= epochs
              and bool(torch.isfinite(traj).all()) and isinstance(st["generator"], torch.Tensor))
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError, IndexError):
        ok = False
    if not ok:
        raise UserError(f"{path}: not an expert resume file of these settings; {fix}")
    return st


def resume_expert(path: Path, model, opt, gen, epochs: int, n_params: int) -> tuple[list, int, float]:
    """Load an expert's resume file into ``model``, ``opt`` and ``gen``."""
    st = read_resume(path, epochs, n_params)
    try:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise UserError(f"{path}: not an expert resume file of these settings; pass --restart to discard this "
                        f"run's state") from None
    return list(st["trajectory"]), int(st["epoch"]), float(st.get("elapsed", 0.0))


def train_expert(i: int, args, data: Data, device, out: Path, run, manifest: dict) -> float | None:
    """Train expert ``i`` (resuming from its state file), publish its trajectory; None when stopped early."""
    import time

    import torch
    from tqdm import tqdm

    from common.cli.errors import bar_vanishes_on_error
    from common.ops.dsa import dsa, make_generator
    from common.run.atomic import atomic_torch_save
    from common.train.memdata import accuracy, sgd_epoch
    from models import build_model

    resume = run.path(f"{unit(i)}.pt")
    torch.manual_seed(args.seed + i)
    model = build_model(data.arch, len(data.classes), data.size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr_teacher, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    gen = make_generator(10_000 + args.seed + i)
    rows, epoch0, elapsed = [flat_params(model)], 0, 0.0
    if resume.is_file():
        rows, epoch0, elapsed = resume_expert(resume, model, opt, gen, args.epochs, data.n_params)
        print(f"expert {i}: resuming at epoch {epoch0}", file=sys.stderr)
    strategy = args.dsa_strategy
    aug = None if strategy.lower() == "none" else (lambda xb, g: dsa(xb, strategy, generator=g))
    kw = curriculum_kwargs(args)
    acc, t0 = None, time.time()
    stop = args.epochs if args.max_epochs_this_run is None else min(args.epochs, epoch0 + args.max_epochs_this_run)
    with tqdm(range(epoch0, stop), desc=f"expert {i}", initial=epoch0, total=args.epochs,
              dynamic_ncols=True) as bar, bar_vanishes_on_error(bar):
        for e in bar:
            idx = curriculum_indices(data.orders, e, **kw) if data.orders is not None else torch.arange(len(data.x))
            try:
                _, acc = sgd_epoch(model, data.x, data.y, idx, opt, args.batch_train, gen, aug, device)
            except FloatingPointError:
                resume.unlink(missing_ok=True)  # a diverged expert is no result: nothing of it is kept
                raise UserError(diverged_message(i, e, args, run)) from None
            rows.append(flat_params(model))
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "generator": gen.get_state(), "trajectory": torch.stack(rows), "epoch": e + 1,
                               "elapsed": elapsed + time.time() - t0}, resume)
    if stop < args.epochs:
        return None
    val = accuracy(model, data.xv, data.yv, device=device)
    sizes = [len(curriculum_indices(data.orders, e, **kw)) if data.orders is not None else len(data.x)
             for e in range(args.epochs)]
    record = {"expert": i, "seed": args.seed + i, "epochs": args.epochs, "val_top1": 100.0 * val,
              "last_train_acc": None if acc is None else 100.0 * acc, "subset_sizes": sizes,
              "seconds": elapsed + time.time() - t0}
    publish_expert(out, i, torch.stack(rows).float(), record, manifest, data.zca, run)
    return val


def diverged_message(i: int, epoch: int, args, run) -> str:
    """The advice after a non-finite loss; ``--restart`` when finished experts of this run would refuse the
    corrected command."""
    msg = f"expert {i}: non-finite training loss at epoch {epoch}; lower --lr-teacher (now {args.lr_teacher:g})"
    if run.done_units():
        msg += f" and pass --restart (the {len(run.done_units())} expert(s) finished in this run were trained " \
               f"with it)"
    return msg


# ----------------------------------------------------------------------------- the command

def open_run(args, out: Path, data: Data, num_shards: int, shard: int):
    """The run state (an unfinished run of other settings refused by name and --restart; a finished folder of
    other settings by check_folder), this shard's experts still to train (their resume files checked), and
    whether the folder found there is to be replaced (--restart of an unfinished run, --force)."""
    from common.run.state import RunState, fingerprint, state_dir

    settings = fingerprint(args, NOT_RESULT)
    had_state = state_dir(out).is_dir()
    run = RunState(out, STAGE, settings, restart=args.restart, check=shard == 0)
    restarted = args.restart and had_state and not state_dir(out).exists()
    replace = (restarted or check_folder(out, settings, args.force)) and out.exists()
    done = [] if replace else finished_experts(out, run, args.num_experts, args.epochs, data.n_params)
    mine = [i for i in shard_items(range(args.num_experts), num_shards, shard) if i not in done]
    for i in mine:
        if run.path(f"{unit(i)}.pt").is_file():
            read_resume(run.path(f"{unit(i)}.pt"), args.epochs, data.n_params)
    return run, mine, replace


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    from squeeze.args import check_trajectories

    check_trajectories(args)
    from common.cli.paths import check_output_dir
    from common.run.state import check_output, state_dir

    out = Path(args.output_dir)
    check_output_dir(out, "--output-dir")
    check_output_dir(state_dir(out), "--output-dir")
    check_output(out, STAGE, args.force, kind="dir", flag="--output-dir")
    num_shards, shard = resolve_shard(args.num_shards, args.shard_index)

    from common.compute.device import device_from_args
    from common.run.manifest import build_manifest

    device = device_from_args(args)
    data = inspect_data(args)
    run, mine, replace = open_run(args, out, data, num_shards, shard)
    load_tensors(args, data)  # the last input check (every image decodes)
    if replace and shard == 0:
        shutil.rmtree(out)  # --restart of an unfinished run, or --force: the folder found there goes
    manifest = build_manifest(STAGE, args, result_args=run.fingerprint, arch=data.arch, input_size=data.size,
                              classes=data.classes, mean=data.mean, std=data.std, n_params=data.n_params,
                              param_layout=data.layout, zca="zca.pt" if args.zca else None,
                              curriculum=data.orders is not None,
                              class_sizes=[int((data.y == c).sum()) for c in range(len(data.classes))])
    accs = {}
    with run.running():  # a run that finishes no expert and saves no epoch leaves no state (and no folder)
        for i in mine:
            acc = train_expert(i, args, data, device, out, run, manifest)
            if acc is not None:
                accs[i] = acc
    done = finished_experts(out, run, args.num_experts, args.epochs, data.n_params)
    if len(done) == args.num_experts:
        run.finish()
    summary = {"output_dir": str(out), "experts_done": len(done),
               "trained_now": {str(k): round(100 * v, 2) for k, v in accs.items()},
               "shard": shard, "num_shards": num_shards}
    print(json.dumps(summary))
    return summary
