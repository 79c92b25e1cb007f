"""Is relabel_eval's protocol the released one? Paired accuracy differences against a reference loop.

For every distilled set and seed, the same student architecture is trained on the same
set with the same teacher twice:

(a) a reference loop written the way the released DELT / RDED evaluation
    (``validation/main.py``) works: PIL images in memory (RDED's ``mem=True``), the
    released ImageFolder's per-class ``random.shuffle`` before taking IPC files, per-image
    timm RandAugment with the released hparams (``translate_const`` 117, ``img_mean``)
    -> ToTensor -> [rded: ShufflePatches(factor), transcribed] -> RandomResizedCrop ->
    RandomHorizontalFlip -> Normalize in a shuffling DataLoader; per batch CutMix in
    place (numpy / torch global RNGs), the extra no-grad train-mode student forward on
    the mixed batch (train accuracy), the teacher on the mixed batch, KL at T,
    ``.item()`` per batch; AdamW on the released ``get_parameters`` groups, LambdaLR
    half cosine stepped per epoch; PyTorch's BN momentum 0.1 (the extra forward makes it
    0.19 in effect). Validation as released (Resize(S // 7 * 8) + CenterCrop), on
    tensors prepared once so that it draws no random numbers;
(b) ``python -m relabel_eval`` (its ``main``), same flags, default protocol (BN momentum 0.19).

and ``(b) - (a)`` is reported per seed for the final top-1 and the best top-1 (best over
the epochs relabel_eval validates, 10, 20, ..., and the last; the release's DELT epochs
0, 10, 20, ... are also recorded for the reference), with the mean and standard error
over seeds. A difference within about two standard errors is noise. Optional arm (c):
relabel_eval with ``--no-bn-double-update``. Stdout: the table; ``--output``: JSON.

Only the RNG streams differ between (a) and (b): the seeds label pairs, they do not make
the two runs draw the same augmentations. Seeding: the release seeds ``random`` and
``torch`` only; the reference also seeds numpy so that runs repeat.

    python bench/protocol_check.py --set random=RND --set delt=SYN --val-dir VAL \\
        --teacher-path T.pth --stud-name conv3 --input-size 32 --ipc 10 --epochs 100 \\
        --seeds 1 2 3 4 5 [--rand-augment-config rand-m4-n3-mstd1.0] [--min-scale-crops 0.25] \\
        [--protocol rded --factor 2] --output runs/protocol_check.json
"""
from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("bench/protocol_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", action="append", required=True, metavar="NAME=PATH", help="distilled set (repeatable)")
    p.add_argument("--val-dir", required=True)
    p.add_argument("--teacher-path", required=True)
    p.add_argument("--stud-name", default="conv3")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[3407, 4663, 2897, 1, 2])
    p.add_argument("--rand-augment-config", default="rand-m4-n3-mstd1.0",
                   help="timm RandAugment string (Tiny-ImageNet's in DELT's scripts); 'none' to disable")
    p.add_argument("--min-scale-crops", type=float, default=None, help="delt: default 0.08 (DELT's scripts: 0.25)")
    p.add_argument("--protocol", choices=("delt", "rded"), default="delt")
    p.add_argument("--factor", type=int, default=None, help="rded: ShufflePatches factor")
    p.add_argument("--arms", default="ref,ours", help="comma list of ref, ours, ours_bn01 (ours with BN momentum 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None, help="results JSON")
    return p


# ---------------------------------------------------------------- the reference loop (released style)

def released_get_parameters(model):
    """The release's ``get_parameters``: decay for names containing 'weight' with ndim > 1."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if name.find("weight") >= 0 and len(p.size()) > 1 else no_decay).append(p)
    return [dict(params=decay), dict(params=no_decay, weight_decay=0.0)]


class ReleasedShufflePatches:
    """RDED's ``ShufflePatches`` (validation/utils.py), transcribed: python's random.shuffle on strips."""

    def __init__(self, factor: int):
        self.factor = factor

    def _shuffle_weight(self, img):
        import torch

        h, w = img.shape[1:]
        tw = w // self.factor
        patches = []
        for i in range(self.factor):
            i = i * tw
            patches.append(img[..., i:i + tw] if i != self.factor - 1 else img[..., i:])
        random.shuffle(patches)
        return torch.cat(patches, -1)

    def __call__(self, img):
        img = self._shuffle_weight(img).permute(0, 2, 1)
        return self._shuffle_weight(img).permute(0, 2, 1)


class MemImageFolder:
    """The released ImageFolder (``mem=True``, ``shuffle=True``): per class folder (sorted), the
    file list in ``os.listdir`` order shuffled with python's random, first IPC files kept."""

    def __init__(self, root: Path, ipc: int, transform):
        import os

        from PIL import Image

        self.transform, self.samples, self.targets = transform, [], []
        dirs = sorted(d for d in os.listdir(root) if (root / d).is_dir())
        for c, d in enumerate(dirs):
            files = os.listdir(root / d)
            random.shuffle(files)
            for f in files[:ipc]:
                with Image.open(root / d / f) as im:
                    self.samples.append(im.convert("RGB"))
                self.targets.append(c)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(self.samples[i]), self.targets[i]


def released_rand_augment(config: str):
    """timm RandAugment with the released hparams. Pillow >= 13 refuses 0-bit posterize, which timm
    asks for at low magnitudes; the release ran on Pillow <= 12, where it gave a black image, so that
    one op is swapped for relabel_eval's Pillow-12 equivalent (the only shared code in the reference)."""
    from timm.data import auto_augment as aa

    from relabel_eval.augment import posterize_like_pillow12

    tfm = aa.rand_augment_transform(config_str=config, hparams={"translate_const": 117, "img_mean": (124, 116, 104)})
    for op in tfm.ops:
        if op.aug_fn is aa.posterize:
            op.aug_fn = posterize_like_pillow12
    return tfm


def run_reference(syn: Path, val_x, val_y, teacher, stud_name: str, num_classes: int, args, seed: int,
                  batch_size: int, lr: float, mean, std) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision.transforms as T
    from torch.optim.lr_scheduler import LambdaLR

    from bench.eval_speed import ref_cutmix
    from models import build_model

    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    dev = torch.device(args.device)
    student = build_model(stud_name, num_classes, args.input_size).to(dev).train()
    augment = []
    if args.protocol == "delt" and args.rand_augment_config.lower() != "none":
        augment.append(released_rand_augment(args.rand_augment_config))
    augment.append(T.ToTensor())
    if args.protocol == "rded":
        augment.append(ReleasedShufflePatches(args.factor))
        scale = (1 / args.factor, 1.0)
    else:
        scale = (args.min_scale_crops if args.min_scale_crops is not None else 0.08, 1.0)
    augment += [T.RandomResizedCrop(size=args.input_size, scale=scale, antialias=True), T.RandomHorizontalFlip(),
                T.Normalize(mean=mean, std=std)]
    ds = MemImageFolder(syn, args.ipc, T.Compose(augment))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    optimizer = torch.optim.AdamW(released_get_parameters(student), lr=lr, betas=[0.9, 0.999], weight_decay=0.01)
    E = args.epochs
    scheduler = LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / E / 2)) if step <= E else 0)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    temperature = 20.0
    history = []
    t0 = time.perf_counter()
    for epoch in range(E):
        teacher.eval()
        student.train()
        objs = top1 = n_seen = 0.0
        for images, labels in loader:
            with torch.no_grad():
                images, labels = images.to(dev), labels.to(dev)
                mix_images = ref_cutmix(images)  # in place: images is mix_images
                pred_label = student(images)  # the extra forward (train mode: a second BN update)
                soft_mix_label = F.softmax(teacher(mix_images) / temperature, dim=1)
            optimizer.zero_grad()
            prec1 = (pred_label.argmax(1) == labels).float().mean() * 100
            pred_mix_label = student(mix_images)
            loss = kl(F.log_softmax(pred_mix_label / temperature, dim=1), soft_mix_label)
            loss.backward()
            optimizer.step()
            n = images.size(0)
            objs += loss.item() * n
            top1 += prec1.item() * n
            n_seen += n
        rec = {"epoch": epoch + 1, "loss": objs / n_seen, "train_top1": top1 / n_seen}
        if epoch % 10 == 0 or epoch % 10 == 9 or epoch == E - 1:  # release (DELT) epochs and ours
            student.eval()
            with torch.no_grad():
                correct = sum(int((student(val_x[s:s + 256].to(dev)).argmax(1) == val_y[s:s + 256].to(dev)).sum())
                              for s in range(0, len(val_y), 256))
            student.train()
            rec["val_top1"] = 100.0 * correct / len(val_y)
        history.append(rec)
        scheduler.step()
    dt = time.perf_counter() - t0
    ours_epochs = [h for h in history if "val_top1" in h and (h["epoch"] % 10 == 0 or h["epoch"] == E)]
    delt_epochs = [h for h in history if "val_top1" in h and ((h["epoch"] - 1) % 10 == 0 or h["epoch"] == E)]
    return {"seed": seed, "final_top1": history[-1]["val_top1"],
            "best_top1": max(h["val_top1"] for h in ours_epochs),
            "best_top1_release_epochs": max(h["val_top1"] for h in delt_epochs),
            "train_time_s": dt, "history": history}


