"""squeeze.linear_probe: a linear classifier on a frozen self-supervised backbone (SC-DD's teacher).

    python -m squeeze.linear_probe --backbone runs/ssl_conv3.pth --data-path DATA --output runs/scdd_teacher.pth
    python -m squeeze.linear_probe --backbone moco_v2_800ep_pretrain.pth.tar --arch-name resnet50 \\
        --dataset imagenet-1k --data-path IMAGENET --output runs/mocov2_r50_probe.pth
    python -m squeeze.linear_probe --backbone dino_resnet50_pretrain.pth --linear-path \\
        dino_resnet50_linearweights.pth --arch-name resnet50 --data-path IMAGENET --output runs/dino_r50.pth

The backbone is ``python -m squeeze.ssl`` output or a released MoCo v2/v3, SwAV or DINO file
(key mapping in ``models/external_ssl.py``). It stays in eval mode and frozen throughout,
so its BatchNorm running statistics -- what recovery matches -- stay the self-supervised
ones, bit for bit (checked before writing). The classifier is trained with SGD (momentum
0.9, no weight decay, cosine, weights from N(0, 0.01) as MoCo's ``main_lincls.py``), or
taken from a released linear classifier (``--linear-path``, or the ``fc`` a MoCo ``lincls``
file carries). ``--train-aug none`` computes the frozen features once and trains on them
(the same result as running the frozen backbone every epoch on unaugmented images, in a
fraction of the time). A trained classifier is checkpointed every epoch in
``<output>.state/probe.pt`` (common.run.state): the same command continues a killed run.

The output is a normal teacher checkpoint (``"model"`` + ``"meta"``, with
``meta["teacher_kind"] = "ssl-linear-probe"`` and ``meta["ssl_method"]``): rank_select,
recover, relabel_eval and squeeze.evaluate take it as they take a supervised teacher.
"""
from __future__ import annotations

import argparse
import sys

from common.cli.argtypes import momentum_float, nonneg_float, nonneg_int, positive_float, positive_int, seed_int
from common.cli.errors import run_cli
from common.cli.flags import add_device_args
from common.cli.paths import check_output_file
from common.run.state import add_run_args


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.linear_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="squeeze.ssl output or a released MoCo/SwAV/DINO checkpoint")
    p.add_argument("--arch-name", default=None, help="backbone architecture (default: from the checkpoint's meta)")
    p.add_argument("--linear-path", default=None,
                   help="a released linear classifier to load instead of training one (MoCo lincls fc.*, "
                        "DINO/SwAV linear.*)")
    p.add_argument("--dataset", default="custom", help="registry name (normalisation, default input size)")
    p.add_argument("--data-path", required=True, help="root with train/ and val/ ImageFolder trees")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: the backbone's, else the dataset's")
    p.add_argument("--epochs", type=nonneg_int, default=90, help="default: %(default)s (MoCo v3 linear probe)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--lr", type=positive_float, default=0.1, help="SGD lr, cosine to 0 (default: %(default)s)")
    p.add_argument("--momentum", type=momentum_float, default=0.9)
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    p.add_argument("--train-aug", choices=["none", "auto", "crop", "rrc"], default="auto",
                   help="none: frozen features computed once (fast); auto: crop up to 32 px, else rrc")
    p.add_argument("--workers", type=nonneg_int, default=None,
                   help="DataLoader workers (default: 0 on CPU; on CUDA all cores but one, up to 16)")
    p.add_argument("--cache", choices=["auto", "yes", "no"], default="auto",
                   help="decode the training images once into memory (auto: up to 60k images)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--output", required=True, help="teacher checkpoint to write (.pth)")
    p.add_argument("--max-epochs-this-run", type=positive_int, default=None,
                   help="stop after this many epochs (the same command continues); for tests and time-boxed jobs")
    add_device_args(p)
    add_run_args(p)
    return p


def main(argv=None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)  # every numeric flag's range is checked here (common.cli.argtypes)
    check_output_file(args.output, "--output")
    from squeeze.probe import train_probe

    return train_probe(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
