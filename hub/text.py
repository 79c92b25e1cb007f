"""Sizes and progress lines shared by the hub commands (messages go to stderr)."""
from __future__ import annotations

import argparse
import re
import sys


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
