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
easiest to hardest; ``squeeze.trajectories --difficulty`` reads it. Each model's
scores are kept in ``<output>.partial.pt`` so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Sequence

from common.cli.argtypes import momentum_float, nonneg_int, positive_float, positive_int, seed_int
from common.cli.flags import add_data_args, add_device_args


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rank_select.difficulty", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "training ImageFolder tree to score", "conv3_in",
                  "model trained briefly for the scores (default: %(default)s)", arch_flag="--arch")
    p.add_argument("--num-models", type=positive_int, default=4, help="k models whose scores are averaged")
    p.add_argument("--epochs", type=nonneg_int, default=10, help="training epochs of each model before scoring")
    p.add_argument("--lr", type=positive_float, default=0.01)
    p.add_argument("--momentum", type=momentum_float, default=0.9)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--no-dsa", action="store_true", help="train without differentiable augmentation")
    p.add_argument("--sort-by", choices=["el2n", "grand"], default="grand",
                   help="metric that orders each class (default: grand, the released PAD experts' order)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--output", required=True, help="difficulty CSV to write")
    p.add_argument("--order-file", default=None, help="per-class easy-to-hard order (default: <output>.order.json)")
    add_device_args(p)
    return p


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


def _fingerprint(args, rel_paths) -> str:
    h = hashlib.sha256()
    keep = ("arch", "input_size", "epochs", "lr", "momentum", "batch_size", "no_dsa", "seed", "dataset")
    h.update(repr([(k, getattr(args, k)) for k in keep]).encode())
    for p in rel_paths:
        h.update(p.encode() + b"\n")
    return h.hexdigest()


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
    args = get_args_parser().parse_args(argv)
    for flag in ("num_models", "epochs", "batch_size"):
        if getattr(args, flag) < (0 if flag == "epochs" else 1):
            raise_user(f"--{flag.replace('_', '-')} must be positive")
    if args.lr <= 0:
        raise_user("--lr must be positive")
    import numpy as np
    import pandas as pd
    import torch
    from tqdm import tqdm

    from common.compute.device import device_from_args
    from common.data.dataconfig import resolve_data_config
    from common.data.datasets import check_class_count, get_dataset
    from common.run.atomic import atomic_path, atomic_torch_save, atomic_write_json
    from common.run.manifest import build_manifest, write_manifest
    from common.train.memdata import load_tensor_dataset
    from models.registry import canonical_arch

    spec = get_dataset(args.dataset)
    device = device_from_args(args)
    root = Path(args.data_path)
    out = Path(args.output)
    order_file = Path(args.order_file) if args.order_file else out.with_suffix(".order.json")
    if out.is_dir() or order_file.is_dir():
        raise_user(f"{out if out.is_dir() else order_file}: is a directory; give a file name")
    arch = canonical_arch(args.arch)
    size = resolve_data_config(spec, arch, args.input_size, image_root=root).input_size  # flag, registry, images
    x, y, rel, classes = load_tensor_dataset(root, size, spec.mean, spec.std, what="--data-path")
    check_class_count(spec, len(classes), root)
    partial = out.with_name(out.name + ".partial.pt")
    fp = _fingerprint(args, rel)
    done: dict = {"fingerprint": fp, "el2n": [], "grand": []}
    if partial.is_file():
        st = torch.load(partial, map_location="cpu", weights_only=True)
        if st.get("fingerprint") == fp:
            done = st
            print(f"resuming: {len(done['el2n'])}/{args.num_models} models already scored ({partial})",
                  file=sys.stderr)
    for i in tqdm(range(len(done["el2n"]), args.num_models), desc="difficulty models", dynamic_ncols=True):
        e, g = train_and_score(x, y, len(classes), arch, size, args.seed + i, args.epochs, args.lr, args.momentum,
                               args.batch_size, not args.no_dsa, device)
        done["el2n"].append(e)
        done["grand"].append(g)
        atomic_torch_save(done, partial)
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
                                   "order": {classes[c]: [rel[i] for i in idx] for c, idx in enumerate(orders)}})
    manifest = build_manifest("rank_select.difficulty", args, outputs={"csv": str(out), "order": str(order_file)},
                              num_images=len(y), input_size=size)
    write_manifest(out.with_name(out.stem + ".manifest.json"), manifest)
    partial.unlink(missing_ok=True)
    summary = {"csv": str(out), "order_file": str(order_file), "num_images": len(y), "num_classes": len(classes),
               "mean_el2n": float(el2n.mean()), "mean_grand": float(grand.mean())}
    import json

    print(json.dumps(summary))
    return summary


def raise_user(msg: str):
    from common.cli.errors import UserError

    raise UserError(msg)


if __name__ == "__main__":
    from common.cli.errors import run_cli

    sys.exit(run_cli(main))
