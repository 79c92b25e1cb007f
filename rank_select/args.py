"""rank_select: DELT's initialisation. Score every training image with a ranker, pick IPC per class.

    python -m rank_select --dataset tinyimagenet --data-path DATA/train \
        --ranker-path runs/teacher.pth --ranking-file runs/ranking.csv \
        --output-path runs/init_medium_ipc50 --ipc 50 --selection-criteria medium

Scores are computed under the val transform with the ranker's own normalisation
and input size (from its checkpoint). The ranking CSV (``path`` relative to the
data root, ``class``, ``label``, ``score`` = p(true class), ``loss`` = cross-entropy,
``margin`` = true-class logit minus the largest other logit, ``pred``, ``el2n`` =
||softmax - onehot||_2), sorted by class then score descending, is written when
missing or with ``--rerank`` and reused otherwise, after checking it lists exactly
the data root's files and classes. Selected images are copied byte for byte to
``OUT/<class>/<rank>_<original name>``; ``OUT/manifest.json`` lists them with scores.
A long scoring run saves its progress every ``--save-every`` seconds to
``<ranking-file>.partial.pt`` (``.OUT.scores.partial.pt`` without a ranking file) and
a re-run with the same ranker and data resumes from it.

Under torchrun (``torchrun --nproc_per_node=N -m rank_select ...``) process r scores
images r, r + N, ... (saving progress to its own ``.rankRofN`` partial file); the scores
are gathered by rank 0, which alone writes the ranking CSV and the selection: the same
CSV as one process, up to float rounding of near-ties.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from common.cli.argtypes import momentum_float, nonneg_float, positive_float, positive_int, seed_int
from common.cli.entry import module_doc, require_paths
from common.cli.flags import add_data_args, add_device_args, add_workers_arg
from common.run.state import add_run_args

# torch-free: ``python -m rank_select --help`` and input errors answer before torch is imported
CRITERIA = ("top", "min", "medium", "random", "herding", "kcenter")  # rank_select.select.select_indices
# the criteria that select on the ranker's penultimate features (rank_select.coreset), not on scores
FEATURE_CRITERIA = ("herding", "kcenter")


def add_model_args(p: argparse.ArgumentParser, role: str, aliases: Sequence[str] = ()) -> None:
    """``--<role>-path`` (checkpoint), ``--<role>-arch`` (+ aliases) and ``--<role>-weights``."""
    p.add_argument(f"--{role}-path", default=None,
                   help=f"{role} checkpoint (from squeeze, or an RDED/SRe2L-style {{'model': state_dict}} file)")
    p.add_argument(f"--{role}-arch", *aliases, dest=f"{role}_arch", default=None,
                   help="architecture; read from the checkpoint's meta when it records one")
    p.add_argument(f"--{role}-weights", default=None,
                   help=f"local weights file (e.g. torchvision ImageNet weights) used with --{role}-arch")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rank_select", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="custom", help="registry name (tinyimagenet, cifar10, imagenet-1k, ...)")
    p.add_argument("--data-path", required=True, help="training ImageFolder tree to select from")
    add_model_args(p, "ranker")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: the ranker checkpoint's input size")
    p.add_argument("--ranking-file", default=None,
                   help="ranking CSV: written when missing (or with --rerank), reused otherwise "
                        "(default: OUT/ranking.csv, always re-scored)")
    p.add_argument("--rerank", action="store_true", help="score again even if --ranking-file exists")
    p.add_argument("--store-rank-file", action="store_true",
                   help="accepted for the released scripts; the ranking file is always stored")
    p.add_argument("--output-path", required=True, help="output ImageFolder of the selected images")
    p.add_argument("--ipc", type=positive_int, default=50, help="images per class")
    p.add_argument("--selection-criteria", choices=CRITERIA, default="medium",
                   help="medium (DELT default), top, min, random (seeded baseline), or the classic coresets on the "
                        "ranker's penultimate features, per class: herding (greedy mean matching) or kcenter "
                        "(k-center greedy)")
    p.add_argument("--allow-fewer", action="store_true", help="take all images of a class smaller than --ipc")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random criterion")
    p.add_argument("--batch-size", type=positive_int, default=256)
    add_workers_arg(p)
    p.add_argument("--save-every", type=nonneg_float, default=120.0,
                   help="seconds between saves of scoring progress (resume after interruption)")
    add_device_args(p)
    add_run_args(p)
    return p


def check_paths(args: argparse.Namespace) -> None:
    """The data folder and the ranker checkpoint (or weights) must exist."""
    require_paths(args, [("data_path", "--data-path"), ("ranker_path", "--ranker-path"),
                         ("ranker_weights", "--ranker-weights")])


# -------------------- python -m rank_select.patches

def patches_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rank_select.patches", description=module_doc("rank_select.patches"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", "--subset", dest="dataset", default="custom",
                   help="registry name (tinyimagenet, cifar10, imagenet-1k, ...); --subset as in RDED")
    p.add_argument("--data-path", "--train-dir", dest="data_path", required=True,
                   help="training ImageFolder tree (real images to crop)")
    add_model_args(p, "observer", aliases=("--arch-name",))
    p.add_argument("--arch-path", dest="observer_path", help=argparse.SUPPRESS)
    p.add_argument("--output-path", "--syn-data-path", dest="output_path", required=True,
                   help="output ImageFolder of the stitched images")
    p.add_argument("--ipc", type=positive_int, default=10, help="images per class")
    p.add_argument("--mipc", type=positive_int, default=300, help="real images per class in the candidate pool")
    p.add_argument("--num-crop", type=positive_int, default=5, help="random crops scored per pool image")
    p.add_argument("--factor", type=positive_int, default=1,
                   help="stitch factor x factor patches per image (2 for ImageNet-scale data, 1 for CIFAR/Tiny)")
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="default: the observer checkpoint's input size")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=500,
                   help="crops per observer forward pass")
    add_workers_arg(p)
    p.add_argument("--save-format", choices=["png", "jpg"], default="png",
                   help="png (lossless, default) or jpg (quality 75, as the released sets)")
    p.add_argument("--allow-fewer", action="store_true",
                   help="write fewer images for a class whose pool is smaller than ipc * factor^2")
    add_device_args(p)
    add_run_args(p)
    return p


def check_patches(args: argparse.Namespace) -> None:
    """The data folder and the observer checkpoint (or weights) must exist."""
    require_paths(args, [("data_path", "--data-path"), ("observer_path", "--observer-path"),
                         ("observer_weights", "--observer-weights")])


# -------------------- python -m rank_select.difficulty

def difficulty_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rank_select.difficulty",
                                description=module_doc("rank_select.difficulty"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "training ImageFolder tree to score", "conv3_in",
                  "model trained briefly for the scores (default: %(default)s)", arch_flag="--arch")
    p.add_argument("--num-models", type=positive_int, default=4, help="k models whose scores are averaged")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs of each model before scoring")
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
    add_run_args(p)
    return p


def check_difficulty(args: argparse.Namespace) -> None:
    """The training folder must exist."""
    require_paths(args, [("data_path", "--data-path")], kind="dir")
