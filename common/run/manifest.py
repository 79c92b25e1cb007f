"""``manifest.json`` beside every output: arguments, versions, commit, checksums, timings."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from common.cli.errors import UserError
from common.run.atomic import atomic_write_json

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
REPO_ROOT = Path(__file__).resolve().parent.parent


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file (cached per path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "pandas", "Pillow", "tqdm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """HEAD commit of this repository, with ``-dirty`` when the tree has changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return None


def args_to_dict(args: argparse.Namespace | dict | None) -> dict[str, Any]:
    if args is None:
        return {}
    d = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def build_manifest(stage: str, args: argparse.Namespace | dict | None = None,
                   inputs: dict[str, str | os.PathLike | None] | None = None, **extra: Any) -> dict[str, Any]:
    """A manifest dict; ``inputs`` maps a role (``teacher``) to a file whose sha256 is recorded."""
    checksums = {}
    for role, p in (inputs or {}).items():
        if p is not None and Path(p).is_file():
            checksums[role] = {"path": str(p), "sha256": sha256_file(p)}
    m: dict[str, Any] = {
        "stage": stage,
        "args": args_to_dict(args),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
        "inputs": checksums,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    m.update(extra)
    return m


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write atomically; ``path`` may be a directory (then ``manifest.json`` inside it)."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / "manifest.json"
    atomic_write_json(path, manifest)
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable manifest ({type(exc).__name__}: {str(exc)[:80]}); "
                        f"move it away if it is not this toolkit's") from None
    if not isinstance(m, dict):
        raise UserError(f"{path}: not a manifest of this toolkit (a JSON object is expected); move it away")
    return m


class Timer:
    """Wall-clock timings collected into a dict: ``with timer('train'): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()
