"""The command lines of ``python -m common.prepare`` and ``python -m common.viz`` (torch-free:
``--help``, argument errors and missing paths answer before torch is imported, through
``common.cli.entry.run_stage``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.argtypes import positive_int, seed_int
from common.cli.entry import module_doc, require_paths
from common.data.datasets import IMAGENET_SUBSETS

# -------------------- python -m common.prepare


def prepare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.prepare", description=module_doc("common.prepare"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True)
    s = sub.add_parser("shapes", help="built-in generated dataset (offline, seconds)")
    s.add_argument("--train-per-class", type=positive_int, default=500)
    s.add_argument("--val-per-class", type=positive_int, default=100)
    s.add_argument("--seed", type=seed_int, default=0)
    for name in ("cifar10", "cifar100"):
        s = sub.add_parser(name, help=f"{name} via torchvision's downloader")
        s.add_argument("--download-root", default=str(Path.home() / ".cache" / "torchvision"))
    s = sub.add_parser("tinyimagenet", aliases=["tiny-imagenet"], help="from the official zip layout")
    s.add_argument("--src", required=True, help="tiny-imagenet-200.zip or its extracted folder")
    s = sub.add_parser("imagenet-1k", help="ImageNet-1K from the official train/val images and devkit "
                                           "(val regrouped into class folders)")
    s.add_argument("--train-src", required=True,
                   help="folder of the 1000 <wnid>/ training folders, or ILSVRC2012_img_train.tar")
    s.add_argument("--val-src", required=True, help="folder of the 50,000 extracted ILSVRC2012_val_*.JPEG files")
    s.add_argument("--devkit", required=True, help="ILSVRC2012_devkit_t12.tar.gz or its extracted folder")
    s.add_argument("--copy", action="store_true", help="copy files instead of symlinking them (folder inputs)")
    for name in IMAGENET_SUBSETS:
        s = sub.add_parser(name, help=f"{name} from a local ImageNet-1K tree")
        s.add_argument("--imagenet-root", required=True, help="ImageNet-1K root with train/<wnid> and val/<wnid>")
        s.add_argument("--copy", action="store_true", help="copy files instead of symlinking them")
    for s in {id(v): v for v in sub.choices.values()}.values():  # aliases share a parser
        s.add_argument("--out", required=True, help="output root (train/ and val/ are written inside)")
        s.add_argument("--force", action="store_true", help="replace an existing output")
    return p


def check_prepare(args: argparse.Namespace) -> None:
    """Tiny-ImageNet's --src and an ImageNet root must exist."""
    require_paths(args, [("src", "--src")])
    require_paths(args, [("imagenet_root", "--imagenet-root"), ("val_src", "--val-src")], kind="dir")
    require_paths(args, [("train_src", "--train-src"), ("devkit", "--devkit")])


# -------------------- python -m common.viz

def viz_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.viz", description="Sample grids of ImageFolder sets as PNG.")
    p.add_argument("roots", nargs="+", help="ImageFolder roots (one block of rows each)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--names", nargs="+", default=None, help="a label per root")
    p.add_argument("--per-class", type=positive_int, default=10)
    p.add_argument("--max-classes", type=positive_int, default=10)
    p.add_argument("--cell", type=positive_int, default=32, help="pixels per image in the grid")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def check_viz(args: argparse.Namespace) -> None:
    """Every root must be a folder; --out a .png (or .jpg) file name."""
    require_paths(args, [("roots", "ImageFolder root")], kind="dir")
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        from common.cli.errors import UserError

        raise UserError(f"--out {args.out}: give a .png (or .jpg) file name")
