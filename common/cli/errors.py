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


class _LineTracker:
    """``sys.stderr`` while a command runs: passes everything through and remembers the last character
    written, so :func:`run_cli` knows whether a progress bar left the line open."""

    def __init__(self, stream):
        self._stream, self.last = stream, "\n"

    def write(self, text):
        if text:
            self.last = text[-1]
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _end_progress_line(tracker: _LineTracker) -> None:
    """Close the progress bars still open (cleared, as a finished ``leave=False`` bar is) and end the
    line a bar drew on, so the next message starts its own line: on a terminal a cleared bar leaves the
    cursor at the start of an empty line; in a log file or pipe its text stays, so a newline follows."""
    tqdm_module = sys.modules.get("tqdm.std")  # no bar was drawn if tqdm was never imported
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.leave = False
            with contextlib.suppress(Exception):
                bar.close()
    if tracker.last == "\n":
        return
    with contextlib.suppress(Exception):
        if tracker.last == "\r" and tracker.isatty():
            return
    tracker._stream.write("\n")


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn :class:`UserError` into one line on stderr and exit code 2.

    Argument errors (a flag out of its declared range, a missing required flag) are
    reported the same way. The ``error:`` line starts its own line, also when a progress bar
    was drawing. Set ``DD_TRACEBACK=1`` to see the full traceback when debugging.
    """
    original = sys.stderr
    tracker = sys.stderr = _LineTracker(original)
    try:
        with one_line_argparse():
            main(argv)
    except UserError as exc:
        _end_progress_line(tracker)
        if os.environ.get("DD_TRACEBACK"):
            raise
        print(f"error: {one_line(exc)}", file=original)
        return 2
    except KeyboardInterrupt:
        _end_progress_line(tracker)
        print("interrupted", file=original)
        return 130
    except Exception:  # a bug: its traceback, too, starts on its own line
        _end_progress_line(tracker)
        raise
    finally:
        if sys.stderr is tracker:
            sys.stderr = original
    return 0
