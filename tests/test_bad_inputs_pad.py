"""Bad input against PAD's commands (squeeze.trajectories, recover.trajectory_matching,
relabel_eval --protocol pad, relabel_eval.export): exit 2, one ``error:`` line, no traceback,
the workspace byte-identical, and no code run from a planted pickle.

Each case gets a fresh copy of a small workspace (3 classes of 16 px images, one expert of
2 epochs, a distilled set of 2 images per class with its labels.pt and lr.pt) and changes
one thing: an evil pickle, a truncated or wrong-shape file in every place a command reads one
(resume state, experts, labels, lr, ZCA fit, teacher), an output that is read-only, under a
file, of the wrong type or not ours (side files included), zero, NaN and diverging values,
and flags that disagree with the data (``--ipc`` above a class's size). An evil pickle, if it
were unpickled, would create the marker ``PWNED`` outside the workspace.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.conftest import Evil
from tests.test_bad_inputs import assert_one_line_error, run_one_line, snapshot

SIZE = 16
COMMANDS = {"squeeze.trajectories": "squeeze.trajectories",
            "recover.trajectory_matching": "recover.trajectory_matching",
            "relabel_eval pad": "relabel_eval.train", "relabel_eval.export": "relabel_eval.export"}
GOOD: dict[str, dict[str, object]] = {
    "squeeze.trajectories": {"--data-path": "data", "--num-experts": "1", "--epochs": "2", "--batch-train": "8",
                             "--input-size": str(SIZE), "--output-dir": "out/experts", "--device": "cpu"},
    "recover.trajectory_matching": {"--experts": "experts", "--data-path": "data/train", "--ipc": "2",
                                    "--iterations": "2", "--syn-steps": "2", "--batch-syn": "3",
                                    "--max-start-epoch": "1", "--lr-img": "10", "--checkpoint-every": "1",
                                    "--threshold": "10", "--output-path": "out/syn", "--device": "cpu"},
    "relabel_eval pad": {"--protocol": "pad", "--syn-data-path": "syn", "--val-dir": "data/val", "--re-epochs": "1",
                         "--seeds": "0", "--stud-name": "conv3_in", "--input-size": str(SIZE), "--device": "cpu",
                         "--output": "out/eval.json"},
    "relabel_eval.export": {"--format": "ddranking", "--syn-data-path": "syn", "--output-dir": "out/dd",
                            "--input-size": str(SIZE)},
}
OUTPUT = {"squeeze.trajectories": ("--output-dir", "dir"), "recover.trajectory_matching": ("--output-path", "dir"),
          "relabel_eval pad": ("--output", "file"), "relabel_eval.export": ("--output-dir", "dir")}
STATE = {"squeeze.trajectories": "--max-epochs-this-run", "recover.trajectory_matching": "--max-iterations-this-run"}


def main_of(command: str) -> Callable:
    return importlib.import_module(COMMANDS[command]).main


def argv_for(command: str, overrides: dict, ck: Path) -> list[str]:
    flags = {**GOOD[command], **overrides}
    argv: list[str] = []
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        argv.append(flag)
        if value is not True:
            value = str(value)
            argv.append(str(ck / value[1:]) if value.startswith("@") else value)
    return argv


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    from common.cli.errors import run_cli
    from common.data.imagefolder import find_classes
    from tests.conftest import make_teacher, make_tree

    root = tmp_path_factory.mktemp("pad_shared")
    tpl = root / "template"
    make_tree(tpl / "data" / "train", 3, 4, size=SIZE, split=0)
    make_tree(tpl / "data" / "val", 3, 2, size=SIZE, split=1)
    classes = find_classes(tpl / "data" / "train")
    ck = root / "ck"
    ck.mkdir()
    cwd = os.getcwd()
    os.chdir(tpl)  # the experts are trained with the GOOD command line, relative paths included
    try:
        assert run_cli(main_of("squeeze.trajectories"), argv_for("squeeze.trajectories", {"--output-dir": "experts"},
                                                                 ck)) == 0
    finally:
        os.chdir(cwd)
    paths = []
    for cls in classes:
        (tpl / "syn" / cls).mkdir(parents=True)
        for f in sorted((tpl / "data" / "train" / cls).iterdir())[:2]:
            shutil.copy(f, tpl / "syn" / cls / f.name)
            paths.append(f"{cls}/{f.name}")
    torch.save({"labels": torch.eye(3).repeat_interleave(2, 0) * 5, "paths": paths, "classes": classes,
                "kind": "logits"}, tpl / "syn.labels.pt")
    torch.save({"lr": torch.tensor(0.01)}, tpl / "syn.lr.pt")
    make_teacher(ck / "teacher.pth", classes, input_size=SIZE)
    make_teacher(ck / "teacher4.pth", classes + ["03_extra"], input_size=SIZE)
    (ck / "garbage.pth").write_bytes(bytes(range(7, 250)) * 2)
    return {"template": tpl, "ck": ck, "classes": classes, "paths": paths}


# --------------------------------------------------------------------------- ways to spoil a file

def evil(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": Evil(marker)}, path)


def truncate(path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    path.write_bytes(data[:max(1, len(data) // 2)])


def partial_run(ws: Path, command: str, ck: Path, **extra) -> None:
    """Run ``command`` for one epoch / iteration (it stops and keeps its resume state)."""
    from common.cli.errors import run_cli

    argv = argv_for(command, {STATE[command]: "1", **extra}, ck)
    assert run_cli(main_of(command), argv) == 0


def resume_files(ws: Path, command: str) -> list[Path]:
    """The resume files the partial run wrote (wherever this version of the command keeps them)."""
    if command == "squeeze.trajectories":
        found = list((ws / "out").glob("experts/.expert_*.partial.pt")) + list((ws / "out").glob("experts.state/*.pt"))
    else:
        found = list((ws / "out").glob("syn.state/*.pt"))
    assert found, f"{command}: no resume file written"
    return found


def k_resume_evil(ws, sh, command, marker):
    partial_run(ws, command, sh["ck"])
    for f in resume_files(ws, command):
        evil(f, marker)
    return {}


def k_resume_truncated(ws, sh, command, marker):
    partial_run(ws, command, sh["ck"])
    for f in resume_files(ws, command):
        truncate(f)
    return {}


def k_resume_wrong_shape(ws, sh, command, marker):
    partial_run(ws, command, sh["ck"])
    for f in resume_files(ws, command):
        st = torch.load(f, weights_only=True)  # the run's own state: plain tensors and strings
        key = "trajectory" if command == "squeeze.trajectories" else "images"
        st[key] = torch.zeros(2, 3, 5, 5)
        torch.save(st, f)
    return {}


def k_resume_nan(ws, sh, command, marker):
    partial_run(ws, command, sh["ck"])
    for f in resume_files(ws, command):
        st = torch.load(f, weights_only=True)
        key = "trajectory" if command == "squeeze.trajectories" else "images"
        st[key] = st[key].clone()
        st[key].view(-1)[0] = float("nan")
        torch.save(st, f)
    return {}


def k_other_settings(ws, sh, command, marker):
    partial_run(ws, command, sh["ck"])
    return {"squeeze.trajectories": {"--lr-teacher": "0.02"},
            "recover.trajectory_matching": {"--lr-img": "20"}}[command]


def _our_experts(ws: Path) -> Path:
    out = ws / "out" / "experts"
    shutil.copytree(ws / "experts", out)
    return out


def k_expert_garbage(ws, sh, command, marker):
    """squeeze.trajectories: a finished-looking expert in its own folder that is garbage."""
    (_our_experts(ws) / "expert_000.pt").write_bytes(b"not a tensor at all")
    return {}


def _expert_file(ws: Path, command: str) -> Path:
    return (_our_experts(ws) if command == "squeeze.trajectories" else ws / "experts") / "expert_000.pt"


def k_expert_evil(ws, sh, command, marker):
    evil(_expert_file(ws, command), marker)
    return {}


def k_expert_truncated(ws, sh, command, marker):
    truncate(_expert_file(ws, command))
    return {}


def k_expert_wrong_shape(ws, sh, command, marker):
    torch.save(torch.zeros(3, 10), _expert_file(ws, command))
    return {}


def k_expert_nan(ws, sh, command, marker):
    f = _expert_file(ws, command)
    t = torch.load(f, weights_only=True)
    t[1, 5] = float("nan")
    torch.save(t, f)
    return {}


def k_experts_manifest_garbage(ws, sh, command, marker):
    (ws / "experts" / "manifest.json").write_text("{not json")
    return {}


def k_experts_manifest_missing(ws, sh, command, marker):
    (ws / "experts" / "manifest.json").unlink()
    return {}


def _with_zca(ws: Path) -> Path:
    man = json.loads((ws / "experts" / "manifest.json").read_text())
    man["zca"] = "zca.pt"
    (ws / "experts" / "manifest.json").write_text(json.dumps(man))
    return ws / "experts" / "zca.pt"


def k_zca_evil(ws, sh, command, marker):
    if command == "relabel_eval pad":
        evil(ws / "zca.pt", marker)
        return {"--zca": "zca.pt"}
    evil(_with_zca(ws), marker)
    return {}


def k_zca_truncated(ws, sh, command, marker):
    if command == "relabel_eval pad":
        (ws / "zca.pt").write_bytes(b"PK\x03\x04")
        return {"--zca": "zca.pt"}
    _with_zca(ws).write_bytes(b"PK\x03\x04")
    return {}


def k_zca_is_a_teacher(ws, sh, command, marker):
    if command == "relabel_eval pad":
        return {"--zca": "@teacher.pth"}
    shutil.copy(sh["ck"] / "teacher.pth", _with_zca(ws))
    return {}


def k_side_file_foreign(suffix):
    def setup(ws, sh, command, marker):
        (ws / "out").mkdir(exist_ok=True)
        (ws / "out" / f"syn{suffix}").write_bytes(b"the user's file of the same name")
        return {}
    return setup


def k_out_read_only(ws, sh, command, marker):
    flag, kind = OUTPUT[command]
    (ws / "ro").mkdir()
    os.chmod(ws / "ro", 0o555)
    return {flag: "ro/out.json" if kind == "file" else "ro/out"}


def k_out_inside_file(ws, sh, command, marker):
    (ws / "blocker").write_text("a file, not a folder")
    return {OUTPUT[command][0]: "blocker/out"}


def k_out_wrong_type(ws, sh, command, marker):
    flag, kind = OUTPUT[command]
    p = ws / str(GOOD[command][flag])
    if kind == "file":
        p.mkdir(parents=True)
        (p / "keep.txt").write_text("weeks of work")
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("weeks of work")
    return {}


def k_out_foreign(ws, sh, command, marker):
    flag, kind = OUTPUT[command]
    p = ws / str(GOOD[command][flag])
    if kind == "file":
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("a file of the user's")
    else:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "notes.txt").write_text("weeks of work")
    return {}


def k_flags(**flags):
    def setup(ws, sh, command, marker):
        return dict(flags)
    return setup


def k_labels(make):
    def setup(ws, sh, command, marker):
        make(ws / "syn.labels.pt", sh, marker)
        return {}
    return setup


def k_lr(make):
    def setup(ws, sh, command, marker):
        make(ws / "syn.lr.pt", sh, marker)
        return {}
    return setup


def labels_5_classes(path, sh, marker):
    torch.save({"labels": torch.zeros(6, 5), "paths": sh["paths"], "classes": sh["classes"]}, path)


def labels_nan(path, sh, marker):
    labels = torch.eye(3).repeat_interleave(2, 0) * 5
    labels[2, 1] = float("nan")
    torch.save({"labels": labels, "paths": sh["paths"], "classes": sh["classes"]}, path)


def labels_other_files(path, sh, marker):
    torch.save({"labels": torch.zeros(6, 3), "paths": [f"x/{i}.png" for i in range(6)], "classes": sh["classes"]},
               path)


def lr_nan(path, sh, marker):
    torch.save({"lr": torch.tensor(float("nan"))}, path)


def lr_vector(path, sh, marker):
    torch.save({"lr": torch.tensor([0.01, 0.02, 0.03])}, path)


def k_difficulty_folder(ws, sh, command, marker):
    (ws / "order").mkdir()
    return {"--difficulty": "order"}


def k_difficulty_garbage(ws, sh, command, marker):
    (ws / "order.json").write_bytes(b"\x00\x01 not json")
    return {"--difficulty": "order.json"}


def k_difficulty_other_data(ws, sh, command, marker):
    order = {c: [f"{c}/other_{i}.png" for i in range(4)] for c in sh["classes"]}
    (ws / "order.json").write_text(json.dumps({"order": order}))
    return {"--difficulty": "order.json"}


def k_diverged_hard(ws, sh, command, marker):
    (ws / "syn.lr.pt").unlink()
    return {"--learning-rate": "1e30", "--label-mode": "hard"}


def k_corrupt_image_with_force(ws, sh, command, marker):
    """--force over a folder not ours, and a corrupt training image: the folder is not removed."""
    k_out_foreign(ws, sh, command, marker)
    (ws / "data" / "train" / "01_square" / "img_001.png").write_bytes(b"not a PNG")
    return {"--force": True}


def k_corrupt_image(ws, sh, command, marker):
    tree = {T: "data/train", M: "data/train", P: "syn", E: "syn"}[command]
    (ws / tree / "01_square" / "img_001.png").write_bytes(b"not a PNG")
    return {}


def k_finished_other_settings(ws, sh, command, marker):
    _our_experts(ws)
    return {"--lr-teacher": "0.02"}


@dataclass
class Case:
    command: str
    kind: str
    setup: Callable
    match: str | None = None
    late: bool = False  # the failure comes after the run started (a diverged loss): log lines may precede it

    @property
    def id(self) -> str:
        return f"{self.command}:{self.kind}"


T, M, P, E = "squeeze.trajectories", "recover.trajectory_matching", "relabel_eval pad", "relabel_eval.export"
UNSAFE, UNREADABLE = "not a safe torch file", "not a readable torch file"
CASES = [
    # planted, truncated, wrong-shape and NaN files in every place a command reads one
    *[Case(c, "evil resume file", k_resume_evil, UNSAFE) for c in (T, M)],
    *[Case(c, "truncated resume file", k_resume_truncated, UNREADABLE) for c in (T, M)],
    *[Case(c, "wrong-shape resume file", k_resume_wrong_shape, "--restart") for c in (T, M)],
    *[Case(c, "NaN in the resume file", k_resume_nan, "--restart") for c in (T, M)],
    Case(T, "garbage expert in its own output", k_expert_garbage, "expert_000.pt"),
    *[Case(c, "evil expert", k_expert_evil, UNSAFE) for c in (T, M)],
    *[Case(c, "truncated expert", k_expert_truncated, UNREADABLE) for c in (T, M)],
    *[Case(c, "wrong-shape expert", k_expert_wrong_shape, "expert_000.pt") for c in (T, M)],
    *[Case(c, "NaN in an expert", k_expert_nan, "non-finite") for c in (T, M)],
    Case(M, "experts manifest not JSON", k_experts_manifest_garbage, "manifest.json"),
    Case(M, "experts manifest missing", k_experts_manifest_missing, "manifest.json"),
    *[Case(c, "evil ZCA fit", k_zca_evil, UNSAFE) for c in (M, P)],
    *[Case(c, "truncated ZCA fit", k_zca_truncated, UNREADABLE) for c in (M, P)],
    *[Case(c, "a teacher given as the ZCA fit", k_zca_is_a_teacher, "not a ZCA fit") for c in (M, P)],
    Case(P, "evil labels.pt", k_labels(lambda p, sh, m: evil(p, m)), UNSAFE),
    Case(P, "truncated labels.pt", k_labels(lambda p, sh, m: truncate(p)), UNREADABLE),
    Case(P, "5-class labels.pt", k_labels(labels_5_classes), "5 classes"),
    Case(P, "NaN in labels.pt", k_labels(labels_nan), "non-finite values"),
    Case(P, "labels.pt of other files", k_labels(labels_other_files), "do not match"),
    Case(P, "evil lr.pt", k_lr(lambda p, sh, m: evil(p, m)), UNSAFE),
    Case(P, "truncated lr.pt", k_lr(lambda p, sh, m: truncate(p)), UNREADABLE),
    Case(P, "NaN lr.pt", k_lr(lr_nan), "not a positive finite number"),
    Case(P, "wrong-shape lr.pt", k_lr(lr_vector), "one number"),
    Case(E, "evil teacher", k_flags(**{"--teacher-path": "@evil_teacher.pth"}), "unsafe"),
    Case(E, "garbage teacher", k_flags(**{"--teacher-path": "@garbage.pth"}), "garbage.pth"),
    Case(E, "teacher of other classes", k_flags(**{"--teacher-path": "@teacher4.pth"}), None),
    Case(T, "--difficulty is a folder", k_difficulty_folder, "--difficulty"),
    Case(T, "--difficulty not JSON", k_difficulty_garbage, "not a difficulty order file"),
    Case(T, "--difficulty of other images", k_difficulty_other_data, "does not list exactly"),
    # outputs: read-only, under a file, of the wrong type, not ours (side files included)
    *[Case(c, "output in a read-only folder", k_out_read_only, "read-only") for c in (T, M, P, E)],
    *[Case(c, "output under a file", k_out_inside_file, "is a file") for c in (T, M, P, E)],
    *[Case(c, "output of the wrong type", k_out_wrong_type, None) for c in (T, M, P, E)],
    *[Case(c, "output exists and is not ours", k_out_foreign, None) for c in (T, M, P, E)],
    *[Case(M, f"foreign OUT{s}", k_side_file_foreign(s), f"syn{s} exists") for s in (".labels.pt", ".lr.pt",
                                                                                     ".loss.json", ".loss.png")],
    # zero, NaN and diverging values; settings that disagree with the data or with the run in progress
    Case(T, "zero batch", k_flags(**{"--batch-train": "0"}), "--batch-train"),
    Case(T, "NaN lr", k_flags(**{"--lr-teacher": "nan"}), "--lr-teacher"),
    Case(T, "shard out of range", k_flags(**{"--num-shards": "2", "--shard-index": "2"}), "--shard-index"),
    Case(T, "diverging lr", k_flags(**{"--lr-teacher": "1e38"}), "--lr-teacher", late=True),
    Case(M, "diverging lr", k_flags(**{"--lr-img": "1e38", "--checkpoint-every": "100"}), "--lr-img", late=True),
    Case(P, "diverging lr, hard labels", k_diverged_hard, "lower --learning-rate (now 1e+30)", late=True),
    *[Case(c, "unfinished run with other settings", k_other_settings, "--restart") for c in (T, M)],
    Case(T, "finished experts of other settings", k_finished_other_settings, "--lr-teacher 0.01 there, 0.02 now"),
    Case(T, "corrupt image, --force over a folder not ours", k_corrupt_image_with_force, "img_001.png"),
    *[Case(c, "corrupt image", k_corrupt_image, "img_001.png") for c in (T, M, P, E)],
    Case(M, "--ipc above a class's size", k_flags(**{"--ipc": "9"}), "--ipc"),
    Case(P, "--ipc above a class's size", k_flags(**{"--ipc": "5"}), "--ipc 5"),
    Case(E, "--ipc above a class's size", k_flags(**{"--ipc": "5"}), "--ipc 5"),
    Case(M, "start epochs beyond the experts", k_flags(**{"--max-start-epoch": "5"}), "expert epochs"),
    Case(M, "--depth-ratio 1", k_flags(**{"--depth-ratio": "1"}), "--depth-ratio"),
    Case(M, "--data-path of other classes", k_flags(**{"--data-path": "data"}), None),
    Case(P, "--label-mode fkd", k_flags(**{"--label-mode": "fkd"}), "--label-mode"),
    Case(E, "--input-size 40000", k_flags(**{"--input-size": "40000"}), "--input-size"),
    Case(E, "--syn-data-path missing", k_flags(**{"--syn-data-path": "no/such/set"}), "does not exist"),
]
SKIP_ON_OLD_CODE = {"relabel_eval.export:--input-size 40000"}  # needs tens of GB before it fails there


def test_suite_size():
    counts = {c: sum(1 for k in CASES if k.command == c) for c in GOOD}
    print(f"\nPAD bad-input table: {len(CASES)} cases ({counts})")
    assert set(counts) == set(GOOD) and all(counts.values())


@pytest.mark.parametrize("command", sorted(GOOD))
def test_the_good_command_line_works(command, shared, tmp_path, capsys, monkeypatch):
    """The baseline each case spoils: it succeeds (so a refusal below is caused by the spoiled input)."""
    ws = tmp_path / "ws"
    shutil.copytree(shared["template"], ws)
    monkeypatch.chdir(ws)
    code, err = run_one_line(main_of(command), argv_for(command, {}, shared["ck"]), capsys)
    assert code == 0, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, shared, tmp_path, capsys, monkeypatch):
    if os.environ.get("DD_OLD_CODE") and case.id in SKIP_ON_OLD_CODE:
        pytest.skip("not run against the old code")
    ws, marker = tmp_path / "ws", tmp_path / "PWNED"
    shutil.copytree(shared["template"], ws)
    evil(shared["ck"] / "evil_teacher.pth", marker)
    monkeypatch.chdir(ws)
    overrides = case.setup(ws, shared, case.command, marker)
    argv = argv_for(case.command, overrides, shared["ck"])
    before = snapshot(ws)
    try:
        try:
            code, err = run_one_line(main_of(case.command), argv, capsys)
        except Exception as exc:  # what python -m would show as a traceback
            code, err = 1, [f"Traceback: {type(exc).__name__}: {exc}"[:300]]
        assert not marker.exists(), "a planted pickle ran code"
        assert_one_line_error(code, err, case.match, late=case.late)
        assert snapshot(ws) == before, "the workspace changed"
    finally:
        if (ws / "ro").exists():
            os.chmod(ws / "ro", 0o755)


# --------------------------------------------------------------------------- the fixes, one by one

def _ws(shared, tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(shared["template"], ws)
    monkeypatch.chdir(ws)
    return ws


def test_a_resume_file_in_the_old_place_is_never_unpickled(shared, tmp_path, capsys, monkeypatch):
    """squeeze.trajectories used to resume from ``.expert_XXX.partial.pt`` inside --output-dir."""
    ws, marker = _ws(shared, tmp_path, monkeypatch), tmp_path / "PWNED"
    out = ws / "out" / "experts"
    out.mkdir(parents=True)
    shutil.copy(ws / "experts" / "manifest.json", out / "manifest.json")
    evil(out / ".expert_000.partial.pt", marker)
    code, err = run_one_line(main_of(T), argv_for(T, {}, shared["ck"]), capsys)
    assert not marker.exists() and code == 0, err
    assert torch.load(out / "expert_000.pt", weights_only=True).shape[0] == 3


def test_pad_protocol_trains_on_the_first_ipc_images_and_records_it(shared, tmp_path, capsys, monkeypatch):
    _ws(shared, tmp_path, monkeypatch)
    res = main_of(P)(argv_for(P, {"--ipc": "1"}, shared["ck"]))
    assert res["ipc"] == 1 and res["num_images"] == 3 and res["label_mode"] == "soft"
    res = main_of(P)(argv_for(P, {"--output": "out/all.json"}, shared["ck"]))
    assert res["ipc"] == 2 and res["num_images"] == 6


def test_export_takes_the_first_ipc_images(shared, tmp_path, capsys, monkeypatch):
    ws = _ws(shared, tmp_path, monkeypatch)
    m = main_of(E)(argv_for(E, {"--ipc": "1"}, shared["ck"]))
    assert m["ipc"] == 1 and m["files"] == [p for p in shared["paths"] if p.endswith("img_000.png")]
    assert torch.load(ws / "out" / "dd" / "images.pt", weights_only=True).shape == (3, 3, SIZE, SIZE)
    m = main_of(E)(argv_for(E, {"--output-dir": "out/dd2", "--input-size": None}, shared["ck"]))
    assert m["input_size"] == SIZE and m["data_config_source"]["input_size"] == "images"


def test_matching_owns_its_side_files(shared, tmp_path, capsys, monkeypatch):
    """A rerun replaces its own OUT.labels.pt & co; a side file changed by hand is not replaced without --force."""
    ws = _ws(shared, tmp_path, monkeypatch)
    argv = argv_for(M, {"--iterations": "1"}, shared["ck"])
    assert run_one_line(main_of(M), argv, capsys)[0] == 0
    assert run_one_line(main_of(M), argv, capsys)[0] == 0  # ours: replaced
    (ws / "out" / "syn.loss.json").write_text("my notes")
    code, err = run_one_line(main_of(M), argv, capsys)
    assert_one_line_error(code, err, "syn.loss.json exists and was not written")
    assert (ws / "out" / "syn.loss.json").read_text() == "my notes"
    assert run_one_line(main_of(M), argv + ["--force"], capsys)[0] == 0
    assert json.loads((ws / "out" / "syn.loss.json").read_text())["history"]


def test_diverged_matching_leaves_nothing_or_names_restart(shared, tmp_path, capsys, monkeypatch):
    """A fresh run that diverges leaves nothing (its checkpoints too), so the corrected command just runs; a run
    resumed from an earlier checkpoint keeps that state, and its advice says --restart, which the corrected
    command then needs."""
    ws = _ws(shared, tmp_path, monkeypatch)
    before = snapshot(ws)
    code, err = run_one_line(main_of(M), argv_for(M, {"--lr-img": "1e38", "--iterations": "3"}, shared["ck"]),
                             capsys)
    assert_one_line_error(code, err, "lower --lr-img", late=True)
    assert "--restart" not in err[-1] and snapshot(ws) == before
    partial_run(ws, M, shared["ck"])
    state = ws / "out" / "syn.state" / "matching.pt"
    st = torch.load(state, weights_only=True)
    st["lr"] = torch.tensor(1e30)  # a student lr that overflows the unrolled steps from here on
    torch.save(st, state)
    code, err = run_one_line(main_of(M), argv_for(M, {}, shared["ck"]), capsys)
    assert_one_line_error(code, err, "lower --lr-img / --lr-lr / --lr-y and pass --restart", late=True)
    assert state.is_file() and not (ws / "out" / "syn").exists()
    code, err = run_one_line(main_of(M), argv_for(M, {"--lr-img": "5"}, shared["ck"]), capsys)
    assert_one_line_error(code, err, "--restart")
    assert run_one_line(main_of(M), argv_for(M, {"--lr-img": "5", "--restart": True}, shared["ck"]), capsys)[0] == 0


def test_force_replaces_a_folder_not_ours(shared, tmp_path, capsys, monkeypatch):
    ws = _ws(shared, tmp_path, monkeypatch)
    k_out_foreign(ws, shared, T, None)
    code, err = run_one_line(main_of(T), argv_for(T, {}, shared["ck"]), capsys)
    assert_one_line_error(code, err, "pass --force")
    assert run_one_line(main_of(T), argv_for(T, {"--force": True}, shared["ck"]), capsys)[0] == 0
    assert sorted(p.name for p in (ws / "out" / "experts").iterdir()) == ["expert_000.json", "expert_000.pt",
                                                                          "manifest.json"]


def test_diverged_expert_keeps_finished_experts_and_names_restart(shared, tmp_path, capsys, monkeypatch):
    """Expert 1 diverges after expert 0 finished: one line naming --lr-teacher and --restart (the finished expert
    makes the corrected command refused without it); nothing of expert 1 is left; expert 0 stays."""
    ws = _ws(shared, tmp_path, monkeypatch)
    partial_run(ws, T, shared["ck"], **{"--num-experts": "2"})
    resume = ws / "out" / "experts.state" / "expert_001.pt"
    st = torch.load(resume, weights_only=True)
    st["optimizer"]["param_groups"][0]["lr"] = 1e38  # this expert's steps overflow from here on
    torch.save(st, resume)
    code, err = run_one_line(main_of(T), argv_for(T, {"--num-experts": "2"}, shared["ck"]), capsys)
    assert_one_line_error(code, err, "expert 1: non-finite training loss at epoch 1; lower --lr-teacher", late=True)
    assert "pass --restart" in err[-1]
    assert not resume.exists() and (ws / "out" / "experts" / "expert_000.pt").is_file()
    assert not (ws / "out" / "experts" / "expert_001.pt").exists()
    code, err = run_one_line(main_of(T), argv_for(T, {"--num-experts": "2", "--lr-teacher": "0.005"}, shared["ck"]),
                             capsys)
    assert_one_line_error(code, err, "--restart")


def test_matching_killed_while_writing_side_files_is_still_ours(shared, tmp_path, capsys, monkeypatch):
    """Interrupted after the new OUT was swapped in but before its side files: the old side files (of our earlier
    run) are still recognised as ours, and the same command completes."""
    import common.run.atomic as atomic

    ws = _ws(shared, tmp_path, monkeypatch)
    argv = argv_for(M, {"--iterations": "1"}, shared["ck"])
    assert run_one_line(main_of(M), argv, capsys)[0] == 0
    old_labels = (ws / "out" / "syn.labels.pt").read_bytes()
    real = atomic.atomic_write_bytes

    def killed(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "atomic_write_bytes", killed)
    argv2 = argv_for(M, {"--iterations": "2"}, shared["ck"])
    assert run_one_line(main_of(M), argv2, capsys)[0] == 130
    assert (ws / "out" / "syn.labels.pt").read_bytes() == old_labels  # the new OUT is there, its side files not
    monkeypatch.setattr(atomic, "atomic_write_bytes", real)
    code, err = run_one_line(main_of(M), argv2, capsys)
    assert code == 0, err
    labels = torch.load(ws / "out" / "syn.labels.pt", weights_only=True)
    assert len(json.loads((ws / "out" / "syn.loss.json").read_text())["history"]) == 2 and labels["kind"] == "logits"
    assert not (ws / "out" / "syn.state").exists()
