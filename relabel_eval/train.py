"""Student training and validation (the protocol and its flags are described in :mod:`relabel_eval.args`)."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from common.cli.errors import UserError
from common.cli.flags import device_spec
from common.cli.paths import check_output_dir, check_output_file
from common.compute.accel import compile_model
from common.compute.device import autocast
from common.compute.distributed import (
    broadcast_buffers,
    cleanup,
    init_distributed,
    reduce_metrics,
    sum_over_ranks,
    unwrap,
    wrap_ddp,
)
from common.run.atomic import atomic_torch_save, atomic_write_json
from common.run.manifest import build_manifest, sha256_file
from common.run.state import RunState, check_output, fingerprint, state_dir
from common.train.curves import Curves, epoch_scalars
from common.train.metrics import evaluate
from common.train.optim import SCHEDULER_KEY
from common.train.seed import item_seed, seed_everything
from models import build_model
from relabel_eval.args import get_args_parser  # the torch-free parser (python -m relabel_eval parses with it first)
from relabel_eval.context import (
    BatchMaker,
    Common,
    batch_size_for,
    default_output,
    first_arch_name,
    resolve_common,
    student_archs,
    teacher_inputs,
    teacher_logits,
    teacher_summary,
    warn_ignored,
)
from relabel_eval.data import ValSet
from relabel_eval.eval_protocols import EvalProtocol, get_protocol
from relabel_eval.mix import (
    LPQLD_STUDENT_TEMPERATURES,
    kd_loss,
    lpqld_temperature,
    mixed_ce,
    soft_label_loss,
    student_temperature_losses,
    target_lambda,
)
from relabel_eval.plan import make_epoch_plan
from relabel_eval.protocol import (
    adamw_lr_for,
    apply_bn_double_update,
    default_temperature,
    eval_epochs,
    make_optimizer,
    make_scheduler,
    released_special_case,
)
from relabel_eval.relabel import SoftLabelStore
from relabel_eval.results import append_results_csv, check_results_csv, summarize_runs, write_history_csv

STAGE = "relabel_eval"
# Arguments that do not change a run's result (besides common.run.state.NOT_RESULT); students and
# seeds are the units of work, each with its own done marker, so adding one does not restart the others.
NOT_RESULT = {"output", "results_csv", "log_dir", "seeds", "seed", "stud_name", "wandb_api_key", "wandb_project",
              "exp_name", "amp", "compile", "seed_parallel"}


@dataclass(frozen=True)
class TrainConfig:
    """What one student's training needs beyond the data: epochs, batch, optimiser, schedule, labels."""
    epochs: int
    batch_size: int
    lr: float
    temperature: float | None
    label_mode: str = "soft"
    eval_every: int = 10
    accum_steps: int = 1
    sgd: bool = False
    adamw_weight_decay: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    cos: bool = True
    compile: bool = False
    bn_double_update: bool = False
    kd_loss: str = "kl"            # kl | mse | mse+ce
    ce_weight: float = 0.0         # the CE term of mse+ce
    lr_stretch: float = 1.0        # schedule computed over lr_stretch x epochs
    ema_decay: float = 0.0         # 0: no EMA weights
    temperature_schedule: str = "none"  # none | lpqld

    def temperature_at(self, epoch: int) -> float | None:
        if self.temperature_schedule == "lpqld":
            return lpqld_temperature(epoch)
        return self.temperature

    @property
    def calibrates_student_temperature(self) -> bool:
        """LPQLD's calibrated alignment: the student's KD temperature starts at 1 and is refitted after every
        epoch (its released scripts' ``--temp_stu_dynamic 1.0``); KL losses only."""
        return self.temperature_schedule == "lpqld" and self.kd_loss == "kl" and self.label_mode != "hard"


class OnlineTeacher:
    def __init__(self, common: Common):
        self.common = common

    def __call__(self, b: int, xm: torch.Tensor) -> torch.Tensor:
        return teacher_logits(self.common.teacher, xm, self.common.device, self.common.amp)


class StoredLogits:
    def __init__(self, logits: torch.Tensor, plan, device: torch.device, maker: BatchMaker | None = None):
        if device.type == "cuda":  # page-locked, so each batch's copy overlaps the student's compute
            logits = logits.pin_memory()
        self.logits, self.plan, self.device, self.maker = logits, plan, device, maker

    def __call__(self, b: int, xm: torch.Tensor) -> torch.Tensor:
        logits = self.logits[self.plan.batch_slice(b)]
        if self.maker is not None and self.maker.world_size > 1:  # this process's rows of the batch
            logits = logits[torch.from_numpy(self.maker.own_rows(self.plan, b)[0])]
        return logits.to(self.device, non_blocking=True)


