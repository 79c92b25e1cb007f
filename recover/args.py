"""``python -m recover``'s flags and input-path checks, torch-free: ``--help``, argument errors and a
missing input path answer before torch is imported (``common.cli.entry.run_stage``)."""
from __future__ import annotations

import argparse

from common.cli.argtypes import (
    float_range,
    int_range,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from common.cli.entry import require_paths
from common.cli.errors import UserError
from common.cli.flags import ArchNames, add_curve_args, add_device_args, check_arch_names  # shared with relabel_eval
from common.run.state import add_run_args

EASY2HARD_MODES = ("step", "linear", "cosine")  # CDA's crop curriculum shapes (recover.augment.min_crop_scale)
BN_MATCH_MODES = ("global", "class", "mix")  # recover.losses.BNStatLoss


def size_list(text: str) -> tuple[int, ...]:
    """``200,224,200,224`` -> (200, 224, 200, 224): one positive size per stage."""
    try:
        sizes = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated pixel sizes such as 200,224,200,224, "
                                         f"not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"every stage size must be a positive integer, not {text!r}")
    return sizes


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("recover: SRe2L / CDA / DELT (EarlyLate) image synthesis", add_help=True)
    g = p.add_argument_group("data")
    g.add_argument("--init-data-path", default=None,
                   help="init ImageFolder (e.g. rank_select output); its first IPC files per class are the init")
    g.add_argument("--train-data-path", default=None,
                   help="training ImageFolder, for the class folder names when --init noise")
    g.add_argument("--syn-data-path", default="./syn-data", help="where to write (default: %(default)s)")
    g.add_argument("--exp-name", default=None, help="sub-folder of --syn-data-path for this run (as released)")
    g.add_argument("--init", choices=("real", "noise"), default=None,
                   help="real: from --init-data-path (DELT); noise: N(0,1) in normalised space (SRe2L, CDA); "
                        "default real when --init-data-path is given")
    g.add_argument("--dataset", default="custom", help="dataset registry name (warnings, default input size)")
    g.add_argument("--num-classes", type=positive_int, default=None,
                   help="accepted for compatibility; checked if given")
    g.add_argument("--ipc", type=positive_int, default=50, help="images per class (default: %(default)s)")
    g.add_argument("--save-format", choices=("png", "jpg"), default="png",
                   help="png (lossless, default) or jpg (quality 75, as the released code)")
    g.add_argument("--store-best-images", action="store_true",
                   help="accepted for compatibility: the last iterate is always saved")
    g = p.add_argument_group("teacher")
    g.add_argument("--arch-name", nargs="+", action=ArchNames, default=None, metavar="NAME",
                   help="teacher architecture (default: the one the checkpoint records); with several --arch-path, "
                        "one name per path in the same order (e.g. torchvision's bare weight files, which record "
                        "none); a name that contradicts a checkpoint's recorded architecture is an error")
    g.add_argument("--arch-path", nargs="+", default=None, metavar="PATH",
                   help="teacher checkpoint (required); several: used in turn, iteration it uses teacher it %% n "
                        "(FADRM+), each with its --arch-name or the architecture its checkpoint records")
    g.add_argument("--input-size", type=positive_int, default=None, help="default: the teacher's input size")
    g = p.add_argument_group("EarlyLate")
    g.add_argument("--use-early-late", action="store_true", help="DELT's EarlyLate rounds (needs --round-iterations)")
    g.add_argument("--round-iterations", type=nonneg_int, default=0, help="RI: iterations per round (0: no rounds)")
    g.add_argument("--min-iterations", type=int_range(-1), default=-1,
                   help="with RI: draw each class's rounds from [MIN//RI, ITR//RI] (seeded); -1: all ITR//RI")
    g.add_argument("--round-lr-reset", action="store_true", help="restart the lr cosine every round")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iteration", type=positive_int, default=1000, help="ITR: iterations (default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=100,
                   help="images optimised together; whole classes per batch (default: %(default)s)")
    g.add_argument("--lr", type=positive_float, default=0.1, help="Adam lr, cosine to 0 (default: %(default)s)")
    g.add_argument("--r-bn", type=nonneg_float, default=0.05,
                   help="BN statistic loss weight (default: %(default)s)")
    g.add_argument("--first-bn-multiplier", type=nonneg_float, default=10.0,
                   help="weight of the first BN (default: 10)")
    g.add_argument("--jitter", type=nonneg_int, default=32, help="max roll offset in pixels (default: %(default)s)")
    g.add_argument("--easy2hard-mode", choices=EASY2HARD_MODES, default="cosine", help="CDA crop curriculum")
    g.add_argument("--milestone", type=unit_float, default=0.0,
                   help="fraction of the iterations the curriculum lasts; 0 = off (default: %(default)s)")
    g.add_argument("--per-image-augment", action="store_true",
                   help="a crop/flip/roll per image (default: one per batch, as released)")
    g.add_argument("--seed", type=seed_int, default=0, help="seed; each batch derives its own from it (default: 0)")
    g = p.add_argument_group("FADRM: resolution stages and residual (docs/methods/fadrm.md)")
    g.add_argument("--stage-sizes", type=size_list, default=None, metavar="S1,S2,...",
                   help="optimise at each size in turn over equal shares of the iterations, resizing the images "
                        "between stages (FADRM: 200,224,200,224); the last must be the input size; Adam is rebuilt "
                        "each stage, one lr cosine over all iterations (default: one stage at the input size)")
    g.add_argument("--residual-alpha", type=unit_float, default=0.0, metavar="A",
                   help="at each stage boundary x <- (1-A) x + A x0, x0 the initial image at the new size "
                        "(FADRM: 0.5; needs --stage-sizes; default: %(default)s)")
    g = p.add_argument_group("class-aware BN matching (EDC; docs/methods/edc.md)")
    g.add_argument("--class-stats", nargs="+", default=None, metavar="FILE",
                   help="per-class BN statistics from python -m squeeze.class_stats, one file per teacher "
                        "(matched by the teacher's sha256)")
    g.add_argument("--bn-match", choices=BN_MATCH_MODES, default="global",
                   help="global: the running statistics; class: each class's images against its recorded class "
                        "statistics (summed over the classes in the batch); mix: (1-W) global + W class "
                        "(default: %(default)s)")
    g.add_argument("--class-bn-weight", type=unit_float, default=None, metavar="W",
                   help="W of --bn-match mix (EDC: 0.5; default: 0.5)")
    g.add_argument("--stats-momentum", type=float_range(0, 1, hi_open=True), default=0.0, metavar="M",
                   help="match an EMA of the batch statistics across iterations, ema <- M ema + (1-M) current "
                        "(EDC: 0.8); 0: off (default: %(default)s)")
    g = p.add_argument_group("execution")
    add_device_args(g)
    add_run_args(g)
    g.add_argument("--amp", action="store_true",
                   help="mixed precision for the teacher: bf16 (fp16 + GradScaler on GPUs without bf16); on a CPU "
                        "without native bf16 (AVX512-BF16/AMX) it warns and runs fp32")
    g.add_argument("--num-shards", type=positive_int, default=None,
                   help="split classes over N processes (default: WORLD_SIZE)")
    g.add_argument("--shard-index", type=nonneg_int, default=None, help="this process's shard (default: RANK)")
    g.add_argument("-j", "--workers", type=nonneg_int, default=0, help="accepted for compatibility (unused)")
    add_curve_args(g)
    return p


def check_paths(args: argparse.Namespace) -> None:
    """The teacher names match the teachers; every input path given must exist (the teacher, the init and
    train folders)."""
    check_arch_names(args)
    require_paths(args, [("arch_path", "--arch-path"), ("init_data_path", "--init-data-path"),
                         ("train_data_path", "--train-data-path"), ("class_stats", "--class-stats")])


# -------------------- python -m recover.trajectory_matching

def trajectory_matching_parser() -> argparse.ArgumentParser:
    from common.cli.argtypes import momentum_float
    from common.cli.entry import module_doc

    p = argparse.ArgumentParser(prog="python -m recover.trajectory_matching",
                                description=module_doc("recover.trajectory_matching"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", required=True, help="directory written by squeeze.trajectories")
    p.add_argument("--data-path", required=True, help="training ImageFolder (real images for initialisation)")
    p.add_argument("--output-path", required=True, help="output ImageFolder of the distilled images")
    p.add_argument("--ipc", type=positive_int, default=10)
    p.add_argument("--iterations", type=positive_int, default=5000)
    p.add_argument("--syn-steps", type=positive_int, default=80)
    p.add_argument("--expert-epochs", type=positive_int, default=2)
    p.add_argument("--min-start-epoch", type=nonneg_int, default=0)
    p.add_argument("--current-max-start-epoch", type=nonneg_int, default=None,
                   help="initial upper end of the start-epoch window (default: --max-start-epoch, no growth)")
    p.add_argument("--max-start-epoch", type=nonneg_int, default=20)
    p.add_argument("--expansion-end-epoch", type=nonneg_int, default=3000,
                   help="iteration at which the window reaches --max-start-epoch")
    p.add_argument("--batch-syn", type=positive_int, default=None, help="student batch (default: all synthetic images)")
    p.add_argument("--lr-img", type=positive_float, default=1000.0)
    p.add_argument("--lr-lr", type=nonneg_float, default=1e-5)
    p.add_argument("--lr-y", type=nonneg_float, default=2.0)
    p.add_argument("--momentum-y", type=momentum_float, default=0.9)
    p.add_argument("--lr-teacher", type=positive_float, default=0.01, help="initial student lr")
    p.add_argument("--mask", choices=["depth", "loss"], default="depth")
    p.add_argument("--depth-ratio", type=unit_float, default=0.5, help="fraction of shallowest parameters dropped")
    p.add_argument("--loss-ratio", type=unit_float, default=0.5, help="fraction of smallest-error entries dropped")
    p.add_argument("--threshold", type=positive_float, default=1.0, help="skip the update when the loss exceeds this")
    p.add_argument("--pix-init", choices=["correct", "real", "noise"], default="correct",
                   help="correct: real images the experts classify correctly (PAD); real: random real; noise")
    p.add_argument("--label-init", choices=["experts", "onehot"], default="experts",
                   help="experts: mean logits of the experts that are right (PAD/DATM); onehot: fixed hard labels")
    p.add_argument("--no-learn-labels", action="store_true", help="keep the initial labels fixed (MTT)")
    p.add_argument("--dsa-strategy", default="color_crop_cutout_flip_scale_rotate")
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    p.add_argument("--max-iterations-this-run", type=positive_int, default=None,
                   help="stop after this many iterations (the run resumes); for time-boxed jobs and tests")
    p.add_argument("--seed", type=seed_int, default=0)
    add_device_args(p)
    add_run_args(p)
    add_curve_args(p)
    return p


def check_trajectory_matching(args: argparse.Namespace) -> None:
    """--experts and --data-path must be folders; the ratios and the start-epoch window must make sense."""
    require_paths(args, [("experts", "--experts"), ("data_path", "--data-path")], kind="dir")
    for flag in ("depth_ratio", "loss_ratio"):
        if not getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be in [0, 1)")
    if args.max_start_epoch <= args.min_start_epoch:
        raise UserError("--max-start-epoch must be greater than --min-start-epoch")
