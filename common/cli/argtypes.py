"""Argparse types with declared ranges: every numeric flag of every stage uses one of these.

A value outside the range stops at parsing time with one line naming the flag
(``error: argument --lr: must be > 0, got 0 ...``), before any data is read or
anything is written; a meaningless value is never replaced by a default behind
the user's back. Torch-free, so parsers answer ``--help`` and argument errors fast.

    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--milestone", type=unit_float)            # [0, 1]
    p.add_argument("--momentum", type=float_range(0, 1, hi_open=True))
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _describe(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "a finite number"


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, name: str | None = None) -> Callable[[str], float]:
    """A finite float in the given range (NaN and inf are always refused)."""
    want = _describe(lo, hi, lo_open, hi_open)

    def parse(text) -> float:
        try:
            v = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number {want}, got {text!r}") from None
        if not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or \
                (hi is not None and (v > hi or (hi_open and v == hi))):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return v

    parse.__name__ = name or f"float {want}"
    return parse


def int_range(lo: int | None = None, hi: int | None = None, name: str | None = None) -> Callable[[str], int]:
    """An integer in ``[lo, hi]`` (either bound may be None)."""
    want = _describe(lo, hi, False, False)

    def parse(text) -> int:
        try:
            v = int(str(text).strip())
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer {want}, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {text}")
        return v

    parse.__name__ = name or f"integer {want}"
    return parse


positive_int = int_range(1, name="positive integer")
nonneg_int = int_range(0, name="non-negative integer")
positive_float = float_range(0, lo_open=True, name="positive number")
nonneg_float = float_range(0, name="non-negative number")
finite_float = float_range(name="finite number")
unit_float = float_range(0, 1, name="number in [0, 1]")          # probabilities, fractions
prob = unit_float
seed_int = int_range(0, 2 ** 32 - 1, name="seed")                 # numpy seeds are 32-bit and non-negative
momentum_float = float_range(0, 1, hi_open=True, name="momentum in [0, 1)")


def str2bool(v) -> bool:
    """``true/false``, ``yes/no``, ``1/0``, ``on/off`` (released scripts pass ``--cos True``)."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")
