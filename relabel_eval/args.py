"""``python -m relabel_eval``: train fresh students on a distilled set and validate them.

The DELT/RDED protocol (docs/methods/delt.md, "relabel_eval", and docs/stages/relabel_eval.md):
per-image RandAugment / RandomResizedCrop / flip, one CutMix box (or Mixup) per batch, the teacher in eval
mode on the mixed batch, ``KL(log_softmax(s/T) || softmax(t/T))`` batchmean, AdamW
with weight decay on conv/linear weights only, a half cosine stepped per epoch, and
DELT's batch-size table. ``--label-mode hard`` trains with (mixed) cross-entropy on
the class labels instead; ``--label-mode fkd`` replays stored soft labels
(``relabel_eval.relabel``). Reports the FINAL top-1/top-5 as the headline and the
best seen during training beside it, per seed and as mean +- std.

Under torchrun (``torchrun --nproc_per_node=N -m relabel_eval ...``), ``--seed-parallel``
chooses how the processes share the work: ``ddp`` (default) trains each seed with
DistributedDataParallel, every process taking every N-th image of each (global) batch of
the epoch plan plus its CutMix/Mixup partners, with the teacher replicated per process
and validation sharded and summed; ``ranks`` gives each process whole (student, seed)
runs, trained as in one process. The plan (order, crops, flips, RandAugment seeds, CutMix
boxes) is a function of (seed, epoch) only, so a run is reproducible for a given number
of processes. Rank 0 writes the results, once.
"""
from __future__ import annotations

import argparse

from common.cli.argtypes import (
    float_range,
    momentum_float,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    str2bool,
    unit_float,
)
from common.cli.entry import module_doc, require_paths
from common.cli.errors import UserError
from common.cli.flags import ArchNames, add_device_args, arch_per_path, check_arch_names
from common.run.state import add_run_args
from relabel_eval.eval_protocols import DEFAULT_PROTOCOL, PROTOCOLS, protocol_name

# torch-free: ``python -m relabel_eval --help`` and input errors answer before torch is imported;
# ``add_common_args`` is shared with ``python -m relabel_eval.relabel``.


def cos_choice(v):
    """``--cos``: true (DELT's half cosine), false (linear) or ``full`` (a whole cosine to 0)."""
    if str(v).strip().lower() == "full":
        return "full"
    return str2bool(v)


def mix_type(v) -> str:
    s = str(v).strip().lower()
    if s in ("none", "null", ""):
        return "none"
    if s not in ("cutmix", "mixup"):
        raise argparse.ArgumentTypeError(f"--mix-type {v}: choose cutmix, mixup or none")
    return s


class TeacherPaths(argparse.Action):
    """``--teacher-path A [B ...]``: ``teacher_path`` is the first (mean/std/size, the reported teacher),
    ``teacher_paths`` all of them (their logits averaged) when more than one is given, else None."""

    def __call__(self, parser, namespace, values, option_string=None):
        values = list(values)
        namespace.teacher_path = values[0]
        namespace.teacher_paths = values if len(values) > 1 else None


def teacher_path_list(args: argparse.Namespace) -> list[str]:
    """Every ``--teacher-path``, in order (none: [])."""
    return list(getattr(args, "teacher_paths", None) or ([args.teacher_path] if getattr(args, "teacher_path", None)
                                                          else []))


