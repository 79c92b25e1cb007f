"""Per-class BatchNorm statistics of a teacher on the real training set (EDC's category-aware matching).

    python -m squeeze.class_stats --arch-path teacher.pth --data-path DATA/train --output class_stats.pt

One pass over the training images (val transform: resize and centre crop, no randomness) with
the teacher in eval mode. For every BatchNorm2d layer (module order, downsample BNs included)
and every class c, the per-channel mean and biased variance of that layer's INPUT over all
(image, row, column) positions of the class's images: exactly what ``torch.var_mean(x_c,
dim=(0, 2, 3), correction=0)`` gives on the concatenated inputs of class c (sums in float64).
``python -m recover --class-stats FILE --bn-match class|mix`` matches each class's images in a
batch against them (docs/methods/edc.md).

Output: ``FILE`` (loadable with ``torch.load(weights_only=True)``): ``{"format", "meta" (a JSON
string: teacher sha256, arch, input size, classes, layer names and channels, images per class),
"mean": [tensor (classes, C_l) per layer], "var": [...], "images": tensor (classes,)}``, and
``FILE.json`` (the manifest). Resumable: the running sums are saved every ``--save-every``
batches in ``FILE.state/``; the same command continues from them and gives the same file.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("squeeze.args:class_stats_parser", "squeeze.class_stats"))

import json
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from common.cli.errors import UserError
from common.cli.paths import check_output_file
from common.compute.device import device_from_args
from common.data.datasets import get_dataset
from common.data.imagefolder import ImageFolder, find_classes
from common.data.transforms import val_transform
from common.run.atomic import atomic_path, atomic_write_json
from common.run.manifest import build_manifest, sha256_file
from common.run.safe_load import safe_torch_load
from common.run.state import RunState, check_output, fingerprint
from models import load_model
from recover.losses import named_bn_layers
from squeeze.args import class_stats_parser

STAGE = "squeeze.class_stats"
FORMAT = "class_stats/1"
NOT_RESULT = {"arch_path", "data_path", "output", "save_every", "dataset", "arch_name"}

get_args_parser = class_stats_parser  # torch-free, in squeeze.args


def train_root(data_path: str | Path) -> Path:
    """``DATA/train`` when it exists, else ``DATA`` itself (a bare training folder)."""
    p = Path(data_path)
    return p / "train" if (p / "train").is_dir() else p


class Accumulator:
    """Per layer and class: float64 sums of x and x^2 over (H, W) of each image, and image counts."""

    def __init__(self, channels: Sequence[int], num_classes: int):
        self.s1 = [torch.zeros(num_classes, c, dtype=torch.float64) for c in channels]
        self.s2 = [torch.zeros(num_classes, c, dtype=torch.float64) for c in channels]
        self.pixels = [0] * len(channels)  # H * W at each layer (the same for every image)
        self.images = torch.zeros(num_classes, dtype=torch.float64)
        self.labels: torch.Tensor | None = None

    def hook(self, k: int):
        def pre_hook(module, inputs):
            x = inputs[0].detach().to(torch.float64)
            self.pixels[k] = x.shape[2] * x.shape[3]
            y = self.labels.to(x.device)  # already there: no copy
            self.s1[k] = self.s1[k].to(x.device).index_add_(0, y, x.sum(dim=(2, 3)))
            self.s2[k] = self.s2[k].to(x.device).index_add_(0, y, x.square().sum(dim=(2, 3)))
        return pre_hook

    def state(self, batches_done: int) -> dict:
        return {"s1": [t.cpu() for t in self.s1], "s2": [t.cpu() for t in self.s2], "pixels": list(self.pixels),
                "images": self.images.cpu(), "batches_done": batches_done}

    def load(self, st: dict) -> int:
        self.s1, self.s2 = list(st["s1"]), list(st["s2"])
        self.pixels, self.images = list(st["pixels"]), st["images"]
        return int(st["batches_done"])

    def result(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        means, variances = [], []
        for s1, s2, hw in zip(self.s1, self.s2, self.pixels):
            n = (self.images * hw).to(s1.device).unsqueeze(1)
            mean = s1 / n
            means.append(mean.float().cpu())
            variances.append((s2 / n - mean.square()).clamp_min_(0).float().cpu())
        return means, variances


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    out = check_output_file(args.output, "--output")
    manifest_path = out.with_name(out.name + ".json")
    check_output(out, STAGE, args.force, kind="file", manifest_file=manifest_path, flag="--output")
    get_dataset(args.dataset)
    root = train_root(args.data_path)
    classes = find_classes(root, "training folder")
    device = device_from_args(args)
    model, meta = load_model(args.arch_path, args.arch_name, classes=classes, input_size=args.input_size,
                             device=device)
    model.eval()
    layers = named_bn_layers(model)
    if not layers:
        raise UserError(f"{args.arch_path}: the teacher ({meta['arch']}) has no BatchNorm2d layer: no statistics "
                        f"to record")
    size = int(args.input_size or meta["input_size"])
    ds = ImageFolder(root, val_transform(size, meta["mean"], meta["std"]), classes=classes, what="--data-path")
    counts = torch.bincount(torch.tensor([lab for _, lab in ds.samples]), minlength=len(classes))
    if int(counts.min()) == 0:
        empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
        raise UserError(f"{root}: class folder(s) {', '.join(empty[:3])} hold no image; every class needs images")
    teacher_sha = sha256_file(args.arch_path)
    file_list = json.dumps([str(Path(p).relative_to(root)) for p, _ in ds.samples])
    import hashlib

    settings = fingerprint(args, NOT_RESULT, teacher_sha256=teacher_sha, classes=classes, input_size=size,
                           files_sha256=hashlib.sha256(file_list.encode()).hexdigest())
    run = RunState(out, STAGE, settings, restart=args.restart)
    acc = Accumulator([m.num_features for _, m in layers], len(classes))
    handles = [m.register_forward_pre_hook(acc.hook(k)) for k, (_, m) in enumerate(layers)]
    partial = run.path("partial.pt")
    start = 0
    if run.resumed and partial.is_file():
        start = acc.load(safe_torch_load(partial, what="the class statistics' resume state",
                                         advice="pass --restart to discard it"))
    batch = args.batch_size
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(min(start * batch, len(ds)), len(ds))),
                                         batch_size=batch, shuffle=False, num_workers=args.workers)
    total = (len(ds) + batch - 1) // batch
    t0 = time.perf_counter()
    with run.running():
        done = start
        with torch.no_grad():
            for x, y in tqdm(loader, total=total - start, desc="class_stats", unit="batch", mininterval=2.0):
                acc.labels = y.to(device)  # once per batch, not per BN layer
                acc.images.index_add_(0, y, torch.ones(len(y), dtype=torch.float64))
                model(x.to(device))
                done += 1
                if done % args.save_every == 0 and done < total:
                    with atomic_path(partial) as tmp:
                        torch.save(acc.state(done), tmp)
        for h in handles:
            h.remove()
        means, variances = acc.result()
        info = {"stage": STAGE, "format": FORMAT, "teacher_sha256": teacher_sha, "teacher": str(args.arch_path),
                "arch": meta["arch"], "input_size": size, "mean": list(meta["mean"]), "std": list(meta["std"]),
                "classes": list(classes), "layers": [{"name": n, "channels": m.num_features} for n, m in layers],
                "images_per_class": [int(c) for c in counts], "data": str(root), "transform": "val",
                "statistic": "per-channel mean and biased variance of each BatchNorm2d input over (N, H, W) "
                             "of the class's images"}
        with atomic_path(out) as tmp:
            torch.save({"format": FORMAT, "meta": json.dumps(info), "mean": means, "var": variances,
                        "images": counts.to(torch.float64)}, tmp)
        manifest = build_manifest(STAGE, args, inputs={"teacher": args.arch_path}, output=str(out), settings=settings,
                                  **{k: v for k, v in info.items() if k not in ("stage",)},
                                  seconds=round(time.perf_counter() - t0, 3))
        atomic_write_json(manifest_path, manifest)
    run.finish()
    print(f"{out}: per-class statistics of {len(layers)} BN layer(s) x {len(classes)} classes from {len(ds)} "
          f"images ({time.perf_counter() - t0:.1f} s)")
    return manifest


# ---------------------------------------------------------------------------------------------
# reading (recover --class-stats)
# ---------------------------------------------------------------------------------------------
def recorded_teacher(path: str | Path) -> str | None:
    """The teacher sha256 a class-statistics file records, None when it cannot be read safely."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
        return json.loads(obj["meta"]).get("teacher_sha256")
    except Exception:  # unsafe, unreadable or foreign: read_class_stats says which
        return None


