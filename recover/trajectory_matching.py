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
curve). Every one of them is owned (common.run.state): an existing file of these names
that this command did not write for this output (its sha256 is not the one recorded in
``OUT/manifest.json``) is not replaced without ``--force``. The resume state
(``OUT.state/matching.pt``: tensors, optimiser states and one JSON string, loaded
weights-only) is written every ``--checkpoint-every`` iterations; the same command
continues from it (an unfinished run may also be given a larger ``--iterations``), other
settings are refused by name, ``--restart`` starts over. A non-finite loss (or synthetic
images, labels or lr that became non-finite) stops the run with one line and writes nothing.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("recover.args:trajectory_matching_parser", "recover.trajectory_matching"))

import io
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.cli.errors import UserError
from recover.args import check_trajectory_matching, trajectory_matching_parser

STAGE = "recover.trajectory_matching"
# besides common.run.state.NOT_RESULT: iteration k does not depend on the total, so a run can be extended
NOT_RESULT = {"checkpoint_every", "output_path", "iterations", "max_iterations_this_run"}
SIDE_FILES = (".labels.pt", ".lr.pt", ".loss.json", ".loss.png")  # written beside OUT
STATE_FORMAT = "recover.trajectory_matching/2"
get_args_parser = trajectory_matching_parser  # torch-free, in recover.args (python -m answers before torch)