def train_one_epoch(student, maker: BatchMaker, plan, targets: Callable | None, optimizer, scaler,
                    temperature: float, accum_steps: int = 1, loss_kind: str = "kl", ce_weight: float = 0.0,
                    after_step: Callable[[], None] | None = None, student_temperature: float | None = None,
                    calibrate: bool = False) -> dict:
    """One epoch; ``targets(b, mixed_x)`` gives teacher logits (soft / fkd) or is None (hard labels).

    Train accuracy comes from the training forward on the mixed batch (no extra forward).
    Under DDP (``maker.world_size > 1``) each process's loss is weighted so that the averaged
    gradient is the whole batch's; loss and accuracy are summed over processes.
    A non-finite loss is recorded (first batch, and whether the teacher's logits were to blame)
    without a per-batch device sync; the caller stops the run on it.
    ``student_temperature``: the student's side of the KL (default: ``temperature``); ``calibrate``: also
    return ``student_temperature_next``, LPQLD's refit of it on the epoch's last batch (the candidate of
    ``LPQLD_STUDENT_TEMPERATURES`` with the lowest KL, summed over processes).
    ``loss_kind``: the soft-label loss (``relabel_eval.mix.soft_label_loss``); ``after_step()`` runs after
    every optimiser step (the EMA update).
    """
    common = maker.common
    distributed = maker.world_size > 1
    student.train()
    dev, S = common.device, common.aug.input_size
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    n, last = 0, plan.num_batches - 1
    calib = None  # per candidate student temperature, the summed KL of the last batch (calibrate)
    first_bad = torch.full((), -1, device=dev, dtype=torch.long)
    teacher_bad = torch.zeros((), device=dev, dtype=torch.bool)
    optimizer.zero_grad(set_to_none=True)
    for b, xm, y, mix in maker.batches(plan):
        with autocast(dev, common.amp):
            out = student(xm)
        if targets is None:
            loss = mixed_ce(out, y, mix, target_lambda(mix, S, S))
        else:
            t = targets(b, xm)
            teacher_bad |= ~torch.isfinite(t).all()
            if loss_kind == "kl":
                loss = kd_loss(out, t, temperature, student_temperature)
                if calibrate and b == last:
                    calib = student_temperature_losses(out, t, temperature)
            else:
                loss = soft_label_loss(loss_kind, out, t, temperature, y, mix, target_lambda(mix, S, S), ce_weight)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), b, first_bad)
        weight = maker.own_rows(plan, b)[1] if distributed else 1.0
        scaler.scale(loss * (weight / accum_steps) if distributed else loss / accum_steps).backward()
        if (b + 1) % accum_steps == 0 or b == last:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step()
        if weight == 0.0:  # a padding row (this process had no share of a short last batch)
            continue
        loss_sum += loss.detach() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        n += len(y)
    loss_sum, correct = float(loss_sum), float(correct)
    bad, teacher_nonfinite = int(first_bad), bool(teacher_bad)
    if distributed:  # a process that saw a non-finite loss stops them all
        loss_sum, correct, n, any_bad, any_teacher = sum_over_ranks(loss_sum, correct, n, float(bad >= 0),
                                                                    float(teacher_nonfinite))
        bad = bad if bad >= 0 else (0 if any_bad else -1)
        teacher_nonfinite = any_teacher > 0
    res = {"loss": loss_sum / max(n, 1), "train_top1_mixed": 100.0 * correct / max(n, 1), "images": int(n),
           "nonfinite_batch": None if bad < 0 else bad, "teacher_nonfinite": teacher_nonfinite}
    if calibrate:
        k = len(LPQLD_STUDENT_TEMPERATURES)
        kl = calib.double().cpu().tolist() if calib is not None else [0.0] * k
        if distributed:  # the whole last batch's KL: every process refits to the same value
            kl = sum_over_ranks(*kl)
        best = min(range(k), key=lambda i: (kl[i], i))
        res["student_temperature_next"] = LPQLD_STUDENT_TEMPERATURES[best]
    return res


