"""``python -m recover``: synthesise a distilled ImageFolder with SRe2L / CDA / DELT EarlyLate.

Reads: a BatchNorm teacher checkpoint (``--arch-path``) and either an init folder
(``--init-data-path``, e.g. ``rank_select``'s medium picks: DELT) or noise (SRe2L, CDA).
Writes ``--syn-data-path/--exp-name/<class>/<file>`` plus ``manifest.json``.

Work is cut into groups of whole classes (see ``recover.schedule.plan_groups``); each
group's result depends only on ``--seed`` and its class indices, so a killed run restarted
with the same command skips finished classes and ends with the same images, and N shards
(``--num-shards/--shard-index``, or the launch that ``common.compute.distributed`` reads: torchrun's
RANK/WORLD_SIZE on one or several nodes, srun's SLURM_PROCID/SLURM_NTASKS) write disjoint
classes whose union is the single-process output. Shards never talk to each other (no
process group); each takes the GPU of its local rank.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from common.cli.errors import UserError, bar_vanishes_on_error
from common.cli.flags import arch_per_path, check_arch_names, device_spec
from common.cli.paths import check_output_dir, first_missing
from common.compute.accel import resolve_precision
from common.compute.distributed import init_distributed
from common.compute.shards import resolve_shard, shard_items
from common.data.dataconfig import resolve_data_config
from common.data.datasets import check_class_count, get_dataset
from common.data.imagefolder import check_same_classes, find_classes, list_class_files, load_rgb
from common.data.transforms import pil_to_normalized, pixel_bounds, to_pil
from common.run.atomic import atomic_dir, atomic_save_image
from common.run.manifest import build_manifest, sha256_file
from common.run.state import RunState, check_output, fingerprint
from common.train.curves import Curves, write_series
from models import canonical_arch, checkpoint_meta, has_batchnorm, load_model, read_checkpoint
from recover.args import get_args_parser  # the parser lives in the torch-free recover.args
from recover.cpu import keep_freed_memory
from recover.loop import LoopConfig, NonFiniteLoss, prepare_teacher, recover_batch
from recover.output import OutputDir
from recover.schedule import (
    Group,
    Item,
    Schedule,
    class_rounds,
    early_late_schedule,
    plan_groups,
    uniform_schedule,
)

STAGE = "recover"
# Arguments that do not decide the images (besides common.run.state.NOT_RESULT): where things are
# read and written (the inputs enter the fingerprint by content: teacher sha256, init file list,
# classes, input size) and how the classes are spread over processes.
NOT_RESULT = {"syn_data_path", "exp_name", "init_data_path", "train_data_path", "arch_path", "dataset",
              "num_classes", "input_size", "num_shards", "shard_index", "store_best_images", "class_stats"}
# Options past DELT: they enter the fingerprint only when set, so a run without them keeps its fingerprint.
OPTION_DEFAULTS = {"stage_sizes": None, "residual_alpha": 0.0, "bn_match": "global", "class_bn_weight": None,
                   "stats_momentum": 0.0}


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
@dataclass
class Plan:
    early_late: bool
    min_iterations: int | None
    num_shards: int
    shard_index: int


def check_args(args: argparse.Namespace) -> Plan:
    for name, low in (("ipc", 1), ("iteration", 1), ("batch_size", 1), ("round_iterations", 0), ("jitter", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, not {getattr(args, name)}")
    if not args.lr > 0 or args.r_bn < 0:
        raise UserError("--lr must be positive and --r-bn non-negative")
    if not 0 <= args.milestone <= 1:
        raise UserError(f"--milestone must be in [0, 1], not {args.milestone}")
    ri, itr = args.round_iterations, args.iteration
    if ri and itr % ri:
        raise UserError(f"--round-iterations {ri} does not divide --iteration {itr}")
    if args.use_early_late and not ri:
        raise UserError("--use-early-late needs --round-iterations > 0")
    min_itr = None if args.min_iterations is None or args.min_iterations < 0 else args.min_iterations
    if min_itr is not None:
        if not ri:
            raise UserError("--min-iterations needs --round-iterations > 0")
        if min_itr > itr:
            raise UserError(f"--min-iterations {min_itr} exceeds --iteration {itr}")
        min_itr = max(min_itr, ri)  # as released: at least one round
    # IPC 1 uses no rounds: the single image gets all ITR iterations (docs/methods/delt.md)
    early_late = bool(ri) and args.ipc > 1 and (args.use_early_late or (min_itr is not None and min_itr < itr))
    check_options(args)
    # the flags, else torchrun (also multi-node) or srun; one shard without either (common.compute.shards)
    num_shards, shard_index = resolve_shard(args.num_shards, args.shard_index)
    return Plan(early_late, min_itr, num_shards, shard_index)


def check_options(args: argparse.Namespace) -> None:
    """The options past DELT: each needs what it works on (never silently ignored)."""
    check_arch_names(args)  # none, or one per --arch-path
    if args.residual_alpha and not (args.stage_sizes and len(args.stage_sizes) > 1):
        raise UserError(f"--residual-alpha {args.residual_alpha:g} mixes at stage boundaries: give --stage-sizes "
                        f"with at least two stages (e.g. 200,224,200,224)")
    if args.bn_match != "global" and not args.class_stats:
        raise UserError(f"--bn-match {args.bn_match} needs --class-stats (python -m squeeze.class_stats writes it)")
    if args.class_stats and args.bn_match == "global":
        raise UserError("--class-stats is only used by --bn-match class or mix; add one, or drop --class-stats")
    if args.class_bn_weight is not None and args.bn_match != "mix":
        raise UserError(f"--class-bn-weight weighs --bn-match mix; with --bn-match {args.bn_match} it would be ignored")
    if args.bn_match == "mix" and args.class_bn_weight is None:
        args.class_bn_weight = 0.5  # EDC's 0.5 global + 0.5 class
    if args.bn_match != "global" and args.r_bn == 0:
        raise UserError(f"--bn-match {args.bn_match} matches BN statistics, but --r-bn is 0")
    if args.stats_momentum and args.r_bn == 0:
        raise UserError("--stats-momentum averages the matched BN statistics, but --r-bn is 0")


def output_dir(args: argparse.Namespace) -> Path:
    """``--syn-data-path/--exp-name`` as the released DELT/SRe2L recover scripts compose it."""
    return Path(args.syn_data_path) / args.exp_name if args.exp_name else Path(args.syn_data_path)


# ---------------------------------------------------------------------------------------------
# classes, init files, teacher
# ---------------------------------------------------------------------------------------------
def resolve_classes(args: argparse.Namespace) -> tuple[list[str], dict[str, list[str]] | None]:
    """Class folder names and, for real init, each class's first IPC init files (sorted names)."""
    if args.init == "real":
        if not args.init_data_path:
            raise UserError("--init real needs --init-data-path (or use --init noise)")
        root = Path(args.init_data_path)
        classes = find_classes(root, "init folder")
        if args.train_data_path:
            check_same_classes(find_classes(args.train_data_path, "train folder"), classes,
                               f"train folder {args.train_data_path}", f"init folder {root}")
        files = {}
        for cls in classes:
            names = list_class_files(root / cls)
            if len(names) < args.ipc:
                raise UserError(f"{root / cls}: init class has {len(names)} image(s), fewer than --ipc {args.ipc}")
            files[cls] = names[: args.ipc]
        return classes, files
    if args.train_data_path:
        return find_classes(args.train_data_path, "train folder"), None
    meta = read_checkpoint(teacher_paths(args)[0])["meta"]
    if not meta.get("classes"):
        raise UserError("--init noise: pass --train-data-path for the class folder names "
                        "(the teacher checkpoint does not list its classes)")
    return list(meta["classes"]), None


