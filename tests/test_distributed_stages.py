"""Stages under torchrun: 2 processes, gloo, 1 thread each, on 127.0.0.1 (see tests/multiproc.py).

- recover on two faked nodes (torchrun --nnodes=2, one process each) equals one process;
- squeeze with DDP equals one process with the same global batch; a killed run resumes exactly;
- squeeze.ssl (MoCo) with DDP equals one process with the same global batch;
- relabel_eval with DDP writes one results file and matches one process;
- rank_select scored by two processes writes the single-process CSV;
- squeeze.linear_probe with two processes gives the one-process classifier and report (both modes),
  and a killed 2-process probe resumes exactly;
- rank_select.patches with classes sharded over two processes writes the one-process output byte for byte.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from models import read_checkpoint
from tests.conftest import make_teacher, make_tree
from tests.multiproc import launch, torchrun

CLASSES = ["00_circle", "01_square", "02_triangle"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("dist")
    make_tree(base / "data" / "train", 3, 8, split=0)
    make_tree(base / "data" / "val", 3, 4, split=1)
    make_teacher(base / "teacher.pth", CLASSES, data_root=base / "data" / "train")
    return base


# ------------------------------------------------------------------------------------------ recover

def test_recover_two_nodes_equal_one_process(data, tmp_path):
    import recover.synthesize as synth
    from tests.test_recover_cli import argv, images

    synth.main(argv(data / "data", data / "teacher.pth", tmp_path / "syn", "--exp-name", "one"))
    # two "nodes" of one process each: LOCAL_RANK is 0 on both, the shard comes from the global RANK
    res = torchrun(["-m", "recover", *argv(data / "data", data / "teacher.pth", tmp_path / "syn",
                                            "--exp-name", "two")], nproc=1, nnodes=2, timeout=120).check()
    assert images(tmp_path / "syn" / "two") == images(tmp_path / "syn" / "one")
    manifest = json.loads((tmp_path / "syn" / "two" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["num_shards"] == 2
    assert "shard 0/2" in res.stdout[0] + res.stderr[0] and "shard 1/2" in res.stdout[1] + res.stderr[1]


# ------------------------------------------------------------------------------------------ squeeze

def squeeze_args(data: Path, out: Path, batch: int, *extra: str) -> list[str]:
    # conv3_in normalises each image on its own: no batch statistics, so DDP is exact (see below)
    return ["--data-path", str(data / "data"), "--arch-name", "conv3_in", "--input-size", "16", "--epochs", "3",
            "--batch-size", str(batch), "--lr", "0.05", "--warmup-epochs", "1", "--device", "cpu", "--workers", "0",
            "--output", str(out), *extra]


@pytest.fixture(scope="module")
def squeeze_ddp(data) -> Path:
    """An uninterrupted 2-process run: per-process batch 4, global batch 8."""
    out = data / "ddp.pth"
    launch(["-m", "squeeze", *squeeze_args(data, out, 4)], nproc=2, timeout=120).check()
    return out


def test_squeeze_ddp_equals_one_process_same_global_batch(data, squeeze_ddp, tmp_path):
    from squeeze import train as squeeze_train

    one = tmp_path / "one.pth"
    squeeze_train.main(squeeze_args(data, one, 8))
    # The same global batch of 8 in both runs (each process takes every 2nd index of the same
    # epoch permutation, each image's augmentation is seeded by (seed, epoch, index)) and the
    # DDP gradient is the mean over processes of per-process means = the global mean. The model
    # has no BatchNorm (per-process batch statistics would differ from global ones unless
    # --sync-bn, which needs CUDA), so only float summation order differs.
    a, b = read_checkpoint(one)["model"], read_checkpoint(squeeze_ddp)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    rep = json.loads(squeeze_ddp.with_suffix(".json").read_text())
    one_rep = json.loads(one.with_suffix(".json").read_text())
    assert rep["world_size"] == 2 and rep["global_batch_size"] == 8 and one_rep["global_batch_size"] == 8
    assert [h["train_loss"] for h in rep["history"]] == pytest.approx(
        [h["train_loss"] for h in one_rep["history"]], rel=1e-4)
    assert abs(rep["val_top1"] - one_rep["val_top1"]) <= 100 / 12 + 1e-9  # at most one of 12 val images


def test_squeeze_ssl_ddp_equals_one_process_same_global_batch(data, tmp_path):
    from squeeze import ssl

    def args(out, batch):  # conv3_in and MoCo v2's head (no BatchNorm): DDP is exact up to float order
        return ["--data-path", str(data / "data"), "--arch-name", "conv3_in", "--input-size", "16", "--epochs", "2",
                "--batch-size", str(batch), "--queue-size", "16", "--proj-hidden-dim", "32", "--proj-dim", "16",
                "--moco-momentum", "0.9", "--knn-every", "1", "--device", "cpu", "--output", str(out)]

    ssl.main(args(tmp_path / "one.pth", 8))
    launch(["-m", "squeeze.ssl", *args(tmp_path / "two.pth", 4)], nproc=2, timeout=120).check()
    a, b = read_checkpoint(tmp_path / "one.pth")["model"], read_checkpoint(tmp_path / "two.pth")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    one, two = (json.loads((tmp_path / f"{t}.json").read_text()) for t in ("one", "two"))
    assert two["world_size"] == 2 and two["global_batch_size"] == one["global_batch_size"] == 8
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], rel=1e-4)  # the queue holds every process' keys
    assert [k["knn_top1"] for k in two["knn_curve"]] == pytest.approx([k["knn_top1"] for k in one["knn_curve"]])
    assert not (tmp_path / "two.pth.state").exists()


KILL_AFTER_FIRST_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    import squeeze.train as t
    from common.cli.errors import run_cli
    save = t.save_checkpoint
    def save_then_die(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if str(path).endswith("last.pth"):  # the training checkpoint in <output>.state/
            os.kill(os.getpid(), signal.SIGKILL)  # rank 0 (the only writer) dies after epoch 1
    t.save_checkpoint = save_then_die
    sys.exit(run_cli(t.main, sys.argv[1:]))
""")