def diverged_error(stud_name: str, seed: int, epoch: int, stats: dict, label_mode: str, sgd: bool,
                   lr: float) -> UserError:
    """The one line for a non-finite loss: where, and which flag to look at."""
    if stats["teacher_nonfinite"]:
        cause = ("the stored soft labels hold non-finite logits (check --soft-label-dir)" if label_mode == "fkd"
                 else "the teacher gives non-finite logits (check --teacher-path)")
    else:
        flag = "--learning-rate (with --sgd)" if sgd else "--adamw-lr"
        cause = f"the training diverged; lower {flag} (now {lr:g})"
    return UserError(f"student {stud_name} seed {seed}: non-finite training loss at epoch {epoch + 1}, "
                     f"batch {stats['nonfinite_batch'] + 1}: {cause}; no result was written")


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def train_student(common: Common, maker: BatchMaker, val: ValSet, stud_name: str, seed: int, cfg: TrainConfig,
                  state_path: Path | None = None, log_csv: Path | None = None, store: SoftLabelStore | None = None,
                  on_epoch_end: Callable[[int], None] | None = None,
                  curves_from: Callable[[int], Curves] | None = None) -> tuple[dict, torch.nn.Module]:
    """Train one student with one seed; resumes from ``state_path`` when it exists. ``curves_from(first
    epoch)`` opens the run's curves (TensorBoard/W&B), dropping what a killed run logged past its checkpoint.

    Returns the run's results (final and best accuracy, timings, history) and the trained student.
    """
    dev, E = common.device, cfg.epochs
    rank, world = maker.rank, maker.world_size  # world 1 unless DDP under torchrun
    student, optimizer, scheduler, scaler = new_student(common, stud_name, seed, cfg)
    ema = new_ema(student, cfg.ema_decay)
    start, history, train_time = 0, [], 0.0
    if state_path is not None and state_path.is_file():
        start, history, train_time = load_progress(state_path, student, optimizer, scheduler, scaler, ema)
    curves = curves_from(start + 1) if curves_from is not None else Curves(None, "", main=False)
    evals = set(eval_epochs(E, cfg.eval_every))
    online = OnlineTeacher(common) if cfg.label_mode == "soft" else None
    bar = tqdm(range(start, E), desc=f"{stud_name} seed {seed}", leave=False,
               initial=start, total=E, dynamic_ncols=True)
    net = wrap_ddp(student) if world > 1 else student
    fast_student = compile_model(student, cfg.compile, "student")  # same parameters as ``student``
    fast_net = compile_model(net, cfg.compile, "student") if world > 1 else fast_student
    for epoch in bar:
        if world > 1:  # dropout & co: a function of (seed, epoch, rank), so resume is exact
            torch.manual_seed(item_seed(seed, epoch, rank))
        if store is not None:  # the stored epoch, or (pruned labels) the records drawn for it
            plan, logits = store.epoch(epoch, seed)
            targets = StoredLogits(logits, plan, dev, maker)
        else:
            plan = make_epoch_plan(seed, epoch, common.data.sizes, cfg.batch_size, common.aug)
            targets = online
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        student_t = None
        if cfg.calibrates_student_temperature:  # 1 at first, then the refit after the previous epoch
            student_t = history[-1]["student_temperature_next"] if history else 1.0
        stats = train_one_epoch(fast_net, maker, plan, targets, optimizer, scaler, cfg.temperature_at(epoch),
                                cfg.accum_steps, cfg.kd_loss, cfg.ce_weight,
                                None if ema is None else functools.partial(ema.update_parameters, student),
                                student_temperature=student_t, calibrate=cfg.calibrates_student_temperature)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if stats["nonfinite_batch"] is not None:
            raise diverged_error(stud_name, seed, epoch, stats, cfg.label_mode, cfg.sgd, cfg.lr)
        dt = time.perf_counter() - t0
        train_time += dt
        scheduler.step()
        rec = {"epoch": epoch + 1, "lr": lr, "loss": stats["loss"], "train_top1_mixed": stats["train_top1_mixed"],
               "epoch_time_s": dt, "images_per_s": stats["images"] / dt if dt > 0 else None}
        if student_t is not None:  # LPQLD: the student temperature this epoch used, and its refit
            rec.update(student_temperature=student_t, student_temperature_next=stats["student_temperature_next"])
        if epoch in evals:
            rec.update(validate(student, fast_student, val, common, rank, world))
            if ema is not None:
                live = ema_for_validation(ema, student)
                rec.update({f"ema_{k}": v for k, v in validate(live, live, val, common, rank, world).items()})
            bar.set_postfix(loss=f"{stats['loss']:.3f}", top1=f"{rec['val_top1']:.2f}")
        history.append(rec)
        curves.log(epoch + 1, epoch_scalars(rec))
        if (epoch in evals or epoch == E - 1) and rank == 0:
            if state_path is not None:
                save_progress(state_path, student, optimizer, scheduler, scaler, epoch, history, train_time, ema)
            if log_csv is not None:
                write_history_csv(history, log_csv)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    curves.close()
    return run_summary(stud_name, seed, E, history, train_time), unwrap(net)