def load_teacher(args: argparse.Namespace, classes: Sequence[str], device: torch.device, path=None,
                 size: int | None = None, arch: str | None = None):
    """One teacher (``path`` with its ``--arch-name`` ``arch``, default the first of each); ``size``: the input
    size of the first."""
    if not args.arch_path:
        raise UserError("--arch-path (the teacher checkpoint) is required; nothing is downloaded at run time")
    if path is None:
        path, arch = teacher_paths(args)[0], teacher_archs(args)[0]
    if size is None:
        meta = checkpoint_meta(path, arch)
        name = arch or meta.get("arch")
        size = resolve_data_config(get_dataset(args.dataset), canonical_arch(name) if name else None,
                                   args.input_size, meta, image_root=args.init_data_path or args.train_data_path
                                   ).input_size
    model, meta = load_model(path, arch=arch, classes=list(classes), input_size=size, device=device)
    if args.r_bn > 0 and not has_batchnorm(model):
        raise UserError(f"{path}: the teacher ({meta['arch']}) has no BatchNorm2d layer, so there are no "
                        f"statistics to match; use a BN teacher or --r-bn 0 (cross-entropy only)")
    return model, meta


def teacher_paths(args: argparse.Namespace) -> list[str]:
    """Every ``--arch-path`` (one is kept as a plain string in ``args`` for the manifest)."""
    return list(args.arch_path) if isinstance(args.arch_path, list) else [args.arch_path]


