"""DD-Ranking's own soft-label evaluation (Label-Robust Score) beside ours, on CPU.

The ``ddranking`` package (PyPI, 0.2.0) is a bench-only dependency, not in requirements.txt:
its metadata pins numpy < 2 and scipy < 1.16 (this project runs numpy 2), so install it
without its dependencies into a folder of its own and point ``--ddranking-path`` at it::

    pip install --no-deps --target runs/ddranking_pkg ddranking==0.2.0
    python bench/ddranking_check.py --syn-data-path SYN --data-root DATA --teacher-path T.pth \\
        --ipc 10 --epochs 40 --ddranking-path runs/ddranking_pkg [--ddr-dataset TinyImageNet] --output R.json

1. ``python -m relabel_eval.export --format ddranking`` on SYN (``images.pt``: normalised tensors,
   class after class, IPC each; ``images/``; ``labels.pt``: teacher logits).
2. Ours: ``python -m relabel_eval`` on SYN (soft, hard) and on a random real subset of
   ``DATA/train`` at the same IPC (soft), same epochs, one seed; the full-data hard-label
   accuracy is the teacher's validation top-1 recorded in its checkpoint (a conv3 trained with
   hard labels on all of ``DATA/train``); then ``relabel_eval.baselines.dd_ranking``.
3. DD-Ranking: ``LabelRobustScoreSoft.compute_metrics(image_tensor=images.pt)`` configured through
   its public options only: ``dataset`` (``--ddr-dataset``; ``real_data_path=DATA``),
   ``model_name='ConvNet-3-BN'`` (this project's conv3 has its module layout, so the teacher's
   weights load; a teacher of fewer classes than the dataset gets logits -1e4 for the others,
   which leaves its softmax unchanged), ``soft_label_mode='M'`` (the teacher online on the CutMix
   batch, as in our protocol), KL at our temperature, AdamW + half cosine, ``random_data_format=
   'image'``, ``custom_train_trans`` / ``custom_val_trans`` resizing to the input size,
   ``eval_full_data=False`` with the same full-data accuracy in its public
   ``ddranking.utils.REAL_DATA_ACC_CACHE``, ``device='cpu'``, ``num_eval=1``. It tunes the lr over
   its list for the hard-label and random runs and reports the best accuracy seen (every 20 epochs).

Where DD-Ranking cannot score the data the script says why (before spending CPU) and prints ours.
Scale: the package computes IOR / HLR in percent points and feeds them to exp(); the paper's LRS
takes fractions. Both are printed (``LRS (package)`` as returned; ``LRS (fractions)`` from its IOR
and HLR / 100, which is what ``relabel_eval.baselines`` computes).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DDR_CLASSES = {"TinyImageNet": 200, "CIFAR10": 10, "CIFAR100": 100}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("bench/ddranking_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--syn-data-path", required=True)
    p.add_argument("--data-root", required=True, help="real data with train/ and val/")
    p.add_argument("--teacher-path", required=True)
    p.add_argument("--ddr-dataset", choices=sorted(DDR_CLASSES), default="TinyImageNet",
                   help="the DD-Ranking dataset name DATA is read as (default: %(default)s)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=40, help="training epochs (DD-Ranking validates every 20)")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--temperature", type=float, default=20.0)
    p.add_argument("--ddranking-path", default=None, help="folder holding the ddranking package (pip --target)")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--output", default=None, help="results JSON")
    return p


def lrs(alpha: float) -> float:
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def ddranking_blocker(args) -> str | None:
    """Why DD-Ranking 0.2.0 cannot score this data, found before spending CPU on it (None: it can)."""
    from common.data.imagefolder import find_classes

    n = DDR_CLASSES[args.ddr_dataset]
    if args.ddr_dataset != "TinyImageNet":
        return None  # torchvision's CIFAR files under DATA (DD-Ranking passes download=True)
    found = len(find_classes(Path(args.data_root) / "train"))
    if found == n:
        return None
    return (f"ddranking 0.2.0 reads an ImageFolder only as dataset='TinyImageNet', fixed at {n} classes "
            f"({args.data_root}/train has {found}): compute_metrics' random baseline samples IPC images from "
            f"each of the {n} classes and stops ('Sample larger than population') on the missing ones. Its "
            f"other ImageFolder path, the 10-class ImageNet subsets (dataset='ImageNette' etc.), stops in "
            f"LabelRobustScoreSoft.__init__ ('Subset' object has no attribute 'targets'); GeneralEvaluator "
            f"never fills its accuracy list; soft_label_mode='S' calls get_random_data_tensors with shifted "
            f"arguments. No public option avoids these, and CIFAR needs torchvision's downloaded files.")


def run_ddranking(args, work: Path, images, full_hard_pct: float, size: int, mean, std, lr: float) -> dict:
    import torch
    import torchvision.transforms as T

    if args.ddranking_path:
        sys.path.insert(0, str(Path(args.ddranking_path).resolve()))
    import ddranking.utils as ddu
    from ddranking.metrics import LabelRobustScoreSoft

    from models import load_model

    n = DDR_CLASSES[args.ddr_dataset]
    teacher, _ = load_model(args.teacher_path)
    sd = teacher.state_dict()
    k = sd["classifier.weight"].shape[0]
    if k < n:
        w, b = torch.zeros(n, sd["classifier.weight"].shape[1]), torch.full((n,), -1e4)
        w[:k], b[:k] = sd["classifier.weight"], sd["classifier.bias"]
        sd["classifier.weight"], sd["classifier.bias"] = w, b
    tdir = work / "teachers" / args.ddr_dataset / "ConvNet-3-BN"
    tdir.mkdir(parents=True, exist_ok=True)
    torch.save(sd, tdir / "ckpt_best.pt")
    ddu.REAL_DATA_ACC_CACHE[f"{args.ddr_dataset}-ConvNet-3-BN"] = full_hard_pct
    tf = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    ev = LabelRobustScoreSoft(
        dataset=args.ddr_dataset, real_data_path=str(args.data_root), ipc=args.ipc, model_name="ConvNet-3-BN",
        soft_label_criterion="kl", loss_fn_kwargs={"temperature": args.temperature, "scale_loss": False},
        data_aug_func="cutmix", aug_params={"beta": 1.0}, soft_label_mode="M", optimizer="adamw",
        lr_scheduler="cosine", weight_decay=0.01, momentum=(0.9, 0.999), num_eval=1, im_size=(size, size),
        num_epochs=args.epochs, use_zca=False, random_data_format="image",
        random_data_path=str(work / "ddr_random"), real_batch_size=256, syn_batch_size=50,
        save_path=str(work / "ddr_scores.csv"), eval_full_data=False, num_workers=0,
        teacher_dir=str(work / "teachers"), teacher_model_names=["ConvNet-3-BN"], custom_train_trans=tf,
        custom_val_trans=tf, device="cpu", dist=False)
    return ev.compute_metrics(image_tensor=images, syn_lr=lr)


def run_ours(args, work: Path) -> dict:
    from relabel_eval import baselines
    from relabel_eval import train as train_mod

    common = ["--val-dir", str(Path(args.data_root) / "val"), "--teacher-path", str(args.teacher_path),
              "--ipc", str(args.ipc), "--re-epochs", str(args.epochs), "--seed", str(args.seed), "--workers", "0",
              "--device", "cpu", "--no-resume"]
    rnd = baselines.random_subset(Path(args.data_root) / "train", args.ipc, 0, work / "random_real")
    out = {}
    for key, syn, mode in (("syn_soft", args.syn_data_path, "soft"), ("syn_hard", args.syn_data_path, "hard"),
                           ("random_soft", rnd, "soft")):
        res = train_mod.main(["--syn-data-path", str(syn), "--label-mode", mode, *common,
                              "--output", str(work / f"ours_{key}.json")])
        run = next(iter(res["students"].values()))["runs"][0]
        out[key] = {"final": run["final_top1"], "best": run["best_top1"]}
    return out


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    import torch

    from common.run.atomic import atomic_write_json
    from models import load_model
    from relabel_eval import export as export_mod
    from relabel_eval.baselines import dd_ranking
    from relabel_eval.protocol import adamw_lr_for

    torch.set_num_threads(1)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ddranking_check_"))
    work.mkdir(parents=True, exist_ok=True)
    _, meta = load_model(args.teacher_path)
    full_hard = meta.get("val_top1")
    if full_hard is None:
        raise SystemExit(f"error: {args.teacher_path}: no val_top1 recorded; the full-data accuracy is needed")
    with contextlib.redirect_stdout(sys.stderr):
        m = export_mod.main(["--format", "ddranking", "--syn-data-path", str(args.syn_data_path), "--output-dir",
                             str(work / "export"), "--ipc", str(args.ipc), "--teacher-path", str(args.teacher_path)])
        ours = run_ours(args, work)
    images = torch.load(work / "export" / "images.pt")
    blocker = ddranking_blocker(args)
    ddr = None
    if blocker is None:
        with contextlib.redirect_stdout(sys.stderr):
            ddr = run_ddranking(args, work, images, float(full_hard), m["input_size"], m["mean"], m["std"],
                                adamw_lr_for("conv3")[0])
    res = {"full_hard_top1": full_hard, "epochs": args.epochs, "ipc": args.ipc, "ours": ours, "ddranking": ddr,
           "ddranking_blocker": blocker, "export": str(work / "export")}
    for metric in ("final", "best"):
        res[f"ours_scores_{metric}"] = dd_ranking(ours["syn_soft"][metric] / 100, ours["random_soft"][metric] / 100,
                                                  ours["syn_hard"][metric] / 100, full_hard / 100)
    print(f"DD-Ranking check: {args.syn_data_path}, IPC {args.ipc}, {args.epochs} epochs, conv3 at "
          f"{m['input_size']}px, full-data hard top-1 {full_hard:.2f} (teacher)")
    print("| evaluator | IOR (pts) | HLR (pts) | LRS (package) | LRS (fractions) |")
    print("|---|---|---|---|---|")
    if ddr is not None:
        ior, hlr = ddr["improvement_over_random_mean"], ddr["hard_label_recovery_mean"]
        res["ddranking_lrs_fractions"] = lrs(0.5 * ior / 100 - 0.5 * hlr / 100)
        print(f"| ddranking 0.2.0 (best acc, lr tuned) | {ior:+.2f} | {hlr:+.2f} | "
              f"{ddr['label_robust_score_mean']:.4f} | {res['ddranking_lrs_fractions']:.4f} |")
    else:
        print("| ddranking 0.2.0 | cannot run on this data (below) | | | |")
    for metric in ("final", "best"):
        s = res[f"ours_scores_{metric}"]
        print(f"| relabel_eval ({metric} acc) | {100 * s['IOR']:+.2f} | {100 * s['HLR']:+.2f} | - | {s['LRS']:.4f} |")
    print("ours: " + ", ".join(f"{k} final {v['final']:.2f} best {v['best']:.2f}" for k, v in ours.items()))
    if blocker:
        print(f"ddranking: {blocker}")
    if args.output:
        atomic_write_json(Path(args.output), res)
        print(f"results: {args.output}")
    return res


if __name__ == "__main__":
    main()
