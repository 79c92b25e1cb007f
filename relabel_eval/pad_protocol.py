"""``relabel_eval --protocol pad``: the MTT/DATM/PAD evaluation (released ``evaluate_synset``).

The student (default: the instance-norm ConvNet of the experts) trains on the whole
distilled set held as one tensor for ``--re-epochs`` + 1 epochs (the released loop
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
from pathlib import Path

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


def soft_targets_for(paths: list[str], labels: dict, what: str):
    """Order the stored soft-label rows like ``paths`` (relative ``class/file`` names)."""
    from common.cli.errors import UserError

    index = {p: i for i, p in enumerate(labels["paths"])}
    missing = [p for p in paths if p not in index]
    if missing or len(paths) != len(index):
        raise UserError(f"{what}: soft labels do not match the set's files (e.g. {missing[:1] or 'counts'}); "
                        f"use the labels.pt written with the set or --label-mode hard")
    return labels["labels"][[index[p] for p in paths]].float()


def train_pad_student(model, x, targets, lr: float, epochs: int, batch: int, seed: int, val_x, val_y,
                      dsa_strategy: str = "color_crop_cutout_flip_scale_rotate", device="cpu",
                      progress: bool = True) -> dict:
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

                raise UserError(f"non-finite training loss at epoch {ep} (lr {lr:g}); the learned lr may be too "
                                f"large for this student: pass --learning-rate with a set without lr.pt")
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
    label_file = syn.with_name(syn.name + ".labels.pt")
    lr_file = syn.with_name(syn.name + ".lr.pt")
    mode = "hard" if args.label_mode == "hard" or not label_file.is_file() else "soft"
    if args.label_mode == "fkd":
        raise UserError("--protocol pad trains on the set's own labels; use --label-mode soft or hard")
    # the output locations, before any work
    from common.cli.paths import check_output_file
    from common.run.state import RunState, check_output
    from relabel_eval.context import default_output
    from relabel_eval.results import check_results_csv

    output = Path(args.output) if args.output else default_output(str(syn), f"pad_{mode}")
    check_output_file(output, "--output")
    check_output(output, "relabel_eval", getattr(args, "force", False), kind="file", flag="--output")
    results_csv = Path(args.results_csv) if args.results_csv else output.parent / "results.csv"
    check_results_csv(check_output_file(results_csv, "--results-csv"), getattr(args, "force", False))

    import torch

    from common.compute.device import device_from_args
    from common.data.imagefolder import check_same_classes, find_classes
    from common.ops.zca import ZCA
    from common.run.atomic import atomic_write_json
    from common.run.manifest import build_manifest
    from common.train.memdata import load_tensor_dataset
    from models import build_model
    from relabel_eval.results import append_results_csv, summarize_runs

    device = device_from_args(args)
    classes = find_classes(syn, "--syn-data-path")
    check_same_classes(classes, find_classes(args.val_dir, "--val-dir"), f"--syn-data-path {syn}",
                       f"--val-dir {args.val_dir}")
    meta = {}
    man_file = syn / "manifest.json"
    if man_file.is_file():
        meta = json.loads(man_file.read_text())
    size = args.input_size or None
    from common.data.imagefolder import infer_input_size

    size = size or infer_input_size(syn)
    from common.data.datasets import get_dataset

    spec = get_dataset(args.dataset)
    mean, std = spec.mean, spec.std
    x, y, rel, _ = load_tensor_dataset(syn, size, mean, std, classes, what="--syn-data-path", progress=False)
    vx, vy, _, _ = load_tensor_dataset(args.val_dir, size, mean, std, classes, what="--val-dir")
    if args.zca:
        zca = ZCA.load(args.zca)
        x, vx = zca.whiten(x), zca.whiten(vx)
    if mode == "soft":
        targets = soft_targets_for(rel, torch.load(label_file, map_location="cpu", weights_only=True), str(label_file))
    else:
        targets = y
    if lr_file.is_file():
        lr, lr_source = float(torch.load(lr_file, map_location="cpu", weights_only=True)["lr"]), str(lr_file)
    else:
        lr, lr_source = float(args.learning_rate), "--learning-rate"
    if not lr > 0:
        raise UserError(f"{lr_source}: lr {lr} must be positive")
    batch = args.re_batch_size or PAD_BATCH
    seeds = args.seeds or [args.seed]
    studs = args.stud_name or [meta.get("arch") or "conv3_in"]  # default: the experts' architecture
    studs = [s for part in studs for s in part.split(",") if s]
    # resume per (student, seed) in <output>.state/, the shared run-state rules (common.run.state)
    state = RunState(output, "relabel_eval", {
        "protocol": "pad", "syn": str(syn.resolve()), "mode": mode, "lr": lr, "epochs": args.re_epochs,
        "batch": batch, "zca": str(args.zca), "size": size, "val": str(Path(args.val_dir).resolve())},
        restart=getattr(args, "restart", False))
    print(f"PAD protocol: {syn} ({len(x)} images, {len(classes)} classes), {mode} labels, lr {lr:g} "
          f"({lr_source}), {args.re_epochs} epochs, batch {batch}, seeds {seeds}", file=sys.stderr)
    per_student = {}
    with state.running():  # a failure before the first finished seed leaves no state behind
        for stud in studs:
            runs = []
            for seed in seeds:
                unit = f"{stud}_seed{seed}"
                run = state.done(unit)
                if run is None:
                    torch.manual_seed(seed)
                    model = build_model(stud, len(classes), size)
                    run = train_pad_student(model, x, targets, lr, args.re_epochs, batch, seed, vx, vy,
                                            device=device)
                    run["seed"] = seed
                    state.mark_done(unit, run)
                runs.append(run)
                print(f"  {stud} seed {seed}: FINAL top-1 {run['final_top1']:.2f}", file=sys.stderr)
            summary = summarize_runs(runs)
            per_student[stud] = {"batch_size": batch, "lr": lr, "lr_source": lr_source, "summary": summary,
                                 "runs": runs}
            print(f"{stud} [PAD protocol, {mode} labels, {len(seeds)} seed(s)]: FINAL top-1 "
                  f"{summary['final_top1_mean']:.2f} +- {summary['final_top1_std']:.2f}", file=sys.stderr)
    result = {
        "stage": "relabel_eval", "name": getattr(args, "exp_name", None) or output.stem, "syn_data_path": str(syn),
        "val_dir": str(args.val_dir), "label_mode": mode, "num_images": len(x), "num_classes": len(classes),
        "ipc": len(x) // len(classes), "val_images": len(vx), "input_size": size, "seeds": seeds, "teacher": None,
        "protocol": {"name": "pad", "source": SOURCE, "epochs": args.re_epochs, "optimizer": "sgd",
                     "momentum": PAD_MOMENTUM, "weight_decay": PAD_WEIGHT_DECAY, "lr": lr, "lr_source": lr_source,
                     "lr_decay_after_epoch": decay_epoch(args.re_epochs), "dsa": True,
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