def teacher_arch_names(args: argparse.Namespace) -> list[str | None]:
    """Each teacher's ``--arch-name``, aligned with :func:`teacher_path_list` (None: the checkpoint's own; with no
    teacher, the one name given, if any)."""
    return arch_per_path(getattr(args, "arch_name", None), max(1, len(teacher_path_list(args))))


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Data, teacher, augmentation and device flags, named as the released RDED/DELT scripts name them."""
    g = p.add_argument_group("data and teacher")
    g.add_argument("--syn-data-path", required=True, help="distilled set (ImageFolder: ROOT/<class>/<image>)")
    g.add_argument("--ipc", type=positive_int, default=None,
                   help="use the first IPC files (sorted by name) of every class (default: all)")
    g.add_argument("--teacher-path", nargs="+", action=TeacherPaths, default=None,
                   help="teacher checkpoint (soft labels; gives mean/std/size); several: their logits averaged "
                        "(the first gives mean/std/size)")
    g.set_defaults(teacher_paths=None)
    g.add_argument("--teacher-weights", type=nonneg_float, nargs="+", default=None,
                   help="weights of the --teacher-path logits (default: equal); normalised to sum 1")
    g.add_argument("--teacher-mode", choices=("eval", "train"), default="eval",
                   help="eval: BN running statistics (default); train: BN normalises with each batch's own "
                        "statistics (FADRM/CV-DD), the teacher's running statistics left unchanged")
    g.add_argument("--teacher-bn-group", type=nonneg_int, default=0,
                   help="--teacher-mode train: BN statistics over groups of this many images of the batch "
                        "(FADRM: 8, half its batch of 16); 0 = the whole batch (default)")
    g.add_argument("--arch-name", nargs="+", action=ArchNames, default=None, metavar="NAME",
                   help="teacher architecture (default: the one the checkpoint records; a name that contradicts "
                        "it is an error); with several --teacher-path, one name per path in the same order "
                        "(e.g. torchvision's bare weight files, which record none)")
    g.add_argument("--dataset", "--subset", dest="dataset", default="custom",
                   help="dataset name for the batch-size table and defaults (default: %(default)s)")
    g.add_argument("--input-size", type=positive_int, default=None,
                   help="student input size (default: the teacher's, else the dataset's)")
    g.add_argument("--nclass", type=positive_int, default=None, help="expected class count (checked against the data)")
    a = p.add_argument_group("evaluation protocol and augmentation (per image, then per batch)")
    a.add_argument("--protocol", type=protocol_name, default=None,
                   help=f"released evaluation to follow: {', '.join(PROTOCOLS)} (default: {DEFAULT_PROTOCOL}, or the "
                        f"one the stored soft labels were made under); "
                        f"rded adds ShufflePatches(--factor) and crop scale (1/--factor, max)")
    a.add_argument("--factor", type=positive_int, default=None,
                   help="RDED's factor (--protocol rded: ShufflePatches strips and crop scale 1/factor; "
                        "ignored by delt)")
    a.add_argument("--re-batch-size", type=nonneg_int, default=0, help="batch size; 0 = DELT's table (default)")
    a.add_argument("--mix-type", type=mix_type, default="cutmix", help="cutmix (default), mixup or none")
    a.add_argument("--cutmix", type=positive_float, default=1.0, help="CutMix Beta alpha (default: %(default)s)")
    a.add_argument("--mixup", type=positive_float, default=0.8, help="Mixup Beta alpha (default: %(default)s)")
    a.add_argument("--use-rand-augment", action="store_true", help="timm RandAugment on each image")
    a.add_argument("--rand-augment-config", default="rand-m6-n2-mstd1.0", help="timm RandAugment string")
    a.add_argument("--random-erasing-p", type=unit_float, default=0.0, help="RandomErasing probability (default 0)")
    a.add_argument("--min-scale-crops", type=float_range(0, 1, lo_open=True), default=None,
                   help="RandomResizedCrop min scale (default 0.08; --protocol rded: 1/--factor)")
    a.add_argument("--max-scale-crops", type=float_range(0, 1, lo_open=True), default=1.0,
                   help="RandomResizedCrop max scale")
    a.add_argument("--no-image-aug", action="store_true",
                   help="no per-image augmentation: each image resized whole, never flipped (with --mix-type none: "
                        "training without any augmentation, DD-Ranking's ARS); refuses crop-scale, RandAugment, "
                        "erasing and ShufflePatches flags")
    a.add_argument("--seed", type=seed_int, default=42, help="seed (default: %(default)s)")
    r = p.add_argument_group("runtime")
    add_device_args(r)
    r.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA: bf16, or fp16 + GradScaler on GPUs without bf16; "
                        "off on CPU; --amp on a CPU without native bf16 warns and runs fp32)")
    r.add_argument("--workers", type=nonneg_int, default=None,
                   help="DataLoader workers (default: CUDA all cores but one, up to 16; CPU min(4, cores - 1))")
    r.add_argument("--wandb-project", default=None,
                   help="python -m relabel_eval: also log every run's curves to this Weights & Biases project "
                        "(needs `pip install wandb`; offline under --log-dir unless WANDB_API_KEY is set)")
    r.add_argument("--wandb-api-key", default=None, help="W&B key for --wandb-project (else WANDB_API_KEY)")
    x = p.add_argument_group("accepted for the released scripts and ignored")
    x.add_argument("--mipc", type=int, default=None, help="RDED pool size (ignored here)")
    x.add_argument("--num-crop", type=int, default=None, help="RDED crops per image (ignored here)")
    x.add_argument("--train-dir", default=None, help="RDED train folder (ignored here)")
    x.add_argument("--classes", default=None, help=argparse.SUPPRESS)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m relabel_eval", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    t = p.add_argument_group("student training")
    t.add_argument("--stud-name", nargs="+", default=None,
                   help="student architecture(s), space- or comma-separated (default: the teacher's)")
    t.add_argument("--label-mode", choices=("soft", "hard", "fkd"), default="soft",
                   help="soft: online teacher (default); hard: CE on class labels; fkd: stored soft labels")
    t.add_argument("--soft-label-dir", default=None, help="output of relabel_eval.relabel (--label-mode fkd)")
    t.add_argument("--val-dir", required=True, help="validation ImageFolder (same class folders)")
    t.add_argument("--zca", default=None,
                   help="--protocol pad: the experts' zca.pt; the set and val/ are whitened as the experts saw them")
    t.add_argument("--val-ipc", type=positive_int, default=None, help="validation images per class (default: all)")
    t.add_argument("--re-epochs", type=positive_int, default=300, help="training epochs (default: %(default)s)")
    t.add_argument("--re-accum-steps", type=positive_int, default=1, help="gradient accumulation steps")
    t.add_argument("--temperature", "-T", type=positive_float, default=None,
                   help="KD temperature (default: 20 CutMix, 4 Mixup)")
    t.add_argument("--seeds", type=seed_int, nargs="+", default=None,
                   help="several seeds in one call (overrides --seed)")
    t.add_argument("--eval-every", type=positive_int, default=10, help="validate every N epochs and at the end")
    t.add_argument("--kd-loss", choices=("kl", "mse", "mse+ce"), default=None,
                   help="soft-label loss: kl = KL at temperature T (DELT); mse = MSE on raw logits; mse+ce = MSE + "
                        "--ce-weight x CE on the (mixed) class labels (EDC) (default: the protocol's, kl)")
    t.add_argument("--ce-weight", type=nonneg_float, default=None,
                   help="weight of the CE term of --kd-loss mse+ce (default: the protocol's; EDC 0.025)")
    t.add_argument("--lr-stretch", type=float_range(1, None), default=None,
                   help="the lr schedule computed over S x --re-epochs epochs, of which --re-epochs are run "
                        "(EDC: 2) (default: the protocol's, 1)")
    t.add_argument("--ema-decay", type=float_range(0, 1, hi_open=True), default=None,
                   help="also validate an EMA of the student's weights and buffers, updated every step with "
                        "this decay (EDC: 0.99); 0 = none (default: the protocol's, 0)")
    t.add_argument("--label-temperature-schedule", choices=("none", "lpqld"), default="none",
                   help="lpqld: the teacher's KD temperature 20 x 0.7^(epoch // 30), at least 2 (overrides -T), "
                        "and the student's calibrated: 1 at first, then after every epoch the value in 0.01..1 "
                        "that fits the epoch's last batch best (LPQLD's released scripts); none: one fixed "
                        "temperature on both sides (default)")
    t.add_argument("--bn-double-update", action=argparse.BooleanOptionalAction, default=None,
                   help="student BN momentum 1-(1-m)^2 (0.19), the effect of the released loop's extra train-mode "
                        "forward per batch (default: on, as the protocol's release; --no-bn-double-update: "
                        "PyTorch's 0.1)")
    t.add_argument("--seed-parallel", choices=("ddp", "ranks"), default="ddp",
                   help="under torchrun: ddp = each seed trained by all processes (DistributedDataParallel); "
                        "ranks = each process trains whole seeds on its own (default: %(default)s)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the student and the teacher (falls back to eager with a warning)")
    o = p.add_argument_group("optimiser (AdamW unless --sgd)")
    o.add_argument("--adamw-lr", type=nonneg_float, default=0.0, help="AdamW lr; 0 = the per-student table (default)")
    o.add_argument("--adamw-weight-decay", type=nonneg_float, default=0.01)
    o.add_argument("--sgd", action="store_true", help="SGD instead of AdamW")
    o.add_argument("--learning-rate", "-lr", type=positive_float, default=0.1, help="SGD lr")
    o.add_argument("--momentum", type=momentum_float, default=0.9, help="SGD momentum")
    o.add_argument("--weight-decay", type=nonneg_float, default=1e-4, help="SGD weight decay")
    o.add_argument("--cos", type=cos_choice, nargs="?", const=True, default=True,
                   help="half-cosine lr schedule (default: ends at half the lr); --cos full: a whole cosine to 0 "
                        "(FADRM at IPC 50); --cos false: linear decay")
    r = p.add_argument_group("outputs")
    r.add_argument("--output", default=None, help="results JSON (default: runs/relabel_eval/<set>_<mode>.json)")
    r.add_argument("--results-csv", default=None, help="results table to append to (default: results.csv beside "
                                                       "the JSON)")
    r.add_argument("--log-dir", default=None,
                   help="per-run logs of every epoch: a CSV and TensorBoard event files (tensorboard --logdir DIR)")
    r.add_argument("--exp-name", default=None, help="name of this evaluation in the results table")
    add_run_args(r)
    r.add_argument("--no-resume", dest="restart", action="store_true", help="the same as --restart")
    return p


def check_paths(args: argparse.Namespace) -> None:
    """The distilled set, the validation folder, the teacher and the soft labels, when given, must exist."""
    require_paths(args, [("syn_data_path", "--syn-data-path"), ("val_dir", "--val-dir"),
                         ("teacher_path", "--teacher-path"), ("teacher_paths", "--teacher-path"),
                         ("soft_label_dir", "--soft-label-dir"), ("zca", "--zca")])
    check_teacher_flags(args)
    _output_outside_set(args)


def check_teacher_flags(args: argparse.Namespace) -> None:
    """--arch-name and --teacher-weights must match --teacher-path; --teacher-bn-group needs --teacher-mode
    train."""
    paths = teacher_path_list(args)
    check_arch_names(args, paths, "--teacher-path")
    n = len(paths)
    weights = getattr(args, "teacher_weights", None)
    if weights is not None:
        if len(weights) != n:
            raise UserError(f"--teacher-weights: {len(weights)} weight(s) for {n} --teacher-path checkpoint(s); "
                            "give one weight per teacher")
        if sum(weights) <= 0:
            raise UserError("--teacher-weights: the weights sum to 0; give at least one positive weight")
    if getattr(args, "teacher_bn_group", 0) and getattr(args, "teacher_mode", "eval") != "train":
        raise UserError("--teacher-bn-group only applies with --teacher-mode train")


def _output_outside_set(args: argparse.Namespace) -> None:
    """--output (relabel_eval; its resume folder beside it) or --output-dir (relabel_eval.relabel) inside
    --syn-data-path would become a class folder of the set."""
    from pathlib import Path

    for attr, flag in (("output", "--output"), ("output_dir", "--output-dir")):
        value = getattr(args, attr, None)
        if not value:
            continue
        syn, out = Path(args.syn_data_path).resolve(), Path(value).resolve()
        if out == syn or syn in out.parents:
            raise UserError(f"{value}: {flag} is inside --syn-data-path {args.syn_data_path} (its files and "
                            "resume state would become part of the set); write it beside the set, e.g. "
                            f"{Path(args.syn_data_path).as_posix().rstrip('/')}_eval/")


# -------------------- python -m relabel_eval.relabel

def relabel_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m relabel_eval.relabel",
                                description=module_doc("relabel_eval.relabel").split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--epochs", "--re-epochs", dest="epochs", type=positive_int, required=True,
                   help="number of epochs of soft labels to store")
    p.add_argument("--output-dir", required=True, help="folder for the epoch files and manifest.json")
    p.add_argument("--topk", "--label-topk", dest="topk", type=nonneg_int, default=0,
                   help="store only the K largest logits per image, fp16, with int16 class indices (0: all)")
    p.add_argument("--label-keep", type=float_range(0, 1, lo_open=True), default=1.0,
                   help="label pruning (LPLD): keep this fraction of the (epoch, batch) records, seeded by "
                        "--seed; training draws each epoch's batches from them with replacement (default: 1, all)")
    p.add_argument("--stud-name", default=None, help="student the labels are for (only picks the batch size)")
    add_run_args(p)
    p.add_argument("--no-resume", dest="restart", action="store_true", help="the same as --restart")
    return p


def check_relabel(args: argparse.Namespace) -> None:
    """The inputs of ``python -m relabel_eval.relabel``, when given, must exist (as for the evaluation)."""
    check_paths(args)


# -------------------- python -m relabel_eval.diversity

def diversity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m relabel_eval.diversity",
                                description=module_doc("relabel_eval.diversity").split("\n\n")[0])
    p.add_argument("--syn-data-path", nargs="+", required=True, help="one or more ImageFolder sets")
    p.add_argument("--names", nargs="+", default=None, help="a label per set (default: folder names)")
    p.add_argument("--teacher-path", required=True, help="feature model checkpoint (default model: the teacher)")
    p.add_argument("--model-path", default=None, help="another checkpoint to take features from")
    p.add_argument("--arch-name", default=None, help="architecture of the feature model (checked)")
    p.add_argument("--ipc", type=positive_int, default=None, help="first IPC images (sorted) per class (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--output", required=True, help="JSON results")
    p.add_argument("--plot", default=None, help="PNG plot (default: the JSON path with .png)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --output/--plot this command did not write")
    add_device_args(p)
    return p


def check_diversity(args: argparse.Namespace) -> None:
    """The sets and the feature checkpoints must exist."""
    require_paths(args, [("syn_data_path", "--syn-data-path"), ("teacher_path", "--teacher-path"),
                         ("model_path", "--model-path")])


# -------------------- python -m relabel_eval.baselines

def baselines_parser() -> argparse.ArgumentParser:
    doc = module_doc("relabel_eval.baselines")
    p = argparse.ArgumentParser("python -m relabel_eval.baselines", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("random", help="seeded random real subset at an IPC, optionally evaluated")
    r.add_argument("--train-dir", required=True, help="real training ImageFolder")
    r.add_argument("--ipc", type=positive_int, required=True, help="images per class")
    r.add_argument("--seed", type=seed_int, default=0, help="selection seed (class k uses seed + k)")
    r.add_argument("--output-dir", required=True, help="where the subset ImageFolder is written")
    r.add_argument("--force", action="store_true", help="replace an existing --output-dir this command did not write")
    r.add_argument("eval_args", nargs="*", help="after --: arguments for python -m relabel_eval")
    f = sub.add_parser("full", help="full-data hard-label reference (evaluates TRAIN itself)")
    f.add_argument("--train-dir", required=True, help="real training ImageFolder")
    f.add_argument("eval_args", nargs="*", help="after --: arguments for python -m relabel_eval")
    d = sub.add_parser("ddranking", help="IOR, HLR, alpha and LRS from results files")
    d.add_argument("--syn-soft", required=True, help="results of the distilled set under its (soft-label) protocol")
    d.add_argument("--random-soft", required=True, help="results of the random subset under the same protocol")
    d.add_argument("--syn-hard", required=True, help="results of the distilled set with hard labels")
    d.add_argument("--full-hard", required=True, help="results of the full data with hard labels")
    d.add_argument("--student", default=None, help="student to read (needed when a file has several)")
    d.add_argument("--metric", choices=("final_top1", "best_top1"), default="final_top1")
    d.add_argument("--weight", type=unit_float, default=0.5, help="w in alpha = w IOR - (1 - w) HLR")
    d.add_argument("--output", default=None, help="write the scores as JSON")
    return p


def check_baselines(args: argparse.Namespace) -> None:
    """The training folder, or the four results files, must exist."""
    require_paths(args, [("train_dir", "--train-dir")], kind="dir")
    require_paths(args, [(k, "--" + k.replace("_", "-")) for k in ("syn_soft", "random_soft", "syn_hard", "full_hard")],
                  kind="file")


# -------------------- python -m relabel_eval.export

EXPORT_FORMATS = ("ddranking",)
MAX_EXPORT_SIZE = 2048  # an image side beyond this is a typo (40000 px would need tens of GB per image batch)


def export_parser() -> argparse.ArgumentParser:
    from common.cli.argtypes import int_range

    p = argparse.ArgumentParser("python -m relabel_eval.export",
                                description=module_doc("relabel_eval.export").split("\n\n")[0])
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="target layout")
    p.add_argument("--syn-data-path", required=True, help="distilled set (ImageFolder)")
    p.add_argument("--output-dir", required=True, help="folder to write (must not exist, or be an earlier export)")
    p.add_argument("--ipc", type=positive_int, default=None,
                   help="first IPC files per class (default: all; classes must then hold the same number)")
    p.add_argument("--teacher-path", default=None, help="teacher checkpoint: soft labels, mean / std and size")
    p.add_argument("--soft-label-dir", default=None, help="FKD soft labels of this set (checked, see above)")
    p.add_argument("--dataset", default="custom", help="registry name for mean / std and size without a teacher")
    p.add_argument("--input-size", type=int_range(1, MAX_EXPORT_SIZE), default=None,
                   help="image side S (default: the teacher's, else the dataset's, else the images')")
    add_device_args(p, default="cpu")  # the teacher's device
    return p


def check_export(args: argparse.Namespace) -> None:
    """The set must be a folder; the teacher and the soft labels, when given, must exist."""
    require_paths(args, [("syn_data_path", "--syn-data-path"), ("soft_label_dir", "--soft-label-dir")], kind="dir")
    require_paths(args, [("teacher_path", "--teacher-path")], kind="file")
