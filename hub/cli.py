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

from typing import Sequence

from common.cli.paths import check_output_dir, check_output_file
from hub.args import check_paths, get_args_parser
from hub.fetch import fetch
from hub.pack import pack
from hub.registry import format_registry, load_registry

__all__ = ["get_args_parser", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    check_paths(args)
    if getattr(args, "registry", None):  # a bad registry file is one line, also when the source needs no registry
        load_registry(args.registry)
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

