"""Bad input against the teacher-side and tool commands: squeeze.linear_probe, squeeze.bn_stats,
rank_select.difficulty, squeeze.ssl, squeeze.evaluate, hub, common.prepare, common.viz and
relabel_eval.baselines.

Each case builds a fresh workspace (``data/{train,val}``: 3 classes, 16 px), plants what it needs
(an evil pickle, a truncated or wrong-shape file in every place the command reads one, a resume
state of a real killed run with its file replaced, read-only and under-a-file outputs, zero, NaN
and diverging values, flags that disagree with the data), runs the command in-process through
``run_cli`` and asserts: exit 2, one ``error:`` line (the last line, after the run's own log, for a
run that diverged), no traceback, the workspace byte-identical, and no marker file (the planted
pickles would create one if they were ever unpickled).
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from common.cli.errors import run_cli
from tests.conftest import Evil, make_teacher, make_tree
from tests.test_bad_inputs import assert_one_line_error, run_one_line, snapshot

SIZE = 16
MAIN = {"squeeze.linear_probe": "squeeze.linear_probe", "squeeze.bn_stats": "squeeze.bn_stats",
        "rank_select.difficulty": "rank_select.difficulty", "squeeze.ssl": "squeeze.ssl",
        "squeeze.evaluate": "squeeze.evaluate", "hub": "hub.cli", "common.prepare": "common.prepare",
        "common.viz": "common.viz", "relabel_eval.baselines": "relabel_eval.baselines"}


def main_of(command: str) -> Callable:
    return importlib.import_module(MAIN[command]).main


@pytest.fixture(scope="module")
def sh(tmp_path_factory) -> dict:
    """The workspace template and the checkpoints (outside every workspace), built once."""
    from common.data.imagefolder import find_classes
    from models import build_backbone, make_meta, read_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("teacher_bad")
    tpl = root / "template"
    make_tree(tpl / "data" / "train", 3, 4, size=SIZE, split=0)
    make_tree(tpl / "data" / "val", 3, 2, size=SIZE, split=1)
    classes = find_classes(tpl / "data" / "train")
    ck = root / "ck"
    ck.mkdir()
    marker = root / "PWNED"
    torch.manual_seed(0)
    bb, dim, head = build_backbone("conv3", SIZE)
    bb.train()
    with torch.no_grad():
        bb(torch.randn(8, 3, SIZE, SIZE))
    save_checkpoint(ck / "backbone.pth", bb, make_meta("conv3", 0, SIZE, classes=classes, teacher_kind="ssl-backbone",
                                                       ssl_method="mocov2", feature_dim=dim, classifier_name=head))
    make_teacher(ck / "teacher.pth", classes, input_size=SIZE, data_root=tpl / "data" / "train")
    make_teacher(ck / "teacher5.pth", classes + ["03_a", "04_b"], input_size=SIZE)
    make_teacher(ck / "teacher_in.pth", classes, arch="conv3_in", input_size=SIZE)
    sd = read_checkpoint(ck / "teacher.pth")
    sd["model"]["features.1.running_var"][3] = float("nan")
    torch.save(sd, ck / "nan_bn.pth")
    torch.save({"fc.weight": torch.zeros(5, dim), "fc.bias": torch.zeros(5)}, ck / "linear5.pth")
    torch.save({"model": Evil(marker)}, ck / "evil.pth")
    with open(ck / "evil_raw.pkl", "wb") as f:
        pickle.dump(Evil(marker), f)
    data = (ck / "teacher.pth").read_bytes()
    (ck / "truncated.pth").write_bytes(data[: len(data) // 2])
    (ck / "garbage.pth").write_bytes(bytes(range(7, 250)) * 2)
    return {"template": tpl, "ck": ck, "marker": marker, "classes": classes, "dim": dim}


# --------------------------------------------------------------------------- good command lines

def probe_argv(ck: Path, **over) -> list[str]:
    flags = {"--backbone": ck / "backbone.pth", "--data-path": "data", "--epochs": "2", "--batch-size": "4",
             "--train-aug": "none", "--device": "cpu", "--output": "out/p.pth", **over}
    return [str(a) for k, v in flags.items() if v is not None for a in (k, v)]


def bn_argv(ck: Path, *ckpts: str, output: str = "out/bn") -> list[str]:
    return [str(ck / c) if not c.startswith("ws:") else c[3:] for c in (ckpts or ("teacher.pth",))] + \
        ["--output", output]


def diff_argv(**over) -> list[str]:
    flags = {"--data-path": "data/train", "--num-models": "2", "--epochs": "1", "--batch-size": "4",
             "--input-size": str(SIZE), "--device": "cpu", "--output": "out/diff.csv", **over}
    return [str(a) for k, v in flags.items() if v is not None for a in (k, v)]


def eval_argv(ck: Path, **over) -> list[str]:
    flags = {"--arch-path": ck / "teacher.pth", "--data-path": "data", "--device": "cpu", "--workers": "0",
             "--output": "out/eval.json", **over}
    return [str(a) for k, v in flags.items() if v is not None for a in (k, v)]


# --------------------------------------------------------------------------- planting

def read_only(ws: Path) -> str:
    (ws / "ro").mkdir()
    os.chmod(ws / "ro", 0o555)
    return "ro"


def blocker(ws: Path) -> str:
    (ws / "blocker").write_text("a file, not a folder")
    return "blocker"


def users_file(path: Path, text: str = "the user's file: weeks of work") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def killed_probe(ws: Path, sh: dict, replace: Callable[[Path], None]) -> list[str]:
    """A real probe run stopped after epoch 1 (its state: out/p.pth.state/probe.pt), then the file replaced."""
    from squeeze import linear_probe

    argv = probe_argv(sh["ck"])
    assert run_cli(linear_probe.main, argv + ["--max-epochs-this-run", "1"]) == 0
    state = ws / "out" / "p.pth.state" / "probe.pt"
    assert state.is_file()
    replace(state)
    return argv


def edit_probe_state(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def replace(state: Path) -> None:
        st = torch.load(state, weights_only=True)
        edit(st)
        torch.save(st, state)
    return replace


def killed_difficulty(ws: Path, sh: dict, mp, replace: Callable[[Path], None]) -> list[str]:
    """A real difficulty run interrupted after its first model, then its saved scores replaced."""
    import rank_select.difficulty as difficulty

    real, calls = difficulty.train_and_score, []

    def first_only(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    argv = diff_argv()
    mp.setattr(difficulty, "train_and_score", first_only)
    assert run_cli(difficulty.main, argv) == 130
    mp.setattr(difficulty, "train_and_score", real)
    state = ws / "out" / "diff.csv.state" / "scores.pt"
    assert state.is_file()
    replace(state)
    return argv


def evil_file(sh: dict) -> Callable[[Path], None]:
    return lambda p: p.write_bytes((sh["ck"] / "evil.pth").read_bytes())


def raw_pickle(sh: dict) -> Callable[[Path], None]:
    return lambda p: p.write_bytes((sh["ck"] / "evil_raw.pkl").read_bytes())


def truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def results_file(path: Path, acc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": "relabel_eval", "students": {"conv3": {"summary": {"final_top1_mean": acc}}}},
                               allow_nan=True))


def ddranking(ws: Path, bad: str | None = None, content: bytes | None = None, acc=50.0) -> list[str]:
    argv = ["ddranking"]
    for k in ("syn-soft", "random-soft", "syn-hard", "full-hard"):
        p = ws / "res" / f"{k}.json"
        results_file(p, acc if k == bad else 50.0)
        if k == bad and content is not None:
            p.write_bytes(content)
        argv += [f"--{k}", str(p.relative_to(ws))]
    return argv


# --------------------------------------------------------------------------- the table

@dataclass
class Case:
    command: str
    kind: str
    setup: Callable  # (ws, sh, monkeypatch) -> argv
    match: str | None = None
    late: bool = False  # the failure comes after the run started (a diverged loss): its log may precede it

    @property
    def id(self) -> str:
        return f"{self.command}:{self.kind}"


def _probe_state_nan(st: dict) -> None:
    st["fc"]["weight"][0, 0] = float("nan")


def _probe_state_5cls(st: dict) -> None:
    st["fc"]["weight"] = torch.zeros(5, st["fc"]["weight"].shape[1])
    st["fc"]["bias"] = torch.zeros(5)


def _probe_state_epoch(st: dict) -> None:
    st["epoch"] = 7


def _scores(n: int, k: int = 1, bad: float | None = None) -> Callable[[Path], None]:
    def replace(p: Path) -> None:
        vecs = [torch.rand(n) for _ in range(k)]
        if bad is not None:
            vecs[0][1] = bad
        torch.save({"el2n": vecs, "grand": [v.clone() for v in vecs]}, p)
    return replace


def _viz_corrupt(ws, sh, mp):
    (ws / "data" / "val" / "00_circle" / "img_000.png").write_bytes(b"not a PNG")
    return ["data/val", "--out", "out/grid.png"]


def _pack_fake_png(ws, sh, mp):
    (ws / "data" / "train" / "01_square" / "fake.png").write_bytes((sh["ck"] / "teacher.pth").read_bytes()[:300])
    return ["pack", "data/train", "--out", "out/set.tar.gz", "--quiet"]


def _registry_binary(ws, sh, mp):
    (ws / "reg.json").write_bytes(bytes(range(256)) * 3)
    return ["fetch", "some-release", "--out", "out/f", "--registry", "reg.json", "--quiet"]


def _registry_numbers(ws, sh, mp):
    (ws / "reg.json").write_text(json.dumps([{"name": 3, "url": 5}]))
    return ["list", "--registry", "reg.json"]


def _prepare_garbage_src(ws, sh, mp):
    (ws / "tiny.zip").write_bytes(b"PK\x03\x04 not really a zip")
    return ["tinyimagenet", "--src", "tiny.zip", "--out", "out/tiny"]


P, B, D = "squeeze.linear_probe", "squeeze.bn_stats", "rank_select.difficulty"
E, H, V, R = "squeeze.evaluate", "hub", "common.viz", "relabel_eval.baselines"
UNSAFE = "is not a safe torch file (loading it would run pickle code)"

CASES = [
    # ---- squeeze.linear_probe: its resume state, the backbone, the released classifier, outputs, values
    Case(P, "evil pickle as resume state", lambda ws, sh, mp: killed_probe(ws, sh, evil_file(sh)), UNSAFE),
    Case(P, "raw pickle as resume state", lambda ws, sh, mp: killed_probe(ws, sh, raw_pickle(sh)), UNSAFE),
    Case(P, "truncated resume state", lambda ws, sh, mp: killed_probe(ws, sh, truncate), "probe.pt"),
    Case(P, "resume state of a 5-class classifier", lambda ws, sh, mp: killed_probe(
        ws, sh, edit_probe_state(_probe_state_5cls)), "not a usable linear-probe resume state"),
    Case(P, "resume state with NaN weights", lambda ws, sh, mp: killed_probe(
        ws, sh, edit_probe_state(_probe_state_nan)), "non-finite"),
    Case(P, "resume state past the last epoch", lambda ws, sh, mp: killed_probe(
        ws, sh, edit_probe_state(_probe_state_epoch)), "epoch 7"),
    Case(P, "resume state is a folder", lambda ws, sh, mp: killed_probe(
        ws, sh, lambda p: (p.unlink(), p.mkdir())), "probe.pt"),
    Case(P, "evil backbone", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--backbone": sh["ck"] / "evil.pth"}),
         UNSAFE),
    Case(P, "raw pickle backbone", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--backbone": sh["ck"] / "evil_raw.pkl"}),
         UNSAFE),
    Case(P, "truncated backbone", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--backbone": sh["ck"] / "truncated.pth"}),
         "truncated.pth"),
    Case(P, "garbage backbone", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--backbone": sh["ck"] / "garbage.pth"}),
         "is not a readable torch file"),
    Case(P, "backbone is a folder", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--backbone": "data"}), "--backbone"),
    Case(P, "evil released classifier", lambda ws, sh, mp: probe_argv(
        sh["ck"], **{"--linear-path": sh["ck"] / "evil_raw.pkl"}), UNSAFE),
    Case(P, "5-class released classifier for 3 classes", lambda ws, sh, mp: probe_argv(
        sh["ck"], **{"--linear-path": sh["ck"] / "linear5.pth"}), "linear5.pth"),
    Case(P, "--arch-name disagrees with the backbone", lambda ws, sh, mp: probe_argv(
        sh["ck"], **{"--arch-name": "conv4"}), "--arch-name"),
    Case(P, "--epochs 0 (an untrained classifier)", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--epochs": "0"}),
         "--epochs"),
    Case(P, "--lr 1e30 diverges", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--lr": "1e30"}), "lower --lr",
         late=True),
    Case(P, "--lr 1e30 diverges (augmented batches)", lambda ws, sh, mp: probe_argv(
        sh["ck"], **{"--lr": "1e30", "--train-aug": "crop"}), "lower --lr", late=True),
    Case(P, "--lr nan", lambda ws, sh, mp: probe_argv(sh["ck"], **{"--lr": "nan"}), "--lr"),
    Case(P, "output in a read-only folder", lambda ws, sh, mp: probe_argv(
        sh["ck"], **{"--output": f"{read_only(ws)}/p.pth"}), "read-only"),
    Case(P, "output under a file", lambda ws, sh, mp: probe_argv(
        sh["ck"], **{"--output": f"{blocker(ws)}/p.pth"}), "is a file"),
    Case(P, "output is a folder", lambda ws, sh, mp: (users_file(ws / "out" / "p.pth" / "keep.txt"),
                                                      probe_argv(sh["ck"]))[1], "is a folder"),
    Case(P, "output is the user's file", lambda ws, sh, mp: (users_file(ws / "out" / "p.pth"),
                                                             probe_argv(sh["ck"]))[1], "--force"),
    Case(P, "the user's report beside the output", lambda ws, sh, mp: (users_file(ws / "out" / "p.json"),
                                                                       probe_argv(sh["ck"]))[1], "--force"),
    # ---- squeeze.bn_stats: every checkpoint, its three output files, its resume state
    Case(B, "evil checkpoint", lambda ws, sh, mp: bn_argv(sh["ck"], "teacher.pth", "evil.pth"), "evil.pth"),
    Case(B, "raw pickle checkpoint", lambda ws, sh, mp: bn_argv(sh["ck"], "evil_raw.pkl"), "evil_raw.pkl"),
    Case(B, "truncated checkpoint", lambda ws, sh, mp: bn_argv(sh["ck"], "truncated.pth"), "truncated.pth"),
    Case(B, "garbage checkpoint", lambda ws, sh, mp: bn_argv(sh["ck"], "garbage.pth"), "garbage.pth"),
    Case(B, "NaN running statistics", lambda ws, sh, mp: bn_argv(sh["ck"], "nan_bn.pth"), "non-finite"),
    Case(B, "checkpoint without BatchNorm", lambda ws, sh, mp: bn_argv(sh["ck"], "teacher_in.pth"), "BatchNorm"),
    Case(B, "checkpoint is a folder", lambda ws, sh, mp: bn_argv(sh["ck"], "ws:data"), "data"),
    Case(B, "--names count disagrees", lambda ws, sh, mp: bn_argv(sh["ck"]) + ["--names", "a", "b"], "--names"),
    Case(B, "output under a file", lambda ws, sh, mp: bn_argv(sh["ck"], output=f"{blocker(ws)}/bn"), "is a file"),
    Case(B, "output in a read-only folder", lambda ws, sh, mp: bn_argv(sh["ck"], output=f"{read_only(ws)}/bn"),
         "read-only"),
    Case(B, "the user's bn.csv", lambda ws, sh, mp: (users_file(ws / "out" / "bn.csv"), bn_argv(sh["ck"]))[1],
         "--force"),
    Case(B, "the user's bn.png", lambda ws, sh, mp: (users_file(ws / "out" / "bn.png"), bn_argv(sh["ck"]))[1],
         "--force"),
    Case(B, "the user's bn.json", lambda ws, sh, mp: (users_file(ws / "out" / "bn.json", '{"a": 1}'),
                                                      bn_argv(sh["ck"]))[1], "--force"),
    Case(B, "bn.json is a folder", lambda ws, sh, mp: (users_file(ws / "out" / "bn.json" / "k.txt"),
                                                       bn_argv(sh["ck"]))[1], "is a folder"),
    Case(B, "an unfinished run with another --title", lambda ws, sh, mp: (
        users_file(ws / "out" / "bn.state" / "run.json",
                   json.dumps({"stage": "squeeze.bn_stats", "fingerprint": {"title": "other"}})),
        users_file(ws / "out" / "bn.state" / "done" / "checkpoint_000.json", "{}"),
        bn_argv(sh["ck"]))[2], "--restart"),
    # ---- rank_select.difficulty: its saved scores, its three outputs, values
    Case(D, "evil pickle as saved scores", lambda ws, sh, mp: killed_difficulty(ws, sh, mp, evil_file(sh)), UNSAFE),
    Case(D, "raw pickle as saved scores", lambda ws, sh, mp: killed_difficulty(ws, sh, mp, raw_pickle(sh)), UNSAFE),
    Case(D, "truncated saved scores", lambda ws, sh, mp: killed_difficulty(ws, sh, mp, truncate), "scores.pt"),
    Case(D, "saved scores of 5 images for 12", lambda ws, sh, mp: killed_difficulty(ws, sh, mp, _scores(5)),
         "not the saved scores"),
    Case(D, "saved scores of 3 models for 2", lambda ws, sh, mp: killed_difficulty(ws, sh, mp, _scores(12, 3)),
         "not the saved scores"),
    Case(D, "NaN saved scores", lambda ws, sh, mp: killed_difficulty(ws, sh, mp, _scores(12, 1, float("nan"))),
         "not the saved scores"),
    Case(D, "killed, rerun with another --lr", lambda ws, sh, mp: killed_difficulty(ws, sh, mp, lambda p: None)
         + ["--lr", "0.02"], "--lr 0.01 there, 0.02 now"),
    Case(D, "--epochs 0 (untrained scorers)", lambda ws, sh, mp: diff_argv(**{"--epochs": "0"}), "--epochs"),
    Case(D, "--lr 1e30 diverges", lambda ws, sh, mp: diff_argv(**{"--lr": "1e30"}), "lower --lr", late=True),
    Case(D, "the user's --output CSV", lambda ws, sh, mp: (users_file(ws / "out" / "diff.csv"), diff_argv())[1],
         "--force"),
    Case(D, "the user's --order-file", lambda ws, sh, mp: (users_file(ws / "notes.json"),
                                                           diff_argv(**{"--order-file": "notes.json"}))[1], "--force"),
    Case(D, "--order-file is --output", lambda ws, sh, mp: diff_argv(**{"--order-file": "out/diff.csv"}),
         "--order-file"),
    Case(D, "output under a file", lambda ws, sh, mp: diff_argv(**{"--output": f"{blocker(ws)}/d.csv"}), "is a file"),
    Case(D, "output in a read-only folder", lambda ws, sh, mp: diff_argv(**{"--output": f"{read_only(ws)}/d.csv"}),
         "read-only"),
    Case(D, "output is a folder", lambda ws, sh, mp: (users_file(ws / "out" / "diff.csv" / "k.txt"), diff_argv())[1],
         "is a folder"),
    Case(D, "--data-path is a file", lambda ws, sh, mp: diff_argv(**{"--data-path": str(sh["ck"] / "teacher.pth")}),
         "--data-path"),
    Case(D, "corrupt image", lambda ws, sh, mp: (
        (ws / "data" / "train" / "00_circle" / "img_001.png").write_bytes(b"no PNG"), diff_argv())[1], "img_001.png"),
    # ---- squeeze.ssl (its command line)
    Case("squeeze.ssl", "--batch-size 1", lambda ws, sh, mp: ["--data-path", "data", "--output", "out/s.pth",
                                                              "--batch-size", "1"], "--batch-size"),
    Case("squeeze.ssl", "output under a file", lambda ws, sh, mp: ["--data-path", "data", "--output",
                                                                   f"{blocker(ws)}/s.pth"], "is a file"),
    # ---- squeeze.evaluate
    Case(E, "evil checkpoint", lambda ws, sh, mp: eval_argv(sh["ck"], **{"--arch-path": sh["ck"] / "evil.pth"}),
         "evil.pth"),
    Case(E, "truncated checkpoint", lambda ws, sh, mp: eval_argv(
        sh["ck"], **{"--arch-path": sh["ck"] / "truncated.pth"}), "truncated.pth"),
    Case(E, "5-class checkpoint for 3 classes", lambda ws, sh, mp: eval_argv(
        sh["ck"], **{"--arch-path": sh["ck"] / "teacher5.pth"}), "5-class"),
    Case(E, "--input-size disagrees with the checkpoint", lambda ws, sh, mp: eval_argv(
        sh["ck"], **{"--input-size": "32"}), "teacher.pth"),
    Case(E, "--arch-name disagrees with the checkpoint", lambda ws, sh, mp: eval_argv(
        sh["ck"], **{"--arch-name": "conv4"}), "--arch-name"),
    Case(E, "output in a read-only folder", lambda ws, sh, mp: eval_argv(
        sh["ck"], **{"--output": f"{read_only(ws)}/e.json"}), "read-only"),
    # ---- hub
    Case(H, "pack --out inside the folder", lambda ws, sh, mp: ["pack", "data/train", "--out",
                                                                "data/train/set.tar.gz", "--quiet"], "inside"),
    Case(H, "pack a .png that is not an image", _pack_fake_png, "fake.png"),
    Case(H, "binary --registry", _registry_binary, "reg.json"),
    Case(H, "registry of numbers", _registry_numbers, "reg.json"),
    Case(H, "--registry is a folder", lambda ws, sh, mp: ["list", "--registry", "data"], "--registry"),
    # ---- common.prepare
    Case("common.prepare", "--src neither zip nor folder", _prepare_garbage_src, "--src"),
    Case("common.prepare", "output under a file", lambda ws, sh, mp: ["shapes", "--train-per-class", "1",
                                                                      "--out", f"{blocker(ws)}/s"], "is a file"),
    # ---- common.viz
    Case(V, "corrupt image", _viz_corrupt, "img_000.png"),
    Case(V, "--out is not an image name", lambda ws, sh, mp: ["data/val", "--out", "out/grid.txt"], "--out"),
    Case(V, "--out is the user's file", lambda ws, sh, mp: (users_file(ws / "out" / "grid.png"),
                                                           ["data/val", "--out", "out/grid.png"])[1], "--force"),
    Case(V, "output under a file", lambda ws, sh, mp: ["data/val", "--out", f"{blocker(ws)}/g.png"], "is a file"),
    Case(V, "--names count disagrees", lambda ws, sh, mp: ["data/val", "--names", "a", "b", "--out", "out/g.png"],
         "--names"),
    # ---- relabel_eval.baselines
    Case(R, "binary results file", lambda ws, sh, mp: ddranking(ws, "syn-hard", bytes(range(256))), "syn-hard"),
    Case(R, "results file is a JSON list", lambda ws, sh, mp: ddranking(ws, "syn-soft", b"[1, 2]"), "syn-soft"),
    Case(R, "results without a summary", lambda ws, sh, mp: ddranking(
        ws, "full-hard", b'{"stage": "relabel_eval", "students": {"conv3": {}}}'), "full-hard"),
    Case(R, "NaN accuracy", lambda ws, sh, mp: ddranking(ws, "random-soft", acc=float("nan")), "random-soft"),
    Case(R, "random subset inside --train-dir", lambda ws, sh, mp: ["random", "--train-dir", "data/train", "--ipc",
                                                                    "2", "--output-dir", "data/train/sub"],
         "overlaps"),
]


def test_table_size():
    commands = sorted({c.command for c in CASES})
    assert set(commands) == set(MAIN)
    print(f"\nteacher-side bad-input table: {len(commands)} commands, {len(CASES)} cases")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, sh, tmp_path, capsys, monkeypatch, recwarn):
    ws = tmp_path / "ws"
    shutil.copytree(sh["template"], ws)
    monkeypatch.chdir(ws)
    try:
        argv = case.setup(ws, sh, monkeypatch)
        before = snapshot(ws)
        recwarn.clear()  # warnings of the setup are not the command's
        try:
            code, err = run_one_line(main_of(case.command), argv, capsys)
        except Exception as exc:  # escaped run_cli: the user would see a traceback
            code, err = 1, [f"Traceback (escaped run_cli): {type(exc).__name__}: {exc}"]
        assert not sh["marker"].exists(), "pickle code ran: the planted file's marker was created"
        err += [f"{w.category.__name__}: {w.message}" for w in recwarn  # python -m prints these on stderr
                if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
        assert_one_line_error(code, err, case.match, late=case.late)
        assert snapshot(ws) == before, "the workspace changed"
    finally:
        if (ws / "ro").exists():
            os.chmod(ws / "ro", 0o755)
        if sh["marker"].exists():  # the case failed above; the next cases start clean
            sh["marker"].rmdir()


def test_checkpoints_untouched(sh):
    """Runs last in this module: no case wrote into the checkpoints folder."""
    assert sorted(p.name for p in sh["ck"].iterdir()) == sorted(
        ["backbone.pth", "teacher.pth", "teacher5.pth", "teacher_in.pth", "nan_bn.pth", "linear5.pth", "evil.pth",
         "evil_raw.pkl", "truncated.pth", "garbage.pth"])


def test_the_planted_pickle_would_run(sh, tmp_path):
    """The evil objects are real: plain unpickling (what a pickle-permitting load does) creates the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"fc": Evil(marker)}))
    assert marker.is_dir()