def teacher_archs(args: argparse.Namespace) -> list[str | None]:
    """Each teacher's ``--arch-name``, aligned with :func:`teacher_paths` (None: the checkpoint's own)."""
    return arch_per_path(args.arch_name, len(teacher_paths(args)))


def load_teachers(args: argparse.Namespace, classes: Sequence[str], device: torch.device):
    """Every teacher, each with its own architecture (its ``--arch-name`` or the one its checkpoint records);
    they must share the input size and normalisation."""
    paths, archs = teacher_paths(args), teacher_archs(args)
    model, meta = load_teacher(args, classes, device, paths[0], arch=archs[0])
    models_, metas = [model], [meta]
    for path, arch in zip(paths[1:], archs[1:]):
        m, mt = load_teacher(args, classes, device, path, size=int(meta["input_size"]), arch=arch)
        for key in ("mean", "std"):
            if [round(float(v), 6) for v in mt[key]] != [round(float(v), 6) for v in meta[key]]:
                raise UserError(f"{path}: normalisation {key} {list(mt[key])} differs from the first teacher's "
                                f"{list(meta[key])} ({paths[0]}); teachers used together must share it")
        models_.append(m)
        metas.append(mt)
    return models_, metas


def load_class_stats(args: argparse.Namespace, teachers, shas: Sequence[str], classes: Sequence[str], device):
    """Per teacher, its :class:`recover.losses.ClassStats` from the ``--class-stats`` file recorded with it
    (files are matched to teachers by the teacher sha256 they record)."""
    from recover.losses import ClassStats, named_bn_layers
    from squeeze.class_stats import read_class_stats, recorded_teacher

    if not args.class_stats:
        return None
    if len(args.class_stats) > len(teachers):
        raise UserError(f"--class-stats: {len(args.class_stats)} files for {len(teachers)} teacher(s); give one per "
                        f"teacher")
    by_sha = {recorded_teacher(f): f for f in args.class_stats}
    out = []
    for k, (teacher, sha) in enumerate(zip(teachers, shas)):
        f = by_sha.get(sha) or args.class_stats[min(k, len(args.class_stats) - 1)]  # the latter: names the error
        layers = [(n, m.num_features) for n, m in named_bn_layers(teacher)]
        means, variances, _ = read_class_stats(f, sha, classes, layers)
        out.append(ClassStats(means, variances).to(device))
    return out


def check_stage_sizes(args: argparse.Namespace, size: int, teachers, metas, device) -> None:
    """The last stage is the input size, and every teacher takes every stage size (a conv teacher's classifier
    is sized for one input size; ResNets pool globally)."""
    if not args.stage_sizes:
        return
    if args.stage_sizes[-1] != size:
        raise UserError(f"--stage-sizes {','.join(map(str, args.stage_sizes))}: the last stage must be the input "
                        f"size {size} (the images are written at it)")
    for s in sorted(set(args.stage_sizes) - {size}):
        for path, teacher, meta in zip(teacher_paths(args), teachers, metas):
            try:
                with torch.no_grad():
                    teacher(torch.zeros(1, 3, s, s, device=device))
            except RuntimeError:
                raise UserError(f"--stage-sizes: the teacher {path} ({meta['arch']}) cannot take {s}x{s} inputs "
                                f"(its classifier is sized for {size}); use stage sizes equal to {size} or a teacher "
                                f"that pools globally (resnet...)") from None


