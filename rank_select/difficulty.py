"""rank_select.difficulty: EL2N and GraNd difficulty, and PAD's per-class easy-to-hard order.

    python -m rank_select.difficulty --data-path DATA/train --arch conv3_in --input-size 32 \
        --num-models 4 --epochs 10 --output runs/difficulty.csv

``--num-models`` (k) ConvNets are trained briefly (``--epochs``, SGD, DSA), each from
its own seed (``--seed`` + i), and every training image is scored by each of them
under the val transform; the k scores are averaged (Paul et al., "Deep learning on
a data diet"):
- ``el2n`` = ||softmax(z) - onehot(y)||_2;
- ``grand`` = the norm of the cross-entropy gradient with respect to the last
  layer's weights, bias and input: with g = softmax(z) - onehot(y), h the
  penultimate feature and W the weights, sqrt(||g||^2 (||h||^2 + 1) + ||W^T g||^2).
The CSV (``path`` relative to the data root, ``class``, ``label``, ``el2n``,
``grand``, ``difficulty`` = the ``--sort-by`` metric, ``order`` = position in its
class easy-to-hard) is sorted by class then difficulty ascending. The order file
(``--order-file``, default ``<output>.order.json``) lists each class's paths from
easiest to hardest; ``squeeze.trajectories --difficulty`` reads it; ``<output stem>.manifest.json``
records the run.

The run follows ``common.run.state``: each finished model's scores are kept in
``<output>.state/scores.pt`` (loaded weights-only, checked), so the same command continues a
killed run and ends with the same files as an uninterrupted one; a run with other settings
is refused by name (``--restart`` starts over). The CSV, the order file and the manifest are
replaced only when the manifest says this command wrote them (``--force`` otherwise), and
every output location is checked before any training. A model whose loss becomes
non-finite is an error that leaves nothing behind.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help, argument errors and missing paths before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("rank_select.args:difficulty_parser", "rank_select.difficulty"))

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

from common.cli.errors import UserError
from common.cli.paths import check_output_file
from common.run.state import output_owner, state_stage
from rank_select.args import check_difficulty, difficulty_parser

STAGE = "rank_select.difficulty"
NOT_RESULT = {"output", "order_file", "data_path"}  # the data enters by its file list
get_args_parser = difficulty_parser  # torch-free, in rank_select.args


class Diverged(UserError):
    """A scoring model's loss became non-finite: an error, never a difficulty order."""


def scores_from_outputs(logits, labels, features, weight):
    """``(el2n, grand)`` per sample from logits [N,C], labels [N], penultimate features [N,D], weight [C,D]."""
    import torch

    p = torch.softmax(logits.double(), dim=1)
    g = p - torch.nn.functional.one_hot(labels.long(), p.shape[1]).double()
    el2n = g.norm(dim=1)
    h2 = features.double().pow(2).sum(1)
    grand = (g.pow(2).sum(1) * (h2 + 1) + (g @ weight.double()).pow(2).sum(1)).sqrt()
    return el2n.float(), grand.float()


def per_class_order(labels: Sequence[int], difficulty: Sequence[float], num_classes: int) -> list[list[int]]:
    """Indices of each class sorted easy (low difficulty) to hard; ties keep file order."""
    import numpy as np

    labels = np.asarray(labels)
    diff = np.asarray(difficulty, dtype=np.float64)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        out.append(idx[np.argsort(diff[idx], kind="stable")].tolist())
    return out


def output_paths(args) -> dict[str, Path]:
    out = Path(args.output)
    return {"csv": out, "order": Path(args.order_file) if args.order_file else out.with_suffix(".order.json"),
            "manifest": out.with_name(out.stem + ".manifest.json")}


