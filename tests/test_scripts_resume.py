"""A generated script's evaluation killed mid-run resumes with the same command and finishes
exactly as an uninterrupted run: its results and resume state live in EVAL_PATH, beside the
distilled set, so the set stays an ImageFolder of class folders only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import make_teacher, make_tree

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cifar10" / "conv3_ipc10.sh"  # DELT, conv3 teacher and student
CLASSES = 10
IPC = 2


def _env(tmp: Path, eval_path: Path) -> dict[str, str]:
    return {**os.environ, "DRY_RUN": "0", "GPU": "cpu", "STAGES": "validate", "SEEDS": "3407", "IPC": str(IPC),
            "RE_EPOCHS": "8", "EVAL_EVERY": "1", "DATA_ROOT": str(tmp / "data"), "TEACHER": str(tmp / "teacher.pth"),
            "SYN_PATH": str(tmp / "syn"), "EVAL_PATH": str(eval_path), "OMP_NUM_THREADS": "1"}


def _setup(tmp: Path) -> Path:
    make_tree(tmp / "data" / "train", CLASSES, per_class=4)
    make_tree(tmp / "data" / "val", CLASSES, per_class=2, split=1)
    # the set the script evaluates: SYN_PATH/EXP_NAME as the script derives it for IPC 2
    syn = make_tree(tmp / "syn" / f"ipc{IPC}_itr1000_ri100_medium", CLASSES, per_class=IPC, seed=5)
    classes = sorted(p.name for p in (tmp / "data" / "train").iterdir())
    make_teacher(tmp / "teacher.pth", classes, "conv3", 32, data_root=tmp / "data" / "train")
    return syn


def _runs(path: Path) -> list[dict]:
    res = json.loads(path.read_text())
    return [{k: r[k] for k in ("seed", "final_top1", "best_top1", "final_top5")} for b in res["students"].values()
            for r in b["runs"]]


def test_killed_script_evaluation_resumes_and_matches_uninterrupted(tmp_path):
    syn = _setup(tmp_path)
    before = sorted(p.relative_to(syn) for p in syn.rglob("*"))

    # uninterrupted
    full = tmp_path / "eval_full"
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_env(tmp_path, full), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out_full = full / "eval_conv3_seed3407.json"
    assert out_full.is_file()

    # killed once the first epoch checkpoint is in the resume folder, then the same command again
    killed = tmp_path / "eval_killed"
    state = killed / "eval_conv3_seed3407.json.state"
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=_env(tmp_path, killed), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not list(state.glob("*.pt")):
            time.sleep(0.05)
        assert proc.poll() is None, "the evaluation finished before it could be killed"
        assert list(state.glob("*.pt")), "no checkpoint appeared in the resume folder"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the script, python and any worker: the whole process group
        except ProcessLookupError:
            pass
        proc.wait()
    out_killed = killed / "eval_conv3_seed3407.json"
    assert not out_killed.exists() and state.is_dir()
    import torch

    ckpt = torch.load(next(state.glob("*.pt")), map_location="cpu", weights_only=True)
    done = json.loads(ckpt["history"])  # the epochs the killed run finished (with their own timings)
    assert 1 <= len(done) < 8
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_env(tmp_path, killed), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # it continued the killed run: the finished epochs are the killed run's records, timings included
    resumed = json.loads(out_killed.read_text())["students"]["conv3"]["runs"][0]["history"]
    assert resumed[:len(done)] == done

    assert _runs(out_killed) == _runs(out_full)
    full_hist = json.loads(out_full.read_text())["students"]
    killed_hist = json.loads(out_killed.read_text())["students"]
    for student in full_hist:
        for a, b in zip(full_hist[student]["runs"], killed_hist[student]["runs"]):
            ha = [(h["epoch"], h["loss"], h.get("val_top1")) for h in a.get("history", [])]
            hb = [(h["epoch"], h["loss"], h.get("val_top1")) for h in b.get("history", [])]
            assert ha == hb
    # the set is untouched: no results, tables or resume folders inside it
    assert sorted(p.relative_to(syn) for p in syn.rglob("*")) == before
    assert not state.exists()  # a finished run removes its resume folder


def test_relabel_eval_refuses_output_inside_the_set(tmp_path):
    """--output inside --syn-data-path: one error line, exit 2, before torch is imported, nothing written."""
    import sys

    from tests.test_bad_inputs import snapshot, visible_lines

    syn = make_tree(tmp_path / "syn", 2, per_class=1)
    val = make_tree(tmp_path / "val", 2, per_class=1, split=1)
    (tmp_path / "t.pth").write_bytes(b"not read: the check comes first")
    before = snapshot(tmp_path)
    for out in (syn / "eval.json", syn / "00_circle" / "eval.json", syn):
        code = ("import sys, runpy; sys.argv = ['relabel_eval', *sys.argv[1:]]; "
                "runpy.run_module('relabel_eval', run_name='__main__')")
        res = subprocess.run([sys.executable, "-c", code, "--syn-data-path", str(syn), "--val-dir", str(val),
                              "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        err = visible_lines(res.stderr)
        assert res.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), res.stderr
        assert "--output" in err[0] and "--syn-data-path" in err[0] and "Traceback" not in res.stderr
    code = ("import sys, runpy; sys.argv = ['relabel_eval.relabel', *sys.argv[1:]]; "
            "runpy.run_module('relabel_eval.relabel', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code, "--syn-data-path", str(syn), "--teacher-path",
                          str(tmp_path / "t.pth"), "--epochs", "2", "--output-dir", str(syn / "soft")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = visible_lines(res.stderr)
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and "--output-dir" in err[0], err
    assert snapshot(tmp_path) == before
    # beside the set is fine as far as this check goes (the run then fails later for other reasons or not at all)
    from relabel_eval.args import check_paths, get_args_parser

    check_paths(get_args_parser().parse_args(["--syn-data-path", str(syn), "--val-dir", str(val),
                                              "--output", str(tmp_path / "syn_eval" / "eval.json")]))
