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


def test_series_written_again_replaces_the_first(tmp_path):
    from common.train.curves import write_series

    write_series(tmp_path, "batch_0000", "loss", [9.0, 9.0, 9.0, 9.0])  # a killed run's batch
    write_series(tmp_path, "batch_0000", "loss", [3.0, 2.0, 1.0])       # the redone batch
    assert read_scalars(tmp_path / "batch_0000") == {"loss": [(0, 3.0), (1, 2.0), (2, 1.0)]}


def test_recover_writes_each_batch_loss_curve(tmp_path):
    """recover --log-dir: one TensorBoard run per batch whose curve ends on the manifest's last loss,
    and the images equal a run without --log-dir (curves are not part of the result)."""
    import json

    import recover.synthesize as synth
    from tests.conftest import make_teacher, make_tree

    make_tree(tmp_path / "train", 2, 3)
    teacher = make_teacher(tmp_path / "t.pth", ["00_circle", "01_square"], data_root=tmp_path / "train")
    base = ["--init-data-path", str(tmp_path / "train"), "--arch-path", str(teacher), "--ipc", "2",
            "--iteration", "3", "--batch-size", "2", "--jitter", "2", "--device", "cpu"]
    synth.main(base + ["--syn-data-path", str(tmp_path / "a"), "--log-dir", str(tmp_path / "logs")])
    synth.main(base + ["--syn-data-path", str(tmp_path / "b")])
    runs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert runs == ["batch_00_circle_0000", "batch_01_square_0000"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    for run, cls in zip(runs, ("00_circle", "01_square")):
        curve = read_scalars(tmp_path / "logs" / run)["recover/loss"]
        assert [s for s, _ in curve] == [0, 1, 2]
        first, last = manifest["per_class"][cls]["loss_first_last"][0]
        assert curve[0][1] == pytest.approx(first, rel=1e-6) and curve[-1][1] == pytest.approx(last, rel=1e-6)
    for cls in ("00_circle", "01_square"):
        a = sorted((tmp_path / "a" / cls).iterdir())
        b = sorted((tmp_path / "b" / cls).iterdir())
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_squeeze_curves_of_a_resumed_run_equal_an_uninterrupted_one(tiny_data, tmp_path):
    """squeeze --log-dir: train/val curves per epoch equal the report's history; a run stopped after
    one epoch and continued by the same command leaves the same curves as one run straight through."""
    import json

    from squeeze import train as squeeze_train

    def args(out, logs, *extra):
        return ["--data-path", str(tiny_data), "--output", str(out), "--arch-name", "conv3", "--input-size", "16",
                "--epochs", "2",
                "--batch-size", "8", "--lr", "0.01", "--device", "cpu", "--workers", "0",
                "--log-dir", str(logs), *extra]

    squeeze_train.main(args(tmp_path / "full.pth", tmp_path / "a"))
    squeeze_train.main(args(tmp_path / "part.pth", tmp_path / "b", "--max-epochs-this-run", "1"))
    squeeze_train.main(args(tmp_path / "part.pth", tmp_path / "b"))
    def results(run):  # timings differ between any two runs; the training curves may not
        return {k: v for k, v in read_scalars(tmp_path / run).items() if k.split("/")[0] in ("train", "val", "lr")}

    full = results("a/squeeze_full")
    assert sorted(full) == ["lr", "train/loss", "train/top1", "val/loss", "val/top1", "val/top5"]
    assert full == results("b/squeeze_part")
    report = json.loads((tmp_path / "full.pth").with_suffix(".json").read_text())
    assert [s for s, _ in full["val/top1"]] == [1, 2]
    assert [v for _, v in full["val/top1"]] == pytest.approx([h["val_top1"] for h in report["history"]])
    assert [v for _, v in full["train/loss"]] == pytest.approx([h["train_loss"] for h in report["history"]])