# --------------------------------------------------------------------------- the fixes, one by one

def test_evaluate_reads_the_checkpoint_once_and_resolves_the_data_config(sh, tmp_path, monkeypatch):
    """flag -> checkpoint meta -> registry -> images, from one read of the checkpoint."""
    from models import build_model
    from squeeze import evaluate

    ws = tmp_path / "ws"
    shutil.copytree(sh["template"], ws)
    monkeypatch.chdir(ws)
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    res = evaluate.main(eval_argv(sh["ck"], **{"--output": None}))
    assert len(loads) == 1
    assert res["data_config_source"] == {"input_size": "checkpoint", "mean": "checkpoint", "std": "checkpoint",
                                         "classes": "checkpoint"}
    # bare weights (no meta): the size a ConvNet's classifier fixes, mean/std from the --dataset registry
    torch.manual_seed(0)
    torch.save(build_model("conv3", 3, SIZE).state_dict(), ws / "bare.pth")
    loads.clear()
    res = evaluate.main(eval_argv(sh["ck"], **{"--arch-path": "bare.pth", "--arch-name": "conv3",
                                               "--dataset": "cifar10", "--output": None}))
    assert len(loads) == 1 and res["input_size"] == SIZE
    assert res["data_config_source"]["input_size"] == "checkpoint"
    from common.data.datasets import get_dataset

    assert res["data_config_source"]["mean"] == "dataset cifar10"
    assert res["mean"] == list(get_dataset("cifar10").mean)


def test_bn_stats_replaces_its_own_output_and_a_foreign_one_only_with_force(sh, tmp_path, capsys, monkeypatch):
    from squeeze import bn_stats

    monkeypatch.chdir(tmp_path)
    argv = bn_argv(sh["ck"], output="bn")
    assert run_cli(bn_stats.main, argv) == 0
    first = {s: (tmp_path / f"bn{s}").read_bytes() for s in (".csv", ".json", ".png")}
    assert json.loads(first[".json"])["stage"] == "squeeze.bn_stats"
    assert run_cli(bn_stats.main, argv) == 0  # its own output: replaced by the same bytes
    assert {s: (tmp_path / f"bn{s}").read_bytes() for s in first} == first
    (tmp_path / "bn.json").write_text('{"mine": true}')
    code, err = run_one_line(bn_stats.main, argv, capsys)
    assert_one_line_error(code, err, "pass --force")
    assert (tmp_path / "bn.json").read_text() == '{"mine": true}'
    assert run_cli(bn_stats.main, argv + ["--force"]) == 0
    assert (tmp_path / "bn.json").read_bytes() == first[".json"]
