"""Safe archive reading: list members, refuse unsafe ones, strip wrapper folders, extract with limits."""
from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.cli.errors import UserError
from hub.download import CHUNK

JUNK = ("__MACOSX", ".DS_Store", "Thumbs.db")
# what a damaged archive raises while it is read
CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


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
    from common.data.imagefolder import is_image_file

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



def summarize_tree(members: list[Member]) -> tuple[dict[str, int], list[str]]:
    """Images per top-level folder (what ImageFolder will see) and the top-level image files."""
    from common.data.imagefolder import is_image_file

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
