"""``relabel_eval --protocol pad``: the MTT/DATM/PAD evaluation (released ``evaluate_synset``).

The student (default: the instance-norm ConvNet of the experts) trains on the distilled
set (its first ``--ipc`` images per class, sorted by name, when given; a class with fewer
images is refused) held as one tensor for ``--re-epochs`` + 1 epochs (the released loop
runs ``range(Epoch + 1)``), batch 128 (``--re-batch-size`` 0), SGD momentum 0.9,
weight decay 5e-4, DSA on every batch, with:
- targets: the learned soft labels (``<set>.labels.pt`` beside the set, logits whose
  softmax is the target; the released SoftCrossEntropy), or hard labels
  (``--label-mode hard``, or a set without ``labels.pt`` such as DELT's);
- lr: the learned lr (``<set>.lr.pt``), else ``--learning-rate``; divided by 10 after
  epoch ``re_epochs // 2 + 1`` with a fresh optimiser (the released code rebuilds
  SGD there, so momentum restarts);
- ZCA: with ``--zca FILE`` (the experts' ``zca.pt``) the images are whitened as the
  experts saw them, and the val images alike.
The result is the hard-label top-1 on ``--val-dir`` after the last epoch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAD_WEIGHT_DECAY = 5e-4
PAD_MOMENTUM = 0.9
PAD_BATCH = 128
SOURCE = "NUS-HPC-AI-Lab/PAD utils/utils_baseline.py evaluate_synset"


def decay_epoch(epochs: int) -> int:
    """The epoch after which the released loop divides the lr by 10."""
    return epochs // 2 + 1


def lr_schedule(epochs: int, lr: float) -> list[float]:
    """The lr of each of the ``epochs + 1`` training epochs."""
    return [lr if ep <= decay_epoch(epochs) else lr * 0.1 for ep in range(epochs + 1)]


def require_ipc(root: Path, ipc: int | None, what: str = "--syn-data-path") -> dict[str, int]:
    """Images per class of an ImageFolder; one line for an empty class or one with fewer than ``ipc``."""
    from common.cli.errors import UserError
    from common.data.imagefolder import find_classes, list_class_files

    counts = {c: len(list_class_files(root / c)) for c in find_classes(root, what)}
    for cls, n in counts.items():
        if n == 0:
            raise UserError(f"{root / cls}: class folder of {what} has no images")
        if ipc and n < ipc:
            raise UserError(f"{what} {root}: class {cls} holds {n} image(s), fewer than --ipc {ipc}; "
                            f"pass --ipc {min(counts.values())} or less")
    return counts


def read_soft_labels(path: Path, num_classes: int) -> dict:
    """``<set>.labels.pt``: weights-only, ``labels`` a finite [N, classes] tensor and ``paths`` N names."""
    import torch

    from common.run.safe_load import require, safe_torch_load

    what, fix = "soft-label file", "use the labels.pt written with the set, or --label-mode hard"
    d = safe_torch_load(path, what=what, advice=fix)
    labels = d.get("labels") if isinstance(d, dict) else None
    paths = d.get("paths") if isinstance(d, dict) else None
    require(isinstance(labels, torch.Tensor) and labels.ndim == 2 and isinstance(paths, list)
            and len(paths) == len(labels) and all(isinstance(p, str) for p in paths), path, what,
            "is not a soft-label file (expected 'labels' [N, classes] and N 'paths')", fix)
    require(labels.shape[1] == num_classes, path, what,
            f"has {labels.shape[1]} classes, the set {num_classes}", fix)
    require(labels.is_floating_point() and bool(torch.isfinite(labels).all()), path, what,
            "holds non-finite values (NaN/inf): it is damaged, not a usable set of labels", fix)
    return d


def read_learned_lr(path: Path) -> float:
    """``<set>.lr.pt``: weights-only, ``lr`` one finite positive number."""
    import torch

    from common.run.safe_load import require, safe_torch_load

    what, fix = "learned-lr file", "use the lr.pt written with the set, or remove it and pass --learning-rate"
    d = safe_torch_load(path, what=what, advice=fix)
    lr = d.get("lr") if isinstance(d, dict) else None
    require(isinstance(lr, torch.Tensor) and lr.numel() == 1 and lr.is_floating_point(), path, what,
            "is not a learned-lr file (expected 'lr', one number)", fix)
    require(bool(torch.isfinite(lr).all()) and float(lr) > 0, path, what,
            f"holds lr {float(lr)}, not a positive finite number", fix)
    return float(lr)


def soft_targets_for(paths: list[str], labels: dict, what: str, exact: bool = True):
    """Order the stored soft-label rows like ``paths`` (relative ``class/file`` names); ``exact``: the
    labels are for exactly these files (else for a superset: the first IPC of a larger set)."""
    from common.cli.errors import UserError

    index = {p: i for i, p in enumerate(labels["paths"])}
    missing = [p for p in paths if p not in index]
    if missing or (exact and len(paths) != len(index)):
        raise UserError(f"{what}: soft labels do not match the set's files (e.g. {missing[:1] or 'counts'}); "
                        f"use the labels.pt written with the set or --label-mode hard")
    return labels["labels"][[index[p] for p in paths]].float()


def train_pad_student(model, x, targets, lr: float, epochs: int, batch: int, seed: int, val_x, val_y,
                      dsa_strategy: str = "color_crop_cutout_flip_scale_rotate", device="cpu",
                      progress: bool = True, lr_source: str = "lr.pt") -> dict:
    """Train ``model`` under the PAD protocol; ``targets`` are soft logits [N, C] or hard labels [N]."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from common.ops.dsa import dsa, make_generator
    from common.train.memdata import accuracy

    gen = make_generator(seed)
    model = model.to(device)
    soft = targets.ndim == 2
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=PAD_MOMENTUM, weight_decay=PAD_WEIGHT_DECAY)
    t0 = time.time()
    seen = 0
    for ep in tqdm(range(epochs + 1), desc=f"pad eval seed {seed}", disable=not progress, dynamic_ncols=True):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch):
            idx = perm[s:s + batch]
            xb, tb = x[idx].to(device), targets[idx].to(device)
            if dsa_strategy.lower() != "none":
                xb = dsa(xb, dsa_strategy, generator=gen)
            out = model(xb)
            if soft:
                loss = -(F.softmax(tb, 1) * F.log_softmax(out, 1)).sum() / len(idx)
            else:
                loss = F.cross_entropy(out, tb)
            if not torch.isfinite(loss):
                from common.cli.errors import UserError

                fix = (f"lower --learning-rate (now {lr:g})" if lr_source == "--learning-rate" else
                       f"the learned lr {lr:g} ({lr_source}) is too large for this student: pass --learning-rate "
                       f"with a set without lr.pt")
                raise UserError(f"student seed {seed}: non-finite training loss at epoch {ep}; {fix}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        if ep == decay_epoch(epochs):
            lr *= 0.1
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=PAD_MOMENTUM, weight_decay=PAD_WEIGHT_DECAY)
    train_time = time.time() - t0
    top1 = 100.0 * accuracy(model, val_x, val_y, device=device)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(val_x[s:s + 512].to(device)).cpu() for s in range(0, len(val_x), 512)])
    k = min(5, logits.shape[1])
    top5 = 100.0 * (logits.topk(k, 1).indices == val_y.view(-1, 1)).any(1).float().mean().item()
    return {"final_top1": top1, "final_top5": top5, "best_top1": top1, "best_top1_epoch": epochs,
            "train_time_s": train_time, "images_per_s": seen / max(train_time, 1e-9)}


