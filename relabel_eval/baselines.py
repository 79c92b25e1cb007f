"""Baselines every distilled set must be compared with, and DD-Ranking's scores.

``python -m relabel_eval.baselines random --train-dir TRAIN --ipc 10 --seed 0 --output-dir SUBSET [-- EVAL ARGS]``
    writes a seeded random subset of real training images (an ImageFolder with IPC
    images per class) and, given evaluation arguments after ``--``, evaluates it with
    ``python -m relabel_eval`` under exactly the same protocol as a distilled set.
``python -m relabel_eval.baselines full --train-dir TRAIN -- EVAL ARGS``
    the full-data hard-label reference: the same student trained on all of TRAIN
    with cross-entropy on the class labels.
``python -m relabel_eval.baselines ddranking --syn-soft A.json --random-soft B.json \\
        --syn-hard C.json --full-hard D.json``
    DD-Ranking from results files: IOR = acc(syn) - acc(random) (same soft-label
    protocol), HLR = acc(full, hard) - acc(syn, hard), alpha = w IOR - (1 - w) HLR
    (w = 0.5), LRS = (e^alpha - e^-1) / (e - e^-1); accuracies as fractions.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help, argument errors and missing paths before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("relabel_eval.args:baselines_parser", "relabel_eval.baselines"))

import math
import shutil
import sys
from pathlib import Path
from typing import Sequence

from common.cli.errors import UserError
from common.cli.paths import check_output_dir, check_output_file
from common.data.imagefolder import find_classes, list_class_files, load_rgb, random_real_indices
from common.run.atomic import atomic_dir, atomic_write_json
from common.run.manifest import build_manifest, read_manifest, write_manifest
from common.run.state import check_not_inside, check_output
from relabel_eval.args import baselines_parser, check_baselines
from relabel_eval.results import headline_accuracy

STAGE = "relabel_eval.baselines"


get_args_parser = baselines_parser  # torch-free, in relabel_eval.args


def dd_ranking(syn_soft: float, random_soft: float, syn_hard: float, full_hard: float,
               weight: float = 0.5) -> dict:
    """DD-Ranking scores from accuracies given as fractions in [0, 1]."""
    ior = syn_soft - random_soft
    hlr = full_hard - syn_hard
    alpha = weight * ior - (1.0 - weight) * hlr
    lrs = (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))
    return {"IOR": ior, "HLR": hlr, "alpha": alpha, "LRS": lrs}


def dd_ars(syn_aug: float, random_aug: float, syn_noaug: float, random_noaug: float, weight: float = 0.5) -> dict:
    """DD-Ranking's augmentation-robust score (ddranking 0.2.0's ``AugmentationRobustScore``), accuracies as
    fractions: beta = w (syn - random, with augmentation) + (1 - w) (syn - random, without), and
    ARS = (e^beta - e^-1) / (e - e^-1), the same squashing as LRS."""
    with_aug, without_aug = syn_aug - random_aug, syn_noaug - random_noaug
    beta = weight * with_aug + (1.0 - weight) * without_aug
    ars = (math.exp(beta) - math.exp(-1.0)) / (math.e - math.exp(-1.0))
    return {"with_aug": with_aug, "without_aug": without_aug, "beta": beta, "ARS": ars}


def random_subset(train_dir: str | Path, ipc: int, seed: int, output_dir: str | Path, force: bool = False) -> Path:
    """Copy ``ipc`` seeded-random images per class into ``output_dir`` (reused when already made alike)."""
    train_dir, out = Path(train_dir), Path(output_dir)
    if ipc < 1:
        raise UserError("--ipc must be at least 1")
    check_not_inside(out, train_dir, "--output-dir", "--train-dir")
    check_output(out, STAGE, force, flag="--output-dir")
    classes = find_classes(train_dir, "--train-dir")
    picks = {}
    for k, cls in enumerate(classes):
        files = list_class_files(train_dir / cls)
        if len(files) < ipc:
            raise UserError(f"{train_dir / cls}: only {len(files)} image(s) in this class but --ipc {ipc}")
        picks[cls] = sorted(files[i] for i in random_real_indices(len(files), ipc, seed, k))
    old = read_manifest(out) if out.is_dir() else None
    if old and old.get("stage") == STAGE and old.get("selection") == picks:
        print(f"{out}: random subset already there (seed {seed}, IPC {ipc})", file=sys.stderr)
        return out
    for cls, names in picks.items():  # a corrupt pick stops here, before anything is written
        for name in names:
            load_rgb(train_dir / cls / name)
    with atomic_dir(out) as tmp:
        for cls, names in picks.items():
            (tmp / cls).mkdir()
            for name in names:
                shutil.copy2(train_dir / cls / name, tmp / cls / name)
        write_manifest(tmp, build_manifest(STAGE, {"train_dir": str(train_dir), "ipc": ipc, "seed": seed},
                                           method="random", selection=picks))
    print(f"random subset: {len(classes)} classes x {ipc} images (seed {seed}) -> {out}")
    return out


def _accuracy(path: str, flag: str, student: str | None, metric: str) -> float:
    """The headline accuracy of a results file as a fraction; a file that is not a relabel_eval results
    file, or an accuracy that is not a number in [0, 100], is one line naming the flag."""
    import json

    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # binary, not UTF-8, not JSON
        raise UserError(f"{path}: {flag} is not a readable JSON results file ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("students"), dict):
        raise UserError(f"{path}: {flag} is not a relabel_eval results file (no \"students\")")
    try:
        acc = headline_accuracy(path, student, metric)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path}: {flag} holds no {metric} summary for the student; is it a finished "
                        f"relabel_eval result?") from None
    if not math.isfinite(acc) or not 0.0 <= acc <= 100.0:
        raise UserError(f"{path}: {flag} records an accuracy of {acc} (not a number in [0, 100]); "
                        f"the run it comes from failed")
    return acc / 100.0


def _evaluate(eval_args: list[str], syn_path: Path, extra: list[str]) -> dict:
    from relabel_eval.train import main as eval_main

    if "--syn-data-path" in eval_args:
        raise UserError("do not pass --syn-data-path after --: the baseline sets it")
    return eval_main(["--syn-data-path", str(syn_path), *extra, *eval_args])


def main(argv: Sequence[str] | None = None):
    args = get_args_parser().parse_args(argv)
    check_baselines(args)
    if args.command == "random":
        check_output_dir(args.output_dir, "--output-dir")
        out = random_subset(args.train_dir, args.ipc, args.seed, args.output_dir, args.force)
        if args.eval_args:
            extra = [] if "--ipc" in args.eval_args else ["--ipc", str(args.ipc)]
            return _evaluate(args.eval_args, out, extra)
        return out
    if args.command == "full":
        if not args.eval_args:
            raise UserError("full: give the evaluation arguments after -- (at least --val-dir)")
        if "--label-mode" in args.eval_args:
            raise UserError("full: the reference always uses --label-mode hard; do not pass it")
        return _evaluate(args.eval_args, Path(args.train_dir), ["--label-mode", "hard"])
    if args.output:
        check_output_file(args.output, "--output")
    accs = {k: _accuracy(getattr(args, k), "--" + k.replace("_", "-"), args.student, args.metric)
            for k in ("syn_soft", "random_soft", "syn_hard", "full_hard")}
    scores = dd_ranking(accs["syn_soft"], accs["random_soft"], accs["syn_hard"], accs["full_hard"], args.weight)
    print("accuracies ({}): {}".format(args.metric, ", ".join(f"{k} {v * 100:.2f}%" for k, v in accs.items())))
    print("DD-Ranking: IOR {IOR:+.4f}  HLR {HLR:+.4f}  alpha {alpha:+.4f}  LRS {LRS:.4f}".format(**scores))
    result = {"stage": STAGE, "metric": args.metric, "weight": args.weight, "accuracies": accs, "scores": scores,
              "inputs": {k: getattr(args, k) for k in ("syn_soft", "random_soft", "syn_hard", "full_hard")}}
    if args.output:
        atomic_write_json(args.output, result)
    return result

