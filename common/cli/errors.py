"""One-line errors for bad input.

Every stage raises :class:`UserError` for a problem the user can fix (a missing
path, a wrong flag, a checkpoint that does not match the data). The command-line
wrapper :func:`run_cli` prints it as a single ``error: ...`` line and exits with
status 2, never with a traceback from deep inside torch.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Iterator, Sequence


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


@contextlib.contextmanager
def bar_vanishes_on_error(bar) -> Iterator:
    """A progress bar that an error interrupts is cleared instead of left on screen, so the
    ``error:`` line is the only line the failure leaves: ``with tqdm(...) as bar, bar_vanishes_on_error(bar):``."""
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with a traceback."""
    text = str(exc)
    if "Original Traceback" in text:
        for line in reversed(text.strip().splitlines()):
            if "UserError: " in line:
                return line.split("UserError: ", 1)[1].strip()
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


@contextlib.contextmanager
def one_line_argparse() -> Iterator[None]:
    """Argument errors raise :class:`UserError` (one line) instead of printing usage and exiting."""
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn :class:`UserError` into one line on stderr and exit code 2.

    Argument errors (a flag out of its declared range, a missing required flag) are
    reported the same way. Set ``DD_TRACEBACK=1`` to see the full traceback when debugging.
    """
    try:
        with one_line_argparse():
            main(argv)
    except UserError as exc:
        if os.environ.get("DD_TRACEBACK"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