def read_class_stats(path: str | Path, teacher_sha256: str, classes: Sequence[str],
                     layers: Sequence[tuple[str, int]], flag: str = "--class-stats") -> tuple[list, list, dict]:
    """Load and check a class-statistics file against a teacher: its sha256, its class list and its
    BN layers (name, channels). Returns (means, variances, meta); any mismatch is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found (python -m squeeze.class_stats writes it)")
    obj = safe_torch_load(path, what=f"{flag} file", advice="write it with python -m squeeze.class_stats")
    bad = f"{flag} {path}: not a class-statistics file of python -m squeeze.class_stats"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("meta"), str):
        raise UserError(bad)
    try:
        meta = json.loads(obj["meta"])
    except ValueError:
        raise UserError(bad + " (unreadable meta)") from None
    means, variances = obj.get("mean"), obj.get("var")
    if not isinstance(means, list) or not isinstance(variances, list) or not isinstance(meta, dict):
        raise UserError(bad)
    if meta.get("teacher_sha256") != teacher_sha256:
        raise UserError(f"{flag} {path}: recorded with another teacher (sha256 {str(meta.get('teacher_sha256'))[:12]}"
                        f"..., this teacher's is {teacher_sha256[:12]}...); run python -m squeeze.class_stats with "
                        f"this teacher")
    if list(meta.get("classes") or []) != list(classes):
        raise UserError(f"{flag} {path}: its class list ({len(meta.get('classes') or [])} classes) differs from the "
                        f"data's ({len(classes)}); record it on the same training classes")
    if len(means) != len(layers) or len(variances) != len(layers):
        raise UserError(f"{flag} {path}: statistics for {len(means)} BN layer(s), the teacher has {len(layers)}")
    for k, ((name, ch), m, v) in enumerate(zip(layers, means, variances)):
        want = (len(classes), ch)
        for what, t in (("mean", m), ("var", v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want or not t.is_floating_point():
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise UserError(f"{flag} {path}: {what} of BN layer {k} ({name}) has shape {got}, expected {want}")
            if not torch.isfinite(t).all() or (what == "var" and bool((t < 0).any())):
                raise UserError(f"{flag} {path}: {what} of BN layer {k} ({name}) holds non-finite or negative values")
    return [m.float() for m in means], [v.float() for v in variances], meta
