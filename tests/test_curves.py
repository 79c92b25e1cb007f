"""Training curves: TensorBoard events equal what was logged; a resumed run's curve equals an
uninterrupted one; W&B is used when installed and reported in one line when not."""
import sys
import types

import pytest

from common.train import curves
from common.train.curves import Curves, read_scalars


def test_tensorboard_scalars_equal_what_was_logged(tmp_path):
    with Curves(tmp_path, "run") as c:
        for step in range(3):
            c.log(step, {"train/loss": 1.0 / (step + 1), "val/top1": 10.0 * step, "note": "x", "nan": float("nan")})
    s = read_scalars(tmp_path / "run")
    assert sorted(s) == ["train/loss", "val/top1"]
    assert s["train/loss"] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [v for _, v in s["val/top1"]] == [0.0, 10.0, 20.0]


def test_resumed_curve_equals_uninterrupted(tmp_path):
    with Curves(tmp_path, "full") as c:
        for step in range(4):
            c.log(step, {"loss": float(step)})
    # killed after logging steps 0..2, resumed from the checkpoint of step 1 (step 2 is redone)
    with Curves(tmp_path, "killed") as c:
        for step in range(3):
            c.log(step, {"loss": float(step) + (100.0 if step == 2 else 0.0)})
    with Curves(tmp_path, "killed", purge_step=2) as c:
        for step in range(2, 4):
            c.log(step, {"loss": float(step)})
    assert read_scalars(tmp_path / "killed") == read_scalars(tmp_path / "full")


def test_other_ranks_write_nothing(tmp_path):
    with Curves(tmp_path, "run", main=False) as c:
        c.log(0, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_wandb_missing_is_one_warning_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(curves, "wandb_available", lambda: False)
    with Curves(None, "run", wandb_project="proj") as c:
        c.log(0, {"loss": 1.0})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --wandb-project proj") and "not installed" in err[0]


def test_wandb_offline_without_key(tmp_path, monkeypatch):
    calls = {}

    class Run:
        def log(self, data, step):
            calls.setdefault("log", []).append((step, data))

        def finish(self):
            calls["finished"] = True

    fake = types.SimpleNamespace(init=lambda **kw: calls.setdefault("init", kw) and Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(curves, "wandb_available", lambda: True)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with Curves(tmp_path, "run", wandb_project="proj", config={"lr": 0.1}) as c:
        c.log(5, {"loss": 2.0})
    assert calls["init"]["mode"] == "offline" and calls["init"]["project"] == "proj"
    assert calls["init"]["config"] == {"lr": 0.1} and calls["init"]["dir"] == str(tmp_path)
    assert calls["log"] == [(5, {"loss": 2.0})] and calls["finished"]
