"""squeeze: train and check a supervised teacher on any ImageFolder dataset.

    python -m squeeze --dataset tinyimagenet --data-path DATA --arch-name resnet18_modified \
        --input-size 64 --epochs 50 --output teacher.pth

The torchvision classification-reference recipe: SGD with momentum, linear
warm-up then cosine (stepped per iteration), RandomCrop-with-padding + flip for
small inputs or RandomResizedCrop + flip, optional label smoothing, AMP on CUDA
(bf16 where the GPU has it, else fp16 with a GradScaler), optional ``--compile``.
Every epoch writes ``<output>.state/last.pth`` (model, optimiser, scheduler, epoch) beside the
output (``common.run.state``); the same command run again continues from it and gives the
same weights as an uninterrupted run,
because each epoch's shuffling is seeded from (seed, epoch) and each image's
augmentation from (seed, epoch, image index).
The final teacher (``"model"`` + ``"meta"`` with val_top1) goes to ``--output``
and its metrics to ``<output>.json``.

Under torchrun (``torchrun --nproc_per_node=N -m squeeze ...``) the model is wrapped in
DistributedDataParallel and every process reads a disjoint share of each epoch's
permutation (DistributedSampler): ``--batch-size`` is PER PROCESS, so the global batch
is ``--batch-size x WORLD_SIZE`` and an epoch has ``len(train) // global batch`` steps.
``--lr`` is used as given; scale it with the global batch as you see fit (e.g. linearly).
With the same global batch and a model without batch statistics the N-process run
equals the one-process run up to float rounding; BatchNorm layers normalise per process
unless ``--sync-bn`` (CUDA). Rank 0 writes every file; ``--resume`` is exact for the
same world size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.argtypes import (
    float_range,
    momentum_float,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
)
from common.cli.entry import module_doc, require_paths
from common.cli.errors import UserError
from common.cli.flags import add_data_args, add_device_args
from common.run.state import add_run_args

# (this module is torch-free: ``python -m squeeze --help`` and input errors answer before torch is imported)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "root with train/ and val/ ImageFolder trees", "conv3",
                  "conv3..conv6, resnet18_modified, any torchvision name",
                  dataset_help="registry name (cifar10, tinyimagenet, imagenet-nette, ...)")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=0.05)
    p.add_argument("--momentum", type=momentum_float, default=0.9)
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4)
    p.add_argument("--warmup-epochs", type=nonneg_float, default=2, help="linear warm-up length (epochs)")
    p.add_argument("--warmup-start", type=float_range(0, 1, lo_open=True), default=0.01,
                   help="warm-up starts at lr * this")
    p.add_argument("--label-smoothing", type=float_range(0, 1, hi_open=True), default=0.0)
    p.add_argument("--train-aug", choices=["auto", "crop", "rrc"], default="auto",
                   help="crop: RandomCrop(pad)+flip; rrc: RandomResizedCrop+flip; auto: crop up to 32px")
    p.add_argument("--workers", type=nonneg_int, default=None,
                   help="DataLoader workers (default: 0 on CPU; on CUDA all cores but one, up to 16)")
    p.add_argument("--cache", choices=["auto", "yes", "no"], default="auto",
                   help="decode the training images once into memory (auto: up to 60k images)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="check every image (train and val) first and skip (and list) corrupt ones instead of stopping")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA: bf16, or fp16 + GradScaler on GPUs without bf16; "
                        "on CPU only with native bf16, else fp32 with a warning)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (falls back to eager with a warning if compiling fails)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: SyncBatchNorm (batch statistics over all processes; CUDA only)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--output", required=True, help="teacher checkpoint to write (e.g. runs/teacher.pth)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from <output>.last.pth (or the given training checkpoint)")
    p.add_argument("--max-epochs-this-run", type=positive_int, default=None,
                   help="stop after this many epochs (the run can be resumed); for tests and time-boxed jobs")
    add_device_args(p)
    add_run_args(p)
    return p


def check_paths(args: argparse.Namespace) -> None:
    """--data-path must hold train/ and val/; a named --resume checkpoint must exist."""
    data = Path(args.data_path)
    require_paths(args, [("data_path", "--data-path")])
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees "
                        f"(python -m common.prepare writes them)")
    if args.resume not in (None, "auto"):
        require_paths(args, [("resume", "--resume")])


# -------------------- python -m squeeze.evaluate

def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.evaluate", description=module_doc("squeeze.evaluate"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch-path", required=True, help="checkpoint to evaluate (ours, RDED, SRe2L or torchvision)")
    p.add_argument("--data-path", required=True, help="data root with val/ (or a val folder itself)")
    p.add_argument("--arch-name", default=None, help="architecture, when the checkpoint does not record it")
    p.add_argument("--dataset", default="custom")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=nonneg_int, default=2)
    p.add_argument("--output", default=None, help="write the result as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --output this command did not write")
    add_device_args(p)
    return p


def check_evaluate(args: argparse.Namespace) -> None:
    """The checkpoint and the data folder must exist."""
    require_paths(args, [("arch_path", "--arch-path"), ("data_path", "--data-path")])


# -------------------- python -m squeeze.class_stats

def class_stats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.class_stats", description=module_doc("squeeze.class_stats"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch-path", required=True, help="the teacher checkpoint whose BN inputs are recorded")
    p.add_argument("--data-path", required=True,
                   help="the real training ImageFolder (or a root holding train/)")
    p.add_argument("--output", required=True, help="the statistics file to write (e.g. runs/class_stats.pt)")
    p.add_argument("--arch-name", default=None, help="architecture, when the checkpoint does not record it")
    p.add_argument("--dataset", default="custom")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--save-every", type=positive_int, default=20,
                   help="save the running sums every N batches (resume point; default: %(default)s)")
    add_device_args(p)
    add_run_args(p)
    return p


def check_class_stats(args: argparse.Namespace) -> None:
    """The checkpoint and the data folder must exist."""
    require_paths(args, [("arch_path", "--arch-path")], kind="file")
    require_paths(args, [("data_path", "--data-path")], kind="dir")