def check_outputs(args) -> dict[str, Path]:
    """Every file this run writes can be written, and those that exist are ours (or ``--force``)."""
    paths = output_paths(args)
    flags = {"csv": "--output", "order": "--order-file" if args.order_file else "--output", "manifest": "--output"}
    for key, p in paths.items():
        check_output_file(p, flags[key])
    if len({p.resolve() for p in paths.values()}) < len(paths):
        raise UserError(f"--order-file {paths['order']}: the same file as --output or its manifest; "
                        f"choose another name")
    owned: set[Path] = set()
    if output_owner(paths["manifest"], "file") == STAGE:
        m = json.loads(paths["manifest"].read_text())
        outs = m.get("outputs") if isinstance(m.get("outputs"), dict) else {}
        owned = {paths["manifest"].resolve(), *(Path(v).resolve() for v in outs.values() if isinstance(v, str))}
    if state_stage(paths["csv"]) == STAGE:  # a killed run of ours keeps its run.json beside the output
        owned |= {p.resolve() for p in paths.values()}
    for key, p in paths.items():
        if (p.exists() or p.is_symlink()) and p.resolve() not in owned and not args.force:
            raise UserError(f"{flags[key]} {p} exists and was not written by {STAGE} (no manifest of ours); "
                            f"choose another path, or pass --force to replace it")
    return paths


def read_scores(path: Path, num_models: int, n: int) -> dict:
    """The saved scores of the finished models (weights only), checked: k <= --num-models rows of n finite values."""
    import torch

    from common.run.safe_load import safe_torch_load

    advice = "pass --restart to discard it and start over"
    st = safe_torch_load(path, what="the difficulty run's saved scores", advice=advice)
    ok = isinstance(st, dict) and all(isinstance(st.get(k), list) for k in ("el2n", "grand")) and \
        len(st["el2n"]) == len(st["grand"]) <= num_models and \
        all(isinstance(t, torch.Tensor) and t.shape == (n,) and t.is_floating_point() and torch.isfinite(t).all()
            for t in [*st["el2n"], *st["grand"]])
    if not ok:
        raise UserError(f"{path}: not the saved scores of this run (expected up to {num_models} score vectors of "
                        f"{n} finite values per metric); {advice}")
    return {"el2n": list(st["el2n"]), "grand": list(st["grand"])}


