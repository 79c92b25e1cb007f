"""Class-folder mapping: rename index-named folders (new000, 00000, wnids) to the data's class folders."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from common.cli.errors import UserError
from common.data.datasets import check_class_count, get_dataset
from hub.text import log

NAMINGS = {"new000": re.compile(r"new(\d+)"), "00000": re.compile(r"(\d+)"), "wnid": re.compile(r"n\d{8}")}


def folder_naming(name: str) -> tuple[str, int | None]:
    """``('new000', 12)`` for ``new012``, ``('00000', 12)`` for ``00012``, ``('wnid', None)``, ``('other', None)``."""
    for kind, pattern in NAMINGS.items():
        m = pattern.fullmatch(name)
        if m:
            return kind, (int(m[1]) if m.groups() else None)
    return "other", None


def _few(items: Sequence[Any], k: int = 4) -> str:
    items = list(items)
    return ", ".join(map(str, items[:k])) + (f" ... ({len(items)} in all)" if len(items) > k else "")


def plan_class_mapping(folders: Sequence[str], order: Sequence[str] | None, order_source: str = "",
                       keep_names: bool = False) -> tuple[str, dict[str, str]]:
    """Detect the class-folder naming and map each folder to its class name in ``order``.

    ``order`` is the target class list in ImageFolder (sorted) order; an index-named
    folder (``new012``, ``00012``) becomes ``order[12]``. Returns ``(naming, {original: new})``.
    """
    folders = sorted(folders)
    if not folders:
        raise UserError("no class folders with images found (expected <class>/<image> in the archive)")
    kinds: dict[str, list[str]] = {}
    for f in folders:
        kinds.setdefault(folder_naming(f)[0], []).append(f)
    if keep_names or (order is not None and set(folders) == set(order)):
        kind = next(iter(kinds)) if len(kinds) == 1 else "other"
        return ("names" if kind == "other" else kind), {f: f for f in folders}
    if len(kinds) > 1:
        raise UserError("mixed class-folder naming: " + "; ".join(f"{k}: {_few(v, 3)}" for k, v in kinds.items()))
    kind = next(iter(kinds))
    if kind == "other":
        if order is None:
            raise UserError(f"unknown class-folder layout ({_few(folders)}): not new000, 00000 or wnid naming; "
                            f"pass --classes-from VAL_DIR to check it against your class folders, or --keep-names")
        raise UserError(f"unknown class-folder layout: folders {_few(folders)} are not new000/00000/wnid names "
                        f"and differ from the classes of {order_source} ({_few(order)})")
    if order is None:
        if kind == "wnid":
            return kind, {f: f for f in folders}
        raise UserError(f"class folders are indices ({_few(folders)}) and there is no class order to map them to: "
                        f"pass --classes-from VAL_DIR (your val or train folder) or --dataset NAME, or --keep-names")
    if kind == "wnid":
        missing = sorted(set(order) - set(folders))
        extra = sorted(set(folders) - set(order))
        raise UserError(f"wnid class folders do not match {order_source}: "
                        + "; ".join(s for s in (f"missing {_few(missing)}" if missing else "",
                                                f"not in the class order {_few(extra)}" if extra else "") if s))
    index: dict[int, str] = {}
    for f in folders:
        i = folder_naming(f)[1]
        if i in index:
            raise UserError(f"ambiguous class folders: {index[i]} and {f} both mean class index {i}")
        index[i] = f
    n = len(order)
    out_of_range = sorted(i for i in index if i >= n)
    if out_of_range:
        hint = " (they look 1-based; 0-based indices are expected)" if min(index) == 1 and max(index) == n else ""
        raise UserError(f"class folder {index[out_of_range[0]]} is index {out_of_range[0]}, out of range for the "
                        f"{n} classes of {order_source}{hint}")
    missing = sorted(set(range(n)) - set(index))
    if missing:
        raise UserError(f"{len(folders)} class folders but {order_source} has {n} classes; missing class "
                        f"indices {_few(missing)}")
    return kind, {f: order[i] for i, f in index.items()}


def resolve_class_order(dataset: str | None, classes_from: str | os.PathLike | None) -> tuple[list[str] | None, str]:
    """Target class folder names (ImageFolder order) from ``--classes-from`` or the dataset's class list."""
    from common.data.imagefolder import find_classes

    spec = get_dataset(dataset) if dataset else None
    if classes_from and Path(classes_from).is_file():         # a teacher checkpoint: its ordered class list
        from models import read_checkpoint

        names = list(read_checkpoint(classes_from)["meta"].get("classes") or [])
        if not names:
            raise UserError(f"--classes-from {classes_from}: the checkpoint records no class list; pass your val "
                            f"folder instead")
        return names, f"--classes-from {classes_from}"
    if classes_from:
        names = find_classes(classes_from, "--classes-from folder")
        if {"train", "val"} <= set(names):
            raise UserError(f"--classes-from {classes_from} holds train/ and val/; pass {Path(classes_from) / 'val'}")
        if spec is not None:
            check_class_count(spec, len(names), classes_from)
            wnids = spec.wnids()
            if wnids and all(folder_naming(c)[0] == "wnid" for c in names) and set(names) != set(wnids):
                log(f"warning: the class folders of {classes_from} are not the wnids of --dataset {spec.name}")
        return names, f"--classes-from {classes_from}"
    if spec is not None and spec.wnids():
        wnids = spec.wnids()
        if wnids != sorted(wnids):
            log(f"warning: assuming index-named folders of an {spec.name} release follow the sorted wnid order "
                f"(ImageFolder's); the publishers do not document it, so check a teacher's accuracy on the set")
        return sorted(wnids), f"--dataset {spec.name}"
    return None, ""
