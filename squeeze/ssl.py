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

if __name__ == "__main__":  # --help, argument errors and missing paths before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("squeeze.args:ssl_parser", "squeeze.ssl"))

from common.cli.paths import check_output_file
from squeeze.args import check_ssl, ssl_parser

get_args_parser = ssl_parser  # torch-free, in squeeze.args


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)  # every numeric flag's range is checked here (common.cli.argtypes)
    check_ssl(args)
    check_output_file(args.output, "--output")
    from squeeze.ssl_train import pretrain

    return pretrain(args)