def test_squeeze_killed_ddp_run_resumes_exactly(data, squeeze_ddp, tmp_path):
    from common.run.state import state_dir

    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_FIRST_CHECKPOINT)
    out = tmp_path / "part.pth"
    killed = launch([str(script), *squeeze_args(data, out, 4)], nproc=2, timeout=120)
    assert killed.returncodes[0] == -9 and killed.returncodes[1] != 0  # rank 1 loses its peer
    assert not out.exists() and read_checkpoint(state_dir(out) / "last.pth")["epoch"] == 0
    launch(["-m", "squeeze", *squeeze_args(data, out, 4, "--resume")], nproc=2, timeout=120).check()
    a, b = read_checkpoint(squeeze_ddp)["model"], read_checkpoint(out)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------ relabel_eval

def relabel_args(data: Path, out: Path, *extra: str) -> list[str]:
    # batch 7 over 24 images: batches of 7, 7, 7, 3 -> process shares 4/3 and 2/1 (weighted losses);
    # the conv3_in student has no batch statistics and the teacher runs in eval mode, so DDP is exact
    return ["--syn-data-path", str(data / "data" / "train"), "--val-dir", str(data / "data" / "val"),
            "--teacher-path", str(data / "teacher.pth"), "--stud-name", "conv3_in", "--re-epochs", "2",
            "--re-batch-size", "7", "--eval-every", "1", "--use-rand-augment", "--workers", "0", "--device", "cpu",
            "--output", str(out), *extra]


def test_relabel_eval_ddp_writes_one_result_equal_to_one_process(data, tmp_path):
    from relabel_eval.train import main as relabel_main

    one = relabel_main(relabel_args(data, tmp_path / "one" / "res.json", "--seed", "5"))
    res = launch(["-m", "relabel_eval", *relabel_args(data, tmp_path / "ddp" / "res.json", "--seed", "5")],
                 nproc=2, timeout=120).check()
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["res.json", "results.csv"]  # no partial left
    assert len((tmp_path / "ddp" / "results.csv").read_text().strip().splitlines()) == 2  # header + one row
    ddp = json.loads((tmp_path / "ddp" / "res.json").read_text())
    assert ddp["protocol"]["processes"] == 2 and ddp["protocol"]["seed_parallel"] == "ddp"
    a, b = one["students"]["conv3_in"]["runs"][0], ddp["students"]["conv3_in"]["runs"][0]
    assert [h["loss"] for h in b["history"]] == pytest.approx([h["loss"] for h in a["history"]], rel=1e-4)
    assert [h["val_top1"] for h in b["history"]] == [h["val_top1"] for h in a["history"]]
    assert "FINAL top-1" in res.stdout[0] and "FINAL top-1" not in res.stdout[1]  # printed once


