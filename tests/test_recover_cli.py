"""``python -m recover`` end to end on tiny data: output layout, manifest, resume, shards, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import recover.synthesize as synth
from common.cli.errors import UserError, run_cli
from common.run.manifest import sha256_file
from common.run.state import state_dir
from recover.loop import NonFiniteLoss
from tests.conftest import ROOT, make_teacher, make_tree

CLASSES = ["00_circle", "01_square", "02_triangle"]


class Killed(Exception):
    pass


def argv(data: Path, teacher: Path, out: Path, *extra: str) -> list[str]:
    # IPC 4 in 4 rounds of 1 iteration: image i gets 4 - i iterations; batch 8 = groups [0, 1], [2]
    return ["--init-data-path", str(data / "train"), "--arch-path", str(teacher), "--syn-data-path", str(out),
            "--ipc", "4", "--iteration", "4", "--round-iterations", "1", "--use-early-late", "--batch-size", "8",
            "--lr", "0.25", "--r-bn", "0.01", "--jitter", "4", "--milestone", "1", "--seed", "3", "--device", "cpu",
            *extra]


def images(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("[!.]*/*"))}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Data, teacher and one uninterrupted run, made once for the module."""
    base = tmp_path_factory.mktemp("recover")
    make_tree(base / "data" / "train", 3, 8)
    teacher = make_teacher(base / "teacher.pth", CLASSES, data_root=base / "data" / "train")
    synth.main(argv(base / "data", teacher, base / "syn", "--exp-name", "ref"))
    return base / "data", teacher, base / "syn" / "ref"


@pytest.fixture
def tiny_data(shared):
    return shared[0]


@pytest.fixture
def tiny_teacher(shared):
    return shared[1]


@pytest.fixture
def reference_run(shared):
    return shared[2]


