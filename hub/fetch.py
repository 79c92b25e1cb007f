"""``fetch``: download, verify, unpack and map a released distilled set into an ImageFolder."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from common.cli.errors import UserError
from common.run.atomic import atomic_dir
from common.run.manifest import build_manifest, sha256_file, write_manifest
from hub.download import DEFAULT_MAX_SIZE, http_download, is_url, normalize_url
from hub.extract import (
    Member,
    _read_packed_manifest,
    extract_members,
    list_archive,
    resolve_links,
    strip_wrappers,
    summarize_tree,
)
from hub.mapping import _few, plan_class_mapping, resolve_class_order
from hub.registry import _find_entry, load_registry
from hub.text import human, log


def fetch(source: str, out: str | os.PathLike, sha256: str | None = None, dataset: str | None = None,
          classes_from: str | os.PathLike | None = None, max_size: int = DEFAULT_MAX_SIZE,
          registry: str | os.PathLike | None = None, keep_names: bool = False, keep_archive: bool = False,
          force: bool = False, retries: int = 3, timeout: float = 60.0, retry_wait: float = 2.0,
          progress: bool = True, args: argparse.Namespace | dict | None = None) -> dict[str, Any]:
    """Download (or open) an archive, verify and unpack it safely into ``out``; returns the manifest."""
    from common.data.imagefolder import list_class_files

    out = Path(out)
    entry = None
    if not is_url(source) and not Path(source).exists():
        entry = _find_entry(source, load_registry(registry))
        sha256 = sha256 or entry.get("sha256")
        dataset = dataset or entry.get("dataset")
    url = normalize_url(entry["url"] if entry else str(source))
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise UserError(f"--sha256 {sha256}: expected 64 hex digits")
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; pass --force to replace it")
    order, order_source = resolve_class_order(dataset, classes_from)   # fail before downloading gigabytes
    downloaded = urllib.parse.urlparse(url).scheme in ("http", "https")
    if downloaded:
        out.parent.mkdir(parents=True, exist_ok=True)  # the download is kept beside --out
        archive = http_download(url, out.with_name(out.name + ".download"), max_size, retries, timeout, retry_wait,
                                progress)
    else:
        archive = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)) if is_url(url) else Path(url)
        if archive.is_dir():
            raise UserError(f"{archive}: is a folder; fetch takes a .zip or .tar(.gz) archive (or its URL)")
        if not archive.is_file():
            raise UserError(f"{archive}: archive file not found")
    state_file = archive.with_name(archive.name + ".json")

    def discard() -> None:
        if downloaded:
            archive.unlink(missing_ok=True)
            state_file.unlink(missing_ok=True)

    digest = sha256_file(archive)
    if sha256 and digest != sha256.lower():
        discard()
        raise UserError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {digest}"
                        + ("; the downloaded file was removed" if downloaded else ""))
    try:
        kind, members = list_archive(archive)
        members, prefix = strip_wrappers(members)
        links = resolve_links(archive, members)
    except UserError:
        discard()                                # unsafe, damaged or not an archive: of no use
        raise
    try:
        naming, mapping, packed = _check_and_plan(archive, members, links, out, max_size, order, order_source,
                                                  keep_names)
    except UserError as exc:
        if downloaded:  # one line: the reason, then where the download is kept
            raise UserError(f"{exc}; the download stays at {archive} and the next fetch of the same URL to {out} "
                            f"reuses it") from None
        raise
    if not sha256:  # the archive passed every check: say what was (not) verified
        log(f"sha256 {digest} (not verified: no checksum given; pass --sha256 to pin it)")
    try:
        with atomic_dir(out) as tmp:
            extract_members(archive, kind, members, links, tmp, mapping, progress)
            classes = sorted(mapping.values())
            per_class = {c: len(list_class_files(tmp / c)) for c in classes}
            ipcs = set(per_class.values())
            manifest = build_manifest(
                "hub.fetch", args, source=source, url=url, registry_entry=entry, sha256=digest,
                sha256_verified=bool(sha256), archive_prefix_stripped=prefix, class_naming=naming,
                class_order_from=order_source or None,
                class_mapping={k: v for k, v in sorted(mapping.items()) if k != v} or "identity",
                classes=classes, images_per_class=per_class, num_images=sum(per_class.values()),
                ipc=ipcs.pop() if len(ipcs) == 1 else None, packed_manifest=packed)
            write_manifest(tmp, manifest)
    except UserError:
        discard()
        raise
    if not keep_archive:
        discard()
    renamed = sum(k != v for k, v in mapping.items())
    print(f"{out}: {manifest['num_images']} images in {len(classes)} classes "
          f"(naming {naming}{f', {renamed} folders renamed from {order_source}' if renamed else ''}); "
          f"sha256 {digest}{' verified' if sha256 else ''}")
    return manifest


def _check_and_plan(archive: Path, members: list[Member], links: dict[str, Member], out: Path,
                    max_size: int, order: list[str] | None, order_source: str,
                    keep_names: bool) -> tuple[str, dict[str, str], dict[str, Any] | None]:
    """Size, disk space and ImageFolder checks, then the class-folder mapping; all before writing."""
    total = sum(m.size for m in members if m.kind == "file") + sum(t.size for t in links.values())
    if total > max_size:
        raise UserError(f"{archive.name}: unpacks to {human(total)}, over --max-size {human(max_size)}; refused "
                        f"before writing anything (raise --max-size if you trust it)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:  # --out's folder is made only when extracting
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if total > free:
        raise UserError(f"{archive.name}: unpacks to {human(total)} but only {human(free)} is free under {out.parent}")
    counts, loose = summarize_tree(members)
    if loose and not any(counts.values()):
        raise UserError(f"{archive.name}: images at the top level ({_few(loose, 2)}) and no class folders; "
                        f"expected <class>/<image>")
    class_counts = {c: n for c, n in counts.items() if not c.startswith(".")}
    if not any(class_counts.values()):
        raise UserError(f"{archive.name}: no image files in class folders (found {_few(sorted(counts)) or 'nothing'})")
    empty = sorted(c for c, n in class_counts.items() if n == 0)
    if empty and len(empty) < len(class_counts):
        raise UserError(f"{archive.name}: class folder(s) without images: {_few(empty)}")
    packed = _read_packed_manifest(members)
    if order is None and packed and set(packed.get("classes") or ()) == set(class_counts):
        keep_names = True          # a set made by `pack`: its manifest vouches for the folder names
    naming, mapping = plan_class_mapping(list(class_counts), order, order_source, keep_names)
    return naming, mapping, packed
