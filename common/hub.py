"""Released distilled datasets: fetch (download, verify, unpack, map classes), list and pack.

    python -m common.hub list
    python -m common.hub fetch NAME|URL|FILE --out DIR [--sha256 HEX] [--classes-from VAL_DIR] [--dataset NAME]
    python -m common.hub pack DIR --out FILE.tar.gz

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
import gzip
import http.client
import json
import lzma
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from common.argtypes import nonneg_int, positive_float
from common.atomic import atomic_dir, atomic_path, atomic_write_json
from common.datasets import check_class_count, get_dataset
from common.errors import UserError, run_cli
from common.manifest import build_manifest, sha256_file, write_manifest
from common.paths import check_output_dir, check_output_file

# common.imagefolder is imported inside the functions that need it: it imports torch (2 s), which
# `list` and the download itself do not need.
REGISTRY_FILE = Path(__file__).resolve().parent / "hub_registry.json"
REGISTRY_ENV = "DD_HUB_REGISTRY"
DEFAULT_MAX_SIZE = 20 << 30          # unpacked bytes; a distilled ImageNet-1K IPC 200 set is ~3 GB
CHUNK = 1 << 20
USER_AGENT = "delt-toolkit-hub/1 (python urllib)"
JUNK = ("__MACOSX", ".DS_Store", "Thumbs.db")
# what a damaged archive raises while it is read
CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``1000000`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 20G, 512M, 1000000)")
    size = int(float(m[1]) * (1 << (10 * " KMGT".index(m[2].upper() or " "))))
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a size > 0, got {text!r}")
    return size


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# --------------------------------------------------------------------------- registry

def _read_registry_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: registry file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON registry ({exc})") from None
    sets = data.get("sets") if isinstance(data, dict) else data
    if not isinstance(sets, list):
        raise UserError(f"{path}: a registry is a JSON list of sets or an object with a \"sets\" list")
    for i, entry in enumerate(sets):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("url"):
            raise UserError(f"{path}: set #{i} needs at least \"name\" and \"url\"")
    return sets


def load_registry(extra: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Built-in sets, then ``$DD_HUB_REGISTRY``, then ``extra``; later files replace entries by name."""
    files = [REGISTRY_FILE]
    if os.environ.get(REGISTRY_ENV):
        files.append(Path(os.environ[REGISTRY_ENV]))
    if extra:
        files.append(Path(extra))
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for entry in _read_registry_file(f):
            out[entry["name"].lower()] = {**entry, "registry_file": str(f)}
    return out


