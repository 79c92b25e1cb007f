"""Load a torch file with ``weights_only=True`` and one clear ``error:`` line for a bad one.

Every resume state, trajectory, label or lr file a command reads goes through
:func:`load_torch_file`: tensors, dicts, lists, tuples, strings and numbers load; a file
that needs pickle code (a class instance, a function, ``os.system``) is refused before any
of it runs, with the same message everywhere; a truncated, empty or random file is
"not a readable torch file". ``what`` names the file's role and ``fix`` says what to do.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

from common.cli.errors import UserError

UNSAFE = "is not a safe torch file (it needs pickle code to load); nothing from it was run"


def load_torch_file(path: str | os.PathLike, what: str = "file", fix: str = "") -> Any:
    """``torch.load(path, weights_only=True)``, or :class:`UserError` naming ``path`` and ``what``."""
    import torch

    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found{tail}")
    try:
        with warnings.catch_warnings():  # torch warns on stderr about some files: keep errors one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        with open(path, "rb") as f:
            head = f.read(2)
        raw_pickle = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        if "global" in text.lower() or "unsupported" in text.lower() or raw_pickle:
            raise UserError(f"{path}: {what} {UNSAFE}{tail}") from None
        raise UserError(f"{path}: {what} is not a readable torch file (corrupt or truncated){tail}") from None
    except Exception as exc:  # zip errors, truncated files, random bytes
        first = str(exc).splitlines()[0][:80] if str(exc) else ""
        raise UserError(f"{path}: {what} is not a readable torch file ({type(exc).__name__}"
                        f"{': ' + first if first else ''}){tail}") from None


def require(ok: bool, path: str | os.PathLike, what: str, problem: str, fix: str = "") -> None:
    """One line for a file that loaded but does not hold what ``what`` must hold."""
    if not ok:
        raise UserError(f"{path}: {what} {problem}{'; ' + fix if fix else ''}")