@dataclass
class PadData:
    """The set (its first ``--ipc`` images per class), val, targets and lr, as the protocol trains on them."""

    x: Any
    y: Any
    vx: Any
    vy: Any
    classes: list[str]
    size: int
    ipc: int
    mode: str
    targets: Any
    lr: float
    lr_source: str
    arch: str | None


def set_meta(syn: Path) -> dict:
    """The set's manifest (recover.trajectory_matching records arch, input size, mean, std); {} without one."""
    try:
        meta = json.loads((syn / "manifest.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def load_pad_data(args: argparse.Namespace, syn: Path, mode: str) -> PadData:
    """Read and check every input before any work: images per class against --ipc, labels, lr, ZCA."""
    from common.cli.errors import UserError
    from common.data.dataconfig import resolve_data_config
    from common.data.datasets import get_dataset
    from common.data.imagefolder import check_same_classes, find_classes, make_samples
    from common.ops.zca import read_zca
    from common.train.memdata import load_tensor_dataset

    want = getattr(args, "ipc", None)
    counts = require_ipc(syn, want)
    classes = find_classes(syn, "--syn-data-path")
    check_same_classes(classes, find_classes(args.val_dir, "--val-dir"), f"--syn-data-path {syn}",
                       f"--val-dir {args.val_dir}")
    meta = set_meta(syn)
    stats = {k: meta[k] for k in ("input_size", "mean", "std") if k in meta}
    cfg = resolve_data_config(get_dataset(args.dataset), None, args.input_size, meta=stats, image_root=syn)
    label_file, lr_file = syn.with_name(syn.name + ".labels.pt"), syn.with_name(syn.name + ".lr.pt")
    labels = read_soft_labels(label_file, len(classes)) if mode == "soft" else None
    lr, lr_source = (read_learned_lr(lr_file), str(lr_file)) if lr_file.is_file() else \
        (float(args.learning_rate), "--learning-rate")
    zca = read_zca(args.zca, "--zca", "give the zca.pt of the experts (squeeze.trajectories --zca)",
                   features=3 * cfg.input_size ** 2) if args.zca else None
    _, samples = make_samples(syn, classes, per_class=want, what="--syn-data-path")
    files = [Path(p).relative_to(syn).as_posix() for p, _ in samples]  # the images trained on, in file order
    soft = soft_targets_for(files, labels, str(label_file), exact=not want) if labels is not None else None
    x, y, rel, _ = load_tensor_dataset(syn, cfg.input_size, cfg.mean, cfg.std, classes, what="--syn-data-path",
                                       progress=False, per_class=want)  # the first --ipc of each class only
    assert rel == files, "the set changed while it was read"
    vx, vy, _, _ = load_tensor_dataset(args.val_dir, cfg.input_size, cfg.mean, cfg.std, classes, what="--val-dir")
    if zca is not None:
        x, vx = zca.whiten(x), zca.whiten(vx)
    # one IPC when every class holds the same number (after --ipc); None for classes of different sizes
    ipc = want or (min(counts.values()) if len(set(counts.values())) == 1 else None)
    if not lr > 0:
        raise UserError(f"{lr_source}: lr {lr} must be positive")
    targets = soft if soft is not None else y
    return PadData(x, y, vx, vy, classes, cfg.input_size, ipc, mode, targets, lr, lr_source, meta.get("arch"))


def check_pad_outputs(args: argparse.Namespace, syn: Path, mode: str) -> tuple[Path, Path]:
    """The results JSON and CSV: writable, and not someone else's file (before any work)."""
    from common.cli.paths import check_output_file
    from common.run.state import check_output, state_dir
    from relabel_eval.context import default_output
    from relabel_eval.results import check_results_csv

    output = Path(args.output) if args.output else default_output(str(syn), f"pad_{mode}")
    check_output_file(output, "--output")
    check_output_file(state_dir(output) / "run.json", "--output")
    check_output(output, "relabel_eval", getattr(args, "force", False), kind="file", flag="--output")
    results_csv = Path(args.results_csv) if args.results_csv else output.parent / "results.csv"
    check_results_csv(check_output_file(results_csv, "--results-csv"), getattr(args, "force", False))
    return output, results_csv


def evaluate_students(args: argparse.Namespace, d: PadData, state, device) -> dict:
    """Train every (student, seed) not done yet in ``state``; the per-student summaries."""
    import torch

    from models import build_model
    from relabel_eval.results import summarize_runs

    batch = args.re_batch_size or PAD_BATCH
    seeds = args.seeds or [args.seed]
    studs = args.stud_name or [d.arch or "conv3_in"]  # default: the experts' architecture
    per_student = {}
    for stud in [s for part in studs for s in part.split(",") if s]:
        runs = []
        for seed in seeds:
            unit = f"{stud}_seed{seed}"
            run = state.done(unit)
            if run is None:
                torch.manual_seed(seed)
                model = build_model(stud, len(d.classes), d.size)
                run = train_pad_student(model, d.x, d.targets, d.lr, args.re_epochs, batch, seed, d.vx, d.vy,
                                        device=device, lr_source=d.lr_source)
                run["seed"] = seed
                state.mark_done(unit, run)
            runs.append(run)
            print(f"  {stud} seed {seed}: FINAL top-1 {run['final_top1']:.2f}", file=sys.stderr)
        summary = summarize_runs(runs)
        per_student[stud] = {"batch_size": batch, "lr": d.lr, "lr_source": d.lr_source, "summary": summary,
                             "runs": runs}
        print(f"{stud} [PAD protocol, {d.mode} labels, {len(seeds)} seed(s)]: FINAL top-1 "
              f"{summary['final_top1_mean']:.2f} +- {summary['final_top1_std']:.2f}", file=sys.stderr)
    return per_student


def run(args: argparse.Namespace) -> dict:
    """``python -m relabel_eval --protocol pad ...``: evaluate every seed, write the results JSON/CSV.

    One process does the work (the sets are small); under torchrun the other ranks return at once.
    """
    from common.cli.errors import UserError
    from common.compute.distributed import dist_info

    if dist_info().rank != 0:
        return {}
    syn = Path(args.syn_data_path)
    if not syn.is_dir():
        raise UserError(f"{syn}: --syn-data-path not found")
    if not getattr(args, "val_dir", None):
        raise UserError("--val-dir is required")
    if args.label_mode == "fkd":
        raise UserError("--protocol pad trains on the set's own labels; use --label-mode soft or hard")
    label_file = syn.with_name(syn.name + ".labels.pt")
    mode = "hard" if args.label_mode == "hard" or not label_file.is_file() else "soft"
    output, results_csv = check_pad_outputs(args, syn, mode)

    from common.compute.device import device_from_args
    from common.run.atomic import atomic_write_json
    from common.run.manifest import build_manifest
    from common.run.state import RunState
    from relabel_eval.results import append_results_csv

    device = device_from_args(args)
    d = load_pad_data(args, syn, mode)
    batch, seeds = args.re_batch_size or PAD_BATCH, args.seeds or [args.seed]
    # resume per (student, seed) in <output>.state/, the shared run-state rules (common.run.state)
    state = RunState(output, "relabel_eval", {
        "protocol": "pad", "syn": str(syn.resolve()), "mode": mode, "lr": d.lr, "epochs": args.re_epochs,
        "batch": batch, "zca": str(args.zca), "size": d.size, "ipc": getattr(args, "ipc", None),
        "val": str(Path(args.val_dir).resolve())}, restart=getattr(args, "restart", False))
    print(f"PAD protocol: {syn} ({len(d.x)} images, {len(d.classes)} classes), {mode} labels, lr {d.lr:g} "
          f"({d.lr_source}), {args.re_epochs} epochs, batch {batch}, seeds {seeds}", file=sys.stderr)
    with state.running():  # a failure before the first finished seed leaves no state behind
        per_student = evaluate_students(args, d, state, device)
    result = {
        "stage": "relabel_eval", "name": getattr(args, "exp_name", None) or output.stem, "syn_data_path": str(syn),
        "val_dir": str(args.val_dir), "label_mode": mode, "num_images": len(d.x), "num_classes": len(d.classes),
        "ipc": d.ipc, "val_images": len(d.vx), "input_size": d.size, "seeds": seeds, "teacher": None,
        "protocol": {"name": "pad", "source": SOURCE, "epochs": args.re_epochs, "optimizer": "sgd",
                     "momentum": PAD_MOMENTUM, "weight_decay": PAD_WEIGHT_DECAY, "lr": d.lr,
                     "lr_source": d.lr_source, "lr_decay_after_epoch": decay_epoch(args.re_epochs), "dsa": True,
                     "zca": str(args.zca) if args.zca else None, "device": str(device)},
        "headline": "final_top1 (hard-label val accuracy after the last epoch)",
        "students": per_student,
        "manifest": build_manifest("relabel_eval", args),
    }
    atomic_write_json(output, result)
    append_results_csv(results_csv, result, output, force=getattr(args, "force", False))
    state.finish()
    print(json.dumps({s: e["summary"] for s, e in per_student.items()}))
    return result
