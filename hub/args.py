"""The command line of ``python -m hub`` (torch-free: ``--help`` and argument errors answer at once)."""
from __future__ import annotations

import argparse

from common.cli.argtypes import nonneg_int, positive_float
from common.cli.entry import module_doc, require_paths
from hub.download import DEFAULT_MAX_SIZE
from hub.registry import REGISTRY_ENV
from hub.text import parse_size


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hub", description=module_doc("hub.cli").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="print the registry of released distilled sets")
    p.add_argument("--registry", default=None, help=f"extra registry JSON (also ${REGISTRY_ENV})")

    p = sub.add_parser("fetch", help="download, verify and unpack a distilled set into an ImageFolder")
    p.add_argument("source", help="registry name, http(s):// or file:// URL, or a local .zip/.tar(.gz)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--sha256", default=None, help="expected sha256 of the archive")
    p.add_argument("--dataset", default=None, help="dataset name; its class list orders index-named folders")
    p.add_argument("--classes-from", default=None,
                   help="your val (or train) ImageFolder, or a teacher checkpoint: index-named folders are renamed "
                        "to its class folders, in their ImageFolder order")
    p.add_argument("--keep-names", action="store_true", help="keep the archive's class folder names as they are")
    p.add_argument("--max-size", type=parse_size, default=DEFAULT_MAX_SIZE,
                   help="refuse archives (download or unpacked) larger than this (default 20G)")
    p.add_argument("--registry", default=None, help=f"extra registry JSON (also ${REGISTRY_ENV})")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive beside --out")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--retries", type=nonneg_int, default=3, help="resume attempts after a broken connection")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="network timeout in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("pack", help="pack a distilled set with its manifest into a deterministic .tar.gz")
    p.add_argument("dir", help="distilled ImageFolder")
    p.add_argument("--out", required=True, help="FILE.tar.gz")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def check_paths(args: argparse.Namespace) -> None:
    """The folder to pack, a --classes-from path and a --registry file must exist."""
    require_paths(args, [("dir", "hub pack DIR")], kind="dir")
    require_paths(args, [("classes_from", "--classes-from")])
    require_paths(args, [("registry", "--registry")], kind="file")
