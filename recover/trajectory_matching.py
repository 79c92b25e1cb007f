"""recover.trajectory_matching: PAD / DATM / MTT distillation by matching expert trajectories.

    python -m recover.trajectory_matching --experts runs/experts --data-path DATA/train \
        --ipc 10 --iterations 5000 --syn-steps 80 --expert-epochs 2 --max-start-epoch 20 \
        --depth-ratio 0.5 --output-path runs/pad_ipc10

Learnable: the synthetic images (initialised from real images the experts classify
correctly), their soft labels (logits initialised as the mean of the experts'
logits over the experts that classify the image correctly) and the student
learning rate (initialised to ``--lr-teacher``, kept positive by clamping).
Each iteration picks an expert and a start epoch t in
``[min_start_epoch, upper)`` where ``upper`` grows linearly from
``--current-max-start-epoch`` to ``--max-start-epoch`` by ``--expansion-end-epoch``,
unrolls ``--syn-steps`` SGD steps of the student from theta*_t on minibatches of
the synthetic set with DSA, and minimises
``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` (M =
``--expert-epochs``) over the parameters kept by the mask: ``--mask depth`` drops the
shallowest ``--depth-ratio`` of the flat parameter vector (PAD's paper),
``--mask loss`` the ``--loss-ratio`` entries with the smallest error (released
PAD.py). A step is skipped when the loss exceeds ``--threshold`` (released rule);
a non-finite loss stops the run. Optimisers as the released configs: SGD momentum
0.5 for images (``--lr-img``) and lr (``--lr-lr``), SGD momentum ``--momentum-y``
(0.9) for labels (``--lr-y``).

Outputs: ``OUT/<class>/<NNN>.png`` (an ImageFolder; ``OUT/manifest.json``), and
beside it ``OUT.labels.pt`` (soft-label logits in file order, with paths and
classes), ``OUT.lr.pt`` (learned lr), ``OUT.loss.json`` and ``OUT.loss.png`` (loss
curve). The resume state (``OUT.state/matching.pt``, common.run.state) is written every
``--checkpoint-every`` iterations; the same command continues from it (an unfinished run
may also be given a larger ``--iterations``), other settings are refused by name,
``--restart`` starts over.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from common.cli.argtypes import (
    momentum_float,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from common.cli.flags import add_device_args
from common.run.state import add_run_args

STAGE = "recover.trajectory_matching"
# besides common.run.state.NOT_RESULT: iteration k does not depend on the total, so a run can be extended
NOT_RESULT = {"checkpoint_every", "output_path", "iterations", "max_iterations_this_run"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recover.trajectory_matching", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", required=True, help="directory written by squeeze.trajectories")
    p.add_argument("--data-path", required=True, help="training ImageFolder (real images for initialisation)")
    p.add_argument("--output-path", required=True, help="output ImageFolder of the distilled images")
    p.add_argument("--ipc", type=positive_int, default=10)
    p.add_argument("--iterations", type=positive_int, default=5000)
    p.add_argument("--syn-steps", type=positive_int, default=80)
    p.add_argument("--expert-epochs", type=positive_int, default=2)
    p.add_argument("--min-start-epoch", type=nonneg_int, default=0)
    p.add_argument("--current-max-start-epoch", type=nonneg_int, default=None,
                   help="initial upper end of the start-epoch window (default: --max-start-epoch, no growth)")
    p.add_argument("--max-start-epoch", type=nonneg_int, default=20)
    p.add_argument("--expansion-end-epoch", type=nonneg_int, default=3000,
                   help="iteration at which the window reaches --max-start-epoch")
    p.add_argument("--batch-syn", type=positive_int, default=None, help="student batch (default: all synthetic images)")
    p.add_argument("--lr-img", type=positive_float, default=1000.0)
    p.add_argument("--lr-lr", type=nonneg_float, default=1e-5)
    p.add_argument("--lr-y", type=nonneg_float, default=2.0)
    p.add_argument("--momentum-y", type=momentum_float, default=0.9)
    p.add_argument("--lr-teacher", type=positive_float, default=0.01, help="initial student lr")
    p.add_argument("--mask", choices=["depth", "loss"], default="depth")
    p.add_argument("--depth-ratio", type=unit_float, default=0.5, help="fraction of shallowest parameters dropped")
    p.add_argument("--loss-ratio", type=unit_float, default=0.5, help="fraction of smallest-error entries dropped")
    p.add_argument("--threshold", type=positive_float, default=1.0, help="skip the update when the loss exceeds this")
    p.add_argument("--pix-init", choices=["correct", "real", "noise"], default="correct",
                   help="correct: real images the experts classify correctly (PAD); real: random real; noise")
    p.add_argument("--label-init", choices=["experts", "onehot"], default="experts",
                   help="experts: mean logits of the experts that are right (PAD/DATM); onehot: fixed hard labels")
    p.add_argument("--no-learn-labels", action="store_true", help="keep the initial labels fixed (MTT)")
    p.add_argument("--dsa-strategy", default="color_crop_cutout_flip_scale_rotate")
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    p.add_argument("--max-iterations-this-run", type=positive_int, default=None,
                   help="stop after this many iterations (the run resumes); for time-boxed jobs and tests")
    p.add_argument("--seed", type=seed_int, default=0)
    add_device_args(p)
    add_run_args(p)
    return p


def check_args(args) -> None:
    from common.cli.errors import UserError
    from common.ops.dsa import parse_strategy

    for flag in ("ipc", "iterations", "syn_steps", "expert_epochs", "checkpoint_every"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.batch_syn is not None and args.batch_syn < 1:
        raise UserError("--batch-syn must be at least 1")
    for flag in ("lr_img", "lr_lr", "lr_y", "lr_teacher"):
        if not getattr(args, flag) >= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be non-negative")
    for flag in ("depth_ratio", "loss_ratio"):
        if not 0 <= getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be in [0, 1)")
    if args.min_start_epoch < 0 or args.max_start_epoch <= args.min_start_epoch:
        raise UserError("--max-start-epoch must be greater than --min-start-epoch >= 0")
    try:
        parse_strategy(args.dsa_strategy)
    except ValueError as exc:
        raise UserError(f"--dsa-strategy: {exc}") from None


def load_experts(root: Path):
    import json

    import torch

    from common.cli.errors import UserError

    man_file = root / "manifest.json"
    if not man_file.is_file():
        raise UserError(f"{root}: --experts has no manifest.json (squeeze.trajectories writes it)")
    man = json.loads(man_file.read_text())
    if man.get("stage") != "squeeze.trajectories":
        raise UserError(f"{man_file}: not a squeeze.trajectories output")
    files = sorted(root.glob("expert_*.pt"))
    if not files:
        raise UserError(f"{root}: no finished expert_XXX.pt files; run squeeze.trajectories first")
    trajs = []
    for f in files:
        t = torch.load(f, map_location="cpu", weights_only=True)
        if t.ndim != 2 or t.shape[1] != man["n_params"]:
            raise UserError(f"{f}: expected a [epochs+1, {man['n_params']}] tensor, found {tuple(t.shape)}")
        trajs.append(t)
    return man, files, trajs


def plot_loss(history: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.run.atomic import atomic_path

    it = [h["iteration"] for h in history]
    loss = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(it, loss, lw=0.6, alpha=0.5, label="loss")
    k = max(1, len(loss) // 20)
    if k > 1:
        import numpy as np

        sm = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(it[k - 1:], sm, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("matching loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    check_args(args)
    from common.cli.errors import UserError
    from common.cli.paths import check_output_dir
    from common.run.state import check_output, state_dir

    out = Path(args.output_path)
    check_output_dir(out, "--output-path")
    check_output(out, STAGE, args.force, flag="--output-path")
    check_output_dir(state_dir(out), "--output-path")
    experts_dir = Path(args.experts)
    if not experts_dir.is_dir():
        raise UserError(f"{experts_dir}: --experts directory not found")

    import json
    import random
    import resource
    import time

    import torch
    from tqdm import tqdm

    from common.compute.device import device_from_args
    from common.data.imagefolder import check_same_classes, find_classes
    from common.data.transforms import to_pil
    from common.ops.dsa import make_generator
    from common.ops.zca import ZCA
    from common.run.atomic import atomic_dir, atomic_torch_save, atomic_write_json
    from common.run.manifest import build_manifest, write_manifest
    from common.run.safe_load import load_torch_file
    from common.run.state import RunState, fingerprint
    from common.train.memdata import load_tensor_dataset
    from common.train.seed import seed_everything
    from models import build_model
    from recover.matching import (
        ParamLayout,
        expert_logits,
        init_soft_labels,
        matching_loss,
        select_correct,
        start_epoch_upper,
        unroll,
    )

    man, files, trajs = load_experts(experts_dir)
    epochs_avail = min(t.shape[0] - 1 for t in trajs)
    if args.max_start_epoch - 1 + args.expert_epochs > epochs_avail:
        raise UserError(f"--max-start-epoch {args.max_start_epoch} + --expert-epochs {args.expert_epochs} needs "
                        f"{args.max_start_epoch - 1 + args.expert_epochs} expert epochs; "
                        f"the experts have {epochs_avail}")
    classes = man["classes"]
    check_same_classes(classes, find_classes(args.data_path, "--data-path"), f"experts {experts_dir}",
                       f"--data-path {args.data_path}")
    device = device_from_args(args)
    seed_everything(args.seed)
    size, mean, std = man["input_size"], man["mean"], man["std"]
    num_classes = len(classes)
    model = build_model(man["arch"], num_classes, size).to(device)
    layout = ParamLayout(model)
    if layout.n_params != man["n_params"] or [list(s) for s in layout.shapes] != [s for _, s in man["param_layout"]]:
        raise UserError(f"{experts_dir}: parameter layout differs from {man['arch']} built here")
    zca = ZCA.load(experts_dir / man["zca"]) if man.get("zca") else None
    trajs = [t.to(device) for t in trajs]
    n_syn = args.ipc * num_classes
    batch_syn = args.batch_syn or n_syn

    # --- settings that change the result; a resume must match them
    # (--iterations is not among them: iteration k does not depend on the total, so a run can be extended)
    settings = fingerprint(args, NOT_RESULT, experts_files=[f.name for f in files])
    run = RunState(out, STAGE, settings, restart=args.restart)
    state_file = run.path("matching.pt")
    state = None
    if state_file.is_file():
        state = load_torch_file(state_file, "resume state", "pass --restart to discard it")
        print(f"resuming at iteration {state['iteration']} from {state_file}", file=sys.stderr)

    if state is None:
        x, y, rel, _ = load_tensor_dataset(args.data_path, size, mean, std, classes, what="--data-path")
        if zca is not None:
            x = zca.whiten(x)
        finals = [t[-1] for t in trajs]
        gen = torch.Generator().manual_seed(args.seed)
        images, init_paths, filled = [], [], 0
        for c in range(num_classes):
            idx = torch.nonzero(y == c).flatten()
            if len(idx) < args.ipc:
                raise UserError(f"{args.data_path}: class {classes[c]} has {len(idx)} images, fewer than --ipc")
            order = torch.randperm(len(idx), generator=gen)
            if args.pix_init == "correct":
                preds = expert_logits(model, layout, finals, x[idx].to(device)).argmax(2).cpu()
                pick, f = select_correct(preds, c, args.ipc, order)
                filled += f
            else:
                pick = order[:args.ipc].tolist()
            images.append(x[idx[pick]])
            init_paths += [rel[int(idx[i])] for i in pick]
        image_syn = torch.cat(images).to(device)
        if args.pix_init == "noise":
            image_syn = torch.randn(image_syn.shape, generator=gen).to(device)
        label_hard = torch.arange(num_classes).repeat_interleave(args.ipc).to(device)
        if args.label_init == "experts":
            logits = expert_logits(model, layout, finals, image_syn)
            label_syn = init_soft_labels(logits, label_hard)
        else:
            label_syn = torch.nn.functional.one_hot(label_hard, num_classes).float() * 10.0
        init_acc = float((label_syn.argmax(1) == label_hard).float().mean())
        if filled:
            print(f"warning: {filled} initial image(s) are not classified correctly by any expert", file=sys.stderr)
        syn_lr = torch.tensor(float(args.lr_teacher), device=device)
        state = {"iteration": 0, "history": [], "init_paths": init_paths, "init_label_acc": init_acc,
                 "filled": filled, "seconds": 0.0}
    else:
        image_syn = state["images"].to(device)
        label_syn = state["labels"].to(device)
        syn_lr = state["lr"].to(device)
        label_hard = torch.arange(num_classes).repeat_interleave(args.ipc).to(device)

    image_syn.requires_grad_(True)
    syn_lr.requires_grad_(True)
    label_syn.requires_grad_(not args.no_learn_labels)
    opt_img = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=args.lr_lr, momentum=0.5)
    opt_y = torch.optim.SGD([label_syn], lr=args.lr_y, momentum=args.momentum_y)
    rng = random.Random(args.seed)
    gen = make_generator(args.seed + 1)
    if "opt_img" in state:
        opt_img.load_state_dict(state["opt_img"])
        opt_lr.load_state_dict(state["opt_lr"])
        opt_y.load_state_dict(state["opt_y"])
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])

    current_max = args.current_max_start_epoch if args.current_max_start_epoch is not None else args.max_start_epoch
    ratio = args.depth_ratio if args.mask == "depth" else args.loss_ratio
    history = state["history"]
    it0 = state["iteration"]
    stop = args.iterations if args.max_iterations_this_run is None else min(args.iterations,
                                                                              it0 + args.max_iterations_this_run)

    def save_state(iteration: int, seconds: float) -> None:
        atomic_torch_save({**{k: v for k, v in state.items() if k not in ("images", "labels", "lr")},
                           "settings": settings, "iteration": iteration, "history": history,
                           "images": image_syn.detach().cpu(), "labels": label_syn.detach().cpu(),
                           "lr": syn_lr.detach().cpu(), "opt_img": opt_img.state_dict(),
                           "opt_lr": opt_lr.state_dict(), "opt_y": opt_y.state_dict(), "rng": rng.getstate(),
                           "gen": gen.get_state(), "seconds": seconds}, state_file)

    t0 = time.time()
    seconds0 = state.get("seconds", 0.0)
    with run.running():  # a failure before the first checkpoint leaves no state behind
        bar = tqdm(range(it0, stop), desc="matching", initial=it0, total=args.iterations, dynamic_ncols=True)
        for it in bar:
            e = rng.randrange(len(trajs))
            upper = start_epoch_upper(it, args.min_start_epoch, current_max, args.max_start_epoch,
                                      args.expansion_end_epoch)
            t = rng.randrange(args.min_start_epoch, upper)
            start, target = trajs[e][t], trajs[e][t + args.expert_epochs]
            final = unroll(model, layout, start, image_syn, label_syn, syn_lr, args.syn_steps, batch_syn, gen,
                           args.dsa_strategy)
            loss = matching_loss(final, start, target, ratio, args.mask)
            if not torch.isfinite(loss):
                save_state(it, seconds0 + time.time() - t0)
                raise UserError(f"non-finite matching loss at iteration {it} (expert {e}, start epoch {t}); "
                                f"lower --lr-img / --lr-lr / --lr-y (state kept in {state_file})")
            opt_img.zero_grad()
            opt_lr.zero_grad()
            opt_y.zero_grad()
            loss.backward()
            stepped = bool(loss.item() <= args.threshold)
            if stepped:
                opt_img.step()
                opt_lr.step()
                if not args.no_learn_labels:
                    opt_y.step()
                with torch.no_grad():
                    syn_lr.clamp_(min=1e-8)  # the student lr stays positive
            history.append({"iteration": it, "loss": float(loss.item()), "expert": e, "start_epoch": t,
                            "lr": float(syn_lr.item()), "stepped": stepped})
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{syn_lr.item():.4g}")
            del final, loss
            if (it + 1) % args.checkpoint_every == 0 and it + 1 < args.iterations:
                save_state(it + 1, seconds0 + time.time() - t0)
        bar.close()
    seconds = seconds0 + time.time() - t0
    done_its = stop
    if done_its < args.iterations:
        save_state(done_its, seconds)
        print(f"stopped at iteration {done_its}/{args.iterations}; run the same command to continue",
              file=sys.stderr)
        return {"iteration": done_its, "finished": False}

    # --- outputs: ImageFolder (pixel space), labels/lr/loss beside it
    with torch.no_grad():
        imgs = image_syn.detach().cpu()
        if zca is not None:
            imgs = zca.inverse(imgs)
    names = []
    with atomic_dir(out) as tmp:
        for c, cls in enumerate(classes):
            (tmp / cls).mkdir()
            for j in range(args.ipc):
                name = f"{cls}/{j:03d}.png"
                to_pil(imgs[c * args.ipc + j], mean, std).save(tmp / name)
                names.append(name)
        new_iters = len(history) - (it0 if it0 else 0)
        per_it = seconds / max(1, len(history)) if history else None
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        summary = {"output_path": str(out), "iterations": args.iterations, "ipc": args.ipc,
                   "mask": args.mask, "mask_ratio": ratio, "curriculum_experts": man.get("curriculum"),
                   "num_experts": len(trajs), "learned_lr": float(syn_lr.item()),
                   "init_label_accuracy": state.get("init_label_acc"),
                   "final_label_accuracy": float((label_syn.argmax(1) == label_hard).float().mean()),
                   "seconds": seconds, "seconds_per_iteration": per_it, "iterations_timed": len(history),
                   "new_iterations_this_run": new_iters, "peak_rss_mb": peak_mb,
                   "final_loss_mean_last_10pct": float(sum(h["loss"] for h in history[-max(1, len(history) // 10):])
                                                       / max(1, len(history[-max(1, len(history) // 10):])))}
        write_manifest(tmp / "manifest.json", build_manifest(
            "recover.trajectory_matching", args, settings=settings, arch=man["arch"], classes=classes, files=names,
            init_paths=state.get("init_paths"), experts_manifest=str(experts_dir / "manifest.json"),
            zca=man.get("zca"), summary=summary))
    atomic_torch_save({"labels": label_syn.detach().cpu(), "paths": names, "classes": classes,
                       "kind": "logits"}, out.with_name(out.name + ".labels.pt"))
    atomic_torch_save({"lr": syn_lr.detach().cpu()}, out.with_name(out.name + ".lr.pt"))
    atomic_write_json(out.with_name(out.name + ".loss.json"), {"history": history, "summary": summary})
    plot_loss(history, out.with_name(out.name + ".loss.png"),
              f"{out.name}: {args.mask} mask {ratio}, IPC {args.ipc}, {len(trajs)} experts")
    run.finish()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from common.cli.errors import run_cli

    sys.exit(run_cli(main))