# A class whose images have more than this fraction of pixel values at the ends of the valid
# range (clipped by the loop's clamp) is flagged as saturated in the manifest and warned about.
SATURATION_WARN = 0.5


def clipped_fraction(images: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per image, the fraction of values (pixels x channels) at the lower or upper pixel bound."""
    lo, hi = bounds[0].to(images.device), bounds[1].to(images.device)
    return ((images <= lo) | (images >= hi)).flatten(1).float().mean(1)


def output_names(init_files: Sequence[str] | None, ipc: int, label: int, ext: str) -> list[str]:
    """Output file names in init order: the init file's stem with the new extension
    (``class{label:03d}_id{i:03d}`` for noise, as released), prefixed by the index only
    if stems would collide or sort in another order."""
    width = max(3, len(str(ipc - 1)))
    if init_files is None:
        return [f"class{label:03d}_id{i:0{width}d}.{ext}" for i in range(ipc)]
    names = [f"{Path(f).stem}.{ext}" for f in init_files]
    if sorted(set(names)) != names:
        names = [f"{i:0{width}d}_{Path(f).stem}.{ext}" for i, f in enumerate(init_files)]
    return names


def batch_seed(seed: int, item: Item) -> int:
    """A batch's seed from ``--seed`` and its first (class, in-class index) only."""
    return int(np.random.SeedSequence([seed, item[0], item[1]]).generate_state(1, np.uint64)[0])


def init_batch(batch: Sequence[Item], classes: Sequence[str], init_root: Path | None,
               init_files: dict[str, list[str]] | None, size: int, mean, std, seed: int) -> torch.Tensor:
    if init_files is None:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(len(batch), 3, size, size, generator=gen)
    return torch.stack([pil_to_normalized(load_rgb(init_root / classes[c] / init_files[classes[c]][i]), mean, std,
                                          size) for c, i in batch])


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if isinstance(args.arch_path, list) and len(args.arch_path) == 1:
        args.arch_path = args.arch_path[0]  # one teacher: recorded as before
    if args.init is None:
        args.init = "real" if args.init_data_path else "noise"
    plan = check_args(args)
    check_output_dir(output_dir(args), "--syn-data-path" + ("/--exp-name" if args.exp_name else ""))
    if args.log_dir:
        check_output_dir(args.log_dir, "--log-dir")
    device = pick_device(args)
    if device.type == "cpu":
        keep_freed_memory()
    classes, init_files = resolve_classes(args)
    if args.num_classes is not None and args.num_classes != len(classes):
        raise UserError(f"--num-classes {args.num_classes} but the data has {len(classes)} class folders")
    check_class_count(get_dataset(args.dataset), len(classes), args.init_data_path or args.train_data_path or "")
    teachers, metas = load_teachers(args, classes, device)
    teachers = [prepare_teacher(t, channels_last=True) for t in teachers]
    teacher, meta = teachers[0], metas[0]
    precision = resolve_precision(device, args.amp)
    size = int(meta["input_size"])
    check_stage_sizes(args, size, teachers, metas, device)
    shas = [sha256_file(p) for p in teacher_paths(args)]
    class_stats = load_class_stats(args, teachers, shas, classes, device)
    mean, std = meta["mean"], meta["std"]
    cfg = LoopConfig(input_size=size, lr=args.lr, r_bn=args.r_bn, first_bn_multiplier=args.first_bn_multiplier,
                     jitter=args.jitter, easy2hard_mode=args.easy2hard_mode, milestone=args.milestone,
                     round_lr_reset=args.round_lr_reset, per_image_augment=args.per_image_augment,
                     amp=precision.enabled, amp_dtype=precision.name if precision.enabled else "bf16",
                     stage_sizes=tuple(args.stage_sizes or ()), residual_alpha=args.residual_alpha,
                     bn_match=args.bn_match, class_bn_weight=args.class_bn_weight if args.bn_match == "mix" else 0.5,
                     stats_momentum=args.stats_momentum)

    root = output_dir(args)
    check_output(root, STAGE, args.force, flag="--syn-data-path/--exp-name")
    unset = {k for k, d in OPTION_DEFAULTS.items() if getattr(args, k) == d}
    stats_shas = [sha256_file(f) for f in args.class_stats or ()]
    options = {"class_stats_sha256": stats_shas} if args.class_stats else {}
    settings = fingerprint(args, NOT_RESULT | unset, min_iterations=plan.min_iterations, input_size=size,
                           classes=list(classes), teacher_sha256=shas[0] if len(shas) == 1 else shas, **options,
                           init_files_sha256=init_files and hashlib.sha256(json.dumps(
                               [init_files[c] for c in classes]).encode()).hexdigest(),
                           amp=precision.name if precision.enabled else False)  # what ran: the images depend on it
    created = first_missing(root) if plan.num_shards == 1 else None  # what a failed first run would leave
    # shard 0 checks (and with --restart discards) the state; other shards attach to it
    out = OutputDir(root, RunState(root, STAGE, settings, restart=args.restart, check=plan.shard_index == 0))

    groups = plan_groups(len(classes), args.ipc, args.batch_size)
    if args.batch_size > args.ipc and args.batch_size % args.ipc:
        per = args.batch_size // args.ipc
        print(f"recover: --batch-size {args.batch_size} holds {per} whole class(es) of IPC {args.ipc} "
              f"({per * args.ipc} images) per batch", file=sys.stderr)
    rounds = (class_rounds(len(classes), args.iteration, args.round_iterations, plan.min_iterations, args.seed)
              if plan.early_late else None)

    def schedule_of(batch: Sequence[Item]) -> Schedule:
        if rounds is None:
            return uniform_schedule(len(batch), args.iteration, args.round_iterations)
        return early_late_schedule(batch, args.ipc, args.round_iterations, rounds)

    planned = sum(schedule_of(b).image_iterations for g in groups for b in g.batches)
    base = build_manifest(
        "recover", args, inputs={"teacher": teacher_paths(args)[0]}, settings=settings, output=str(out.root),
        classes=list(classes), method="early_late" if plan.early_late else "uniform",
        teacher_meta={k: meta.get(k) for k in ("arch", "num_classes", "input_size", "mean", "std", "val_top1",
                                                "teacher_kind", "ssl_method")},
        rounds_per_class=rounds, groups=[g.classes for g in groups],
        planned_image_iterations=planned, uniform_image_iterations=len(classes) * args.ipc * args.iteration,
        device=str(device), num_shards=plan.num_shards, **manifest_options(args, metas, shas, stats_shas))

    mine = shard_items(groups, plan.num_shards, plan.shard_index, index=lambda g: g.index)
    out.run.begin()  # every input is valid: from here on the run can be resumed
    out.clean_stale([classes[c] for g in mine for c in g.classes])
    todo = [g for g in mine if not all(out.is_done(classes[c]) for c in g.classes)]
    skipped = len(mine) - len(todo)
    out.update_manifest(base, classes)
    if skipped:
        print(f"recover: resuming {out.root}: {skipped} of {len(mine)} group(s) of this shard already done",
              file=sys.stderr)

    names = {c: output_names(init_files and init_files[classes[c]], args.ipc, c, args.save_format)
             for g in todo for c in g.classes}
    total_its = sum(schedule_of(b).total_iterations for g in todo for b in g.batches)
    shard_tag = f" shard {plan.shard_index}/{plan.num_shards}" if plan.num_shards > 1 else ""
    job = GroupJob(classes=list(classes), init_root=Path(args.init_data_path) if init_files is not None else None,
                   init_files=init_files, names=names, loop=cfg,
                   teacher=teacher if len(teachers) == 1 else teachers, size=size, mean=tuple(mean),
                   std=tuple(std), device=device, schedule_of=schedule_of, seed=args.seed, ipc=args.ipc,
                   save_format=args.save_format, log_dir=Path(args.log_dir) if args.log_dir else None,
                   curves=Curves(None, f"recover{shard_tag.replace(' ', '_').replace('/', 'of')}",
                                 wandb_project=args.wandb_project, config=settings), class_stats=class_stats)
    bar = tqdm(total=total_its, unit="it", desc=f"recover{shard_tag}", mininterval=2.0, dynamic_ncols=True)
    t_start = time.perf_counter()
    done_its = 0
    try:
        with bar_vanishes_on_error(bar):
            for g in todo:
                done_its += run_group(g, job, out, bar)
                out.update_manifest(base, classes)
    except BaseException:
        if not any(out.is_done(c) for c in classes):  # no work saved: leave nothing behind
            out.run.finish()
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        bar.close()
        job.curves.close()
    elapsed = time.perf_counter() - t_start
    manifest = out.update_manifest(base, classes)  # the shard completing the output removes the state
    rate = f", {done_its / elapsed:.1f} image-iterations/s" if done_its and elapsed > 0 else ""
    print(f"recover{shard_tag}: {sum(len(g.classes) for g in todo)} class(es) written to {out.root} in "
          f"{elapsed:.1f} s{rate}; {manifest['classes_done']}/{len(classes)} classes done ({manifest['status']})")
    return manifest


def manifest_options(args: argparse.Namespace, metas: Sequence[dict], shas: Sequence[str],
                     stats_shas: Sequence[str]) -> dict:
    """The manifest fields of the options past DELT (none for a plain run)."""
    out: dict = {}
    paths = teacher_paths(args)
    if len(paths) > 1:
        out["teachers"] = [{"path": str(p), "sha256": h, "arch": m.get("arch"), "val_top1": m.get("val_top1")}
                           for p, h, m in zip(paths, shas, metas)]
        out["teacher_rotation"] = "iteration it uses teacher it % n, restarted for every batch (FADRM+)"
    if args.stage_sizes:
        out["stage_sizes"] = list(args.stage_sizes)
        out["residual_alpha"] = args.residual_alpha
    if args.class_stats:
        out["class_stats"] = [{"path": str(f), "sha256": h} for f, h in zip(args.class_stats, stats_shas)]
    if args.bn_match != "global" or args.stats_momentum:
        out["bn_match"] = {"mode": args.bn_match, "class_bn_weight": args.class_bn_weight,
                           "stats_momentum": args.stats_momentum}
    return out


@dataclass(frozen=True)
class GroupJob:
    """Everything a group's optimisation needs, fixed for the whole run."""
    classes: list[str]
    init_root: Path | None                    # None: noise init
    init_files: dict[str, list[str]] | None   # per class, the first IPC init files (real init)
    names: dict[int, list[str]]               # per class index, the output file names
    teacher: torch.nn.Module | list  # one teacher, or several used in turn
    loop: LoopConfig
    size: int
    mean: tuple
    std: tuple
    device: torch.device
    schedule_of: Callable[[Sequence[Item]], Schedule]
    seed: int
    ipc: int
    save_format: str
    log_dir: Path | None = None  # each batch's loss curve as a TensorBoard run (common.train.curves)
    curves: Curves | None = None  # W&B: first and last loss of every batch
    class_stats: list | None = None  # per teacher, recover.losses.ClassStats (--bn-match class / mix)


def pick_device(args: argparse.Namespace) -> torch.device:
    """The shared setup's device (``cuda:LOCAL_RANK`` under torchrun); shards need no process group."""
    return init_distributed(device_spec(args), process_group=False, mute=False).device


def log_batch_curve(job: GroupJob, batch: Sequence[Item], losses: torch.Tensor) -> None:
    """The batch's loss per iteration under ``--log-dir`` (a redone batch replaces its curve), and
    its first and last loss to W&B."""
    c0, i0 = batch[0]
    if job.log_dir is not None:
        write_series(job.log_dir, f"batch_{job.classes[c0]}_{i0:04d}", "recover/loss", losses.tolist())
    if job.curves is not None:
        job.curves.log(c0 * job.ipc + i0, {"recover/loss_first": float(losses[0]),
                                             "recover/loss_last": float(losses[-1])})


def run_group(group: Group, job: GroupJob, out: OutputDir, bar) -> int:
    """Optimise one group's batches and swap its class folders in; returns image-iterations."""
    t0 = time.perf_counter()
    classes, init_files, names, mean, std, device = (job.classes, job.init_files, job.names, job.mean, job.std,
                                                     job.device)
    iterations = {c: [0] * job.ipc for c in group.classes}
    clipped = {c: [0.0] * job.ipc for c in group.classes}
    losses = []
    bounds = pixel_bounds(mean, std)
    bounds = (bounds[0].view(1, 3, 1, 1), bounds[1].view(1, 3, 1, 1))
    save_kwargs = {"quality": 75} if job.save_format == "jpg" else {}
    with contextlib.ExitStack() as stack:
        tmp = {c: stack.enter_context(atomic_dir(out.root / classes[c])) for c in group.classes}
        for batch in group.batches:
            seed = batch_seed(job.seed, batch[0])
            schedule = job.schedule_of(batch)
            x0 = init_batch(batch, classes, job.init_root, init_files, job.size, mean, std, seed).to(device)
            labels = torch.tensor([c for c, _ in batch], dtype=torch.long)
            first, last = classes[batch[0][0]], classes[batch[-1][0]]
            bar.set_postfix_str(first if first == last else f"{first}..{last}", refresh=False)
            try:
                result = recover_batch(job.teacher, x0, labels, schedule, job.loop, random.Random(seed), bounds,
                                       on_iteration=lambda it, n: bar.update(1),
                                       check_every=1 if device.type == "cpu" else 50,
                                       class_stats=job.class_stats)
            except NonFiniteLoss as exc:
                names_ = ", ".join(classes[c] for c in sorted({c for c, _ in batch})[:5])
                hint = (f"lower --r-bn (now {job.loop.r_bn:g}) or --first-bn-multiplier "
                        f"(now {job.loop.first_bn_multiplier:g})"
                        if exc.cause == "r_bn" else f"lower --lr (now {job.loop.lr:g})")
                raise UserError(f"non-finite loss at iteration {exc.iteration} of the batch holding class(es) "
                                f"{names_}: the optimisation diverged; {hint}; finished classes are kept in "
                                f"{out.root}") from None
            images = result.images.cpu()
            fractions = clipped_fraction(images, bounds).tolist()
            for pos, (c, i) in enumerate(batch):
                clipped[c][i] = fractions[pos]
                atomic_save_image(to_pil(images[pos], mean, std), tmp[c] / names[c][i], **save_kwargs)
                iterations[c][i] = schedule.iterations[pos]
            losses.append([float(result.losses[0]), float(result.losses[-1])])
            log_batch_curve(job, batch, result.losses)
    wall = time.perf_counter() - t0
    saturated = {classes[c]: sum(v) / len(v) for c, v in clipped.items() if sum(v) / len(v) > SATURATION_WARN}
    if saturated:
        worst = max(saturated.values())
        tqdm.write(f"warning: recover: {len(saturated)} class(es) ({', '.join(list(saturated)[:3])}"
              f"{' ...' if len(saturated) > 3 else ''}) have saturated images: up to {100 * worst:.0f}% of pixel "
              f"values clipped at the valid range; --lr {job.loop.lr:g} may be too high (see clipped_fraction in "
              f"{out.root / 'manifest.json'})", file=sys.stderr)  # above the progress bar
    group_its = sum(sum(v) for v in iterations.values())
    for c in group.classes:
        share = sum(iterations[c]) / group_its if group_its else 1.0 / len(group.classes)
        out.write_record(classes[c], {
            "label": c, "files": names[c], "init_files": init_files and init_files[classes[c]],
            "iterations": iterations[c], "wall_time_s": round(wall * share, 3),
            "clipped_fraction": round(sum(clipped[c]) / len(clipped[c]), 6),
            "saturated": sum(clipped[c]) / len(clipped[c]) > SATURATION_WARN,
            "group": group.index, "group_classes": len(group.classes), "group_wall_time_s": round(wall, 3),
            "loss_first_last": losses, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return group_its