def test_relabel_eval_one_seed_per_rank(data, tmp_path):
    from relabel_eval.train import main as relabel_main

    one = relabel_main(relabel_args(data, tmp_path / "one" / "res.json", "--seeds", "1", "2"))
    launch(["-m", "relabel_eval", *relabel_args(data, tmp_path / "ranks" / "res.json", "--seeds", "1", "2",
                                                "--seed-parallel", "ranks")], nproc=2, timeout=120).check()
    ranks = json.loads((tmp_path / "ranks" / "res.json").read_text())
    assert ranks["protocol"]["seed_parallel"] == "ranks" and not (tmp_path / "ranks" / "res.json.state").exists()
    for a, b in zip(one["students"]["conv3_in"]["runs"], ranks["students"]["conv3_in"]["runs"]):
        assert a["seed"] == b["seed"]  # each seed trained alone by one process: the one-process run
        assert [h["loss"] for h in b["history"]] == pytest.approx([h["loss"] for h in a["history"]], rel=1e-4)


# ------------------------------------------------------------------------------------------ rank_select

def test_rank_select_sharded_scoring_equals_one_process(data, tmp_path):
    import numpy as np
    import pandas as pd

    from rank_select.rank import main as rank_main

    def args(tag):
        return ["--data-path", str(data / "data" / "train"), "--ranker-path", str(data / "teacher.pth"),
                "--ranking-file", str(tmp_path / tag / "ranking.csv"), "--output-path", str(tmp_path / tag / "init"),
                "--ipc", "3", "--batch-size", "5", "--workers", "0", "--device", "cpu"]

    rank_main(args("one"))
    launch(["-m", "rank_select", *args("two")], nproc=2, timeout=120).check()
    one, two = (pd.read_csv(tmp_path / t / "ranking.csv") for t in ("one", "two"))
    assert list(two.columns) == list(one.columns) and len(two) == len(one) == 24
    # same rows; scores equal up to float rounding (batches of other sizes), so the order may
    # differ only between near-ties
    merged = one.merge(two, on=["path", "class", "label", "pred"], suffixes=("", "_2"))
    assert len(merged) == 24
    for k in ("score", "loss", "margin", "el2n"):
        assert np.allclose(merged[k], merged[f"{k}_2"], rtol=1e-5, atol=1e-6), k
    gaps = one.groupby("class")["score"].apply(lambda s: s.diff().abs().min())
    if (gaps > 1e-5).all():  # no near-ties: identical order and identical selection
        assert one["path"].tolist() == two["path"].tolist()
        for cls in CLASSES:
            assert sorted(p.name for p in (tmp_path / "one" / "init" / cls).iterdir()) == \
                sorted(p.name for p in (tmp_path / "two" / "init" / cls).iterdir())
    assert not list((tmp_path / "two").glob("*.partial*")) and not list((tmp_path / "two").glob("*.state"))


# ------------------------------------------------------------------------------------------ squeeze.linear_probe

@pytest.fixture(scope="module")
def ssl_backbone(data) -> Path:
    """A conv3 SSL backbone (BatchNorm with non-trivial running statistics, used in eval mode)."""
    from models import build_model, make_meta, save_checkpoint

    torch.manual_seed(0)
    model = build_model("conv3", len(CLASSES), 16)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = data / "ssl_backbone.pth"
    save_checkpoint(path, model, make_meta("conv3", len(CLASSES), 16, classes=CLASSES, teacher_kind="ssl-backbone"))
    return path


def probe_args(data: Path, backbone: Path, out: Path, aug: str, *extra: str) -> list[str]:
    # 24 train images in global batches of 7 (7, 7, 7, 3): shares of 4 and 3 images, then 2 and 1;
    # feature extraction and validation in batches of 7 as well: rank 0 takes batches 0 and 2, rank 1 1 and 3
    return ["--backbone", str(backbone), "--data-path", str(data / "data"), "--epochs", "3", "--batch-size", "7",
            "--lr", "0.5", "--train-aug", aug, "--device", "cpu", "--workers", "0", "--output", str(out), *extra]