def train_and_score(x, y, num_classes: int, arch: str, size: int, seed: int, epochs: int, lr: float,
                    momentum: float, batch_size: int, dsa_on: bool, device):
    """Train one model briefly from ``seed``; return its (el2n, grand) on every image."""
    import torch

    from common.ops.dsa import dsa, make_generator
    from common.train.memdata import sgd_epoch
    from models import build_model, classifier_layer

    torch.manual_seed(seed)
    model = build_model(arch, num_classes, size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = make_generator(seed)
    aug = (lambda xb, g: dsa(xb, generator=g)) if dsa_on else None
    for _ in range(epochs):
        sgd_epoch(model, x, y, torch.arange(len(x)), opt, batch_size, gen, aug, device)
    model.eval()
    head = classifier_layer(model)
    feats: list = []
    handle = head.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    el2n, grand = [], []
    try:
        with torch.no_grad():
            for s in range(0, len(x), 512):
                feats.clear()
                logits = model(x[s:s + 512].to(device))
                e, g = scores_from_outputs(logits.cpu(), y[s:s + 512], torch.flatten(feats[0], 1).cpu(),
                                           head.weight.detach().cpu())
                el2n.append(e)
                grand.append(g)
    finally:
        handle.remove()
    return torch.cat(el2n), torch.cat(grand)


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)  # ranges checked by the parser (common.cli.argtypes)
    check_difficulty(args)
    paths = check_outputs(args)  # before any image is read or model trained
    import numpy as np
    import pandas as pd
    import torch
    from tqdm import tqdm

    from common.cli.errors import bar_vanishes_on_error
    from common.compute.device import device_from_args
    from common.data.dataconfig import resolve_data_config
    from common.data.datasets import check_class_count, get_dataset
    from common.data.imagefolder import ImageFolder
    from common.run.atomic import atomic_path, atomic_torch_save, atomic_write_json
    from common.run.manifest import build_manifest, write_manifest
    from common.run.state import RunState, fingerprint
    from common.train.memdata import load_tensor_dataset
    from models.registry import canonical_arch

    spec = get_dataset(args.dataset)
    device = device_from_args(args)
    root = Path(args.data_path)
    out, order_file = paths["csv"], paths["order"]
    arch = canonical_arch(args.arch)
    size = resolve_data_config(spec, arch, args.input_size, image_root=root).input_size  # flag, registry, images
    listed = [Path(p).relative_to(root).as_posix() for p, _ in ImageFolder(root, None, what="--data-path").samples]
    images = hashlib.sha256("\n".join(listed).encode()).hexdigest()
    run = RunState(out, STAGE, fingerprint(args, NOT_RESULT, arch=arch, input_size=size, images_sha256=images),
                   restart=args.restart)  # the saved state is checked before the images are decoded
    scores_file = run.path("scores.pt")
    done = {"el2n": [], "grand": []}
    if scores_file.exists() and not scores_file.is_file():
        raise UserError(f"{scores_file}: exists and is not a file (the saved scores of this run go there); remove it")
    if run.resumed and scores_file.exists():
        done = read_scores(scores_file, args.num_models, len(listed))
    x, y, rel, classes = load_tensor_dataset(root, size, spec.mean, spec.std, what="--data-path")
    check_class_count(spec, len(classes), root)
    if rel != listed:
        raise UserError(f"{root}: --data-path changed while it was read; run the command again")
    if done["el2n"]:
        print(f"resuming: {len(done['el2n'])}/{args.num_models} models already scored ({scores_file})",
              file=sys.stderr)
    try:
        with run.running(), tqdm(range(len(done["el2n"]), args.num_models), desc="difficulty models",
                                 dynamic_ncols=True) as bar, bar_vanishes_on_error(bar):
            for i in bar:
                try:
                    e, g = train_and_score(x, y, len(classes), arch, size, args.seed + i, args.epochs, args.lr,
                                           args.momentum, args.batch_size, not args.no_dsa, device)
                except FloatingPointError as exc:
                    raise Diverged(f"model {i + 1} of {args.num_models} diverged ({exc}); lower --lr (now "
                                   f"{args.lr:g}); nothing was written") from None
                if not (torch.isfinite(e).all() and torch.isfinite(g).all()):
                    raise Diverged(f"model {i + 1} of {args.num_models} diverged (non-finite scores); lower --lr "
                                   f"(now {args.lr:g}); nothing was written")
                done["el2n"].append(e)
                done["grand"].append(g)
                atomic_torch_save(done, scores_file)
                run.mark_done(f"model_{i:03d}")
            el2n = torch.stack(done["el2n"][:args.num_models]).mean(0).numpy()
            grand = torch.stack(done["grand"][:args.num_models]).mean(0).numpy()
            diff = el2n if args.sort_by == "el2n" else grand
            orders = per_class_order(y.tolist(), diff, len(classes))
            position = np.zeros(len(y), dtype=np.int64)
            for idx in orders:
                position[idx] = np.arange(len(idx))
            df = pd.DataFrame({"path": rel, "class": [classes[c] for c in y.tolist()], "label": y.numpy(),
                               "el2n": el2n, "grand": grand, "difficulty": diff, "order": position})
            df = df.iloc[np.concatenate(orders)].reset_index(drop=True)
            with atomic_path(out) as tmp:
                df.to_csv(tmp, index=False, float_format="%.8g")
            atomic_write_json(order_file, {"metric": args.sort_by, "direction": "easy_to_hard", "classes": classes,
                                           "order": {classes[c]: [rel[i] for i in idx]
                                                     for c, idx in enumerate(orders)}})
            manifest = build_manifest(STAGE, args, outputs={"csv": str(out), "order": str(order_file)},
                                      num_images=len(y), input_size=size)
            write_manifest(paths["manifest"], manifest)  # last: it marks the files as ours and complete
    except Diverged:
        run.discard()  # a diverged run is an error, not a result: its models are of no use to a rerun
        raise
    run.finish()
    summary = {"csv": str(out), "order_file": str(order_file), "num_images": len(y), "num_classes": len(classes),
               "mean_el2n": float(el2n.mean()), "mean_grand": float(grand.mean())}
    print(json.dumps(summary))
    return summary