def released_val_tensors(val_dir: Path, classes, size: int, mean, std):
    """The release's validation transform, applied once: Resize(size // 7 * 8) + CenterCrop(size)."""
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.Resize(size // 7 * 8, antialias=True), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(mean=mean, std=std)])
    ds = ImageFolder(str(val_dir), transform=tf)
    if list(ds.classes) != list(classes):
        raise SystemExit(f"error: {val_dir}: class folders differ from the distilled set's")
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), torch.tensor(ys)


# ---------------------------------------------------------------- relabel_eval

def run_ours(syn: Path, args, seed: int, tmp: Path, extra: list[str]) -> dict:
    from relabel_eval import train as train_mod

    argv = ["--syn-data-path", str(syn), "--val-dir", str(args.val_dir), "--teacher-path", str(args.teacher_path),
            "--stud-name", args.stud_name, "--input-size", str(args.input_size), "--ipc", str(args.ipc),
            "--re-epochs", str(args.epochs), "--seed", str(seed), "--workers", "0", "--device", args.device,
            "--protocol", args.protocol, "--output", str(tmp / f"ours_{seed}_{len(extra)}.json"), "--no-resume",
            *extra]
    if args.protocol == "rded":
        argv += ["--factor", str(args.factor)]
    elif args.min_scale_crops is not None:
        argv += ["--min-scale-crops", str(args.min_scale_crops)]
    if args.protocol == "delt" and args.rand_augment_config.lower() != "none":
        argv += ["--use-rand-augment", "--rand-augment-config", args.rand_augment_config]
    with contextlib.redirect_stdout(sys.stderr):  # relabel_eval's own summary lines: logs here
        res = train_mod.main(argv)
    run = res["students"][args.stud_name]["runs"][0]
    return {"seed": seed, "final_top1": run["final_top1"], "best_top1": run["best_top1"],
            "train_time_s": run["train_time_s"], "bn_double_update": res["protocol"]["bn_double_update"],
            "history": run["history"]}