def new_student(common: Common, stud_name: str, seed: int, cfg: TrainConfig) -> tuple:
    """A fresh student (its initial weights a function of ``seed``), its optimiser, schedule and GradScaler."""
    seed_everything(seed)
    student = build_model(stud_name, common.num_classes, common.input_size)
    if cfg.bn_double_update:
        apply_bn_double_update(student)
    student = student.to(common.device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(student, cfg.sgd, cfg.lr, cfg.adamw_weight_decay, cfg.lr, cfg.momentum,
                               cfg.weight_decay)
    # --lr-stretch S: the schedule of S x epochs, of which the first epochs are run (1: today's, unchanged)
    scheduler = make_scheduler(optimizer, cfg.epochs if cfg.lr_stretch == 1 else cfg.epochs * cfg.lr_stretch, cfg.cos)
    scaler = common.precision.grad_scaler()  # enabled only for fp16 (GPUs without bf16)
    return student, optimizer, scheduler, scaler


def new_ema(student, decay: float):
    """An EMA of the student's parameters (``torch.optim.swa_utils``), or None for decay 0. Its BN buffers are
    not averaged: :func:`ema_for_validation` gives it the student's live ones, as EDC swaps its EMA parameters
    into the live model to validate."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


@torch.no_grad()
def ema_for_validation(ema, student) -> torch.nn.Module:
    """The EMA's module with the student's current buffers (BN running statistics) copied in."""
    for mine, live in zip(ema.module.buffers(), student.buffers()):
        mine.copy_(live)
    return ema.module


def save_progress(state_path: Path, student, optimizer, scheduler, scaler, epoch: int, history: list[dict],
                  train_time: float, ema=None) -> None:
    """The student's checkpoint after ``epoch``: weights, optimiser, schedule, scaler, RNG, history (EMA)."""
    st = {"model": student.state_dict(), "optimizer": optimizer.state_dict(),
          SCHEDULER_KEY: scheduler.state_dict(), "scaler": scaler.state_dict(),
          "rng": _rng_state(), "epoch": epoch + 1, "history": json.dumps(history), "train_time": train_time}
    if ema is not None:
        st["ema"] = ema.state_dict()
    atomic_torch_save(st, state_path)


def load_progress(state_path: Path, student, optimizer, scheduler, scaler, ema=None) -> tuple[int, list[dict], float]:
    """Load :func:`save_progress`'s checkpoint: ``(first epoch to run, history, training seconds so far)``."""
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    student.load_state_dict(st["model"])
    if ema is not None:
        ema.load_state_dict(st["ema"])
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st[SCHEDULER_KEY])
    scaler.load_state_dict(st["scaler"])
    _set_rng_state(st["rng"])
    return int(st["epoch"]), json.loads(st["history"]), float(st["train_time"])


def validate(student, fast_student, val: ValSet, common: Common, rank: int, world: int) -> dict:
    """Top-1 and top-5 on the validation images (each process validates every world-th image)."""
    if world > 1:
        broadcast_buffers(student)  # rank 0's BatchNorm statistics are validated and saved
    res = evaluate(fast_student, val.batches(rank, world), common.device, common.amp)
    if world > 1:
        res = reduce_metrics(res)
    return {"val_top1": res["top1"], "val_top5": res["top5"]}


def run_summary(stud_name: str, seed: int, epochs: int, history: list[dict], train_time: float) -> dict:
    """One run's result: final and best validated accuracy, timings and the history."""
    evaluated = [h for h in history if "val_top1" in h]
    final = evaluated[-1]
    best = max(evaluated, key=lambda h: h["val_top1"])
    images = sum(h["images_per_s"] * h["epoch_time_s"] for h in history if h["images_per_s"])
    out = {"student": stud_name, "seed": seed, "final_top1": final["val_top1"], "final_top5": final["val_top5"],
           "best_top1": best["val_top1"], "best_top1_epoch": best["epoch"], "epochs": epochs,
           "train_time_s": train_time, "images_per_s": images / train_time if train_time > 0 else None,
           "history": history}
    if "ema_val_top1" in final:  # --ema-decay: the EMA weights' accuracy beside the weights'
        out.update(final_ema_top1=final["ema_val_top1"], final_ema_top5=final["ema_val_top5"],
                   best_ema_top1=max(h["ema_val_top1"] for h in evaluated))
    return out


