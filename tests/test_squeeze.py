"""squeeze: teacher training, exact resume, evaluation and the one-line errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from common.cli.errors import run_cli
from common.run.state import state_dir
from common.train.optim import param_groups
from models import build_model, load_model, make_meta, read_checkpoint, save_checkpoint
from squeeze import evaluate as squeeze_eval
from squeeze import train as squeeze_train
from tests.conftest import make_tree


def _args(data, out, *extra):
    return ["--data-path", str(data), "--arch-name", "conv3", "--input-size", "16", "--epochs", "3",
            "--batch-size", "8", "--lr", "0.05", "--warmup-epochs", "1", "--device", "cpu",
            "--output", str(out), *extra]


def test_lr_schedule_values():
    # 10 steps, 2 of warm-up from 0.1x: 0.1, 0.55, then cosine over the remaining 8 steps
    vals = [squeeze_train.lr_at(s, 10, 2, 0.1) for s in range(11)]
    assert vals[0] == pytest.approx(0.1) and vals[1] == pytest.approx(0.55)
    assert vals[2] == pytest.approx(1.0)
    assert vals[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert vals[10] == pytest.approx(0.0, abs=1e-12)


def test_param_groups_no_decay_on_bn_and_bias():
    m = build_model("conv3", 10, 32)
    decay, no_decay = param_groups(m, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_train_writes_teacher_and_resume_is_exact(tiny_data, tmp_path):
    full = tmp_path / "full.pth"
    squeeze_train.main(_args(tiny_data, full))
    ck = read_checkpoint(full)
    meta = ck["meta"]
    assert meta["arch"] == "conv3" and meta["input_size"] == 16 and meta["num_classes"] == 3
    assert meta["classes"] == ["00_circle", "01_square", "02_triangle"]
    assert 0.0 <= meta["val_top1"] <= 100.0
    report = json.loads(full.with_suffix(".json").read_text())
    assert report["val_top1"] == meta["val_top1"] and len(report["history"]) == 3
    assert report["inputs"]["teacher"]["sha256"]

    # stop after one epoch (as if killed), then resume: identical final weights
    part = tmp_path / "part.pth"
    squeeze_train.main(_args(tiny_data, part, "--max-epochs-this-run", "1"))
    last = state_dir(part) / "last.pth"  # resume state beside the output
    assert not part.exists() and last.exists()
    assert read_checkpoint(last)["epoch"] == 0
    squeeze_train.main(_args(tiny_data, part, "--resume"))
    assert not state_dir(part).exists()  # removed once the teacher is written
    a, b = read_checkpoint(full)["model"], read_checkpoint(part)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_checkpoint(part)["meta"]["val_top1"] == meta["val_top1"]

    res = squeeze_eval.main(["--arch-path", str(full), "--data-path", str(tiny_data), "--device", "cpu",
                             "--output", str(tmp_path / "ev.json")])
    assert res["top1"] == pytest.approx(meta["val_top1"])


def test_one_line_errors(tiny_data, tmp_path, capsys):
    def err(argv, main=squeeze_train.main):
        assert run_cli(main, argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in "\n".join(lines)
        return lines[-1]

    out = tmp_path / "t.pth"
    assert "does not exist" in err(_args(tmp_path / "missing", out))
    assert "unknown architecture" in err(_args(tiny_data, out) + ["--arch-name", "resnet9000"])
    # empty class folder
    empty = tmp_path / "empty_cls"
    make_tree(empty / "train", 2, 4)
    make_tree(empty / "val", 2, 2, split=1)
    (empty / "train" / "zz_empty").mkdir()
    (empty / "val" / "zz_empty").mkdir()
    assert "class folder has no images" in err(_args(empty, out))
    # val classes differ from train classes
    odd = tmp_path / "odd"
    make_tree(odd / "train", 3, 4)
    make_tree(odd / "val", 2, 2, split=1)
    assert "classes" in err(_args(odd, out))
    # a corrupt JPEG
    bad = tmp_path / "bad"
    make_tree(bad / "train", 2, 8)
    make_tree(bad / "val", 2, 2, split=1)
    (bad / "train" / "00_circle" / "img_000.png").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    assert "img_000.png: corrupt" in err(_args(bad, out, "--cache", "no"))
    # a 100-class checkpoint on 10-class data
    ten = tmp_path / "ten"
    make_tree(ten / "val", 10, 1, split=1)
    m = build_model("conv3", 100, 16)
    save_checkpoint(tmp_path / "c100.pth", m, make_meta("conv3", 100, 16))
    line = err(["--arch-path", str(tmp_path / "c100.pth"), "--data-path", str(ten), "--device", "cpu"],
               squeeze_eval.main)
    assert "100-class classifier but the data has 10 classes" in line


def test_resume_checkpoint_for_other_classes_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "t.pth"
    m = build_model("conv3", 3, 16)
    other = tmp_path / "other.last.pth"
    save_checkpoint(other, m, make_meta("conv3", 3, 16, classes=["x", "y", "z"]), epoch=0)
    assert run_cli(squeeze_train.main, _args(tiny_data, out, "--resume", str(other))) == 2
    assert "another arch or class list" in capsys.readouterr().err


def test_evaluate_matches_manual_accuracy(tiny_data, tmp_path):
    from common.data.imagefolder import ImageFolder
    from common.data.transforms import val_transform

    classes = ["00_circle", "01_square", "02_triangle"]
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "r.pth", build_model("conv3", 3, 32), make_meta("conv3", 3, 32, classes=classes))
    model, meta = load_model(tmp_path / "r.pth", classes=classes)
    ds = ImageFolder(tiny_data / "val", val_transform(32))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    with torch.no_grad():
        manual = (model(x).argmax(1) == y).float().mean().item() * 100
    res = squeeze_eval.main(["--arch-path", str(tmp_path / "r.pth"), "--data-path", str(tiny_data / "val"),
                             "--device", "cpu", "--batch-size", "5"])
    assert res["top1"] == pytest.approx(manual)


def test_skip_corrupt_lists_and_trains(tmp_path, capsys):
    data = tmp_path / "d"
    make_tree(data / "train", 2, 8)
    make_tree(data / "val", 2, 2, split=1)
    (data / "train" / "00_circle" / "img_000.png").write_bytes(b"not an image")
    out = tmp_path / "t.pth"
    assert run_cli(squeeze_train.main, _args(data, out, "--skip-corrupt", "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert "skipped 1 corrupt image(s)" in err and "img_000.png" in err
    assert read_checkpoint(out)["meta"]["num_classes"] == 2
