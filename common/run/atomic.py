"""Atomic writes: write under a temporary name, rename when complete.

A crash (even SIGKILL) never leaves a half-written file or output directory under
the final name: readers see either the old complete version or the new one.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator


def _tmp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None: the file stays valid JSON (no bare ``NaN``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # numpy scalars and arrays
        return json_safe(obj.tolist())
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Valid JSON always: non-finite numbers are written as ``null``."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_image(img, path: str | os.PathLike, **save_kwargs) -> None:
    """Save a PIL image atomically; the format follows the final name's extension."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower())
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **save_kwargs)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; swap it into place on success.

    An existing directory at ``path`` is replaced only once the new one is complete.
    On failure the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, "partial")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = _tmp_sibling(path, "old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
