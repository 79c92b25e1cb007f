"""Bad input against every command: exit code 2, one ``error:`` line, no traceback, nothing touched.

A table of (command x kind of bad input). Each case runs the command in-process
through :func:`common.errors.run_cli` (as ``python -m`` does) on tiny generated data
and asserts: exit status 2; exactly one line on stderr, starting with ``error:``;
no traceback; and the workspace (data, checkpoints and every output location)
byte-identical to before the call (names, sizes and bytes of every file, hidden
ones included). ``SUITE_SIZE`` below is printed by ``test_suite_size``.
"""
from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Callable

import pytest

from common.argtypes import float_range, int_range, nonneg_int, positive_float, positive_int, str2bool, unit_float
from common.errors import run_cli

# --------------------------------------------------------------------------- commands

COMMANDS = {
    "squeeze": "squeeze.train",
    "squeeze.evaluate": "squeeze.evaluate",
    "rank_select": "rank_select.rank",
    "rank_select.patches": "rank_select.patches",
    "recover": "recover.synthesize",
    "relabel_eval": "relabel_eval.train",
    "relabel_eval.relabel": "relabel_eval.relabel",
    "relabel_eval.baselines": "relabel_eval.baselines",
    "relabel_eval.diversity": "relabel_eval.diversity",
    "common.prepare": "common.prepare",
    "hub": "hub" if importlib.util.find_spec("hub") is not None else "common.hub",
}


def command_main(command: str) -> Callable:
    return importlib.import_module(COMMANDS[command]).main


# --------------------------------------------------------------------------- helpers

def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` (hidden ones too) -> its bytes, or a marker for folders and links."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            out[str(p.relative_to(root))] = f"<dir {oct(p.stat().st_mode & 0o777)}>"
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = f"<link {os.readlink(p)}>" if p.is_symlink() else p.read_bytes()
    return out


def run_one_line(main: Callable, argv: list, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = run_cli(main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def assert_one_line_error(code: int, err: list[str], match: str | None = None) -> None:
    text = "\n".join(err)
    assert "Traceback" not in text, text
    assert code == 2, f"exit {code}; stderr:\n{text}"
    assert len(err) == 1 and err[0].startswith("error: "), f"not one error line:\n{text}"
    if match is not None:
        assert match in err[0], f"{match!r} not in {err[0]!r}"


# --------------------------------------------------------------------------- argparse types

def test_argtypes_ranges():
    assert positive_int("3") == 3 and nonneg_int("0") == 0 and positive_float("1e-3") == 1e-3
    assert unit_float("1") == 1.0 and unit_float("0") == 0.0
    assert int_range(-1)("-1") == -1
    for t, bad in ((positive_int, "0"), (positive_int, "-2"), (positive_int, "1.5"), (nonneg_int, "-1"),
                   (positive_float, "0"), (positive_float, "nan"), (positive_float, "inf"), (unit_float, "1.01"),
                   (float_range(0, 1, hi_open=True), "1"), (float_range(0, 1, lo_open=True), "0"),
                   (positive_float, "abc")):
        with pytest.raises(argparse.ArgumentTypeError):
            t(bad)
    assert str2bool("True") is True and str2bool("off") is False


# --------------------------------------------------------------------------- numeric flags out of range
# Refused by the parser, before anything is read or written; the message names the flag.

RANGE_CASES = [
    ("squeeze", ["--data-path", "D", "--output", "o.pth", "--epochs", "0"], "--epochs"),
    ("squeeze", ["--data-path", "D", "--output", "o.pth", "--batch-size", "0"], "--batch-size"),
    ("squeeze", ["--data-path", "D", "--output", "o.pth", "--lr", "-1"], "--lr"),
    ("squeeze", ["--data-path", "D", "--output", "o.pth", "--lr", "0"], "--lr"),
    ("squeeze", ["--data-path", "D", "--output", "o.pth", "--label-smoothing", "1"], "--label-smoothing"),
    ("squeeze.evaluate", ["--arch-path", "t.pth", "--data-path", "D", "--batch-size", "0"], "--batch-size"),
    ("squeeze.evaluate", ["--arch-path", "t.pth", "--data-path", "D", "--workers", "-1"], "--workers"),
    ("rank_select", ["--data-path", "D", "--output-path", "o", "--ipc", "0"], "--ipc"),
    ("rank_select", ["--data-path", "D", "--output-path", "o", "--batch-size", "-4"], "--batch-size"),
    ("rank_select.patches", ["--data-path", "D", "--output-path", "o", "--factor", "0"], "--factor"),
    ("rank_select.patches", ["--data-path", "D", "--output-path", "o", "--mipc", "-1"], "--mipc"),
    ("recover", ["--ipc", "0"], "--ipc"),
    ("recover", ["--lr", "0"], "--lr"),
    ("recover", ["--r-bn", "-0.1"], "--r-bn"),
    ("recover", ["--milestone", "2"], "--milestone"),
    ("recover", ["--iteration", "-5"], "--iteration"),
    ("relabel_eval", ["--ipc", "0"], "--ipc"),
    ("relabel_eval", ["--val-ipc", "0"], "--val-ipc"),
    ("relabel_eval", ["--eval-every", "0"], "--eval-every"),
    ("relabel_eval", ["--temperature", "0"], "--temperature"),
    ("relabel_eval", ["--adamw-lr", "-1"], "--adamw-lr"),
    ("relabel_eval", ["--re-epochs", "0"], "--re-epochs"),
    ("relabel_eval", ["--seeds", "1", "-2"], "--seeds"),
    ("relabel_eval", ["--random-erasing-p", "1.5"], "--random-erasing-p"),
    ("relabel_eval.relabel", ["--epochs", "0"], "--epochs"),
    ("relabel_eval.relabel", ["--topk", "-1"], "--topk"),
    ("relabel_eval.baselines", ["random", "--ipc", "0"], "--ipc"),
    ("relabel_eval.baselines", ["ddranking", "--weight", "2"], "--weight"),
    ("relabel_eval.diversity", ["--batch-size", "0"], "--batch-size"),
    ("relabel_eval.diversity", ["--ipc", "-1"], "--ipc"),
    ("common.prepare", ["shapes", "--train-per-class", "0"], "--train-per-class"),
    ("hub", ["fetch", "x.zip", "--max-size", "0"], "--max-size"),
    ("hub", ["fetch", "x.zip", "--timeout", "-1"], "--timeout"),
]


@pytest.mark.parametrize("command, argv, flag", RANGE_CASES,
                         ids=[f"{c}:{f}={a[-1]}" for c, a, f in RANGE_CASES])
def test_numeric_flag_out_of_range(command, argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_one_line(command_main(command), argv, capsys)
    assert_one_line_error(code, err, f"argument {flag}")
    assert snapshot(tmp_path) == before
