"""Bad input against every command: exit code 2, one ``error:`` line, no traceback, nothing touched.

A table of (command x kind of bad input). Each case runs the command in-process
through :func:`common.cli.errors.run_cli` (as ``python -m`` does) on tiny generated data
and asserts: exit status 2; exactly one line on stderr, starting with ``error:``;
no traceback; and the workspace (data, checkpoints and every output location)
byte-identical to before the call (names, sizes and bytes of every file, hidden
ones included). ``SUITE_SIZE`` below is printed by ``test_suite_size``.
"""
from __future__ import annotations

import argparse
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from common.cli.argtypes import float_range, int_range, nonneg_int, positive_float, positive_int, str2bool, unit_float
from common.cli.errors import run_cli

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
    "hub": "hub",
    "squeeze.ssl": "squeeze.ssl",
    "squeeze.linear_probe": "squeeze.linear_probe",
    "squeeze.trajectories": "squeeze.trajectories",
    "rank_select.difficulty": "rank_select.difficulty",
    "recover.trajectory_matching": "recover.trajectory_matching",
    "relabel_eval.export": "relabel_eval.export",
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
    return code, visible_lines(capsys.readouterr().err)


def visible_lines(text: str) -> list[str]:
    """The lines a terminal shows: a progress bar redraws itself with carriage returns (and clears
    itself with blanks when it closes), so only what follows the last ``\\r`` of a line stays."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return [line for line in lines if line.strip()]


def assert_one_line_error(code: int, err: list[str], match: str | None = None, late: bool = False) -> None:
    """Exit 2, one ``error:`` line and nothing else; ``late``: the failure came after the run had
    started (a diverged loss), so the run's own log lines may precede the error line, which is last."""
    text = "\n".join(err)
    assert "Traceback" not in text, text
    assert code == 2, f"exit {code}; stderr:\n{text}"
    errors = [line for line in err if line.startswith("error:")]
    if late:
        assert len(errors) == 1 and err[-1].startswith("error: "), f"not one error line, last:\n{text}"
    else:
        assert len(err) == 1 and err[0].startswith("error: "), f"not one error line:\n{text}"
    if match is not None:
        assert match in errors[0], f"{match!r} not in {errors[0]!r}"


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
    ("squeeze.ssl", ["--data-path", "D", "--output", "o.pth", "--lr", "0"], "--lr"),
    ("squeeze.ssl", ["--data-path", "D", "--output", "o.pth", "--moco-momentum", "1"], "--moco-momentum"),
    ("squeeze.ssl", ["--data-path", "D", "--output", "o.pth", "--batch-size", "1"], "--batch-size"),
    ("squeeze.linear_probe", ["--data-path", "D", "--output", "o.pth", "--epochs", "-1"], "--epochs"),
    ("squeeze.linear_probe", ["--data-path", "D", "--output", "o.pth", "--lr", "0"], "--lr"),
    ("squeeze.trajectories", ["--data-path", "D", "--output-dir", "o", "--num-experts", "0"], "--num-experts"),
    ("rank_select.difficulty", ["--data-path", "D", "--output", "o.csv", "--num-models", "0"], "--num-models"),
    ("recover.trajectory_matching", ["--experts", "E", "--data-path", "D", "--output-path", "o", "--ipc", "0"],
     "--ipc"),
    ("relabel_eval.export", ["--ipc", "0"], "--ipc"),
    ("recover.trajectory_matching", ["--experts", "E", "--data-path", "D", "--output-path", "o",
                                     "--depth-ratio", "1.5"], "--depth-ratio"),
]


@pytest.mark.parametrize("command, argv, flag", RANGE_CASES,
                         ids=[f"{c}:{f}={a[-1]}" for c, a, f in RANGE_CASES])
