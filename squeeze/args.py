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
    int_range,
    momentum_float,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from common.cli.entry import module_doc, require_paths
from common.cli.errors import UserError
from common.cli.flags import add_curve_args, add_data_args, add_device_args
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
                   help="continue from the run state <output>.state/last.pth (the same command continues "
                        "anyway), or from the given training checkpoint")
    p.add_argument("--max-epochs-this-run", type=positive_int, default=None,
                   help="stop after this many epochs (the run can be resumed); for tests and time-boxed jobs")
    add_device_args(p)
    add_run_args(p)
    add_curve_args(p)
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


# -------------------- python -m squeeze.linear_probe

def linear_probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.linear_probe", description=module_doc("squeeze.linear_probe"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="squeeze.ssl output or a released MoCo/SwAV/DINO checkpoint")
    p.add_argument("--arch-name", default=None, help="backbone architecture (default: from the checkpoint's meta)")
    p.add_argument("--linear-path", default=None,
                   help="a released linear classifier to load instead of training one (MoCo lincls fc.*, "
                        "DINO/SwAV linear.*)")
    p.add_argument("--dataset", default="custom", help="registry name (normalisation, default input size)")
    p.add_argument("--data-path", required=True, help="root with train/ and val/ ImageFolder trees")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: the backbone's, else the dataset's")
    p.add_argument("--epochs", type=positive_int, default=90,
                   help="default: %(default)s (MoCo v3 linear probe); unused with a released classifier")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per SGD step, all processes together under torchrun (default: %(default)s)")
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


def check_linear_probe(args: argparse.Namespace) -> None:
    """The backbone, the released classifier and the data root (with train/ and val/) must exist."""
    require_paths(args, [("backbone", "--backbone"), ("linear_path", "--linear-path")], kind="file")
    require_paths(args, [("data_path", "--data-path")], kind="dir")
    data = Path(args.data_path)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees")


# -------------------- python -m squeeze.ssl

def ssl_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.ssl", description=module_doc("squeeze.ssl"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "root with train/ (labels unused) and val/ (kNN check)", "resnet18_modified",
                  "conv3..conv6, resnet18_modified, resnet50, ...")
    p.add_argument("--epochs", type=positive_int, default=200, help="MoCo v2: 200 (default: %(default)s)")
    p.add_argument("--batch-size", type=int_range(2), default=256,
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
    add_curve_args(p)
    return p


def check_ssl(args: argparse.Namespace) -> None:
    """The data root must exist; a named --resume checkpoint too."""
    require_paths(args, [("data_path", "--data-path")], kind="dir")
    if args.resume not in (None, "auto"):
        require_paths(args, [("resume", "--resume")], kind="file")


# -------------------- python -m squeeze.bn_stats

def bn_stats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.bn_stats", description=module_doc("squeeze.bn_stats"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="one or more checkpoints to compare")
    p.add_argument("--names", nargs="+", default=None, help="a label per checkpoint (default: file stems)")
    p.add_argument("--output", default=None,
                   help="write <output>.csv, .json and .png (default: print the table only)")
    p.add_argument("--title", default="BatchNorm running statistics: spread across channels per layer")
    add_run_args(p)
    return p


def check_bn_stats(args: argparse.Namespace) -> None:
    """Every checkpoint must be a file; one name per checkpoint, all distinct."""
    for c in args.checkpoints:
        p = Path(c)
        if not p.exists():
            raise UserError(f"{p}: checkpoint file not found")
        if not p.is_file():
            raise UserError(f"{p}: a checkpoint must be a file, this is a folder")
    names = args.names or [Path(c).stem for c in args.checkpoints]
    if len(names) != len(args.checkpoints):
        raise UserError(f"--names: {len(names)} name(s) for {len(args.checkpoints)} checkpoint(s); give one each")
    if len(set(names)) != len(names):
        raise UserError("--names: names must be distinct (pass --names when files share a stem)")


# -------------------- python -m squeeze.trajectories

def trajectories_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.trajectories", description=module_doc("squeeze.trajectories"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "root with train/ and val/ ImageFolder trees", "conv3_in",
                  "expert architecture (conv3_in; conv4_in for 64 px)", arch_flag="--arch")
    p.add_argument("--num-experts", type=positive_int, default=100, help="(released README: 100)")
    p.add_argument("--epochs", type=positive_int, default=100, help="training epochs per expert (released README: 100)")
    p.add_argument("--lr-teacher", type=positive_float, default=0.01)
    p.add_argument("--momentum", type=momentum_float, default=0.0)
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    p.add_argument("--batch-train", type=positive_int, default=256)
    p.add_argument("--zca", action="store_true", help="train on ZCA-whitened images (fit saved as zca.pt)")
    p.add_argument("--dsa-strategy", default="color_crop_cutout_flip_scale_rotate",
                   help="DSA ops ('none' disables augmentation)")
    p.add_argument("--difficulty", default=None,
                   help="per-class easy-to-hard order file (rank_select.difficulty); enables the curriculum")
    p.add_argument("--init-ratio", type=float_range(0, 1, lo_open=True), default=0.75)
    p.add_argument("--add-end-epoch", type=nonneg_int, default=20)
    p.add_argument("--rm-epoch-first", type=nonneg_int, default=40)
    p.add_argument("--rm-epoch-second", type=nonneg_int, default=60)
    p.add_argument("--rm-easy-ratio-first", type=float_range(0, 1, hi_open=True), default=0.1)
    p.add_argument("--rm-easy-ratio-second", type=float_range(0, 1, hi_open=True), default=0.2)
    p.add_argument("--num-shards", type=positive_int, default=None, help="split experts across this many processes")
    p.add_argument("--shard-index", type=nonneg_int, default=None, help="this process's shard (0-based)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--max-epochs-this-run", type=positive_int, default=None,
                   help="stop each expert after this many epochs in this run (resume later); for time-boxed jobs")
    p.add_argument("--output-dir", required=True, help="directory of expert_XXX.pt files and manifest.json")
    add_device_args(p)
    add_run_args(p)
    return p


def check_trajectories(args: argparse.Namespace) -> None:
    """--data-path must hold train/ and val/; --difficulty, when given, must be a file."""
    data = Path(args.data_path)
    require_paths(args, [("data_path", "--data-path")])
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise UserError(f"{data}: --data-path must contain train/ and val/ ImageFolder trees")
    require_paths(args, [("difficulty", "--difficulty")], kind="file")


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
