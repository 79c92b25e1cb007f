"""relabel_eval end to end on tiny data: FKD replay equality, resume, seeds, results files, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.cli.errors import run_cli
from common.train.curves import Curves, read_scalars
from relabel_eval import baselines, diversity
from relabel_eval import relabel as relabel_mod
from relabel_eval import train as train_mod
from relabel_eval.context import BatchMaker, resolve_common, teacher_logits
from relabel_eval.plan import make_epoch_plan
from relabel_eval.relabel import SoftLabelStore
from tests.conftest import make_teacher, make_tree


def _eval_args(data: Path, teacher: Path, tmp: Path, *extra: str) -> list[str]:
    return ["--syn-data-path", str(data / "train"), "--val-dir", str(data / "val"), "--teacher-path", str(teacher),
            "--workers", "0", "--device", "cpu", "--output", str(tmp / "res.json"), *extra]


@pytest.mark.parametrize("topk", [0, 2])
def test_fkd_replay_gives_the_online_batches(tiny_data, tiny_teacher, tmp_path, topk):
    common_flags = ["--syn-data-path", str(tiny_data / "train"), "--teacher-path", str(tiny_teacher),
                    "--workers", "0", "--device", "cpu", "--seed", "5", "--re-batch-size", "10",
                    "--use-rand-augment", "--rand-augment-config", "rand-m9-n2-mstd1.0", "--random-erasing-p", "0.5",
                    "--min-scale-crops", "0.25"]
    out = tmp_path / "soft"
    relabel_mod.main([*common_flags, "--epochs", "2", "--output-dir", str(out), "--topk", str(topk)])
    store = SoftLabelStore(out)
    assert store.manifest["storage_bytes"] == sum(p.stat().st_size for p in out.glob("epoch_*.pt"))

    args = train_mod.get_args_parser().parse_args([*common_flags, "--val-dir", str(tiny_data / "val")])
    common = resolve_common(args, need_teacher=True)
    store.check(common.data)
    online, replay = BatchMaker(common), BatchMaker(common)
    for epoch in range(2):
        plan = make_epoch_plan(5, epoch, common.data.sizes, 10, common.aug)
        stored_plan, logits = store.load(epoch)
        batches = list(replay.batches(stored_plan))
        assert len(batches) == 3
        for (_, x_on, y_on, _), (b2, x_re, y_re, _) in zip(online.batches(plan), batches):
            assert torch.equal(x_on, x_re) and torch.equal(y_on, y_re)  # identical inputs
            t_online = teacher_logits(common.teacher, x_on, common.device, False)
            t_stored = logits[stored_plan.batch_slice(b2)]
            if topk:  # the k largest logits, exactly as fp16; the rest -inf
                vals, idx = t_online.topk(topk, 1)
                assert torch.equal(t_stored.gather(1, idx), vals.half().float())
                assert torch.isinf(t_stored).sum() == t_stored.numel() - vals.numel()
            else:
                assert torch.equal(t_stored, t_online.half().float())  # identical targets (stored in fp16)


def test_seeds_results_json_and_csv(tiny_data, tiny_teacher, tmp_path):
    args = _eval_args(tiny_data, tiny_teacher, tmp_path, "--re-epochs", "2", "--eval-every", "1", "--seeds", "1", "2",
                      "--ipc", "4", "--log-dir", str(tmp_path / "logs"))
    res = train_mod.main(args)
    stud = res["students"]["conv3"]
    finals = [r["final_top1"] for r in stud["runs"]]
    assert [r["seed"] for r in stud["runs"]] == [1, 2]
    mean = sum(finals) / 2
    assert stud["summary"]["final_top1_mean"] == pytest.approx(mean)
    assert stud["summary"]["final_top1_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)
    for r in stud["runs"]:
        assert r["final_top1"] == r["history"][-1]["val_top1"]
        assert r["best_top1"] == max(h["val_top1"] for h in r["history"])
        assert r["images_per_s"] > 0 and len(r["history"]) == 2
    assert res["ipc"] == 4 and res["num_images"] == 12 and stud["batch_size"] == 10  # IPC 4: nearest row IPC 1 -> 10
    assert json.loads((tmp_path / "res.json").read_text())["students"]["conv3"]["summary"] == stud["summary"]
    assert len(list((tmp_path / "logs").glob("*.csv"))) == 2
    for r in stud["runs"]:  # TensorBoard events beside the CSV, one run each
        curve = read_scalars(tmp_path / "logs" / f"res_conv3_seed{r['seed']}")["val/top1"]
        assert curve == [(h["epoch"], pytest.approx(h["val_top1"])) for h in r["history"]]
    assert not (tmp_path / "res.json.state").exists() and not (tmp_path / "res.json.partial").exists()
    train_mod.main(args[:-2] + ["--label-mode", "hard", "--output", str(tmp_path / "hard.json")])
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table["label_mode"]) == ["soft", "hard"]
    assert table["final_top1_mean"][0] == pytest.approx(round(mean, 3))


def test_resumed_equals_uninterrupted(tiny_data, tiny_teacher, tmp_path):
    args = train_mod.get_args_parser().parse_args(_eval_args(tiny_data, tiny_teacher, tmp_path, "--ipc", "4"))
    common = resolve_common(args, need_teacher=True)
    val = train_mod.ValSet(tiny_data / "val", common.data.classes, 32, common.mean, common.std)
    maker = BatchMaker(common)
    cfg = train_mod.TrainConfig(epochs=3, batch_size=6, lr=1e-3, temperature=20.0, label_mode="soft", eval_every=1,
                                accum_steps=1, sgd=False, adamw_weight_decay=0.01, momentum=0.9, weight_decay=1e-4,
                                cos=True)
    def curves_in(folder):
        return lambda first: Curves(tmp_path / folder, "run", purge_step=first)

    full, full_model = train_mod.train_student(common, maker, val, "conv3", 3, cfg, curves_from=curves_in("a"))

    def crash(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_student(common, maker, val, "conv3", 3, cfg, state_path=state, on_epoch_end=crash,
                                curves_from=curves_in("b"))
    resumed, resumed_model = train_mod.train_student(common, maker, val, "conv3", 3, cfg, state_path=state,
                                                     curves_from=curves_in("b"))
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["val_top1"] for h in full["history"]] == [h["val_top1"] for h in resumed["history"]]
    assert [h["loss"] for h in full["history"]] == [h["loss"] for h in resumed["history"]]
    curves = read_scalars(tmp_path / "a" / "run")  # TensorBoard curves (--log-dir): resumed == uninterrupted
    assert [v for _, v in curves["val/top1"]] == pytest.approx([h["val_top1"] for h in full["history"]])
    assert {k: v for k, v in read_scalars(tmp_path / "b" / "run").items() if "time" not in k and "per_s" not in k} \
        == {k: v for k, v in curves.items() if "time" not in k and "per_s" not in k}


def test_fkd_training_and_cross_architecture(tiny_data, tiny_teacher, tmp_path):
    soft = tmp_path / "soft"
    relabel_mod.main(["--syn-data-path", str(tiny_data / "train"), "--teacher-path", str(tiny_teacher), "--ipc", "4",
                      "--workers", "0", "--device", "cpu", "--epochs", "2", "--output-dir", str(soft)])
    res = train_mod.main(["--syn-data-path", str(tiny_data / "train"), "--val-dir", str(tiny_data / "val"),
                          "--label-mode", "fkd", "--soft-label-dir", str(soft), "--re-epochs", "2",
                          "--stud-name", "conv3,conv4", "--workers", "0", "--device", "cpu",
                          "--output", str(tmp_path / "fkd.json")])
    assert list(res["students"]) == ["conv3", "conv4"] and res["ipc"] == 4
    assert res["students"]["conv4"]["batch_size"] == 10  # from the soft labels
    code = run_cli(train_mod.main, ["--syn-data-path", str(tiny_data / "train"), "--val-dir", str(tiny_data / "val"),
                                    "--label-mode", "fkd", "--soft-label-dir", str(soft), "--re-epochs", "3",
                                    "--output", str(tmp_path / "x.json")])
    assert code == 2


def _one_line_error(capsys, argv, main=train_mod.main) -> str:
    capsys.readouterr()
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_errors_are_one_line(tiny_data, tiny_teacher, tmp_path, capsys):
    base = _eval_args(tiny_data, tiny_teacher, tmp_path, "--re-epochs", "1")
    assert "only 8 image(s) in this class but --ipc 9" in _one_line_error(capsys, base + ["--ipc", "9"])
    other_val = make_tree(tmp_path / "val4", 4, 2, split=1)
    err = _one_line_error(capsys, base + ["--val-dir", str(other_val)])
    assert "4 classes" in err and "3" in err
    from common.data.imagefolder import find_classes
    t4 = make_teacher(tmp_path / "t4.pth", find_classes(other_val))
    assert "4-class classifier" in _one_line_error(capsys, base + ["--teacher-path", str(t4)])
    assert "--nclass 5" in _one_line_error(capsys, base + ["--nclass", "5"])
    empty = make_tree(tmp_path / "empty", 3, 2)
    for f in (empty / "01_square").iterdir():
        f.unlink()
    assert "no images" in _one_line_error(capsys, base + ["--syn-data-path", str(empty)])
    (tmp_path / "none").mkdir()
    assert "no class folders" in _one_line_error(capsys, base + ["--syn-data-path", str(tmp_path / "none")])
    assert "--teacher-path is required" in _one_line_error(capsys, [a for a in base if a != str(tiny_teacher)
                                                                    and a != "--teacher-path"])
    assert not (tmp_path / "res.json").exists()


def test_random_baseline_and_ddranking(tiny_data, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "rnd"
    res = baselines.main(["random", "--train-dir", str(tiny_data / "train"), "--ipc", "3", "--seed", "4",
                          "--output-dir", str(out), "--", "--val-dir", str(tiny_data / "val"),
                          "--teacher-path", str(tiny_teacher), "--re-epochs", "1", "--workers", "0",
                          "--output", str(tmp_path / "rnd.json")])
    assert res["ipc"] == 3 and res["num_images"] == 9
    picked = sorted(p.name for p in (out / "00_circle").iterdir())
    assert len(picked) == 3
    again = baselines.random_subset(tiny_data / "train", 3, 4, tmp_path / "rnd2")
    assert sorted(p.name for p in (again / "00_circle").iterdir()) == picked  # seeded
    other = baselines.random_subset(tiny_data / "train", 3, 5, tmp_path / "rnd3")
    assert any(sorted(p.name for p in (other / c.name).iterdir()) != sorted(p.name for p in c.iterdir())
               for c in out.iterdir() if c.is_dir())
    err = _one_line_error(capsys, ["random", "--train-dir", str(tiny_data / "train"), "--ipc", "9", "--output-dir",
                                   str(tmp_path / "rnd4")], baselines.main)
    assert "only 8 image(s)" in err and not (tmp_path / "rnd4").exists()

    def fake(name, acc):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"stage": "relabel_eval", "students": {
            "conv3": {"summary": {"final_top1_mean": acc, "best_top1_mean": acc + 1}}}}))
        return str(p)

    r = baselines.main(["ddranking", "--syn-soft", fake("a", 43.0), "--random-soft", fake("b", 30.0),
                        "--syn-hard", fake("c", 20.0), "--full-hard", fake("d", 60.0),
                        "--output", str(tmp_path / "rank.json")])
    assert r["scores"]["IOR"] == pytest.approx(0.13) and r["scores"]["HLR"] == pytest.approx(0.40)
    assert r["scores"]["LRS"] == pytest.approx(0.215213, abs=1e-6)
    assert json.loads((tmp_path / "rank.json").read_text())["scores"] == r["scores"]


def test_diversity_cli(tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "div.json"
    res = diversity.main(["--syn-data-path", str(tiny_data / "train"), str(tiny_data / "val"), "--names", "a", "b",
                          "--teacher-path", str(tiny_teacher), "--output", str(out), "--device", "cpu"])
    assert (tmp_path / "div.png").stat().st_size > 1000
    saved = json.loads(out.read_text())
    assert saved["model"]["arch"] == "conv3" and "classifier" in saved["model"]["layer"]
    assert saved["model"]["feature_dim"] == 128 * 4 * 4
    for name in ("a", "b"):
        s = res["sets"][name]
        assert len(s["per_class"]) == 3 and 0 < s["intra_class_mean"] <= 1
        assert s["intra_class_mean"] == pytest.approx(sum(s["per_class"].values()) / 3)
