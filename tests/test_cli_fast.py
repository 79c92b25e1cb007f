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
    "squeeze.linear_probe": (["--backbone", f"{MISSING}.pth", "--data-path", "{tmp}", "--output", "{tmp}/p.pth"],
                             f"{MISSING}.pth: --backbone does not exist"),
    "squeeze.ssl": (["--data-path", MISSING, "--output", "{tmp}/s.pth"], f"{MISSING}: --data-path does not exist"),
    "squeeze.bn_stats": ([f"{MISSING}.pth", "--output", "{tmp}/bn"], f"{MISSING}.pth: checkpoint file not found"),
    "squeeze.class_stats": (["--arch-path", f"{MISSING}.pth", "--data-path", MISSING, "--output", "{tmp}/cs.pt"],
                            f"{MISSING}.pth: --arch-path does not exist"),
    "rank_select.difficulty": (["--data-path", MISSING, "--output", "{tmp}/d.csv"],
                               f"{MISSING}: --data-path does not exist"),
    "relabel_eval.baselines": (["random", "--train-dir", MISSING, "--ipc", "2", "--output-dir", "{tmp}/r"],
                               f"{MISSING}: --train-dir does not exist"),
    "hub": (["pack", MISSING, "--out", "{tmp}/p.tar.gz"], f"{MISSING}: hub pack DIR does not exist"),
    "common.prepare": (["tinyimagenet", "--src", f"{MISSING}.zip", "--out", "{tmp}/t"],
                       f"{MISSING}.zip: --src does not exist"),
    "common.viz": ([MISSING, "--out", "{tmp}/g.png"], f"{MISSING}: ImageFolder root does not exist"),
    "squeeze.trajectories": (["--data-path", MISSING, "--output-dir", "{tmp}/experts"],
                             f"{MISSING}: --data-path does not exist"),
    "recover.trajectory_matching": (["--experts", MISSING, "--data-path", "{tmp}", "--output-path", "{tmp}/syn"],
                                    f"{MISSING}: --experts does not exist"),
    "relabel_eval.export": (["--format", "ddranking", "--syn-data-path", MISSING, "--output-dir", "{tmp}/dd"],
                            f"{MISSING}: --syn-data-path does not exist"),
}
# the torch-free parser of each sub-command: (module, parser function)
SUB_PARSERS = [("squeeze.args", "evaluate_parser"), ("rank_select.args", "patches_parser"),
               ("relabel_eval.args", "relabel_parser"), ("relabel_eval.args", "diversity_parser"),
               ("squeeze.args", "linear_probe_parser"), ("squeeze.args", "ssl_parser"),
               ("squeeze.args", "bn_stats_parser"), ("rank_select.args", "difficulty_parser"),
               ("relabel_eval.args", "baselines_parser"), ("common.args", "prepare_parser"),
               ("common.args", "viz_parser"), ("hub.args", "get_args_parser"),
               ("squeeze.args", "trajectories_parser"), ("recover.args", "trajectory_matching_parser"),
               ("relabel_eval.args", "export_parser"), ("squeeze.args", "class_stats_parser")]
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
            f"for m, f in {SUB_PARSERS!r}:\n"
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
