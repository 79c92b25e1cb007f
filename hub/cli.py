"""Released distilled datasets: fetch (download, verify, unpack, map classes), list and pack.

    python -m hub list
    python -m hub fetch NAME|URL|FILE --out DIR [--sha256 HEX] [--classes-from VAL_DIR] [--dataset NAME]
    python -m hub pack DIR --out FILE.tar.gz

``fetch`` streams the archive next to ``DIR`` (``DIR.download.part``) with a progress
bar and resumes a partial download with an HTTP Range request; it checks the sha256,
refuses unsafe archives before writing anything (absolute paths, ``..``, links out of
the tree, device files, more than ``--max-size`` bytes unpacked), unpacks into a
temporary sibling that is renamed onto ``DIR`` only when complete, and renames the
class folders (``new000``, ``00000`` or wnids, as SRe2L/CDA/RDED/DELT release them) to
the class folder names of your own data, so the result is a plain ImageFolder that
``relabel_eval --val-dir`` accepts. ``DIR/manifest.json`` records the source, the
checksum and the original -> new folder mapping.

``pack`` writes a deterministic ``.tar.gz`` (sorted entries, fixed mtime/owner) of a
distilled set with its ``manifest.json`` and prints the sha256 to publish with it.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from common.cli.argtypes import nonneg_int, positive_float
from common.cli.paths import check_output_dir, check_output_file
from hub.download import DEFAULT_MAX_SIZE
from hub.fetch import fetch
from hub.pack import pack
from hub.registry import REGISTRY_ENV, format_registry, load_registry
from hub.text import parse_size


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hub", description=__doc__.split("\n\n")[0])
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


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.command == "fetch":
        check_output_dir(args.out, "--out")
    elif args.command == "pack":
        check_output_file(args.out, "--out")
    if args.command == "list":
        print(format_registry(load_registry(args.registry)))
    elif args.command == "fetch":
        fetch(args.source, args.out, args.sha256, args.dataset, args.classes_from, args.max_size, args.registry,
              args.keep_names, args.keep_archive, args.force, args.retries, args.timeout,
              progress=not args.quiet, args=args)
    else:
        pack(args.dir, args.out, progress=not args.quiet, args=args, force=args.force)