def test_output_layout_and_manifest(reference_run, tiny_teacher):
    out = reference_run
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == CLASSES + ["manifest.json"]
    for cls in CLASSES:  # the init file names (first IPC, sorted), PNG
        assert sorted(p.name for p in (out / cls).iterdir()) == [f"img_{i:03d}.png" for i in range(4)]
    with Image.open(out / CLASSES[0] / "img_000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "recover" and m["status"] == "complete" and m["method"] == "early_late"
    assert m["inputs"]["teacher"]["sha256"] == sha256_file(tiny_teacher)
    assert m["args"]["ipc"] == 4 and m["args"]["exp_name"] == "ref"
    assert m["groups"] == [[0, 1], [2]]
    for cls in CLASSES:
        rec = m["per_class"][cls]
        assert rec["status"] == "done" and rec["iterations"] == [4, 3, 2, 1] and rec["wall_time_s"] > 0
        assert rec["init_files"] == [f"img_{i:03d}.png" for i in range(4)]
    assert m["image_iterations"] == m["planned_image_iterations"] == 3 * 10
    assert m["uniform_image_iterations"] == 3 * 16
    # the optimisation changed the images
    init = Image.open(reference_run.parent.parent / "data" / "train" / CLASSES[0] / "img_000.png")
    assert init.tobytes() != Image.open(out / CLASSES[0] / "img_000.png").tobytes()


def test_resume_after_crash_equals_uninterrupted(reference_run, tiny_data, tiny_teacher, tmp_path, monkeypatch):
    out = tmp_path / "syn" / "resumed"
    real = synth.recover_batch
    calls, armed = [], [True]

    def crash_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2 and armed[0]:
            raise Killed  # killed in the middle of group 1
        return real(*a, **k)

    monkeypatch.setattr(synth, "recover_batch", crash_on_second)
    with pytest.raises(Killed):
        synth.main(argv(tiny_data, tiny_teacher, tmp_path / "syn", "--exp-name", "resumed"))
    assert (out / CLASSES[0]).is_dir() and not (out / CLASSES[2]).exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "partial"
    # what a SIGKILL can leave behind: a temporary folder, and a class folder swapped in before its record
    stale = out / f".{CLASSES[2]}.partial-99-deadbeef"
    stale.mkdir()
    (stale / "img_000.png").write_bytes(b"\x89PNG half")
    (state_dir(out) / "done" / f"{CLASSES[0]}.json").unlink()
    calls.clear()
    armed[0] = False
    synth.main(argv(tiny_data, tiny_teacher, tmp_path / "syn", "--exp-name", "resumed"))
    assert len(calls) == 2  # group [0, 1] redone (its record was missing), group [2]
    assert not stale.exists()
    assert images(out) == images(reference_run)
    calls.clear()
    m = synth.main(argv(tiny_data, tiny_teacher, tmp_path / "syn", "--exp-name", "resumed"))
    assert calls == [] and m["status"] == "complete"  # nothing left to do


def test_sigkill_then_restart_equals_uninterrupted(reference_run, tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "syn" / "killed"
    cmd = [sys.executable, "-m", "recover", *argv(tiny_data, tiny_teacher, tmp_path / "syn", "--exp-name", "killed")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not list(state_dir(out).glob("done/*.json")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # group [0, 1] is done, group [2] is running
    assert proc.wait() == -signal.SIGKILL
    assert not (out / CLASSES[2]).exists()
    for cls_dir in out.glob("[!.]*"):  # whatever is visible under a class name is complete and readable
        if cls_dir.is_dir():
            for p in cls_dir.iterdir():
                Image.open(p).load()
    synth.main(cmd[3:])  # restart with the same command
    assert images(out) == images(reference_run)
    assert not list(out.glob(".*partial*"))


def test_two_shards_union_equals_single_run(reference_run, tiny_data, tiny_teacher, tmp_path, monkeypatch):
    base = argv(tiny_data, tiny_teacher, tmp_path / "syn", "--exp-name", "sharded")
    m0 = synth.main(base + ["--num-shards", "2", "--shard-index", "0"])
    assert m0["status"] == "partial" and m0["per_class"][CLASSES[2]]["status"] == "pending"
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's variables
    monkeypatch.setenv("RANK", "1")
    m1 = synth.main(base)
    assert m1["status"] == "complete"
    assert images(tmp_path / "syn" / "sharded") == images(reference_run)


def test_noise_init_class_split_across_batches(tiny_data, tiny_teacher, tmp_path):
    m = synth.main(["--init", "noise", "--train-data-path", str(tiny_data / "train"), "--arch-path",
                    str(tiny_teacher), "--syn-data-path", str(tmp_path / "noise"), "--ipc", "4", "--iteration", "2",
                    "--round-iterations", "1", "--use-early-late", "--batch-size", "3", "--jitter", "2",
                    "--save-format", "jpg", "--device", "cpu"])
    assert m["groups"] == [[0], [1], [2]]  # IPC 4 > batch 3: a class over batches [0, 1, 2] and [3]
    rec = m["per_class"][CLASSES[1]]
    assert rec["files"] == [f"class001_id{i:03d}.jpg" for i in range(4)]
    # chunks [0, 1] and [2, 3]: index 3 continues in the second batch, whose empty round 0 is dropped
    assert rec["iterations"] == [2, 2, 1, 1]
    assert sorted(p.name for p in (tmp_path / "noise" / CLASSES[1]).iterdir()) == rec["files"]


def test_errors_are_one_line(tiny_data, tiny_teacher, tmp_path, capsys, monkeypatch):
    def fails(*extra, match, teacher=tiny_teacher, exp="e"):
        with pytest.raises(UserError, match=match):
            synth.main(argv(tiny_data, teacher, tmp_path / "err", "--exp-name", exp, *extra))

    fails("--ipc", "9", match="fewer than --ipc 9")
    fails("--iteration", "10", "--round-iterations", "4", match="does not divide")
    other = make_teacher(tmp_path / "other.pth", ["a", "b", "c"])
    fails(match="class list does not match", teacher=other)
    no_bn = make_teacher(tmp_path / "in.pth", CLASSES, arch="conv3_in")
    fails(match="no BatchNorm2d", teacher=no_bn)
    m = synth.main(argv(tiny_data, no_bn, tmp_path / "err", "--exp-name", "ce_only", "--r-bn", "0", "--ipc", "1"))
    assert m["method"] == "uniform" and m["per_class"][CLASSES[0]]["iterations"] == [4]  # IPC 1: no rounds
    # a non-finite loss in the second group: stop, name class and iteration, keep the first group
    real, calls = synth.recover_batch, []

    def nan_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise NonFiniteLoss(2)
        return real(*a, **k)

    monkeypatch.setattr(synth, "recover_batch", nan_second)
    fails(match=f"non-finite loss at iteration 2 .*{CLASSES[2]}", exp="nan")
    assert sorted(p.name for p in (tmp_path / "err" / "nan").glob("[!.]*")) == CLASSES[:2] + ["manifest.json"]
    monkeypatch.undo()
    fails("--lr", "0.5", match=r"other arguments .*--lr 0.25 there, 0.5 now.*--restart", exp="nan")  # refused
    capsys.readouterr()
    code = run_cli(synth.main, argv(tiny_data, tiny_teacher, tmp_path / "err", "--ipc", "9"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")


def test_parser_accepts_released_flags():
    args = synth.get_args_parser().parse_args(
        "--init-data-path I --syn-data-path S --exp-name E --arch-name resnet18 --arch-path A --dataset imagenet-1k "
        "--input-size 224 --ipc 50 --iteration 4000 --round-iterations 500 --min-iterations 2000 --use-early-late "
        "--round-lr-reset --batch-size 100 --lr 0.25 --r-bn 0.01 --first-bn-multiplier 10 --jitter 0 "
        "--easy2hard-mode cosine --milestone 1 --store-best-images --gpu-device 0 --init real --seed 1 "
        "--device cpu --save-format jpg --num-shards 2 --shard-index 1 --amp --per-image-augment "
        "--train-data-path T".split())
    assert synth.output_dir(args) == Path("S/E")
    assert args.round_iterations == 500 and args.milestone == 1.0 and args.save_format == "jpg"


def test_the_last_two_shards_finishing_together_leave_a_complete_manifest(tmp_path):
    # shard 1 completes the output (and removes the state) while shard 0 is about to rewrite the
    # manifest: shard 0 must find the classes in the manifest, not report them pending
    from common.run.state import RunState, state_dir
    from recover.output import OutputDir

    root, settings = tmp_path / "syn", {"ipc": 1}
    shards = [OutputDir(root, RunState(root, "recover", settings, check=i == 0)) for i in range(2)]
    for s in shards:
        s.run.begin()
    base = {"stage": "recover", "settings": settings}
    for s, cls in zip(shards, ["a", "b"]):
        (root / cls).mkdir(parents=True)
        (root / cls / "000.png").write_bytes(b"x")
        s.write_record(cls, {"files": ["000.png"], "iterations": [1], "wall_time_s": 1.0})
    assert shards[1].update_manifest(base, ["a", "b"])["status"] == "complete"
    assert not state_dir(root).exists()
    m = shards[0].update_manifest(base, ["a", "b"])
    assert m["status"] == "complete" and m["classes_done"] == 2
    assert not state_dir(root).exists()