def one_thread(fn, *args):
    """``fn(*args)`` with one intra-op thread, as each torchrun process here has (OMP_NUM_THREADS=1): CPU
    kernels may split a reduction differently with more threads (the last bit of a feature can differ)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def _probe_report(path: Path) -> dict:
    rep = json.loads(path.with_suffix(".json").read_text())
    hist = [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in rep["history"]]
    return {"history": hist, **{k: rep[k] for k in ("val_top1", "val_top5", "classes", "arch", "input_size")}}


@pytest.mark.parametrize("aug", ["none", "crop"])
def test_linear_probe_two_processes_equal_one(data, ssl_backbone, tmp_path, aug):
    from squeeze import linear_probe

    one, two = tmp_path / "one.pth", tmp_path / "two.pth"
    one_thread(linear_probe.main, probe_args(data, ssl_backbone, one, aug))
    res = launch(["-m", "squeeze.linear_probe", *probe_args(data, ssl_backbone, two, aug)], nproc=2,
                 timeout=120).check()
    assert "2 processes (gloo)" in res.stderr[0]
    a, b = read_checkpoint(one), read_checkpoint(two)
    assert not torch.equal(a["model"]["classifier.weight"], torch.zeros_like(a["model"]["classifier.weight"]))
    for k in a["model"]:
        if aug == "none" or not k.startswith("classifier."):
            # bit for bit: each process extracts whole batches one process also forms, and every process
            # takes one process's SGD step on the gathered features in their order (no gradient is
            # averaged, so no float summation order changes); the backbone is frozen
            assert torch.equal(a["model"][k], b["model"][k]), k
        else:
            # augmented: the same images, augmentations and steps, but each process runs the backbone on
            # its share of a step's batch (4 + 3 and 2 + 1 images here instead of 7 and 3), and oneDNN's
            # conv kernels may round the last bit of a feature differently for another batch size (a
            # batch of 1 takes another path: 6e-8 on features of size 0.1). Three steps of SGD on the
            # 3 x 512 weights (about 0.1) carry that to a few 1e-8: 1e-6 absolute is 30 x that margin
            # and 1e4 x below the smallest change of one step (lr 0.5 x gradients of about 1e-2).
            torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=k)
    assert a["meta"]["val_top1"] == b["meta"]["val_top1"] and a["meta"]["val_top5"] == b["meta"]["val_top5"]
    ra, rb = _probe_report(one), _probe_report(two)
    if aug == "none":
        assert rb == ra
    else:
        assert [h.pop("train_loss") for h in rb["history"]] == pytest.approx(
            [h.pop("train_loss") for h in ra["history"]], rel=1e-6, abs=0)
        assert rb == ra  # everything else (accuracy, lr, val) exactly
    assert not (tmp_path / "two.pth.state").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.pth", "two.json", "two.pth"]


def test_linear_probe_killed_two_process_run_resumes_exactly(data, ssl_backbone, tmp_path):
    from squeeze import linear_probe

    whole, part = tmp_path / "whole.pth", tmp_path / "part.pth"
    one_thread(linear_probe.main, probe_args(data, ssl_backbone, whole, "crop"))
    launch(["-m", "squeeze.linear_probe", *probe_args(data, ssl_backbone, part, "crop", "--max-epochs-this-run",
                                                      "1")], nproc=2, timeout=120).check()
    assert not part.exists() and (tmp_path / "part.pth.state" / "probe.pt").is_file()
    res = launch(["-m", "squeeze.linear_probe", *probe_args(data, ssl_backbone, part, "crop")], nproc=2,
                 timeout=120).check()
    assert "resumed the linear probe from" in res.stderr[0]
    # the resumed 2-process run continues where the killed one stopped: the uninterrupted 2-process run
    # equals one process (test above), so the same tolerance for the batch-size rounding of the features
    torch.testing.assert_close(read_checkpoint(part)["model"]["classifier.weight"],
                               read_checkpoint(whole)["model"]["classifier.weight"], rtol=0, atol=1e-6)
    ra, rb = _probe_report(whole), _probe_report(part)
    assert [h.pop("train_loss") for h in rb["history"]] == pytest.approx(
        [h.pop("train_loss") for h in ra["history"]], rel=1e-6, abs=0)
    assert rb == ra and len(rb["history"]) == 3
    assert not (tmp_path / "part.pth.state").exists()


# ------------------------------------------------------------------------------------------ rank_select.patches

def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_patches_classes_sharded_over_two_processes_equal_one(data, tmp_path):
    from rank_select import patches

    def args(out):  # 3 classes over 2 processes: rank 0 makes classes 0 and 2, rank 1 class 1
        return [str(a) for a in ["--data-path", data / "data" / "train", "--observer-path", data / "teacher.pth",
                                 "--output-path", out, "--ipc", 2, "--factor", 2, "--mipc", 8, "--num-crop", 3,
                                 "--batch-size", 9, "--workers", 0, "--device", "cpu", "--seed", 3]]

    one_thread(patches.main, args(tmp_path / "one"))
    res = launch(["-m", "rank_select.patches", *args(tmp_path / "two")], nproc=2, timeout=120).check()
    assert "3 classes dealt to 2 processes (gloo)" in res.stderr[0]
    assert "rank 0 of 2: 2 of the 3 classes" in res.stderr[0] and "rank 1 of 2: 1 of the 3 classes" in res.stderr[1]
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert len(one) == 3 * 2 + 1  # 2 images per class and manifest.json
    assert {k: v for k, v in two.items() if k != "manifest.json"} == \
        {k: v for k, v in one.items() if k != "manifest.json"}  # every image byte for byte
    m1, m2 = (json.loads(t["manifest.json"]) for t in (one, two))
    # every per-class record (sources, crop boxes, losses to the last bit) and the crop count
    assert m2["classes"] == m1["classes"] and len(m2["classes"]) == 3
    assert m2["timings"]["crops_scored"] == m1["timings"]["crops_scored"] == 3 * 8 * 3
    assert {k: v for k, v in m2["args"].items() if k != "output_path"} == \
        {k: v for k, v in m1["args"].items() if k != "output_path"}
    assert not (tmp_path / "two.state").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]

    # a one-process run interrupted after its first class, finished by two processes: the same output
    real = patches.write_class

    def interrupt_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    calls: list[int] = []
    patches.write_class = interrupt_second
    try:
        with pytest.raises(KeyboardInterrupt):
            one_thread(patches.main, args(tmp_path / "resumed"))
    finally:
        patches.write_class = real
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.state").is_dir()
    res = launch(["-m", "rank_select.patches", *args(tmp_path / "resumed")], nproc=2, timeout=120).check()
    assert "resuming: 1 of 3 classes already done" in res.stderr[0]
    assert "rank 0 of 2: 1 of the 2 classes" in res.stderr[0] and "rank 1 of 2: 1 of the 2 classes" in res.stderr[1]
    resumed = _tree(tmp_path / "resumed")
    assert {k: v for k, v in resumed.items() if k != "manifest.json"} == \
        {k: v for k, v in one.items() if k != "manifest.json"}
    assert json.loads(resumed["manifest.json"])["classes"] == m1["classes"]
    assert not (tmp_path / "resumed.state").exists()


# ------------------------------------------------------------------------------------------ scripts

def test_scripts_launch_every_stage_under_torchrun_and_pass_node_flags():
    from tests.test_scripts import ROOT, dry_run, parser_for

    script = ROOT / "scripts" / "tinyimagenet" / "conv4_ipc10.sh"
    cmds = dry_run(script, GPU="0,1,2,3")
    by_module = {c[c.index("-m") + 1]: c for c in cmds if "-m" in c}
    for module in ("squeeze", "rank_select", "recover", "relabel_eval"):
        assert by_module[module][:2] == ["torchrun", "--nproc_per_node=4"], module
        parser, args = parser_for(by_module[module])
        parser.parse_args(args)
    sq = by_module["squeeze"]  # the recipe's global batch 256 over 4 processes: 64 each (the last flag wins)
    assert [sq[i + 1] for i, a in enumerate(sq) if a == "--batch-size"][-1] == "64"
    multi = dry_run(script, GPU="0,1", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29511")
    rec = [c for c in multi if "recover" in c][0]
    assert rec[:7] == ["torchrun", "--nproc_per_node=2", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                       "--master_port=29511", "-m"]
    sq = {c[c.index("-m") + 1]: c for c in multi if "-m" in c}["squeeze"]  # 256 over 2 nodes x 2 GPUs
    assert [sq[i + 1] for i, a in enumerate(sq) if a == "--batch-size"][-1] == "64"
