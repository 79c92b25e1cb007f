"""One run-state mechanism (common.run.state): fingerprint, restart policy, ownership, and a SIGKILL test
per long-running command: killed mid-run, the same command finishes with the uninterrupted output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.datasets import ImageFolder as TVImageFolder

from common.cli.errors import UserError
from common.data.imagefolder import find_classes
from common.run.state import NOT_RESULT, RunState, check_output, fingerprint, state_dir
from tests.conftest import ROOT, make_teacher, make_tree

CLASSES = ["00_circle", "01_square", "02_triangle"]


# ----------------------------------------------------------------------------- the mechanism

def test_fingerprint_is_all_arguments_minus_the_declared_ones():
    args = {"lr": 0.1, "device": "cuda:1", "workers": 4, "output": "a", "seed": 3, "restart": True}
    fp = fingerprint(args, {"output"}, teacher_sha256="abc")
    assert fp == {"lr": 0.1, "seed": 3, "teacher_sha256": "abc"}
    assert {"device", "gpu_device", "workers", "restart", "force"} <= NOT_RESULT


def test_restart_policy_names_the_differing_arguments(tmp_path):
    out = tmp_path / "out"
    run = RunState(out, "stage_x", {"lr": 0.1, "ipc": 10, "seed": 0}).begin()
    run.mark_done("class_0", {"files": ["a.png"]})
    assert state_dir(out) == tmp_path / "out.state" and run.done("class_0") == {"files": ["a.png"]}
    again = RunState(out, "stage_x", {"lr": 0.1, "ipc": 10, "seed": 0})
    assert again.resumed and again.done_units() == ["class_0"]
    with pytest.raises(UserError) as e:
        RunState(out, "stage_x", {"lr": 0.2, "ipc": 20, "seed": 0})
    msg = str(e.value)
    assert "--ipc 10 there, 20 now; --lr 0.1 there, 0.2 now" in msg and "pass --restart to start over" in msg
    assert "\n" not in msg and run.done("class_0")  # nothing discarded
    fresh = RunState(out, "stage_x", {"lr": 0.2, "ipc": 20, "seed": 0}, restart=True)
    assert not fresh.resumed and not state_dir(out).exists()
    RunState(out, "stage_x", {}).begin().mark_done("class_0")
    with pytest.raises(UserError, match="resume state of stage_x, not stage_y"):
        RunState(out, "stage_y", {})


def test_a_run_that_did_no_work_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with RunState(out, "s", {"a": 1}).running():
            raise ValueError("bad input found late")
    assert not state_dir(out).exists()
    RunState(out, "s", {"a": 1}).begin()  # run.json only (killed before any work): a corrected rerun is not refused
    rerun = RunState(out, "s", {"a": 2})
    assert not rerun.resumed
    rerun.begin()  # and the state is now the rerun's
    assert json.loads((state_dir(out) / "run.json").read_text())["fingerprint"] == {"a": 2}
    assert RunState(out, "s", {"a": 2}).resumed is False  # still no work saved: nothing to resume


def test_an_attached_shard_starting_first_keeps_its_state(tmp_path):
    # recover's shards share one state without a process group: shard 1 may begin before shard 0 checks
    out = tmp_path / "out"
    shard1 = RunState(out, "s", {"a": 1}, check=False).begin()
    main = RunState(out, "s", {"a": 1})  # finds shard 1's fresh state (no work yet): must not remove it
    assert state_dir(out).is_dir()
    shard1.mark_done("class-3")  # shard 1 goes on writing in it
    main.begin()
    assert main.done_units() == ["class-3"]


def test_ownership_rules(tmp_path):
    check_output(tmp_path / "absent", "rank_select")
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "rank_select")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text(json.dumps({"stage": "rank_select"}))
    check_output(mine, "rank_select")
    with pytest.raises(UserError, match="holds the output of rank_select, not recover; .*--force"):
        check_output(mine, "recover")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep")
    with pytest.raises(UserError, match="was not written by recover .*pass --force to replace it"):
        check_output(tmp_path / "notes", "recover", flag="--syn-data-path")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, where a folder goes"):
        check_output(tmp_path / "file", "recover")
    check_output(tmp_path / "notes", "recover", force=True)
    (tmp_path / "res.json").write_text(json.dumps({"stage": "relabel_eval"}))
    check_output(tmp_path / "res.json", "relabel_eval", kind="file")
    with pytest.raises(UserError, match="holds the output of relabel_eval, not squeeze"):
        check_output(tmp_path / "res.json", "squeeze", kind="file")


def test_an_output_being_written_by_another_shard_is_ours(tmp_path):
    # recover's shard 1 may have begun writing (temporary files, no manifest yet) when shard 0 checks
    out = tmp_path / "syn"
    out.mkdir()
    (out / ".manifest.json.tmp-123").write_text("{")
    with pytest.raises(UserError, match="no manifest of ours"):
        check_output(out, "recover")
    RunState(out, "recover", {"a": 1}, check=False).begin()
    check_output(out, "recover")  # its run state beside it says whose it is
    with pytest.raises(UserError, match="holds the output of recover, not rank_select"):
        check_output(out, "rank_select")


def test_unrelated_outputs_are_never_replaced(tmp_path):
    """relabel_eval.baselines random and relabel_eval.relabel used to delete an existing --output-dir."""
    from relabel_eval import baselines, relabel

    make_tree(tmp_path / "train", 3, 4)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep")
    with pytest.raises(UserError, match="--output-dir .*precious exists and was not written by relabel_eval.baselines"):
        baselines.main(["random", "--train-dir", str(tmp_path / "train"), "--ipc", "2",
                        "--output-dir", str(precious)])
    teacher = make_teacher(tmp_path / "t.pth", CLASSES)
    with pytest.raises(UserError, match="--output-dir .*precious exists and was not written by relabel_eval.relabel"):
        relabel.main(["--syn-data-path", str(tmp_path / "train"), "--teacher-path", str(teacher), "--epochs", "1",
                      "--output-dir", str(precious), "--device", "cpu", "--workers", "0"])
    assert (precious / "thesis.tex").read_text() == "keep" and not state_dir(precious).exists()
    baselines.main(["random", "--train-dir", str(tmp_path / "train"), "--ipc", "2", "--output-dir", str(precious),
                    "--force"])
    assert sorted(p.name for p in precious.iterdir()) == CLASSES + ["manifest.json"]


# ----------------------------------------------------------------------------- SIGKILL, then the same command

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("runstate")
    make_tree(root / "data" / "train", 3, 8)
    make_tree(root / "data" / "val", 3, 2, split=1)
    teacher = make_teacher(root / "teacher.pth", CLASSES, data_root=root / "data" / "train")
    return root, teacher


# the killed subprocess runs with one thread; the in-process runs must too (float sums differ)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kill_midway(module: str, argv: list[str], ready, timeout: float = 120.0) -> None:
    """Start ``python -m module argv``, SIGKILL it as soon as ``ready()`` holds (it must still be running)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    assert proc.poll() is None, f"{module} ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def files(root: Path, pattern: str = "*/*") -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


def assert_plain_imagefolder(root: Path) -> None:
    """What torchvision reads: exactly the class folders, no state inside the tree."""
    assert TVImageFolder(str(root)).classes == CLASSES
    assert not list(root.glob(".*"))


def test_sigkill_squeeze(base, tmp_path):
    from squeeze.train import main

    root, _ = base
    argv = ["--data-path", str(root / "data"), "--arch-name", "conv3", "--input-size", "16", "--epochs", "5",
            "--batch-size", "6", "--warmup-epochs", "1", "--device", "cpu", "--output"]
    main(argv + [str(tmp_path / "ref.pth")])
    out = tmp_path / "killed.pth"
    kill_midway("squeeze", argv + [str(out)], lambda: (state_dir(out) / "last.pth").exists())
    assert not out.exists()
    main(argv + [str(out)])  # the same command
    a, b = torch.load(tmp_path / "ref.pth", weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"]["val_top1"] == b["meta"]["val_top1"] and not state_dir(out).exists()


def test_sigkill_rank_select(base, tmp_path):
    from rank_select.rank import main

    root, teacher = base
    argv = ["--data-path", str(root / "data" / "train"), "--ranker-path", str(teacher), "--ipc", "3",
            "--batch-size", "1", "--save-every", "0", "--workers", "0", "--device", "cpu", "--output-path"]
    main(argv + [str(tmp_path / "ref")])
    out = tmp_path / "killed"
    kill_midway("rank_select", argv + [str(out)], lambda: (state_dir(out) / "scores.pt").exists())
    main(argv + [str(out)])
    assert files(out) == files(tmp_path / "ref")
    assert (out / "ranking.csv").read_text() == (tmp_path / "ref" / "ranking.csv").read_text()
    assert_plain_imagefolder(out)
    assert not state_dir(out).exists()


def test_sigkill_rank_select_patches(base, tmp_path):
    from rank_select.patches import main

    root, teacher = base
    argv = ["--data-path", str(root / "data" / "train"), "--observer-path", str(teacher), "--ipc", "2",
            "--mipc", "6", "--num-crop", "3", "--batch-size", "3", "--workers", "0", "--device", "cpu",
            "--output-path"]
    main(argv + [str(tmp_path / "ref")])
    out = tmp_path / "killed"
    kill_midway("rank_select.patches", argv + [str(out)], lambda: list(state_dir(out).glob("done/class_*.json")))
    main(argv + [str(out)])
    assert files(out) == files(tmp_path / "ref")
    assert_plain_imagefolder(out)


def test_sigkill_relabel_eval(base, tmp_path):
    from relabel_eval.train import main

    root, teacher = base
    argv = ["--syn-data-path", str(root / "data" / "train"), "--val-dir", str(root / "data" / "val"),
            "--teacher-path", str(teacher), "--ipc", "2", "--re-epochs", "2", "--eval-every", "1", "--seeds", "1",
            "2", "3", "--workers", "0", "--device", "cpu", "--output"]
    ref = main(argv + [str(tmp_path / "ref.json")])
    out = tmp_path / "killed.json"
    kill_midway("relabel_eval", argv + [str(out)], lambda: list(state_dir(out).glob("done/*.json")))
    res = main(argv + [str(out)])

    def numbers(r):
        return [[(h["loss"], h["val_top1"]) for h in run["history"]] for run in r["students"]["conv3"]["runs"]]

    assert numbers(res) == numbers(ref) and not state_dir(out).exists()


def test_sigkill_relabel(base, tmp_path):
    from relabel_eval.relabel import main

    root, teacher = base
    argv = ["--syn-data-path", str(root / "data" / "train"), "--teacher-path", str(teacher), "--ipc", "4",
            "--epochs", "6", "--workers", "0", "--device", "cpu", "--output-dir"]
    main(argv + [str(tmp_path / "ref")])
    out = tmp_path / "killed"
    kill_midway("relabel_eval.relabel", argv + [str(out)],
                lambda: (state_dir(out) / "work" / "epoch_0000.pt").exists())
    main(argv + [str(out)])
    for e in range(6):
        a = torch.load(tmp_path / "ref" / f"epoch_{e:04d}.pt", weights_only=True)
        b = torch.load(out / f"epoch_{e:04d}.pt", weights_only=True)
        assert torch.equal(a["logits"], b["logits"]) and same(a["plan"], b["plan"])
    assert not state_dir(out).exists()
    # recover's SIGKILL test: tests/test_recover_cli.py::test_sigkill_then_restart_equals_uninterrupted


# ----------------------------------------------------------------------------- outputs torchvision reads

def test_completed_outputs_are_plain_imagefolders(base, tmp_path):
    """recover, relabel_eval.baselines random and hub fetch (rank_select and patches: the tests above)."""
    import hub
    from recover.synthesize import main as recover_main
    from relabel_eval.baselines import main as baselines_main

    root, teacher = base
    train = root / "data" / "train"
    recover_main(["--init-data-path", str(train), "--arch-path", str(teacher), "--syn-data-path",
                  str(tmp_path / "syn"), "--ipc", "2", "--iteration", "1", "--batch-size", "6", "--device", "cpu"])
    assert_plain_imagefolder(tmp_path / "syn")
    assert not state_dir(tmp_path / "syn").exists()  # complete: the records are in manifest.json
    baselines_main(["random", "--train-dir", str(train), "--ipc", "2", "--output-dir", str(tmp_path / "rand")])
    assert_plain_imagefolder(tmp_path / "rand")
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(train.glob("*/*")):
            zf.write(p, p.relative_to(train).as_posix())
    hub.fetch(str(archive), tmp_path / "fetched", keep_names=True, progress=False)
    assert_plain_imagefolder(tmp_path / "fetched")
    assert find_classes(tmp_path / "fetched") == CLASSES