def recovery_teacher(syn_data_path) -> dict | None:
    """The teacher that recovered the distilled set (from recover's manifest.json beside the images), so
    a result records both teachers when soft labels come from another one (SC-DD: SSL vs supervised)."""
    from common.run.manifest import read_manifest

    m = read_manifest(Path(syn_data_path)) if Path(syn_data_path).is_dir() else None
    if not m or m.get("stage") != "recover":
        return None
    return {**(m.get("inputs", {}).get("teacher") or {}), **(m.get("teacher_meta") or {})}


def _wait_for(done: Path, poll_s: float = 2.0) -> dict:
    """Rank 0 (``--seed-parallel ranks``): the results another process writes for its seed."""
    while not done.is_file():
        time.sleep(poll_s)
    return json.loads(done.read_text())


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.protocol == "pad":  # PAD's own loop: learned labels and lr, DSA, no teacher
        from relabel_eval.pad_protocol import run as run_pad

        return run_pad(args)
    # the output locations, before any work (not after hours of training)
    output = check_output_file(args.output or default_output(args.syn_data_path, args.label_mode), "--output")
    check_output(output, STAGE, args.force, kind="file", flag="--output")
    check_results_csv(check_output_file(args.results_csv or output.parent / "results.csv", "--results-csv"),
                      args.force)
    check_output_dir(state_dir(output), "--output")
    if args.log_dir:
        check_output_dir(args.log_dir, "--log-dir")
    if args.wandb_api_key:  # the released scripts' flag: W&B reads its key from the environment
        os.environ.setdefault("WANDB_API_KEY", args.wandb_api_key)
    ctx = init_distributed(device_spec(args))  # under torchrun each process takes its local rank's GPU
    try:
        if ctx.distributed:
            args.device, args.gpu_device = str(ctx.device), None
        return run(args, ctx)  # the run state removes itself when nothing was done (common.run.state)
    finally:
        cleanup()


@dataclass
class EvalSetup:
    """What relabel_eval resolves from its flags before training: data and teacher, soft labels, students
    and seeds, the labels' temperature, the protocol, and where the results go."""
    common: Common
    store: SoftLabelStore | None
    students: list[str]
    seeds: list[int]
    temperature: float | None
    protocol: EvalProtocol
    bn_double: bool
    output: Path
    results_csv: Path
    ddp: bool  # every seed trained by all processes (DDP), rather than whole seeds per process


def run(args: argparse.Namespace, ctx) -> dict:
    """Resolve the setup, train every (student, seed) not done yet, then write the result and its CSV row."""
    setup = resolve_setup(args, ctx)
    common = setup.common
    fp = fingerprint(args, NOT_RESULT)
    if setup.ddp:
        fp["world_size"] = ctx.world_size  # a DDP run is reproducible for its number of processes
    # the main process checks the run state beside --output (the others wait for it); state.running() opens it
    state = RunState(setup.output, STAGE, fp, restart=args.restart, check=ctx.is_main)

    val = ValSet(args.val_dir, common.data.classes, common.input_size, common.mean, common.std, args.val_ipc,
                 common.workers, pin_memory=common.device.type == "cuda")
    if args.compile and common.teacher is not None:
        common.teacher = compile_model(common.teacher, True, "teacher")
    maker = BatchMaker(common, ctx.rank, ctx.world_size) if setup.ddp else BatchMaker(common)
    _print_setup(args, ctx, setup, val)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    configs = {stud: student_config(args, setup, stud) for stud in setup.students}
    train_all(args, ctx, setup, state, maker, val, configs)
    if not ctx.is_main:
        return {}
    per_student = {stud: student_summary(args, setup, state, stud, configs[stud]) for stud in setup.students}
    result = result_record(args, ctx, setup, val, per_student, started)
    atomic_write_json(setup.output, result)
    append_results_csv(setup.results_csv, result, setup.output, force=args.force)
    state.finish()
    print(f"results: {setup.output} (table: {setup.results_csv})")
    return result


def _soft_label_store(args: argparse.Namespace) -> SoftLabelStore | None:
    """``--label-mode fkd``'s stored soft labels (and the IPC they were made for); None for the other modes."""
    if args.label_mode != "fkd":
        if args.soft_label_dir:
            raise UserError("--soft-label-dir is only used with --label-mode fkd")
        return None
    if not args.soft_label_dir:
        raise UserError("--label-mode fkd needs --soft-label-dir (made by python -m relabel_eval.relabel)")
    store = SoftLabelStore(args.soft_label_dir)
    if args.ipc is None:
        args.ipc = int(store.manifest["ipc"])
    if args.re_epochs > store.epochs:
        raise UserError(f"--re-epochs {args.re_epochs} but {args.soft_label_dir} holds {store.epochs} epochs "
                        f"of soft labels")
    return store


