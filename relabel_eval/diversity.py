"""Diversity of distilled sets (DELT's figure 2).

``python -m relabel_eval.diversity --syn-data-path DIR [DIR ...] --teacher-path CKPT --output div.json``

Per class: f_i = penultimate features (the input of the final linear layer) of a
fixed model (default: the teacher) for each image, centroid mu = mean f_i, score =
mean_i cos(f_i, mu); lower is more diverse. Also the inter-class score: the mean
cosine between the centroids of different classes. The model, its weights' sha256
and the layer are recorded. Several sets in one call share one plot.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("relabel_eval.args:diversity_parser", "relabel_eval.diversity"))

import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from common.cli.errors import UserError
from common.cli.paths import check_output_file
from common.compute.device import device_from_args
from common.data.transforms import pil_to_normalized
from common.run.atomic import atomic_path, atomic_write_json
from common.run.manifest import build_manifest, sha256_file
from common.run.state import check_output
from models import classifier_layer, classifier_name, load_model, penultimate_features
from relabel_eval.args import diversity_parser
from relabel_eval.data import load_distilled

STAGE = "relabel_eval.diversity"


get_args_parser = diversity_parser  # torch-free, in relabel_eval.args (python -m answers before torch is imported)


def intra_class_cosine(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class, the mean cosine similarity of each feature to its class centroid (NaN for empty classes)."""
    features = features.float()
    out = torch.full((num_classes,), float("nan"))
    for c in range(num_classes):
        f = features[labels == c]
        if len(f):
            out[c] = F.cosine_similarity(f, f.mean(0, keepdim=True), dim=1).mean()
    return out


def class_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.stack([features[labels == c].float().mean(0) for c in range(num_classes)])


def inter_class_cosine(centroids: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct class centroids."""
    c = F.normalize(centroids.float(), dim=1)
    sim = c @ c.T
    k = len(c)
    if k < 2:
        return float("nan")
    return float((sim.sum() - sim.diagonal().sum()) / (k * (k - 1)))


@torch.no_grad()
def extract_features(model, images, input_size: int, mean, std, device, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features of PIL images resized to ``input_size`` (whole image, no crop)."""
    feats = []
    for s in range(0, len(images), batch_size):
        x = torch.stack([pil_to_normalized(im, mean, std, size=input_size) for im in images[s:s + batch_size]])
        feats.append(penultimate_features(model, x.to(device)).float().cpu())
    return torch.cat(feats)


def plot_diversity(sets: dict, out_png: str | Path, model_desc: str) -> Path:
    """Per-class intra-class similarity for each set (left), means and inter-class similarity (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sets)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    for name in names:
        per = sets[name]["per_class"]
        ax1.plot(range(len(per)), list(per.values()), marker="o", ms=4, lw=1.2, label=name)
    first = sets[names[0]]["per_class"]
    ax1.set_xticks(range(len(first)))
    ax1.set_xticklabels(list(first), rotation=60, ha="right", fontsize=7)
    ax1.set_ylabel("intra-class cosine similarity\n(to class centroid; lower = more diverse)")
    ax1.set_title("per class")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    xs = range(len(names))
    intra = [sets[n]["intra_class_mean"] for n in names]
    err = [sets[n]["intra_class_std"] for n in names]
    inter = [sets[n]["inter_class_centroid_cosine"] for n in names]
    w = 0.38
    b1 = ax2.bar([x - w / 2 for x in xs], intra, w, yerr=err, capsize=3, label="intra-class (mean over classes)")
    b2 = ax2.bar([x + w / 2 for x in xs], inter, w, hatch="//", alpha=0.7, label="inter-class centroids")
    for bars, errs in ((b1, err), (b2, [0.0] * len(names))):
        for bar, e in zip(bars, errs):
            ax2.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + e + 0.01, f"{bar.get_height():.3f}",
                     ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax2.set_ylim(0, 1.25)
    ax2.set_title("mean")
    ax2.legend(fontsize=7, loc="upper left", ncol=1)
    fig.suptitle(f"Diversity of distilled sets (cosine similarity of {model_desc} features)", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    return out_png


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    check_output_file(args.output, "--output")
    out_png = check_output_file(args.plot or Path(args.output).with_suffix(".png"),
                                "--plot" if args.plot else "--output")
    check_output(args.output, STAGE, args.force, kind="file", flag="--output")
    check_output(out_png, STAGE, args.force, kind="file", manifest_file=args.output,  # ours when the JSON is
                 flag="--plot" if args.plot else "--output")
    paths = [Path(p) for p in args.syn_data_path]
    names = args.names or [p.name for p in paths]
    if len(names) != len(paths):
        raise UserError(f"--names has {len(names)} entries for {len(paths)} --syn-data-path sets")
    if len(set(names)) != len(names):
        raise UserError("set names must differ (pass --names)")
    device = device_from_args(args)
    model_path = args.model_path or args.teacher_path
    first = load_distilled(paths[0], args.ipc)
    model, meta = load_model(model_path, arch=args.arch_name, classes=first.classes, device=device)
    layer = classifier_layer(model)
    model_info = {"path": str(model_path), "sha256": sha256_file(model_path), "arch": meta["arch"],
                  "role": "teacher" if args.model_path is None else "model", "input_size": meta["input_size"],
                  "layer": f"input of `{classifier_name(model)}` (Linear {layer.in_features}->{layer.out_features}),"
                           f" flattened", "feature_dim": layer.in_features,
                  "preprocess": f"whole image resized to {meta['input_size']}, normalised with the model's mean/std"}
    sets = {}
    for name, path in zip(names, paths):
        data = first if path == paths[0] else load_distilled(path, args.ipc)
        if data.classes != first.classes:
            raise UserError(f"{path}: class folders differ from {paths[0]}")
        images = [Image.fromarray(a) for a in data.arrays]
        feats = extract_features(model, images, meta["input_size"], meta["mean"], meta["std"], device,
                                 args.batch_size)
        labels = torch.as_tensor(data.labels)
        intra = intra_class_cosine(feats, labels, len(data.classes))
        inter = inter_class_cosine(class_centroids(feats, labels, len(data.classes)))
        valid = intra[~intra.isnan()]
        sets[name] = {"path": str(path), "num_images": len(data), "ipc": data.ipc,
                      "per_class": {c: float(v) for c, v in zip(data.classes, intra)},
                      "intra_class_mean": float(valid.mean()),
                      "intra_class_std": float(valid.std()) if len(valid) > 1 else 0.0,
                      "inter_class_centroid_cosine": inter}
        print(f"{name}: intra-class cosine {sets[name]['intra_class_mean']:.4f} +- {sets[name]['intra_class_std']:.4f}"
              f" (lower = more diverse), inter-class centroid cosine {inter:.4f}")
    plot_diversity(sets, out_png, f"{meta['arch']} penultimate")
    result = {"stage": STAGE, "model": model_info, "sets": sets, "plot": str(out_png),
              "manifest": build_manifest(STAGE, args, inputs={"model": model_path})}
    atomic_write_json(args.output, result)
    print(f"diversity: {args.output}, plot {out_png}")
    return result
