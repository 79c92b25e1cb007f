"""The CLI answers at once: every stage's parser module imports no torch, and ``--help``, an
argument error and a missing input path end (with the right exit code and one ``error:`` line)
before torch or torchvision is imported (``python -X importtime`` lists every import)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PARSERS = {"squeeze": "squeeze.args", "rank_select": "rank_select.args", "recover": "recover.args",
           "relabel_eval": "relabel_eval.args"}
MISSING = "/nonexistent/dd-cli"
CASES = {
    "squeeze": (["--data-path", MISSING, "--output", "{tmp}/t.pth"], f"{MISSING}: --data-path does not exist"),
    "rank_select": (["--data-path", MISSING, "--ranker-path", f"{MISSING}.pth", "--output-path", "{tmp}/sel"],
                    f"{MISSING}: --data-path does not exist"),
    "recover": (["--arch-path", f"{MISSING}.pth", "--init-data-path", "{tmp}", "--syn-data-path", "{tmp}/syn"],
                f"{MISSING}.pth: --arch-path does not exist"),
    "relabel_eval": (["--syn-data-path", "{tmp}", "--val-dir", MISSING, "--output", "{tmp}/e.json"],
                     f"{MISSING}: --val-dir does not exist"),
    # sub-commands run as modules (python -m stage.module): their parsers live in stage.args
    "squeeze.evaluate": (["--arch-path", f"{MISSING}.pth", "--data-path", "{tmp}"],
                         f"{MISSING}.pth: --arch-path does not exist"),
    "rank_select.patches": (["--data-path", MISSING, "--output-path", "{tmp}/p"],
                            f"{MISSING}: --data-path does not exist"),
    "relabel_eval.relabel": (["--syn-data-path", MISSING, "--epochs", "1", "--output-dir", "{tmp}/s"],
                             f"{MISSING}: --syn-data-path does not exist"),
    "relabel_eval.diversity": (["--syn-data-path", "{tmp}", "--teacher-path", f"{MISSING}.pth",
                                "--output", "{tmp}/d.json"],
                               f"{MISSING}.pth: --teacher-path does not exist"),
    "squeeze.trajectories": (["--data-path", MISSING, "--output-dir", "{tmp}/experts"],
                             f"{MISSING}: --data-path does not exist"),
    "recover.trajectory_matching": (["--experts", MISSING, "--data-path", "{tmp}", "--output-path", "{tmp}/syn"],
                                    f"{MISSING}: --experts does not exist"),
    "relabel_eval.export": (["--format", "ddranking", "--syn-data-path", MISSING, "--output-dir", "{tmp}/dd"],
                            f"{MISSING}: --syn-data-path does not exist"),
}
HEAVY = ("torch", "torchvision", "timm", "pandas")


def run(argv, tmp):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=60)
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    return res, imported, errors


def test_parser_modules_are_torch_free():
    code = ("import importlib, sys\n"
            f"for m in {sorted(PARSERS.values())!r}:\n"
            "    importlib.import_module(m).get_args_parser().format_help()\n"
            "for m, f in [('squeeze.args', 'evaluate_parser'), ('rank_select.args', 'patches_parser'),\n"
            "             ('relabel_eval.args', 'relabel_parser'), ('relabel_eval.args', 'diversity_parser'),\n"
            "             ('squeeze.args', 'trajectories_parser'), ('recover.args', 'trajectory_matching_parser'),\n"
            "             ('relabel_eval.args', 'export_parser')]:\n"
            "    assert 'python -m' in getattr(importlib.import_module(m), f)().format_help()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("stage", sorted(CASES))
def test_help_argument_and_path_errors_before_torch(stage, tmp_path):
    res, imported, _ = run(["-m", stage, "--help"], tmp_path)
    assert res.returncode == 0 and "usage" in res.stdout.lower()
    assert not imported & set(HEAVY), stage
    res, imported, errors = run(["-m", stage, "--no-such-flag"], tmp_path)
    assert res.returncode == 2 and not imported & set(HEAVY)
    argv, message = CASES[stage]
    res, imported, errors = run(["-m", stage, *[a.format(tmp=tmp_path) for a in argv]], tmp_path)
    assert res.returncode == 2, res.stderr[-500:]
    assert errors == [f"error: {message}"]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