def resolve_setup(args: argparse.Namespace, ctx) -> EvalSetup:
    """Check the flags against each other and the data; every refusal comes before any training."""
    warn_ignored(args)
    if args.re_epochs < 1:
        raise UserError("--re-epochs must be at least 1")
    if args.re_accum_steps < 1:
        raise UserError("--re-accum-steps must be at least 1")
    store = _soft_label_store(args)
    hint = args.stud_name[0].split(",")[0] if args.stud_name else first_arch_name(args)
    common = resolve_common(args, need_teacher=args.label_mode == "soft",
                            stored=store.manifest if store else None, student_hint=hint)
    if store is not None:
        store.check(common.data)
    students = student_archs(args.stud_name, common.teacher_meta.get("arch")
                             or (store.manifest["teacher_arch"] if store else None) or first_arch_name(args))
    seeds = args.seeds or [args.seed]
    if any(s < 0 for s in seeds):
        raise UserError("--seeds must be non-negative")
    if len(set(seeds)) != len(seeds):
        raise UserError("--seeds has duplicates")
    temperature = None if args.label_mode == "hard" else args.temperature or default_temperature(common.aug.mix_type)
    protocol = get_protocol(args.protocol)
    resolve_recipe(args, protocol, store)
    bn_double = protocol.bn_double_update if args.bn_double_update is None else bool(args.bn_double_update)
    output = Path(args.output) if args.output else default_output(args.syn_data_path, args.label_mode)
    results_csv = Path(args.results_csv) if args.results_csv else output.parent / "results.csv"
    # the output was checked in main(), before any work
    return EvalSetup(common, store, students, seeds, temperature, protocol, bn_double, output, results_csv,
                     ddp=ctx.distributed and args.seed_parallel == "ddp")


def resolve_recipe(args: argparse.Namespace, protocol: EvalProtocol, store: SoftLabelStore | None) -> None:
    """--kd-loss, --ce-weight, --lr-stretch, --ema-decay: the flag, else the protocol's; checked together."""
    given = {key for key in ("kd_loss", "ce_weight", "lr_stretch", "ema_decay") if getattr(args, key, None) is not None}
    for key in ("kd_loss", "ce_weight", "lr_stretch", "ema_decay"):
        if key not in given:
            setattr(args, key, getattr(protocol, key))
    if args.label_mode == "hard" and "kd_loss" in given:
        raise UserError(f"--kd-loss {args.kd_loss}: --label-mode hard has no soft labels (drop the flag)")
    if "ce_weight" in given and args.ce_weight and args.kd_loss != "mse+ce":
        raise UserError(f"--ce-weight {args.ce_weight:g} only applies with --kd-loss mse+ce")
    if store is not None and int(store.manifest.get("topk") or 0) and args.kd_loss != "kl" \
            and args.label_mode != "hard":
        raise UserError(f"--kd-loss {args.kd_loss}: the soft labels in {args.soft_label_dir} keep only the top "
                        f"{store.manifest['topk']} logits (no MSE target for the others); use --kd-loss kl")
    teacher_flags = args.teacher_paths or args.teacher_weights or args.teacher_mode != "eval"
    if args.label_mode != "soft" and teacher_flags:
        raise UserError(f"--teacher-path (several) / --teacher-weights / --teacher-mode make online soft labels; "
                        f"with --label-mode {args.label_mode} give them to python -m relabel_eval.relabel instead")


def _print_setup(args: argparse.Namespace, ctx, setup: EvalSetup, val: ValSet) -> None:
    common, data = setup.common, setup.common.data
    print(f"distilled set {args.syn_data_path}: {len(data)} images, {common.num_classes} classes, IPC {data.ipc}; "
          f"val {len(val)} images; input {common.input_size}; labels: {args.label_mode}; device {common.device}"
          f" ({common.precision.name}); workers {common.workers}", file=sys.stderr, flush=True)
    if ctx.distributed:
        print(f"torchrun: {ctx.world_size} processes ({ctx.backend}); "
              + ("each seed trained by all of them (DDP); the batch below is the global batch, "
                 f"1/{ctx.world_size} of it per process" if setup.ddp else
                 "each process trains whole seeds (--seed-parallel ranks)"), file=sys.stderr, flush=True)