def side_file(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


# ----------------------------------------------------------------------------- outputs, before any work

def owned_side_files(out: Path) -> dict[str, list[str]]:
    """name -> sha256s of the side files this command wrote for ``out``: those recorded in OUT's manifest
    and those an interrupted run of ours recorded while writing (``OUT.state/done/outputs.json``)."""
    from common.run.manifest import read_manifest
    from common.run.state import state_dir

    owned: dict[str, list[str]] = {}
    man = read_manifest(out) if out.is_dir() else None
    if man and man.get("stage") == STAGE:
        for name, sha in (man.get("side_files") or {}).items():
            owned.setdefault(name, []).append(sha)
    try:
        writing = json.loads((state_dir(out) / "done" / "outputs.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        writing = {}
    for name, shas in (writing if isinstance(writing, dict) else {}).items():
        owned.setdefault(name, []).extend(shas if isinstance(shas, list) else [])
    return owned


def check_outputs(args) -> tuple[Path, dict[str, list[str]]]:
    """Every place this run writes, checked before any work: the output folder, its state, the side files
    (never replaced when not ours, unless --force). Returns the output and the side files it may replace."""
    from common.cli.paths import check_output_dir, check_output_file
    from common.run.manifest import sha256_file
    from common.run.state import check_output, state_dir

    out = Path(args.output_path)
    check_output_dir(out, "--output-path")
    check_output_dir(state_dir(out), "--output-path")
    if args.log_dir:
        check_output_dir(args.log_dir, "--log-dir")
    for suffix in SIDE_FILES:
        check_output_file(side_file(out, suffix), "--output-path")
    check_output(out, STAGE, args.force, flag="--output-path")
    owned = owned_side_files(out)
    for suffix in SIDE_FILES:
        f = side_file(out, suffix)
        if not f.is_file():
            continue
        sha = sha256_file(f)
        if sha not in owned.get(f.name, []):
            if not args.force:
                raise UserError(f"--output-path {out}: {f} exists and was not written by {STAGE} for this output; "
                                f"choose another --output-path, or pass --force to replace it")
            owned.setdefault(f.name, []).append(sha)
    return out, owned


# ----------------------------------------------------------------------------- inputs

@dataclass
class Experts:
    root: Path
    man: dict
    files: list[Path]
    trajs: list


def read_experts_manifest(root: Path) -> dict:
    man_file = root / "manifest.json"
    if not man_file.is_file():
        raise UserError(f"{root}: --experts has no manifest.json (squeeze.trajectories writes it)")
    try:
        man = json.loads(man_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{man_file}: not a JSON manifest; point --experts at a squeeze.trajectories output") \
            from None
    if not isinstance(man, dict) or man.get("stage") != "squeeze.trajectories":
        raise UserError(f"{man_file}: not a squeeze.trajectories output")
    need = {"n_params": int, "arch": str, "classes": list, "input_size": int, "mean": list, "std": list,
            "param_layout": list}
    bad = [k for k, t in need.items() if not isinstance(man.get(k), t)]
    if bad:
        raise UserError(f"{man_file}: incomplete squeeze.trajectories manifest (no valid {', '.join(bad)}); "
                        f"write the experts again")
    return man


def load_experts(root: Path) -> Experts:
    """The experts' manifest and every finished trajectory, each loaded weights-only and checked."""
    from squeeze.trajectories import read_trajectory

    man = read_experts_manifest(root)
    files = sorted(root.glob("expert_*.pt"))
    if not files:
        raise UserError(f"{root}: no finished expert_XXX.pt files; run squeeze.trajectories first")
    fix = "run squeeze.trajectories again for it (remove the file first)"
    trajs = [read_trajectory(f, man["n_params"], None, fix).float() for f in files]
    return Experts(root, man, files, trajs)


@dataclass
class Setup:
    """What every iteration uses: the student, its parameter layout, the experts on the device."""

    model: Any
    layout: Any
    trajs: list
    classes: list[str]
    size: int
    mean: list[float]
    std: list[float]
    zca: Any
    device: Any
    n_syn: int
    batch_syn: int


def prepare(args, experts: Experts) -> Setup:
    """Check the experts against the flags and the data; build the student."""
    from common.compute.device import device_from_args
    from common.data.imagefolder import check_same_classes, find_classes, list_class_files
    from common.ops.dsa import parse_strategy
    from common.ops.zca import read_zca
    from common.train.seed import seed_everything
    from models import build_model
    from recover.matching import ParamLayout

    try:
        parse_strategy(args.dsa_strategy)
    except ValueError as exc:
        raise UserError(f"--dsa-strategy: {exc}") from None
    man = experts.man
    epochs_avail = min(t.shape[0] - 1 for t in experts.trajs)
    if args.max_start_epoch - 1 + args.expert_epochs > epochs_avail:
        raise UserError(f"--max-start-epoch {args.max_start_epoch} + --expert-epochs {args.expert_epochs} needs "
                        f"{args.max_start_epoch - 1 + args.expert_epochs} expert epochs; "
                        f"the experts have {epochs_avail}")
    classes = man["classes"]
    check_same_classes(classes, find_classes(args.data_path, "--data-path"), f"experts {experts.root}",
                       f"--data-path {args.data_path}")
    for cls in classes:
        n = len(list_class_files(Path(args.data_path) / cls))
        if n < args.ipc:
            raise UserError(f"{args.data_path}: class {cls} has {n} images, fewer than --ipc {args.ipc}")
    device = device_from_args(args)
    seed_everything(args.seed)
    size = man["input_size"]
    model = build_model(man["arch"], len(classes), size).to(device)
    layout = ParamLayout(model)
    if layout.n_params != man["n_params"] or [list(s) for s in layout.shapes] != [s for _, s in man["param_layout"]]:
        raise UserError(f"{experts.root}: parameter layout differs from {man['arch']} built here")
    zca = None
    if man.get("zca"):
        zca = read_zca(experts.root / str(man["zca"]), "ZCA fit of the experts",
                       "run squeeze.trajectories --zca again", features=3 * size * size)
    n_syn = args.ipc * len(classes)
    return Setup(model, layout, [t.to(device) for t in experts.trajs], classes, size, man["mean"], man["std"], zca,
                 device, n_syn, args.batch_syn or n_syn)


# ----------------------------------------------------------------------------- the synthetic set and its state

@dataclass
class Synthetic:
    """The learned tensors, their optimisers and RNGs, and the run's record so far."""

    images: Any
    labels: Any
    lr: Any
    iteration: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    info: dict = field(default_factory=dict)  # init_paths, init_label_acc, filled
    opt_img: Any = None
    opt_lr: Any = None
    opt_y: Any = None
    rng: Any = None
    gen: Any = None


def init_synthetic(args, setup: Setup) -> Synthetic:
    """Initial images (real ones the experts classify correctly, random real, or noise) and soft labels."""
    import torch

    from common.train.memdata import load_tensor_dataset
    from recover.matching import expert_logits, init_soft_labels, select_correct

    x, y, rel, _ = load_tensor_dataset(args.data_path, setup.size, setup.mean, setup.std, setup.classes,
                                       what="--data-path")
    if setup.zca is not None:
        x = setup.zca.whiten(x)
    finals = [t[-1] for t in setup.trajs]
    gen = torch.Generator().manual_seed(args.seed)
    images, init_paths, filled = [], [], 0
    for c, cls in enumerate(setup.classes):
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < args.ipc:
            raise UserError(f"{args.data_path}: class {cls} has {len(idx)} images, fewer than --ipc {args.ipc}")
        order = torch.randperm(len(idx), generator=gen)
        if args.pix_init == "correct":
            preds = expert_logits(setup.model, setup.layout, finals, x[idx].to(setup.device)).argmax(2).cpu()
            pick, f = select_correct(preds, c, args.ipc, order)
            filled += f
        else:
            pick = order[:args.ipc].tolist()
        images.append(x[idx[pick]])
        init_paths += [rel[int(idx[i])] for i in pick]
    image_syn = torch.cat(images).to(setup.device)
    if args.pix_init == "noise":
        image_syn = torch.randn(image_syn.shape, generator=gen).to(setup.device)
    label_hard = hard_labels(args, setup)
    if args.label_init == "experts":
        label_syn = init_soft_labels(expert_logits(setup.model, setup.layout, finals, image_syn), label_hard)
    else:
        label_syn = torch.nn.functional.one_hot(label_hard, len(setup.classes)).float() * 10.0
    if filled:
        print(f"warning: {filled} initial image(s) are not classified correctly by any expert", file=sys.stderr)
    info = {"init_paths": init_paths, "filled": filled,
            "init_label_acc": float((label_syn.argmax(1) == label_hard).float().mean())}
    return Synthetic(image_syn, label_syn, torch.tensor(float(args.lr_teacher), device=setup.device), info=info)


def hard_labels(args, setup: Setup):
    import torch

    return torch.arange(len(setup.classes)).repeat_interleave(args.ipc).to(setup.device)


def attach_optimisers(args, syn: Synthetic) -> None:
    import torch

    from common.ops.dsa import make_generator

    syn.images.requires_grad_(True)
    syn.lr.requires_grad_(True)
    syn.labels.requires_grad_(not args.no_learn_labels)
    syn.opt_img = torch.optim.SGD([syn.images], lr=args.lr_img, momentum=0.5)
    syn.opt_lr = torch.optim.SGD([syn.lr], lr=args.lr_lr, momentum=0.5)
    syn.opt_y = torch.optim.SGD([syn.labels], lr=args.lr_y, momentum=args.momentum_y)
    syn.rng = random.Random(args.seed)
    syn.gen = make_generator(args.seed + 1)


def save_state(path: Path, syn: Synthetic) -> None:
    """Tensors and optimiser states as tensors, everything else as one JSON string (loads weights-only)."""
    from common.run.atomic import atomic_torch_save

    version, internal, gauss = syn.rng.getstate()
    meta = {"iteration": syn.iteration, "seconds": syn.seconds, "history": syn.history, "info": syn.info,
            "rng": [version, list(internal), gauss]}
    atomic_torch_save({"format": STATE_FORMAT, "images": syn.images.detach().cpu(),
                       "labels": syn.labels.detach().cpu(), "lr": syn.lr.detach().cpu(),
                       "opt_img": syn.opt_img.state_dict(), "opt_lr": syn.opt_lr.state_dict(),
                       "opt_y": syn.opt_y.state_dict(), "gen": syn.gen.get_state(), "meta": json.dumps(meta)}, path)


def load_state(path: Path, args, setup: Setup) -> Synthetic:
    """The resume state, loaded weights-only and checked against this run's shapes; one line when unusable."""
    import torch

    from common.run.safe_load import safe_torch_load

    fix = "pass --restart to discard it"
    st = safe_torch_load(path, what="resume state", advice=fix)
    n, c, s = setup.n_syn, len(setup.classes), setup.size
    try:
        meta = json.loads(st["meta"])
        images, labels, lr = st["images"], st["labels"], st["lr"]
        ok = (st.get("format") == STATE_FORMAT and tuple(images.shape) == (n, 3, s, s)
              and tuple(labels.shape) == (n, c) and lr.numel() == 1
              and all(bool(torch.isfinite(t).all()) for t in (images, labels, lr)) and float(lr) > 0
              and isinstance(meta["iteration"], int) and meta["iteration"] >= 0)
        if ok:
            syn = Synthetic(images.to(setup.device), labels.to(setup.device), lr.reshape(()).to(setup.device),
                            meta["iteration"], float(meta["seconds"]), list(meta["history"]), dict(meta["info"]))
            attach_optimisers(args, syn)
            syn.opt_img.load_state_dict(st["opt_img"])
            syn.opt_lr.load_state_dict(st["opt_lr"])
            syn.opt_y.load_state_dict(st["opt_y"])
            version, internal, gauss = meta["rng"]
            syn.rng.setstate((version, tuple(internal), gauss))
            syn.gen.set_state(st["gen"])
            return syn
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError):
        pass
    raise UserError(f"{path}: not a resume state of this run (other shapes, or damaged); {fix}")


# ----------------------------------------------------------------------------- the iterations

class Diverged(Exception):
    """A non-finite loss or synthetic tensor: the run stops (main turns it into one error line)."""


def match_step(args, setup: Setup, syn: Synthetic, it: int, ratio: float, current_max: int) -> dict:
    """One iteration: pick an expert and a start epoch, unroll the student, step images, lr and labels."""
    import torch

    from recover.matching import matching_loss, start_epoch_upper, unroll

    e = syn.rng.randrange(len(setup.trajs))
    upper = start_epoch_upper(it, args.min_start_epoch, current_max, args.max_start_epoch, args.expansion_end_epoch)
    t = syn.rng.randrange(args.min_start_epoch, upper)
    start, target = setup.trajs[e][t], setup.trajs[e][t + args.expert_epochs]
    final = unroll(setup.model, setup.layout, start, syn.images, syn.labels, syn.lr, args.syn_steps,
                   setup.batch_syn, syn.gen, args.dsa_strategy)
    loss = matching_loss(final, start, target, ratio, args.mask)
    if not torch.isfinite(loss):
        raise Diverged(f"non-finite matching loss at iteration {it} (expert {e}, start epoch {t})")
    for opt in (syn.opt_img, syn.opt_lr, syn.opt_y):
        opt.zero_grad()
    loss.backward()
    stepped = bool(loss.item() <= args.threshold)
    if stepped:
        syn.opt_img.step()
        syn.opt_lr.step()
        if not args.no_learn_labels:
            syn.opt_y.step()
        with torch.no_grad():
            syn.lr.clamp_(min=1e-8)  # the student lr stays positive
    return {"iteration": it, "loss": float(loss.item()), "expert": e, "start_epoch": t, "lr": float(syn.lr.item()),
            "stepped": stepped}


def diverged(exc: Diverged, run, resumed: bool) -> UserError:
    """A diverged run is no result: a fresh run leaves nothing (its checkpoints go too); a resumed one keeps the
    earlier run's state, so the corrected command needs --restart, and the advice says so."""
    msg = f"{exc}; lower --lr-img / --lr-lr / --lr-y"
    if resumed:
        return UserError(f"{msg} and pass --restart (the unfinished run in {run.dir} was made with these settings)")
    run.path("matching.pt").unlink(missing_ok=True)
    run.marker("outputs").unlink(missing_ok=True)
    return UserError(msg)


def run_iterations(args, setup: Setup, syn: Synthetic, run, stop: int, curves=None) -> None:
    """Iterations ``syn.iteration`` .. ``stop``, a checkpoint every ``--checkpoint-every``; each iteration's
    loss, lr and start epoch to ``curves`` (``--log-dir``, ``--wandb-project``)."""
    import torch
    from tqdm import tqdm

    from common.cli.errors import bar_vanishes_on_error
    from common.train.curves import epoch_scalars

    current_max = args.current_max_start_epoch if args.current_max_start_epoch is not None else args.max_start_epoch
    ratio = args.depth_ratio if args.mask == "depth" else args.loss_ratio
    t0, seconds0, it0 = time.time(), syn.seconds, syn.iteration
    with tqdm(range(it0, stop), desc="matching", initial=it0, total=args.iterations, dynamic_ncols=True) as bar, \
            bar_vanishes_on_error(bar):
        for it in bar:
            syn.history.append(match_step(args, setup, syn, it, ratio, current_max))
            if curves is not None:
                curves.log(it + 1, epoch_scalars(syn.history[-1]))
            bar.set_postfix(loss=f"{syn.history[-1]['loss']:.4f}", lr=f"{syn.lr.item():.4g}")
            syn.iteration, syn.seconds = it + 1, seconds0 + time.time() - t0
            if (it + 1) % args.checkpoint_every == 0 and it + 1 < args.iterations:
                save_state(run.path("matching.pt"), syn)
    if not all(bool(torch.isfinite(t).all()) for t in (syn.images, syn.labels, syn.lr)):
        raise Diverged(f"the synthetic images, labels or lr became non-finite by iteration {syn.iteration}")


# ----------------------------------------------------------------------------- outputs

def plot_loss(history: list[dict], title: str) -> bytes:
    """The loss curve as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def summarize(args, setup: Setup, experts: Experts, syn: Synthetic, out: Path, it0: int) -> dict:
    import resource

    history = syn.history
    tail = history[-max(1, len(history) // 10):]
    return {"output_path": str(out), "iterations": args.iterations, "ipc": args.ipc, "mask": args.mask,
            "mask_ratio": args.depth_ratio if args.mask == "depth" else args.loss_ratio,
            "curriculum_experts": experts.man.get("curriculum"), "num_experts": len(setup.trajs),
            "learned_lr": float(syn.lr.item()), "init_label_accuracy": syn.info.get("init_label_acc"),
            "final_label_accuracy": float((syn.labels.argmax(1) == hard_labels(args, setup)).float().mean()),
            "seconds": syn.seconds, "seconds_per_iteration": syn.seconds / len(history) if history else None,
            "iterations_timed": len(history), "new_iterations_this_run": len(history) - it0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "final_loss_mean_last_10pct": sum(h["loss"] for h in tail) / max(1, len(tail))}


def side_bytes(args, setup: Setup, syn: Synthetic, names: list[str], summary: dict) -> dict[str, bytes]:
    """The contents of the side files, made in memory (their sha256 goes into the manifest first)."""
    import torch

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    ratio = summary["mask_ratio"]
    return {
        ".labels.pt": saved({"labels": syn.labels.detach().cpu(), "paths": names, "classes": setup.classes,
                             "kind": "logits"}),
        ".lr.pt": saved({"lr": syn.lr.detach().cpu()}),
        ".loss.json": (json.dumps({"history": syn.history, "summary": summary}, indent=2) + "\n").encode(),
        ".loss.png": plot_loss(syn.history, f"{Path(args.output_path).name}: {args.mask} mask {ratio}, "
                                            f"IPC {args.ipc}, {len(setup.trajs)} experts"),
    }


def write_outputs(args, out: Path, setup: Setup, experts: Experts, syn: Synthetic, run, settings: dict,
                  owned: dict[str, list[str]], it0: int) -> dict:
    """The ImageFolder (pixel space) with its manifest, then the side files; the side files' sha256 are
    recorded first (in the run state, then the manifest) so an interrupted write is still ours."""
    import hashlib

    import torch

    from common.data.transforms import to_pil
    from common.run.atomic import atomic_dir, atomic_write_bytes
    from common.run.manifest import build_manifest, write_manifest

    with torch.no_grad():
        imgs = syn.images.detach().cpu()
        if setup.zca is not None:
            imgs = setup.zca.inverse(imgs)
    names = [f"{cls}/{j:03d}.png" for cls in setup.classes for j in range(args.ipc)]
    summary = summarize(args, setup, experts, syn, out, it0)
    blobs = side_bytes(args, setup, syn, names, summary)
    shas = {side_file(out, s).name: hashlib.sha256(b).hexdigest() for s, b in blobs.items()}
    run.mark_done("outputs", {k: owned.get(k, []) + [v] for k, v in shas.items()})
    with atomic_dir(out) as tmp:
        for cls in setup.classes:
            (tmp / cls).mkdir()
        for k, name in enumerate(names):
            to_pil(imgs[k], setup.mean, setup.std).save(tmp / name)
        write_manifest(tmp / "manifest.json", build_manifest(
            STAGE, args, settings=settings, arch=experts.man["arch"], classes=setup.classes, files=names,
            input_size=setup.size, mean=setup.mean, std=setup.std, init_paths=syn.info.get("init_paths"),
            experts_manifest=str(experts.root / "manifest.json"), zca=experts.man.get("zca"), summary=summary,
            side_files=shas))
    for suffix, data in blobs.items():
        atomic_write_bytes(side_file(out, suffix), data)
    return summary


# ----------------------------------------------------------------------------- the command

def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    check_trajectory_matching(args)
    out, owned = check_outputs(args)

    from common.run.state import RunState, fingerprint
    from common.train.curves import Curves

    experts = load_experts(Path(args.experts))
    setup = prepare(args, experts)
    settings = fingerprint(args, NOT_RESULT, experts_files=[f.name for f in experts.files])
    run = RunState(out, STAGE, settings, restart=args.restart)
    state_file = run.path("matching.pt")
    if state_file.is_file():
        syn = load_state(state_file, args, setup)
        print(f"resuming at iteration {syn.iteration} from {state_file}", file=sys.stderr)
    else:
        syn = init_synthetic(args, setup)
        attach_optimisers(args, syn)
    it0 = syn.iteration
    stop = args.iterations if args.max_iterations_this_run is None else min(args.iterations,
                                                                              it0 + args.max_iterations_this_run)
    curves = Curves(args.log_dir, f"matching_{out.name}", wandb_project=args.wandb_project, config=settings,
                    purge_step=it0 + 1)
    with run.running(), curves:  # a failure before the first checkpoint leaves no state behind
        try:
            run_iterations(args, setup, syn, run, stop, curves)
        except Diverged as exc:
            raise diverged(exc, run, resumed=it0 > 0) from None
        if stop < args.iterations:
            save_state(state_file, syn)
            print(f"stopped at iteration {stop}/{args.iterations}; run the same command to continue",
                  file=sys.stderr)
            return {"iteration": stop, "finished": False}
        summary = write_outputs(args, out, setup, experts, syn, run, settings, owned, it0)
    run.finish()
    print(json.dumps(summary))
    return summary
