"""Output locations checked before any work starts (torch-free).

Every stage calls :func:`check_output_file` or :func:`check_output_dir` on each place
it will write, right after parsing its arguments, so a bad location stops the run
with one line before hours of training, not after:

- a file expected but the path is an existing folder (or the other way round);
- a parent of the path is a file, so nothing can be created under it;
- the folder that would receive the output is read-only (no write permission bits,
  not writable by this user, or on a read-only file system);
- an existing output file that is read-only is not replaced.

Nothing is created by these checks.
"""
from __future__ import annotations

import os
from pathlib import Path

from common.cli.errors import UserError


def first_missing(path: str | os.PathLike) -> Path | None:
    """The topmost of ``path`` and its ancestors that does not exist yet (None when ``path`` exists):
    removing it after a failed run removes exactly what the run created there."""
    p, missing = Path(path), None
    while not os.path.lexists(p):
        missing = p
        if p.parent == p:
            break
        p = p.parent
    return missing


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (a file or a folder)."""
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def is_read_only(path: Path) -> bool:
    """No write permission bits, not writable by us, or on a read-only file system."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & 0o222 or not os.access(path, os.W_OK):
        return True
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _check_parent(path: Path, flag: str) -> None:
    anc = _existing_ancestor(path.parent if path.parent != Path("") else Path("."))
    if not anc.is_dir():
        raise UserError(f"{flag} {path}: {anc} is a file, so nothing can be written under it; "
                        f"choose another location")
    if is_read_only(anc):
        raise UserError(f"{flag} {path}: {anc} is read-only; choose a writable location")


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """A file this run will write (atomically: a sibling temporary file renamed onto it)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a folder, but a file is written here; give a file path "
                        f"(e.g. {p / ('result' + (p.suffix or '.json'))})")
    _check_parent(p, flag)
    if p.is_file() and is_read_only(p):
        raise UserError(f"{flag} {p}: the existing file is read-only and is not replaced; "
                        f"choose another path or make it writable")
    return p


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """A folder this run will write or replace (built under a sibling name, then swapped in)."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise UserError(f"{flag} {p}: is a file, but a folder is written here; choose a folder path")
    _check_parent(p, flag)
    if p.is_dir() and is_read_only(p):
        raise UserError(f"{flag} {p}: the folder is read-only; choose a writable location")
    return p