def student_config(args: argparse.Namespace, setup: EvalSetup, stud: str) -> tuple:
    """``(batch, its source, lr, its source, TrainConfig)`` of one student, printed as one line."""
    common, store, temperature, bn_double = setup.common, setup.store, setup.temperature, setup.bn_double
    lr, lr_source = (args.learning_rate, "flag (sgd)") if args.sgd else \
        ((args.adamw_lr, "flag") if args.adamw_lr > 0 else adamw_lr_for(stud))
    special = released_special_case(common.spec.name, first_arch_name(args) or common.teacher_meta.get("arch"), stud)
    if not args.sgd and args.adamw_lr <= 0 and "adamw_lr" in special:
        lr, lr_source = special["adamw_lr"], "released special case"
    if store is not None:
        bs, bs_source = int(store.manifest["batch_size"]), "soft labels"
    else:
        bs, bs_source = batch_size_for(args, common, stud)
    cfg = TrainConfig(epochs=args.re_epochs, batch_size=bs, lr=lr, temperature=temperature,
                      label_mode=args.label_mode, eval_every=args.eval_every, accum_steps=args.re_accum_steps,
                      sgd=args.sgd, adamw_weight_decay=args.adamw_weight_decay, momentum=args.momentum,
                      weight_decay=args.weight_decay, cos=args.cos, compile=args.compile,
                      bn_double_update=bn_double, kd_loss=args.kd_loss if args.label_mode != "hard" else "kl",
                      ce_weight=args.ce_weight, lr_stretch=args.lr_stretch, ema_decay=args.ema_decay,
                      temperature_schedule=args.label_temperature_schedule if args.label_mode != "hard" else "none")
    print(f"student {stud}: batch {bs} ({bs_source}), lr {lr:g} ({lr_source}), "
          f"{'SGD' if args.sgd else 'AdamW'}, {f'T {temperature:g}' if temperature else 'hard labels'}, "
          f"{args.re_epochs} epochs, seeds {setup.seeds}; protocol {setup.protocol.name}, BN momentum "
          f"{'0.19 (double update, as released)' if bn_double else '0.1 (--no-bn-double-update)'}"
          + (f"; loss {cfg.kd_loss}" + (f" (CE weight {cfg.ce_weight:g})" if cfg.kd_loss == "mse+ce" else "")
             if args.label_mode != "hard" else "")
          + (f"; lr schedule over {cfg.lr_stretch:g} x {cfg.epochs} epochs" if cfg.lr_stretch != 1 else "")
          + (f"; EMA {cfg.ema_decay:g}" if cfg.ema_decay else "")
          + ("; T 20 x 0.7^(epoch // 30), min 2 (lpqld)" if cfg.temperature_schedule == "lpqld" else ""),
          file=sys.stderr, flush=True)
    return bs, bs_source, lr, lr_source, cfg


def train_all(args: argparse.Namespace, ctx, setup: EvalSetup, state: RunState, maker: BatchMaker, val: ValSet,
              configs: dict) -> None:
    """Train this process's (student, seed) runs that are not done yet: all of them (one process, or DDP),
    or every world-th (``--seed-parallel ranks``); each finished run is marked done in the run state."""
    pairs = [(stud, seed) for stud in setup.students for seed in setup.seeds]
    with state.running():  # a failure before the first checkpoint leaves no state behind
        for i, (stud, seed) in enumerate(pairs):
            if ctx.distributed and not setup.ddp and i % ctx.world_size != ctx.rank:
                continue
            tag = f"{stud}_seed{seed}"
            if state.done(tag) is not None:
                print(f"  {stud} seed {seed}: already done (resumed call)", file=sys.stderr)
                continue
            log_csv = Path(args.log_dir) / f"{setup.output.stem}_{tag}.csv" if args.log_dir else None
            curves_from = functools.partial(open_curves, args, f"{setup.output.stem}_{tag}",
                                            {"student": stud, "seed": seed, **state.fingerprint}, maker.rank == 0)
            run, _ = train_student(setup.common, maker, val, stud, seed, configs[stud][4], state.path(f"{tag}.pt"),
                                   log_csv, setup.store, curves_from=curves_from)
            if maker.rank == 0:  # the one writer of this run
                state.mark_done(tag, run)
                state.path(f"{tag}.pt").unlink(missing_ok=True)


def open_curves(args: argparse.Namespace, name: str, config: dict, main: bool, first_epoch: int) -> Curves:
    """One run's curves under ``--log-dir`` (and W&B), from ``first_epoch`` on."""
    return Curves(args.log_dir, name, wandb_project=args.wandb_project, purge_step=first_epoch, config=config,
                  main=main)