def test_random_real_baseline_is_one_implementation(tmp_path):
    """``relabel_eval.baselines random`` and ``rank_select --selection-criteria random`` pick the same images."""
    from rank_select.select import select_random
    from relabel_eval.baselines import random_subset

    make_tree(tmp_path / "train", 3, 8)
    random_subset(tmp_path / "train", 3, 5, tmp_path / "r")
    for k, cls in enumerate(CLASSES):
        names = sorted(p.name for p in (tmp_path / "train" / cls).iterdir())
        picks = sorted(names[i] for i in select_random([0.0] * 8, 3, seed=5, label=k))
        assert picks == sorted(p.name for p in (tmp_path / "r" / cls).iterdir())


def test_sigkill_bn_stats(base, tmp_path):
    """Killed after its CSV and before its plot and report: the same command finishes with the same three files;
    another setting is refused by name while the killed run's state is there."""
    from squeeze.bn_stats import main

    root, teacher = base
    other = make_teacher(tmp_path / "other.pth", CLASSES, seed=1)
    argv = [str(teacher), str(other), "--names", "sup", "other", "--output"]
    main(argv + [str(tmp_path / "ref")])
    out = tmp_path / "killed"
    kill_midway("squeeze.bn_stats", argv + [str(out)], lambda: (tmp_path / "killed.csv").exists())
    assert not (tmp_path / "killed.json").exists() and state_dir(out).is_dir()
    with pytest.raises(UserError, match=r"--title .* there, \"flat\" now.*--restart"):
        main(argv + [str(out), "--title", "flat"])
    main(argv + [str(out)])  # the same command: its own half-written output is not "a file of the user's"
    for suffix in (".csv", ".json", ".png"):
        assert (tmp_path / f"killed{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes(), suffix
    assert not state_dir(out).exists()


def test_sigkill_difficulty(base, tmp_path):
    """Killed after its first model: another --lr is refused by name (the scores are kept), the same command
    continues and writes the CSV and order file of an uninterrupted run."""
    from rank_select.difficulty import main

    root, _ = base
    argv = ["--data-path", str(root / "data" / "train"), "--num-models", "3", "--epochs", "2", "--batch-size", "6",
            "--input-size", "16", "--device", "cpu", "--output"]
    main(argv + [str(tmp_path / "ref.csv")])
    out = tmp_path / "killed.csv"
    kill_midway("rank_select.difficulty", argv + [str(out)], lambda: (state_dir(out) / "scores.pt").exists())
    assert not out.exists()
    saved = (state_dir(out) / "scores.pt").read_bytes()
    with pytest.raises(UserError, match=r"--lr 0.01 there, 0.02 now.*pass --restart"):
        main(argv + [str(out), "--lr", "0.02"])
    assert (state_dir(out) / "scores.pt").read_bytes() == saved  # refused, not silently discarded
    main(argv + [str(out)])
    assert out.read_text() == (tmp_path / "ref.csv").read_text()
    assert (tmp_path / "killed.order.json").read_text() == (tmp_path / "ref.order.json").read_text()
    assert json.loads((tmp_path / "killed.manifest.json").read_text())["stage"] == "rank_select.difficulty"
    assert not state_dir(out).exists()
