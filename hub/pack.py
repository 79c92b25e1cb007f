"""``pack``: a deterministic ``.tar.gz`` of a distilled set with its manifest."""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

from tqdm import tqdm

from common.cli.errors import UserError
from common.run.atomic import atomic_path
from common.run.manifest import sha256_file
from hub.mapping import _few
from hub.text import human, log


def _pack_files(root: Path, skip: Path | None) -> tuple[list[str], list[str]]:
    dirs, files = [], []
    for cur, dnames, fnames in os.walk(root):
        dnames[:] = sorted(d for d in dnames if not d.startswith("."))
        rel = Path(cur).relative_to(root)
        if rel != Path("."):
            dirs.append(rel.as_posix())
        for f in sorted(fnames):
            p = Path(cur) / f
            if f.startswith(".") or (skip is not None and p.resolve() == skip) or not p.is_file():
                continue
            files.append((rel / f).as_posix())
    return sorted(dirs), sorted(files)


def pack(src: str | os.PathLike, out_file: str | os.PathLike, progress: bool = True,
         args: argparse.Namespace | dict | None = None, force: bool = False) -> str:
    """Deterministic ``.tar.gz`` of a distilled ImageFolder with its manifest; returns its sha256."""
    from common.data.imagefolder import find_classes, list_class_files, load_rgb

    src, out_file = Path(src), Path(out_file)
    if src.is_dir() and src.resolve() in out_file.resolve().parents:
        raise UserError(f"--out {out_file} is inside the folder being packed, {src} (the next pack would include the "
                        f"archive); write it outside {src}")
    if out_file.exists() and not force:  # an archive cannot say who wrote it: never replaced silently
        raise UserError(f"--out {out_file} exists; choose another path, or pass --force to replace it")
    classes = find_classes(src, "folder to pack")
    per_class = {c: len(list_class_files(src / c)) for c in classes}
    empty = [c for c, n in per_class.items() if n == 0]
    if empty:
        raise UserError(f"{src}: class folder(s) without images: {_few(empty)}")
    for c in classes:  # a file named like an image must be one: the archive is published as a data set
        for name in list_class_files(src / c):
            load_rgb(src / c / name)  # decodes as every stage of the toolkit reads it, or one line
    dirs, files = _pack_files(src, out_file.resolve())
    extra = {}  # archive members that are not files of src
    if "manifest.json" not in files:
        # src is an input: never written to. The archive carries a manifest made here, without times or
        # host names, so packing the same folder twice gives the same bytes.
        manifest = {"stage": "hub.pack", "classes": classes, "images_per_class": per_class,
                    "num_images": sum(per_class.values()),
                    "files_sha256": {f: sha256_file(src / f) for f in files}}
        extra["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        log("the folder has no manifest.json: the archive carries one made from its files")

    def info(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.size, ti.mtime = kind, size, 0
        ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    with atomic_path(out_file) as tmp:
        with open(tmp, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for d in dirs:
                tf.addfile(info(d, tarfile.DIRTYPE))
            for f in tqdm(sorted([*files, *extra]), desc="pack", unit="file", disable=not progress):
                if f in extra:
                    tf.addfile(info(f, tarfile.REGTYPE, len(extra[f])), io.BytesIO(extra[f]))
                    continue
                with open(src / f, "rb") as fh:
                    tf.addfile(info(f, tarfile.REGTYPE, os.fstat(fh.fileno()).st_size), fh)
    digest = sha256_file(out_file)
    print(f"{digest}  {out_file}")
    log(f"{len(files)} files, {sum(per_class.values())} images in {len(classes)} classes, "
        f"{human(out_file.stat().st_size)}; share it with: python -m hub fetch URL --out DIR --sha256 {digest}")
    return digest
