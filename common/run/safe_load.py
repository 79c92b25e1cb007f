"""Load a torch file without running pickle code: ``weights_only=True`` and one message per failure.

Every resume or side file a stage reads back (``<output>.state/*.pt``) goes through
:func:`safe_torch_load`: tensors, numbers, strings, lists and dicts load; a file that
needs any other Python object to load (a planted pickle) is refused without running it,
with one line that says so; a truncated or foreign file gets its own line.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

from common.cli.errors import UserError

UNSAFE = "is not a safe torch file (loading it would run pickle code); nothing from it was run"


def safe_torch_load(path: str | os.PathLike, *, what: str, advice: str = "", safe_globals: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; any failure is one :class:`UserError` line naming
    ``path`` and ``what`` it is (e.g. "the linear probe's resume state"), followed by ``advice``.
    ``safe_globals``: plain record classes a released file may hold besides tensors (``argparse.Namespace``)."""
    import torch

    path = Path(path)
    tail = f"; {advice}" if advice else ""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter("ignore")  # torch warns on stderr about pickle protocols: keep errors one line
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found{tail}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a folder, not a file{tail}") from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" in text.lower() or is_raw_pickle(path):
            raise UserError(f"{path}: {what} {UNSAFE}{tail}") from None  # pickled objects, or a bare pickle
        raise UserError(f"{path}: {what} is not a readable torch file (corrupt or truncated){tail}") from None
    except Exception as exc:  # zip errors, truncated files, random bytes
        first = str(exc).splitlines()[0][:100] if str(exc) else ""
        raise UserError(f"{path}: {what} is not a readable torch file ({type(exc).__name__}"
                        f"{': ' + first if first else ''}){tail}") from None


def is_raw_pickle(path: Path) -> bool:
    """A bare pickle stream (protocol 2-5), not torch's zip container."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def require(ok: bool, path: str | os.PathLike, what: str, problem: str, fix: str = "") -> None:
    """One line for a file that loaded but does not hold what ``what`` must hold."""
    if not ok:
        raise UserError(f"{path}: {what} {problem}{'; ' + fix if fix else ''}")