def format_registry(reg: dict[str, dict[str, Any]]) -> str:
    cols = [("name", "name"), ("method", "method"), ("dataset", "dataset"), ("ipc", "ipc"),
            ("format", "image_format"), ("naming", "class_naming"), ("sha256", "sha256"), ("url", "url")]
    rows = []
    for e in reg.values():
        row = []
        for _title, key in cols:
            v = e.get(key)
            if key == "sha256":
                v = (v[:12] + "...") if v else "unknown"
            row.append("-" if v is None else str(v))
        rows.append(row)
    widths = [max(len(t), *(len(r[i]) for r in rows)) if rows else len(t) for i, (t, _) in enumerate(cols)]
    lines = ["  ".join(t.ljust(w) for (t, _), w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- download

def is_url(text: str) -> bool:
    return urllib.parse.urlparse(str(text)).scheme in ("http", "https", "file")


def normalize_url(url: str) -> str:
    """Share-page links -> direct download links (Google Drive file pages, Hugging Face ``blob``)."""
    m = re.match(r"https?://drive\.google\.com/file/d/([\w-]+)", url)
    if m:
        return f"https://drive.google.com/uc?export=download&id={m[1]}"
    m = re.match(r"(https?://huggingface\.co/.+?)/blob/(.+)$", url)
    if m:
        return f"{m[1]}/resolve/{m[2]}"
    return url


class _Interrupted(Exception):
    """The connection broke mid-transfer; the ``.part`` file holds what arrived."""


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", header or "")
    if not m:
        return None, None
    return int(m[1]), (None if m[2] == "*" else int(m[2]))


def _download_once(url: str, part: Path, state: dict[str, Any], state_path: Path, max_bytes: int,
                   timeout: float, progress: bool) -> bool:
    """One HTTP request; True when the file is complete, False to start over at once."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
        validator = state.get("etag") if not str(state.get("etag") or "").startswith("W/") else None
        validator = validator or state.get("last_modified")
        if validator:
            req.add_header("If-Range", validator)      # the server sends the whole new file if it changed
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            if state.get("length") == offset:
                return True
            log("server refused to resume this partial download; starting over")
            part.unlink()
            return False
        raise UserError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"cannot connect: {getattr(exc, 'reason', exc)}") from None
    with resp:
        if "text/html" in resp.headers.get("Content-Type", ""):
            raise UserError(f"{url}: the server sent an HTML page, not an archive (a login or a Google Drive "
                            f"confirmation page?); download it in a browser and pass the local file to fetch")
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                log(f"server resumed at byte {start}, not {offset}; starting over")
                part.unlink()
                return False
            total = total or (offset + length if length is not None else None)
            mode = "ab"
        else:
            if offset:
                log("server ignored the resume request (HTTP 200); starting over")
            offset, total, mode = 0, length, "wb"
        if total is not None and total > max_bytes:
            raise UserError(f"{url}: {human(total)} is over --max-size {human(max_bytes)}")
        state.update(url=url, etag=resp.headers.get("ETag"), last_modified=resp.headers.get("Last-Modified"),
                     length=total)
        atomic_write_json(state_path, state)
        name = Path(urllib.parse.urlparse(url).path).name or "download"
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=name[:30], disable=not progress) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as exc:
                    raise UserError(f"{part}: cannot write the download ({exc})") from None
                offset += len(chunk)
                bar.update(len(chunk))
                if offset > max_bytes:
                    raise UserError(f"{url}: download passed --max-size {human(max_bytes)}; stopped")
    if total is not None and offset < total:
        raise _Interrupted(f"connection closed at byte {offset} of {total}")
    return True


def http_download(url: str, dest: Path, max_bytes: int = DEFAULT_MAX_SIZE, retries: int = 3,
                  timeout: float = 60.0, retry_wait: float = 2.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what an earlier run left there."""
    part = dest.with_name(dest.name + ".part")
    state_path = dest.with_name(dest.name + ".json")
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
    if state.get("url") != url:                    # a partial file of another URL is useless
        state = {"url": url}
        part.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
    if dest.is_file():                             # complete from an earlier run (unpacking failed or was stopped)
        return dest
    if part.exists() and part.stat().st_size:
        log(f"resuming {part.name} from byte {part.stat().st_size}")
    failures = restarts = 0
    while True:
        try:
            if _download_once(url, part, state, state_path, max_bytes, timeout, progress):
                break
            restarts += 1
            if restarts > 3:
                raise UserError(f"{url}: the server keeps refusing to resume; remove {part} and retry")
        except _Interrupted as exc:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries and not have:
                raise UserError(f"{url}: download failed ({exc})") from None
            if failures > retries:
                raise UserError(f"{url}: download interrupted ({exc}) with {human(have)} received; "
                                f"run the same command again to resume from {part}") from None
            log(f"download interrupted ({exc}); retry {failures}/{retries} resumes at byte {have}")
            time.sleep(retry_wait * failures)
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- safe archives

@dataclass
class Member:
    name: str                  # normalised archive-relative posix path
    kind: str                  # file | dir | link
    size: int = 0
    target: str | None = None  # for links: normalised archive-relative path of what it points to
    ref: Any = None            # ZipInfo / TarInfo
    data: bytes | None = None  # contents of a small manifest.json, read while listing


def _unsafe(archive: Path, raw: str, why: str) -> UserError:
    return UserError(f"{archive.name}: refused unsafe archive: member {raw!r} {why}; nothing was extracted")


def _norm_member(archive: Path, raw: str) -> str:
    name = raw.replace("\\", "/")
    if "\x00" in name:
        raise _unsafe(archive, raw, "has a NUL byte in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(archive, raw, "has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, raw, "has a '..' component that would write outside the output folder")
    return "/".join(parts)


def _link_target(archive: Path, raw: str, name: str, linkname: str, relative_to_member: bool) -> str:
    """Resolve a link target inside the archive tree; refuse one that points outside it."""
    if not linkname:
        raise _unsafe(archive, raw, "is a link without a target")
    if linkname.startswith("/") or re.match(r"^[A-Za-z]:", linkname):
        raise _unsafe(archive, raw, f"is a link to an absolute path ({linkname!r}) outside the archive")
    parts = name.split("/")[:-1] if relative_to_member else []
    for p in linkname.replace("\\", "/").split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise _unsafe(archive, raw, f"is a link pointing outside the archive ({linkname!r})")
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    return parts[0] in JUNK or parts[-1] in JUNK or parts[-1].startswith("._")


def _wanted(name: str, size: int) -> bool:
    return name.rsplit("/", 1)[-1] == "manifest.json" and size <= 16 << 20


def list_archive(archive: Path) -> tuple[str, list[Member]]:
    """``(kind, members)`` of a .zip or .tar(.gz/.bz2/.xz), checked; raises before anything is written."""
    members: list[Member] = []
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = _norm_member(archive, info.filename)
                    mode = info.external_attr >> 16
                    if not name or _is_junk(name):
                        continue
                    if info.is_dir():
                        members.append(Member(name, "dir", ref=info))
                    elif stat.S_ISLNK(mode):
                        linkname = zf.read(info).decode("utf-8", "replace")
                        target = _link_target(archive, info.filename, name, linkname, True)
                        members.append(Member(name, "link", target=target, ref=info))
                    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):     # 0: no Unix file type recorded
                        raise _unsafe(archive, info.filename, "is a device file, FIFO or socket")
                    else:
                        members.append(Member(name, "file", info.file_size, ref=info,
                                              data=zf.read(info) if _wanted(name, info.file_size) else None))
        except (*CORRUPT, OSError) as exc:
            raise UserError(f"{archive}: corrupt zip archive ({exc})") from None
        return "zip", members
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError:
        is_tar = False
    if not is_tar:
        raise UserError(f"{archive}: not a .zip or .tar(.gz) archive")
    try:
        with tarfile.open(archive, "r:*") as tf:
            for ti in tf:                        # one pass over the (compressed) stream
                name = _norm_member(archive, ti.name)
                if not name or _is_junk(name):
                    continue
                if ti.isdir():
                    members.append(Member(name, "dir", ref=ti))
                elif ti.isreg():
                    members.append(Member(name, "file", ti.size, ref=ti,
                                          data=tf.extractfile(ti).read() if _wanted(name, ti.size) else None))
                elif ti.issym():
                    members.append(Member(name, "link", target=_link_target(archive, ti.name, name, ti.linkname, True),
                                          ref=ti))
                elif ti.islnk():
                    members.append(Member(name, "link", target=_link_target(archive, ti.name, name, ti.linkname,
                                                                            False), ref=ti))
                else:
                    raise _unsafe(archive, ti.name, "is a device file, FIFO or other special file")
    except (*CORRUPT, OSError) as exc:
        raise UserError(f"{archive}: corrupt tar archive ({exc})") from None
    return "tar", members


def strip_wrappers(members: list[Member]) -> tuple[list[Member], str]:
    """Drop top-level folders that only wrap the data (``set_ipc50/new000/...`` -> ``new000/...``)."""
    from common.imagefolder import is_image_file

    prefix = ""
    while members:
        tops = {m.name.split("/")[0] for m in members}
        if len(tops) != 1:
            break
        top = tops.pop()
        inner = [m for m in members if m.name != top]
        if any(m.name == top and m.kind != "dir" for m in members) or not inner:
            break
        if any(m.kind == "file" and m.name.count("/") == 1 and is_image_file(m.name) for m in inner):
            break                                    # images right under it: it is a class folder
        cut = len(top) + 1
        for m in inner:
            m.name = m.name[cut:]
            if m.target is not None:
                m.target = m.target[cut:] if m.target.startswith(top + "/") else ""
        members, prefix = inner, prefix + top + "/"
    return members, prefix


def resolve_links(archive: Path, members: list[Member]) -> dict[str, Member]:
    """Map each link to the regular file it finally names (links are unpacked as copies, never as links)."""
    by_name = {m.name: m for m in members}
    resolved = {}
    for m in members:
        if m.kind != "link":
            continue
        cur, hops = m, 0
        while cur.kind == "link" and hops < 40:
            nxt = by_name.get(cur.target or "")
            if nxt is None:
                raise UserError(f"{archive.name}: link {m.name!r} points to {cur.target!r}, which is not in the "
                                f"archive (or outside it)")
            cur, hops = nxt, hops + 1
        if cur.kind != "file":
            raise UserError(f"{archive.name}: link {m.name!r} points to a {cur.kind} or a link loop; only links "
                            f"to files are supported")
        resolved[m.name] = cur
    return resolved


def _copy_limited(src, dst, limit: int, what: str) -> int:
    """Copy a stream, refusing one that yields more than ``limit`` bytes (a lying size header)."""
    n = 0
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            return n
        n += len(chunk)
        if n > limit:
            raise UserError(f"{what}: unpacks to more bytes than its header declares; refused")
        dst.write(chunk)


def extract_members(archive: Path, kind: str, members: list[Member], links: dict[str, Member], dest: Path,
                    rename_top: dict[str, str], progress: bool = True) -> None:
    """Write files and directories under ``dest`` only; the first path component goes through ``rename_top``."""
    root = os.path.normpath(dest)

    def out_path(name: str) -> Path:
        parts = name.split("/")
        parts[0] = rename_top.get(parts[0], parts[0])
        p = os.path.normpath(os.path.join(root, *parts))
        # defence in depth (names were checked, and no links are ever created, so a string check suffices)
        if not p.startswith(root + os.sep):
            raise _unsafe(archive, name, "resolves outside the output folder")
        return Path(p)

    files = [m for m in members if m.kind == "file"]
    is_zip = kind == "zip"
    opener = zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*")
    try:
        for m in members:
            if m.kind == "dir":
                out_path(m.name).mkdir(parents=True, exist_ok=True)
        for m in tqdm(files, desc="unpack", unit="file", disable=not progress):
            p = out_path(m.name)
            p.parent.mkdir(parents=True, exist_ok=True)
            src = opener.open(m.ref) if is_zip else opener.extractfile(m.ref)
            with src, open(p, "wb") as dst:
                _copy_limited(src, dst, m.size, f"{archive.name}: {m.name}")
        for name, target in links.items():
            p = out_path(name)
            if p.exists():
                raise UserError(f"{archive.name}: link {name!r} collides with another member")
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out_path(target.name), p)
    except CORRUPT as exc:
        raise UserError(f"{archive.name}: corrupt archive ({exc})") from None
    except OSError as exc:
        raise UserError(f"{archive.name}: cannot unpack ({exc})") from None
    finally:
        opener.close()