def paired(a: list[float], b: list[float]) -> dict:
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1)) if n > 1 else float("nan")
    return {"diffs": d, "mean": m, "sd": sd, "se": sd / math.sqrt(n) if n > 1 else float("nan"), "n": n}


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.protocol == "rded" and not args.factor:
        raise SystemExit("error: --protocol rded needs --factor")
    import torch

    from common.data.imagefolder import find_classes
    from models import load_model
    from relabel_eval.protocol import adamw_lr_for, auto_batch_size

    torch.set_num_threads(args.threads)
    sets = []
    for s in args.set:
        name, _, path = s.partition("=")
        if not path or not Path(path).is_dir():
            raise SystemExit(f"error: --set {s}: expected NAME=PATH to a distilled-set folder")
        sets.append((name, Path(path)))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="protocol_check_"))
    out = {"args": vars(args), "sets": {}}
    for name, syn in sets:
        classes = find_classes(syn)
        teacher, meta = load_model(args.teacher_path, classes=classes, device=args.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        mean, std = list(meta["mean"]), list(meta["std"])
        val_x, val_y = released_val_tensors(Path(args.val_dir), classes, args.input_size, mean, std)
        bs = auto_batch_size(args.ipc, len(classes))
        lr = adamw_lr_for(args.stud_name)[0]
        res = {a: [] for a in arms}
        for seed in args.seeds:
            for arm in arms:
                print(f"[{name}] seed {seed}: {arm} ...", file=sys.stderr, flush=True)
                if arm == "ref":
                    r = run_reference(syn, val_x, val_y, teacher, args.stud_name, len(classes), args, seed, bs, lr,
                                      mean, std)
                elif arm == "ours":
                    r = run_ours(syn, args, seed, tmp, [])
                elif arm == "ours_bn01":
                    r = run_ours(syn, args, seed, tmp, ["--no-bn-double-update"])
                else:
                    raise SystemExit(f"error: --arms: unknown arm {arm}")
                res[arm].append(r)
                print(f"[{name}] seed {seed}: {arm} final {r['final_top1']:.2f} best {r['best_top1']:.2f} "
                      f"({r['train_time_s']:.0f} s)", file=sys.stderr, flush=True)
        entry = {"path": str(syn), "batch_size": bs, "lr": lr, "runs": res, "paired": {}}
        for arm in arms:
            if arm == "ref" or "ref" not in arms:
                continue
            entry["paired"][f"{arm}-ref"] = {
                m: paired([r[m] for r in res["ref"]], [r[m] for r in res[arm]]) for m in ("final_top1", "best_top1")}
        out["sets"][name] = entry
    print(f"protocol check: {args.stud_name} at {args.input_size}px, IPC {args.ipc}, {args.epochs} epochs, protocol "
          f"{args.protocol}, seeds {args.seeds}; teacher {args.teacher_path}")
    print("| set | arm | final top-1 mean | best top-1 mean | paired diff final (mean +- SE) | "
          "paired diff best (mean +- SE) |")
    print("|---|---|---|---|---|---|")
    for name, entry in out["sets"].items():
        for arm in arms:
            rs = entry["runs"][arm]
            fm = sum(r["final_top1"] for r in rs) / len(rs)
            bm = sum(r["best_top1"] for r in rs) / len(rs)
            pd = entry["paired"].get(f"{arm}-ref")
            cells = ["-", "-"] if pd is None else [f"{pd[m]['mean']:+.2f} +- {pd[m]['se']:.2f}"
                                                   for m in ("final_top1", "best_top1")]
            print(f"| {name} | {arm} | {fm:.2f} | {bm:.2f} | {cells[0]} | {cells[1]} |")
    if args.output:
        from common.run.atomic import atomic_write_json

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.output), out)
        print(f"results: {args.output}")
    return out


if __name__ == "__main__":
    main()