def student_summary(args: argparse.Namespace, setup: EvalSetup, state: RunState, stud: str, config: tuple) -> dict:
    """One student's runs (each seed's, waiting for those other processes train) and their mean and spread."""
    bs, bs_source, lr, lr_source, _ = config
    runs = []
    for seed in setup.seeds:
        run = _wait_for(state.marker(f"{stud}_seed{seed}"))
        runs.append(run)
        print(f"  {stud} seed {seed}: FINAL top-1 {run['final_top1']:.2f} (top-5 {run['final_top5']:.2f}) | "
              f"best top-1 during training {run['best_top1']:.2f} @ epoch {run['best_top1_epoch']} | "
              f"{run['train_time_s']:.1f} s, {run['images_per_s']:.0f} img/s", file=sys.stderr, flush=True)
    summary = summarize_runs(runs)
    if all("final_ema_top1" in r for r in runs):
        from relabel_eval.protocol import mean_std

        m, sd = mean_std(r["final_ema_top1"] for r in runs)
        summary.update(final_ema_top1_mean=m, final_ema_top1_std=sd)
    print(f"{stud} [{args.label_mode} labels, {len(setup.seeds)} seed(s)]: FINAL top-1 "
          f"{summary['final_top1_mean']:.2f} +- {summary['final_top1_std']:.2f} "
          f"(top-5 {summary['final_top5_mean']:.2f}); best during training {summary['best_top1_mean']:.2f} "
          f"+- {summary['best_top1_std']:.2f}", flush=True)
    if "final_ema_top1_mean" in summary:
        print(f"{stud} [EMA weights, decay {config[4].ema_decay:g}]: FINAL top-1 {summary['final_ema_top1_mean']:.2f} "
              f"+- {summary['final_ema_top1_std']:.2f}", flush=True)
    return {"batch_size": bs, "batch_size_source": bs_source, "lr": lr, "lr_source": lr_source,
            "summary": summary, "runs": runs}


def result_record(args: argparse.Namespace, ctx, setup: EvalSetup, val: ValSet, per_student: dict,
                  started: str) -> dict:
    """The results JSON: data, teachers, protocol, each student's runs and the manifest."""
    common, data, protocol, bn_double = setup.common, setup.common.data, setup.protocol, setup.bn_double
    teacher_info = None
    if args.teacher_path:
        teacher_info = {"path": str(args.teacher_path), "sha256": sha256_file(args.teacher_path),
                        "arch": common.teacher_meta.get("arch"), "val_top1": common.teacher_meta.get("val_top1")}
    return {
        "stage": STAGE, "name": args.exp_name or setup.output.stem, "syn_data_path": str(args.syn_data_path),
        "recovery_teacher": recovery_teacher(args.syn_data_path),
        "val_dir": str(args.val_dir), "label_mode": args.label_mode, "soft_label_dir": args.soft_label_dir,
        "num_images": len(data), "num_classes": common.num_classes, "ipc": data.ipc, "val_images": len(val),
        "input_size": common.input_size, "mean": list(common.mean), "std": list(common.std),
        "teacher": teacher_info, "seeds": setup.seeds,
        "protocol": {"name": protocol.name, "source": protocol.source, "factor": args.factor
                     if protocol.needs_factor else None, "bn_double_update": bn_double,
                     "bn_momentum": "1-(1-m)^2 (0.19 for 0.1)" if bn_double else "model default (0.1)",
                     "epochs": args.re_epochs, "temperature": setup.temperature, "aug": common.aug.to_dict(),
                     "optimizer": "sgd" if args.sgd else "adamw", "cos": args.cos, "eval_every": args.eval_every,
                     "accum_steps": args.re_accum_steps, "device": str(common.device), "amp": common.amp,
                     "precision": common.precision.name, "processes": ctx.world_size,
                     "seed_parallel": args.seed_parallel if ctx.distributed else None,
                     "kd_loss": args.kd_loss if args.label_mode != "hard" else None, "ce_weight": args.ce_weight,
                     "lr_stretch": args.lr_stretch, "ema_decay": args.ema_decay,
                     "temperature_schedule": args.label_temperature_schedule,
                     "labels": teacher_summary(args) if args.label_mode == "soft" else
                     (setup.store.manifest.get("teacher") if setup.store is not None else None)},
        "headline": "final_top1 (accuracy after the last epoch); best_top1 is the best seen during training",
        "students": per_student,
        "manifest": build_manifest(STAGE, args, inputs=teacher_inputs(args), started=started,
                                   finished=time.strftime("%Y-%m-%dT%H:%M:%S%z")),
    }