# --------------------------------------------------------------------------- class layouts

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
    from common.imagefolder import find_classes

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


def summarize_tree(members: list[Member]) -> tuple[dict[str, int], list[str]]:
    """Images per top-level folder (what ImageFolder will see) and the top-level image files."""
    from common.imagefolder import is_image_file

    counts: dict[str, int] = {}
    loose = []
    for m in members:
        parts = m.name.split("/")
        if m.kind == "dir" or len(parts) > 1:               # a folder at the top: ImageFolder's class
            counts.setdefault(parts[0], 0)
        if m.kind != "dir" and is_image_file(parts[-1]):
            if len(parts) == 1:
                loose.append(m.name)
            elif len(parts) == 2:
                counts[parts[0]] += 1
    return counts, loose


# --------------------------------------------------------------------------- fetch

def _read_packed_manifest(members: list[Member]) -> dict[str, Any] | None:
    """The archive's top-level ``manifest.json`` (as ``pack`` writes it), or None."""
    m = next((m for m in members if m.name == "manifest.json" and m.data is not None), None)
    try:
        manifest = json.loads(m.data) if m else None
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None


def _find_entry(source: str, registry: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entry = registry.get(source.lower())
    if entry is None:
        names = ", ".join(sorted(registry)[:6])
        raise UserError(f"{source}: not a URL, an existing file or a registry name (known: {names} ...; "
                        f"see python -m common.hub list)")
    if entry.get("fetchable") is False:
        raise UserError(f"{entry['name']} cannot be fetched: {entry.get('notes') or 'marked not fetchable'}")
    return entry


def fetch(source: str, out: str | os.PathLike, sha256: str | None = None, dataset: str | None = None,
          classes_from: str | os.PathLike | None = None, max_size: int = DEFAULT_MAX_SIZE,
          registry: str | os.PathLike | None = None, keep_names: bool = False, keep_archive: bool = False,
          force: bool = False, retries: int = 3, timeout: float = 60.0, retry_wait: float = 2.0,
          progress: bool = True, args: argparse.Namespace | dict | None = None) -> dict[str, Any]:
    """Download (or open) an archive, verify and unpack it safely into ``out``; returns the manifest."""
    from common.imagefolder import list_class_files

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


# --------------------------------------------------------------------------- pack

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
    from common.imagefolder import find_classes, list_class_files

    src, out_file = Path(src), Path(out_file)
    if out_file.exists() and not force:  # an archive cannot say who wrote it: never replaced silently
        raise UserError(f"--out {out_file} exists; choose another path, or pass --force to replace it")
    classes = find_classes(src, "folder to pack")
    per_class = {c: len(list_class_files(src / c)) for c in classes}
    empty = [c for c, n in per_class.items() if n == 0]
    if empty:
        raise UserError(f"{src}: class folder(s) without images: {_few(empty)}")
    if not (src / "manifest.json").is_file():
        _, files = _pack_files(src, out_file.resolve())
        write_manifest(src, build_manifest("hub.pack", args, classes=classes, images_per_class=per_class,
                                           num_images=sum(per_class.values()),
                                           files_sha256={f: sha256_file(src / f) for f in files}))
        log(f"wrote {src / 'manifest.json'} (there was none)")
    dirs, files = _pack_files(src, out_file.resolve())

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
            for f in tqdm(files, desc="pack", unit="file", disable=not progress):
                with open(src / f, "rb") as fh:
                    tf.addfile(info(f, tarfile.REGTYPE, os.fstat(fh.fileno()).st_size), fh)
    digest = sha256_file(out_file)
    print(f"{digest}  {out_file}")
    log(f"{len(files)} files, {sum(per_class.values())} images in {len(classes)} classes, "
        f"{human(out_file.stat().st_size)}; share it with: python -m common.hub fetch URL --out DIR --sha256 {digest}")
    return digest


# --------------------------------------------------------------------------- CLI

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.hub", description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(run_cli(main))
