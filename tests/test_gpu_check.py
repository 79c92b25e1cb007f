"""bench/gpu_check.sh: every command it prints (CUDA and CPU configurations) parses with the stage's
own parser; its helper records a stage's cost and judges fp32 vs --amp recovery."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.test_scripts import dry_run, parser_for

SCRIPT = ROOT / "bench" / "gpu_check.sh"


def helper():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_printed_command_parses(device, tmp_path):
    cmds = dry_run(SCRIPT, DEVICE=device, OUT=str(tmp_path / "gc"))
    modules = [c[2] if c[1] == "-m" else c[1] for c in cmds]
    assert {"squeeze", "rank_select", "rank_select.patches", "recover", "relabel_eval", "relabel_eval.relabel",
            "bench/gpu_check.py"} <= set(modules)
    for cmd in cmds:
        parser, args = parser_for(cmd)
        parser.parse_args(args)
    rec = [c for c in cmds if c[2:3] == ["recover"]]
    assert len(rec) == 2 and "--amp" in rec[1] and "--amp" not in rec[0]
    assert rec[0][rec[0].index("--exp-name") + 1] == "delt_fp32"
    evals = [c for c in cmds if c[2:3] == ["relabel_eval"]]
    modes = [c[c.index("--label-mode") + 1] if "--label-mode" in c else "soft" for c in evals]
    assert modes == ["soft", "hard", "fkd"] and all("--amp" in c for c in evals)
    squeeze = [c for c in cmds if c[2:3] == ["squeeze"]]
    assert all("--amp" in c for c in squeeze) and any("--compile" in c for c in squeeze) == (device == "cuda")
    assert ("--compile" in evals[0]) == (device == "cuda")
    assert all(c[c.index("--device") + 1] == device for c in cmds if "--device" in c)


def fake_recover(root, shift: float, losses):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            x = np.full((8, 8, 3), 100 + 10 * i, np.float32) + shift
            Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(root / c / f"{i}.png")
    per_class = {c: {"loss_first_last": [losses]} for c in ("a", "b")}
    (root / "manifest.json").write_text(json.dumps({"settings": {"amp": "bf16"}, "per_class": per_class}))
    return root


def test_compare_recover_tolerances(tmp_path):
    gc = helper()
    a = fake_recover(tmp_path / "fp32", 0, [2.0, 1.0])
    close = fake_recover(tmp_path / "close", 5, [2.02, 1.01])   # 5/255 = 0.0196 of the range
    far = fake_recover(tmp_path / "far", 30, [2.0, 1.0])        # 30/255 = 0.118
    loss = fake_recover(tmp_path / "loss", 0, [2.0, 1.2])       # last loss 20% off
    res = gc.compare_recover(a, close, 0.05, 0.05)
    assert res["ok"] and res["mean_abs_pixel_diff"] == pytest.approx(5 / 255, abs=1e-4)
    assert res["first_loss_rel_diff"] == pytest.approx(0.01) and res["last_loss_rel_diff"] == pytest.approx(0.01)
    assert not gc.compare_recover(a, far, 0.05, 0.05)["ok"]
    assert not gc.compare_recover(a, loss, 0.05, 0.05)["ok"]
    assert gc.main(["compare-recover", str(a), str(far)]) == 1


def test_exec_records_rc_rate_and_memory(tmp_path, monkeypatch, capsys):
    gc = helper()
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    record = tmp_path / "stages.jsonl"
    rc = gc.main(["exec", "--name", "prep", "--record", str(record), "--units", "40", "--", "-m", "common.prepare",
                  "shapes", "--out", str(tmp_path / "d"), "--train-per-class", "3", "--val-per-class", "1"])
    assert rc == 0 and len(list((tmp_path / "d" / "train").rglob("*.png"))) == 30
    bad = gc.main(["exec", "--name", "again", "--record", str(record), "--", "-m", "common.prepare", "shapes",
                   "--out", str(tmp_path / "d"), "--train-per-class", "3"])
    assert bad == 2  # the stage's own exit code: the output exists
    recs = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["name"], r["rc"]) for r in recs] == [("prep", 0), ("again", 2)]
    assert recs[0]["units_per_s"] == pytest.approx(40 / recs[0]["wall_s"], rel=0.01) and recs[0]["peak_mem_mib"] > 0
    capsys.readouterr()
    assert gc.main(["summary", str(record)]) == 1
    table = capsys.readouterr().out
    assert "prep" in table and "again" in table and "img/s" in table
