"""squeeze.ssl: self-supervised (MoCo v2) pre-training of a backbone, labels unused (SC-DD's squeeze).

    python -m squeeze.ssl --data-path DATA --arch-name resnet18_modified --input-size 32 \\
        --epochs 200 --output runs/ssl_r18.pth

The backbone is any registry model minus its classifier (conv3..conv6, resnet18_modified,
resnet18/50, any torchvision ResNet). MoCo v2 (Chen et al. 2020) on lightly's parts: two
augmented views (MoCo v2's augmentation, blur scaled to the input size, each view seeded
from (seed, epoch, image, view)), a momentum key encoder, a queue of negatives, InfoNCE at
temperature 0.2, SGD (momentum 0.9, weight decay 1e-4 on every parameter, as released)
with a cosine schedule and no warm-up.

Every epoch writes ``<output>.state/last.pth`` (model, optimiser, scheduler, queue, epoch,
history); running the same command again continues from it with the same weights as an
uninterrupted run, exactly as ``python -m squeeze`` does (common.run.state: other settings are
refused by name, ``--restart`` starts over). Under ``torchrun`` the query encoder trains with
DistributedDataParallel: ``--batch-size`` is per process, each process takes every N-th image
of the epoch's permutation, and the keys of every process enter the one queue.

Every ``--knn-every`` epochs (and at the end) a
weighted kNN classifier (k 200, T 0.1) on the frozen features of train/ scores val/, so one
sees the backbone learn. The result, ``--output``, holds the backbone alone
(``meta["teacher_kind"] = "ssl-backbone"``); ``python -m squeeze.linear_probe`` turns it
into a teacher. The report (loss curve, kNN accuracies) goes to ``<output>.json``.
"""
from __future__ import annotations

import argparse
import sys

from common.cli.argtypes import (
    float_range,
    momentum_float,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from common.cli.entry import run_stage
from common.cli.flags import add_data_args, add_device_args
from common.cli.paths import check_output_file
from common.run.state import add_run_args


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.ssl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "root with train/ (labels unused) and val/ (kNN check)", "resnet18_modified",
                  "conv3..conv6, resnet18_modified, resnet50, ...")
    p.add_argument("--epochs", type=positive_int, default=200, help="MoCo v2: 200 (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="per process (under torchrun the global batch is this x processes); default: %(default)s")
    p.add_argument("--lr", type=positive_float, default=0.03, help="SGD lr, cosine to 0 (MoCo v2: 0.03 at batch 256)")
    p.add_argument("--momentum", type=momentum_float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4)
    p.add_argument("--moco-momentum", type=momentum_float, default=0.999,
                   help="key-encoder EMA (MoCo v2: 0.999, for ~10^5+ steps; ~0.99 suits runs of a few thousand)")
    p.add_argument("--temperature", type=positive_float, default=0.2, help="InfoNCE temperature (MoCo v2: 0.2)")
    p.add_argument("--queue-size", type=positive_int, default=65536,
                   help="negatives in the queue (MoCo: 65536); capped at the number of training images")
    p.add_argument("--proj-hidden-dim", type=positive_int, default=2048, help="projection MLP hidden width")
    p.add_argument("--proj-dim", type=positive_int, default=128, help="projection output (MoCo: 128)")
    p.add_argument("--min-scale", type=float_range(0, 1, lo_open=True), default=0.2,
                   help="RandomResizedCrop min scale (MoCo v2: 0.2)")
    p.add_argument("--blur-prob", type=unit_float, default=0.5, help="Gaussian blur probability (MoCo v2: 0.5)")
    p.add_argument("--knn-every", type=nonneg_int, default=5,
                   help="kNN accuracy on val/ every N epochs (0: at the end)")
    p.add_argument("--workers", type=nonneg_int, default=None,
                   help="DataLoader workers (default: 0 on CPU; on CUDA all cores but one, up to 16)")
    p.add_argument("--cache", choices=["auto", "yes", "no"], default="auto",
                   help="decode the training images once into memory (auto: up to 60k images)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--output", required=True, help="backbone checkpoint to write (e.g. runs/ssl_conv3.pth)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from <output>.state/last.pth (the default when it exists) or the given checkpoint")
    p.add_argument("--max-epochs-this-run", type=positive_int, default=None,
                   help="stop after this many epochs (the run can be resumed); for tests and time-boxed jobs")
    add_run_args(p)
    add_device_args(p)
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)  # every numeric flag's range is checked here (common.cli.argtypes)
    if args.batch_size < 2:
        get_args_parser().error("argument --batch-size: must be >= 2 (MoCo contrasts the images of a batch)")
    check_output_file(args.output, "--output")
    from squeeze.ssl_train import pretrain

    return pretrain(args)


if __name__ == "__main__":
    sys.exit(run_stage("squeeze.ssl", "squeeze.ssl"))  # the parser here is torch-free: main imports torch