def test_numeric_flag_out_of_range(command, argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_one_line(command_main(command), argv, capsys)
    assert_one_line_error(code, err, f"argument {flag}")
    assert snapshot(tmp_path) == before


# =========================================================================== the table
# A fresh workspace per case: ``data/{train,val}`` (3 classes, 4 train / 2 val images of 16 px),
# ``set.zip`` (a released-style archive of the same classes) and whatever the case adds; the
# checkpoints live in a shared folder outside it, checked unchanged at the end of the module.

SIZE = 16


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Data template and checkpoints, built once per module."""
    import io
    import pickle
    import zipfile

    from common.data.imagefolder import find_classes
    from tests.conftest import make_teacher, make_tree

    root = tmp_path_factory.mktemp("shared")
    tpl = root / "template"
    make_tree(tpl / "data" / "train", 3, 4, size=SIZE, split=0)
    make_tree(tpl / "data" / "val", 3, 2, size=SIZE, split=1)
    classes = find_classes(tpl / "data" / "train")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, c in enumerate(classes):
            zf.write(tpl / "data" / "val" / c / "img_000.png", f"new{i:03d}/class{i:03d}_id000.png")
    (tpl / "set.zip").write_bytes(buf.getvalue())
    ck = root / "ck"
    ck.mkdir()
    make_teacher(ck / "teacher.pth", classes, input_size=SIZE, data_root=tpl / "data" / "train")
    make_teacher(ck / "teacher_in.pth", classes, arch="conv3_in", input_size=SIZE)
    make_teacher(ck / "teacher4.pth", classes + ["03_extra"], input_size=SIZE)
    make_teacher(ck / "teacher_rev.pth", list(reversed(classes)), input_size=SIZE)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo PWNED >&2",))

    import torch

    torch.save({"model": Evil()}, ck / "evil.pth")
    with open(ck / "evil_raw.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    (ck / "garbage.pth").write_bytes(bytes(range(7, 250)) * 2)
    return {"template": tpl, "ck": ck, "classes": classes}


# The command line that would succeed, per command; a case overrides or adds flags.
GOOD: dict[str, dict[str, object]] = {
    "squeeze": {"--data-path": "data", "--arch-name": "conv3", "--epochs": "1", "--batch-size": "4",
                "--output": "out/teacher.pth", "--device": "cpu", "--workers": "0"},
    "squeeze.evaluate": {"--arch-path": "@teacher.pth", "--data-path": "data", "--device": "cpu",
                         "--workers": "0", "--output": "out/eval.json"},
    "rank_select": {"--data-path": "data/train", "--ranker-path": "@teacher.pth", "--output-path": "out/sel",
                    "--ipc": "2", "--device": "cpu", "--workers": "0", "--ranking-file": "out/rank.csv"},
    "rank_select.patches": {"--data-path": "data/train", "--observer-path": "@teacher.pth", "--output-path": "out/rded",
                            "--ipc": "1", "--mipc": "4", "--num-crop": "2", "--device": "cpu", "--workers": "0"},
    "recover": {"--init-data-path": "data/train", "--arch-path": "@teacher.pth", "--syn-data-path": "out/syn",
                "--exp-name": "e", "--ipc": "2", "--iteration": "2", "--batch-size": "6", "--device": "cpu"},
    "relabel_eval": {"--syn-data-path": "data/train", "--val-dir": "data/val", "--teacher-path": "@teacher.pth",
                     "--re-epochs": "1", "--re-batch-size": "4", "--workers": "0", "--device": "cpu",
                     "--output": "out/eval.json"},
    "relabel_eval.relabel": {"--syn-data-path": "data/train", "--teacher-path": "@teacher.pth", "--epochs": "1",
                             "--output-dir": "out/soft", "--workers": "0", "--device": "cpu"},
    "relabel_eval.baselines": {"": ["random"], "--train-dir": "data/train", "--ipc": "2",
                               "--output-dir": "out/random"},
    "relabel_eval.diversity": {"--syn-data-path": "data/train", "--teacher-path": "@teacher.pth",
                               "--output": "out/div.json", "--device": "cpu"},
    "common.prepare": {"": ["shapes"], "--out": "out/shapes", "--train-per-class": "2", "--val-per-class": "1"},
    "hub": {"": ["fetch", "set.zip"], "--out": "out/fetched", "--classes-from": "data/val", "--quiet": True},
    "hub pack": {"": ["pack", "data/train"], "--out": "out/pack.tar.gz", "--quiet": True},
}
# (flag, "file" | "dir") of each command's output
OUTPUT = {
    "squeeze": ("--output", "file"), "squeeze.evaluate": ("--output", "file"),
    "rank_select": ("--output-path", "dir"), "rank_select.patches": ("--output-path", "dir"),
    "recover": ("--syn-data-path", "dir"), "relabel_eval": ("--output", "file"),
    "relabel_eval.relabel": ("--output-dir", "dir"), "relabel_eval.baselines": ("--output-dir", "dir"),
    "relabel_eval.diversity": ("--output", "file"), "common.prepare": ("--out", "dir"),
    "hub": ("--out", "dir"), "hub pack": ("--out", "file"),
}
# the main input of each command: (flag, role) with role "root" (has train/ and val/), "tree" (an ImageFolder)
INPUT = {
    "squeeze": "--data-path", "squeeze.evaluate": "--data-path", "rank_select": "--data-path",
    "rank_select.patches": "--data-path", "recover": "--init-data-path", "relabel_eval": "--syn-data-path",
    "relabel_eval.relabel": "--syn-data-path", "relabel_eval.baselines": "--train-dir",
    "relabel_eval.diversity": "--syn-data-path", "hub pack": "",
}
TEACHER = {
    "squeeze.evaluate": "--arch-path", "rank_select": "--ranker-path", "rank_select.patches": "--observer-path",
    "recover": "--arch-path", "relabel_eval": "--teacher-path", "relabel_eval.relabel": "--teacher-path",
    "relabel_eval.diversity": "--teacher-path",
}
IPC = {"rank_select": "--ipc", "rank_select.patches": "--ipc", "recover": "--ipc", "relabel_eval": "--ipc",
       "relabel_eval.relabel": "--ipc", "relabel_eval.baselines": "--ipc", "relabel_eval.diversity": "--ipc"}
TORCH_COMMANDS = ["squeeze", "squeeze.evaluate", "rank_select", "rank_select.patches", "recover", "relabel_eval",
                  "relabel_eval.relabel", "relabel_eval.diversity"]
# a numeric flag per command, for the zero and negative kinds
NUMERIC = {"squeeze": "--epochs", "squeeze.evaluate": "--batch-size", "rank_select": "--batch-size",
           "rank_select.patches": "--num-crop", "recover": "--iteration", "relabel_eval": "--re-epochs",
           "relabel_eval.relabel": "--epochs", "relabel_eval.baselines": "--ipc",
           "relabel_eval.diversity": "--batch-size", "common.prepare": "--train-per-class", "hub": "--timeout",
           "hub pack": None}
UNKNOWN = {"squeeze": ("--arch-name", "nosuchnet"), "squeeze.evaluate": ("--dataset", "nosuchset"),
           "rank_select": ("--dataset", "nosuchset"), "rank_select.patches": ("--observer-arch", "nosuchnet"),
           "recover": ("--dataset", "nosuchset"), "relabel_eval": ("--stud-name", "nosuchnet"),
           "relabel_eval.relabel": ("--stud-name", "nosuchnet"), "relabel_eval.diversity": ("--arch-name", "nosuchnet"),
           "relabel_eval.baselines": ("", ["nosuchbaseline"]), "common.prepare": ("", ["nosuchset"]),
           "hub": ("", ["fetch", "nosuch-release"])}


@dataclass
class Case:
    command: str
    kind: str
    setup: Callable[[Path, dict], dict]   # (workspace, shared) -> flag overrides
    match: str | None = None

    @property
    def id(self) -> str:
        return f"{self.command}:{self.kind}"


def build_argv(command: str, overrides: dict, ck: Path) -> list[str]:
    flags = {**GOOD[command], **overrides}
    argv: list[str] = [str(a) for a in flags.pop("", [])]
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
            continue
        argv.append(flag)
        if isinstance(value, (list, tuple)):
            argv += [str(v) for v in value]
        else:
            value = str(value)
            argv.append(str(ck / value[1:]) if value.startswith("@") else value)
    return argv


def write_img(path: Path, data: bytes) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {}


def nan_tiff(path: Path) -> None:
    import numpy as np
    from PIL import Image

    a = np.full((SIZE, SIZE), 0.5, np.float32)
    a[3, 3] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format="TIFF")


def _trees(ws: Path, command: str) -> list[Path]:
    """The ImageFolder trees a command reads from the workspace."""
    if command == "squeeze":
        return [ws / "data" / "train", ws / "data" / "val"]
    if command == "squeeze.evaluate":
        return [ws / "data" / "val"]
    return [ws / "data" / "train"]


def _class_dir(ws: Path, command: str, name: str) -> list[Path]:
    return [t / name for t in _trees(ws, command)]


def k_missing(ws, sh, command):
    flag = INPUT[command]
    if flag == "":
        return {"": GOOD[command][""][:1] + ["no/such/dir"]}
    return {flag: "no/such/dir"}


def k_empty_class(ws, sh, command):
    for d in _class_dir(ws, command, "03_empty"):
        d.mkdir()
    return {}


def k_junk_only_class(ws, sh, command):
    """A class folder holding only junk files and a nested folder of images: it has no images of its own."""
    for d in _class_dir(ws, command, "03_junk"):
        (d / "nested").mkdir(parents=True)
        (d / "nested" / "img.png").write_bytes((ws / "data" / "train" / "00_circle" / "img_000.png").read_bytes())
        (d / "notes.txt").write_text("junk")
        (d / ".DS_Store").write_bytes(b"\0\1")
    return {}


def _every_file(command: str) -> dict:
    """Flags that make the command read every image (baselines copies a random IPC subset)."""
    return {"--ipc": "4"} if command == "relabel_eval.baselines" else {}


def k_corrupt(ws, sh, command):
    write_img(_trees(ws, command)[0] / "00_circle" / "img_001.png", b"this is not a PNG file at all")
    return _every_file(command)


def k_zero_byte(ws, sh, command):
    write_img(_trees(ws, command)[0] / "00_circle" / "img_001.png", b"")
    return _every_file(command)


def k_nan_float_image(ws, sh, command):
    """A 32-bit float image (TIFF bytes under a .png name: Pillow reads by content) with a NaN pixel."""
    nan_tiff(_trees(ws, command)[0] / "01_square" / "img_001.png")
    return _every_file(command)


def k_class_count(ws, sh, command):
    if command in TEACHER:
        return {TEACHER[command]: "@teacher4.pth"}
    if command == "squeeze":
        (ws / "data" / "val" / "03_extra").mkdir()
        (ws / "data" / "val" / "03_extra" / "a.png").write_bytes(
            (ws / "data" / "val" / "00_circle" / "img_000.png").read_bytes())
        return {}
    if command == "hub":  # the archive has 3 class folders, --classes-from 4
        (ws / "data" / "val" / "03_extra").mkdir()
        return {}
    raise AssertionError(command)


def k_class_order(ws, sh, command):
    return {TEACHER[command]: "@teacher_rev.pth"}


def k_ipc_too_large(ws, sh, command):
    return {IPC[command]: "99"}


def k_non_bn_teacher(ws, sh, command):
    return {TEACHER[command]: "@teacher_in.pth"}


def k_malicious_checkpoint(ws, sh, command):
    if command == "squeeze":
        return {"--resume": "@evil.pth"}
    return {TEACHER[command]: "@evil.pth"}


def k_malicious_pickle(ws, sh, command):
    return {TEACHER[command]: "@evil_raw.pkl"}


def k_garbage_checkpoint(ws, sh, command):
    return {TEACHER[command]: "@garbage.pth"}


def k_malicious_archive(ws, sh, command):
    import zipfile

    with zipfile.ZipFile(ws / "evil.zip", "w") as zf:
        zf.writestr("new000/a.png", (ws / "data" / "val" / "00_circle" / "img_000.png").read_bytes())
        zf.writestr("../escaped.png", b"x")
    return {"": ["fetch", "evil.zip"]}


def _output_path(command: str) -> str:
    flag, _ = OUTPUT[command]
    return str(GOOD[command][flag])


def k_out_wrong_type(ws, sh, command):
    """A folder (holding a file) where a file is written, or a file where a folder is written."""
    flag, kind = OUTPUT[command]
    p = ws / _output_path(command)
    if command == "recover":
        p = p / "e"
    if kind == "file":
        p.mkdir(parents=True)
        (p / "keep.txt").write_text("weeks of work")
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("weeks of work")
    return {}


def k_out_inside_file(ws, sh, command):
    flag, _ = OUTPUT[command]
    (ws / "blocker").write_text("a file, not a folder")
    return {flag: "blocker/out"}


def k_out_read_only(ws, sh, command):
    flag, kind = OUTPUT[command]
    (ws / "ro").mkdir()
    os.chmod(ws / "ro", 0o555)
    return {flag: "ro/out.json" if kind == "file" else "ro/out"}


def k_out_foreign(ws, sh, command):
    """An existing output this toolkit did not write: never replaced without --force."""
    flag, kind = OUTPUT[command]
    p = ws / _output_path(command)
    if command == "recover":
        p = p / "e"
    if kind == "file":
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("a file of the user's: weeks of work")
    else:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "notes.txt").write_text("weeks of work")
    return {}


def k_syn_path_is_file(ws, sh, command):
    """recover --syn-data-path FILE (no --exp-name)."""
    (ws / "out").mkdir()
    (ws / "out" / "syn").write_text("a file")
    return {"--exp-name": None}


def k_ranking_file_is_folder(ws, sh, command):
    (ws / "out" / "rank.csv").mkdir(parents=True)
    return {}


def _ranking_csv(ws: Path, rows: list[tuple[str, str, int, str]]) -> None:
    (ws / "out").mkdir(exist_ok=True)
    lines = ["path,class,label,score"] + [f"{p},{c},{y},{s}" for p, c, y, s in rows]
    (ws / "out" / "rank.csv").write_text("\n".join(lines) + "\n")


def _rows(ws: Path, score=lambda i: f"{0.1 * (i % 7):.2f}"):
    rows = []
    for y, c in enumerate(sorted(p.name for p in (ws / "data" / "train").iterdir())):
        for f in sorted((ws / "data" / "train" / c).iterdir()):
            rows.append((f"{c}/{f.name}", c, y, score(len(rows))))
    return rows


def k_foreign_results_csv(ws, sh, command):
    """relabel_eval appends a row to --results-csv: a CSV that is not our results table is never rewritten."""
    (ws / "table.csv").write_text("subject,score\nalice,3\n")
    return {"--results-csv": "table.csv"}


def k_foreign_csv(ws, sh, command):
    _ranking_csv(ws, [(f"n0{i}/x{j}.JPEG", f"n0{i}", i, "0.5") for i in range(3) for j in range(4)])
    return {}


def k_nan_csv(ws, sh, command):
    _ranking_csv(ws, _rows(ws, lambda i: "nan" if i == 5 else "0.5"))
    return {}


def k_changed_csv(ws, sh, command):
    """A ranking scored here, then an image replaced under the same name: the CSV is stale."""
    import time

    argv = build_argv("rank_select", {"--output-path": "out/first"}, sh["ck"])
    assert run_cli(command_main("rank_select"), argv) == 0
    time.sleep(0.01)
    img = ws / "data" / "train" / "01_square" / "img_002.png"
    img.write_bytes((ws / "data" / "train" / "02_triangle" / "img_000.png").read_bytes())
    return {}


def k_diverged(ws, sh, command):
    return {"squeeze": {"--lr": "1e30", "--warmup-epochs": "0"},
            "recover": {"--r-bn": "1e39"},
            "relabel_eval": {"--adamw-lr": "1e30"}}[command]


def k_diverged_hard(ws, sh, command):
    return {"--adamw-lr": "1e30", "--label-mode": "hard", "--teacher-path": None, "--stud-name": "conv3"}


def k_zero(ws, sh, command):
    flag = NUMERIC[command]
    return {flag: "0"}


def k_negative(ws, sh, command):
    return {NUMERIC[command]: "-3"}


def k_unknown_name(ws, sh, command):
    flag, value = UNKNOWN[command]
    if flag == "":
        return {"": value}
    return {flag: value}


def k_absent_device(ws, sh, command):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present on this machine")
    return {"--device": "cuda:0"}


KINDS: list[tuple[str, Callable, list[str], str | None]] = [
    # (kind, setup, commands it applies to, expected text in the error line)
    ("missing path", k_missing, list(INPUT), "does not exist"),
    ("empty class", k_empty_class, list(INPUT), None),
    ("junk-only class with a nested folder", k_junk_only_class, list(INPUT), None),
    ("corrupt image", k_corrupt, [c for c in INPUT if c != "hub pack"], "img_001.png"),
    ("zero-byte image", k_zero_byte, [c for c in INPUT if c != "hub pack"], "img_001.png"),
    ("float image with NaN pixels", k_nan_float_image, [c for c in INPUT if c != "hub pack"], "img_001.png"),
    ("class count mismatch", k_class_count, [*TEACHER, "squeeze", "hub"], None),
    ("class order mismatch", k_class_order, list(TEACHER), None),
    ("IPC above a class's size", k_ipc_too_large, list(IPC), None),
    ("non-BN teacher", k_non_bn_teacher, ["recover"], "BatchNorm"),
    ("malicious checkpoint", k_malicious_checkpoint, [*TEACHER, "squeeze"], "refused as unsafe"),
    ("malicious raw pickle", k_malicious_pickle, list(TEACHER), "refused as unsafe"),
    ("garbage checkpoint", k_garbage_checkpoint, list(TEACHER), "not a readable PyTorch checkpoint"),
    ("malicious archive", k_malicious_archive, ["hub"], "unsafe"),
    ("foreign ranking CSV", k_foreign_csv, ["rank_select"], "--rerank"),
    ("NaN ranking CSV", k_nan_csv, ["rank_select"], "non-finite score"),
    ("ranking CSV of changed images", k_changed_csv, ["rank_select"], "changed since"),
    ("diverged settings", k_diverged, ["squeeze", "recover", "relabel_eval"], "non-finite"),
    ("diverged settings, hard labels", k_diverged_hard, ["relabel_eval"], "--adamw-lr"),
    ("output is a folder/file of the wrong type", k_out_wrong_type, list(OUTPUT), None),
    ("output inside a file", k_out_inside_file, list(OUTPUT), "is a file"),
    ("output in a read-only folder", k_out_read_only, list(OUTPUT), "read-only"),
    ("output exists and is not ours", k_out_foreign, list(OUTPUT), None),
    ("results CSV that is not ours", k_foreign_results_csv, ["relabel_eval"], "--results-csv"),
    ("--syn-data-path is a file", k_syn_path_is_file, ["recover"], "--syn-data-path"),
    ("--ranking-file is a folder", k_ranking_file_is_folder, ["rank_select"], "--ranking-file"),
    ("zero value", k_zero, [c for c, f in NUMERIC.items() if f], "must be"),
    ("negative value", k_negative, [c for c, f in NUMERIC.items() if f], "must be"),
    ("unknown name", k_unknown_name, list(UNKNOWN), None),
    ("absent device", k_absent_device, TORCH_COMMANDS, "--device cuda:0"),
]
EXPECTED_MATCH = {
    ("recover", "diverged settings"): "--r-bn",
    ("squeeze", "diverged settings"): "--lr",
    ("relabel_eval", "diverged settings"): "--adamw-lr",
    ("squeeze", "unknown name"): "--arch-name nosuchnet",
    ("relabel_eval", "unknown name"): "--stud-name nosuchnet",
    ("relabel_eval.relabel", "unknown name"): "--stud-name nosuchnet",
}

CASES = [Case(cmd, kind, lambda ws, sh, f=fn, c=cmd: f(ws, sh, c), EXPECTED_MATCH.get((cmd, kind), match))
         for kind, fn, commands, match in KINDS for cmd in commands]
SUITE_COMMANDS = sorted({c.command for c in CASES})
SUITE_KINDS = [k for k, *_ in KINDS]


def test_suite_size():
    """Every command is in the table; print its size (commands x kinds, applicable cells)."""
    assert set(SUITE_COMMANDS) == set(GOOD)
    print(f"\nbad-input suite: {len(SUITE_COMMANDS)} commands x {len(SUITE_KINDS)} kinds, {len(CASES)} cases")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, shared, tmp_path, capsys, monkeypatch):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(shared["template"], ws)
    monkeypatch.chdir(ws)
    overrides = case.setup(ws, shared)
    argv = build_argv(case.command, overrides, shared["ck"])
    before = snapshot(ws)
    code, err = run_one_line(command_main(case.command.split()[0]), argv, capsys)
    try:
        assert_one_line_error(code, err, case.match, late=case.kind.startswith("diverged"))
        assert snapshot(ws) == before, "the workspace changed"
    finally:
        if (ws / "ro").exists():
            os.chmod(ws / "ro", 0o755)


def test_shared_checkpoints_untouched(shared):
    """Runs last in this module: no case wrote into the checkpoints folder."""
    names = sorted(p.name for p in shared["ck"].iterdir())
    assert names == sorted(["teacher.pth", "teacher_in.pth", "teacher4.pth", "teacher_rev.pth", "evil.pth",
                            "evil_raw.pkl", "garbage.pth"])


# =========================================================================== the fixes, one by one

def _ws(shared, tmp_path) -> Path:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(shared["template"], ws)
    return ws


def test_relabel_eval_diverged_run_writes_no_result(shared, tmp_path, capsys, monkeypatch):
    """A huge lr trains to NaN: one line naming --adamw-lr and where; no results JSON, no CSV row."""
    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    argv = build_argv("relabel_eval", {"--adamw-lr": "1e30"}, shared["ck"])
    code, err = run_one_line(command_main("relabel_eval"), argv, capsys)
    assert_one_line_error(code, err, "lower --adamw-lr (now 1e+30)", late=True)
    assert "student conv3 seed 42: non-finite training loss at epoch 1, batch" in err[-1]
    assert not (ws / "out" / "eval.json").exists() and not (ws / "out" / "results.csv").exists()


def test_recover_divergence_names_r_bn_and_keeps_no_class(shared, tmp_path, capsys, monkeypatch):
    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    argv = build_argv("recover", {"--r-bn": "1e39"}, shared["ck"])
    code, err = run_one_line(command_main("recover"), argv, capsys)
    assert_one_line_error(code, err, "lower --r-bn (now 1e+39)", late=True)
    assert "--lr" not in err[-1]
    syn = ws / "out" / "syn" / "e"
    assert not syn.exists() or not [p for p in syn.iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_recover_flags_saturated_images(shared, tmp_path, capsys, monkeypatch):
    """An extreme lr pushes most pixels to the ends of the range: manifest and a warning say so."""
    import json

    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    for lr, name in (("1000", "hot"), ("0.01", "calm")):
        argv = build_argv("recover", {"--lr": lr, "--iteration": "3", "--exp-name": name, "--r-bn": "0.01"},
                          shared["ck"])
        code, err = run_one_line(command_main("recover"), argv, capsys)
        assert code == 0, err
        m = json.loads((ws / "out" / "syn" / name / "manifest.json").read_text())
        if name == "hot":
            assert m["clipped_fraction"] > 0.5 and m["saturated_classes"] == shared["classes"]
            assert all(m["per_class"][c]["saturated"] for c in shared["classes"])
            assert any(line.startswith("warning: recover:") and "--lr 1000" in line for line in err)
        else:
            assert m["clipped_fraction"] < 0.5 and m["saturated_classes"] == []
            assert not any(line.startswith("warning:") for line in err)


def test_squeeze_skip_corrupt_skips_everywhere(shared, tmp_path, capsys, monkeypatch):
    """The first train image (input-size inference opens it) and a val image are corrupt."""
    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    (ws / "data" / "train" / "00_circle" / "img_000.png").write_bytes(b"broken")
    (ws / "data" / "val" / "01_square" / "img_000.png").write_bytes(b"")
    argv = build_argv("squeeze", {"--skip-corrupt": True}, shared["ck"])
    code, err = run_one_line(command_main("squeeze"), argv, capsys)
    assert code == 0, err
    assert sum("warning: skipped 1 corrupt image(s)" in line for line in err) == 2
    import json

    report = json.loads((ws / "out" / "teacher.json").read_text())
    assert report["input_size"] == SIZE


def test_json_outputs_never_hold_bare_nan(shared, tmp_path, monkeypatch):
    """Diversity of a one-class set has no inter-class score: it is written as null, not NaN."""
    import json
    import shutil

    from common.run.atomic import atomic_write_json
    from tests.conftest import make_teacher

    atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None]}
    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    one = ws / "one"
    shutil.copytree(ws / "data" / "train" / "00_circle", one / "00_circle")
    make_teacher(ws / "t1.pth", ["00_circle"], input_size=SIZE)
    from relabel_eval import diversity

    diversity.main(["--syn-data-path", str(one), "--teacher-path", str(ws / "t1.pth"), "--output",
                    str(ws / "div.json"), "--device", "cpu"])

    def refuse(c):
        raise AssertionError(f"bare {c} in JSON")

    res = json.loads((ws / "div.json").read_text(), parse_constant=refuse)
    assert res["sets"]["one"]["inter_class_centroid_cosine"] is None


def test_every_image_mode_and_junk_are_read(shared, tmp_path, capsys, monkeypatch):
    """A set whose images come in every Pillow mode, among junk files and nested folders, is read
    correctly by the stages (diversity and squeeze.evaluate here; all use common.data.imagefolder)."""
    import numpy as np
    from PIL import Image

    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    val = ws / "data" / "val"
    g = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    rgb = np.stack([g, 1 - g, g / 2], -1)
    for cls in shared["classes"]:
        d = val / cls
        Image.fromarray((g * 65535).astype(np.uint16)).save(d / "m_i16.png")
        Image.fromarray(g).save(d / "m_f.tif")
        Image.fromarray((g * 255).astype(np.int32)).convert("I").save(d / "m_i.tif")
        Image.fromarray((np.stack([g, g], -1) * 255).astype(np.uint8), "LA").save(d / "m_la.png")
        Image.fromarray((rgb * 255).astype(np.uint8)).convert("CMYK").save(d / "m_cmyk.tif")
        Image.fromarray((rgb * 255).astype(np.uint8)).convert("YCbCr").save(d / "m_ycc.tif")
        Image.fromarray(g > 0.5).save(d / "m_1.png")
        Image.fromarray((rgb * 255).astype(np.uint8)).convert("P").save(d / "m_p.png", transparency=0)
        (d / ".DS_Store").write_bytes(b"\0")
        (d / "notes.txt").write_text("junk")
        (d / "nested").mkdir()
        (d / "nested" / "x.png").write_bytes(b"not read")
    (val / "README.md").write_text("junk at the top level")
    code, err = run_one_line(command_main("relabel_eval.diversity"),
                             build_argv("relabel_eval.diversity", {"--syn-data-path": "data/val"}, shared["ck"]),
                             capsys)
    assert code == 0, err
    code, err = run_one_line(command_main("squeeze.evaluate"), build_argv("squeeze.evaluate", {}, shared["ck"]),
                             capsys)
    assert code == 0, err
    import json

    assert json.loads((ws / "out" / "eval.json").read_text())["images"] == 3 * (2 + 8)


def test_force_replaces_a_foreign_output_and_a_rerun_replaces_our_own(shared, tmp_path, capsys, monkeypatch):
    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    for command in ("squeeze.evaluate", "relabel_eval.baselines"):
        main, argv = command_main(command), build_argv(command, {}, shared["ck"])
        assert run_one_line(main, argv, capsys)[0] == 0
        assert run_one_line(main, argv, capsys)[0] == 0  # our own output: replaced
    (ws / "out" / "eval.json").write_text("the user's notes")
    main, argv = command_main("squeeze.evaluate"), build_argv("squeeze.evaluate", {}, shared["ck"])
    code, err = run_one_line(main, argv, capsys)
    assert_one_line_error(code, err, "pass --force to replace it")
    assert (ws / "out" / "eval.json").read_text() == "the user's notes"
    assert run_one_line(main, argv + ["--force"], capsys)[0] == 0
    assert '"stage": "squeeze.evaluate"' in (ws / "out" / "eval.json").read_text()


def test_failed_validation_leaves_nothing_that_blocks_the_corrected_rerun(shared, tmp_path, capsys, monkeypatch):
    """relabel_eval with a val folder of other classes fails after its resume folder was made; fixing
    --val-dir and rerunning must work (it used to be refused as 'an interrupted evaluation with other
    arguments')."""
    import shutil

    ws = _ws(shared, tmp_path)
    monkeypatch.chdir(ws)
    shutil.copytree(ws / "data" / "val", ws / "val_other")
    (ws / "val_other" / "00_circle").rename(ws / "val_other" / "00_disc")
    main = command_main("relabel_eval")
    code, err = run_one_line(main, build_argv("relabel_eval", {"--val-dir": "val_other"}, shared["ck"]), capsys)
    assert_one_line_error(code, err)
    assert not (ws / "out").exists()
    code, err = run_one_line(main, build_argv("relabel_eval", {}, shared["ck"]), capsys)
    assert code == 0, err


@pytest.mark.parametrize("command", ["squeeze", "rank_select", "relabel_eval.diversity"])
def test_skip_corrupt_is_suggested_only_where_it_exists(command, shared, tmp_path, capsys, monkeypatch):
    """A corrupt image: squeeze's line names its --skip-corrupt; other commands never suggest a flag they lack."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(shared["template"], ws)
    monkeypatch.chdir(ws)
    argv = build_argv(command, k_corrupt(ws, shared, command), shared["ck"])
    code, err = run_one_line(command_main(command), argv, capsys)
    assert_one_line_error(code, err, "img_001.png")
    assert ("--skip-corrupt" in err[0]) == (command == "squeeze"), err[0]
