"""relabel_eval's PAD protocol (relabel_eval.pad_protocol)."""
from __future__ import annotations

import argparse

import torch
from torch import nn

from relabel_eval.pad_protocol import decay_epoch, lr_schedule, soft_targets_for, train_pad_student


def test_lr_divided_by_ten_after_half_the_epochs_as_released():
    # released: for ep in range(Epoch + 1): train; if ep == Epoch // 2 + 1: lr *= 0.1
    assert decay_epoch(1000) == 501 and decay_epoch(5) == 3
    assert lr_schedule(5, 0.01) == [0.01, 0.01, 0.01, 0.01, 0.001, 0.001]


def test_soft_targets_follow_file_order():
    labels = {"paths": ["a/0.png", "b/0.png", "a/1.png"], "labels": torch.tensor([[1.0, 0], [0, 2.0], [3.0, 0]])}
    out = soft_targets_for(["a/0.png", "a/1.png", "b/0.png"], labels, "x")
    torch.testing.assert_close(out, torch.tensor([[1.0, 0], [3.0, 0], [0, 2.0]]))


def test_training_matches_a_reference_loop_with_momentum_reset():
    """Two epochs without augmentation equal a hand-written SGD loop (decay after epoch 1 with a new optimiser)."""
    torch.manual_seed(0)
    x, soft = torch.randn(6, 3, 4, 4), torch.randn(6, 2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    ref = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    ref.load_state_dict(net.state_dict())
    res = train_pad_student(net, x, soft, 0.1, 1, 4, 3, x, soft.argmax(1), dsa_strategy="none", progress=False)
    g = torch.Generator().manual_seed(3)
    lr = 0.1
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for ep in range(2):
        perm = torch.randperm(6, generator=g)
        for s in range(0, 6, 4):
            idx = perm[s:s + 4]
            out = ref(x[idx])
            loss = -(torch.softmax(soft[idx], 1) * torch.log_softmax(out, 1)).sum() / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep == decay_epoch(1):
            lr *= 0.1
            opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    acc = (ref(x).argmax(1) == soft.argmax(1)).float().mean().item() * 100
    assert abs(res["final_top1"] - acc) < 1e-4


def test_run_uses_learned_lr_and_labels_beside_the_set(tiny_data, tmp_path):
    import json
    import shutil

    from relabel_eval.pad_protocol import run

    syn = tmp_path / "syn"
    for cls in sorted(p.name for p in (tiny_data / "train").iterdir()):
        (syn / cls).mkdir(parents=True)
        for f in sorted((tiny_data / "train" / cls).iterdir())[:1]:
            shutil.copy(f, syn / cls / f.name)
    paths = sorted(f"{c.name}/{f.name}" for c in syn.iterdir() for f in c.iterdir())
    torch.save({"labels": torch.eye(3) * 5, "paths": paths, "classes": sorted(c.name for c in syn.iterdir())},
               tmp_path / "syn.labels.pt")
    torch.save({"lr": torch.tensor(0.0123)}, tmp_path / "syn.lr.pt")
    args = argparse.Namespace(syn_data_path=str(syn), val_dir=str(tiny_data / "val"), label_mode="soft",
                              device="cpu", input_size=16, dataset="custom", zca=None, learning_rate=0.1,
                              re_batch_size=0, seeds=[0, 1], seed=0, stud_name=["conv3_in"], re_epochs=1,
                              output=str(tmp_path / "res.json"), results_csv=None, exp_name=None)
    res = run(args)
    assert res["protocol"]["lr"] == torch.tensor(0.0123).item() and res["label_mode"] == "soft"
    summ = res["students"]["conv3_in"]["summary"]
    assert summ["n"] == 2 and 0 <= summ["final_top1_mean"] <= 100
    assert json.loads((tmp_path / "res.json").read_text())["protocol"]["name"] == "pad"
    assert (tmp_path / "results.csv").is_file()


def test_relabel_eval_protocol_pad_dispatches_to_the_pad_loop(tiny_data, tmp_path):
    import json

    from relabel_eval.train import main

    res = main(["--protocol", "pad", "--syn-data-path", str(tiny_data / "val"), "--val-dir", str(tiny_data / "val"),
                "--re-epochs", "1", "--seeds", "0", "--stud-name", "conv3_in", "--input-size", "16",
                "--learning-rate", "0.02", "--device", "cpu", "--output", str(tmp_path / "r.json")])
    # a set without labels.pt / lr.pt (e.g. DELT's) trains on hard labels with --learning-rate
    assert res["protocol"]["name"] == "pad" and res["label_mode"] == "hard" and res["protocol"]["lr"] == 0.02
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and json.loads(text)["students"]["conv3_in"]["summary"]["n"] == 1
    assert res["students"]["conv3_in"]["runs"][0]["final_top5"] == 100.0  # 3 classes: top-5 is everything


def test_an_interrupted_pad_evaluation_resumes_per_seed_and_refuses_other_settings(tiny_data, tmp_path,
                                                                                   monkeypatch):
    import json

    import pytest

    from common.cli.errors import UserError
    from relabel_eval import pad_protocol
    from relabel_eval.train import main

    argv = ["--protocol", "pad", "--syn-data-path", str(tiny_data / "val"), "--val-dir", str(tiny_data / "val"),
            "--re-epochs", "1", "--seeds", "0", "1", "--stud-name", "conv3_in", "--input-size", "16",
            "--learning-rate", "0.02", "--device", "cpu", "--output", str(tmp_path / "r.json")]
    real, calls = pad_protocol.train_pad_student, []

    def dies_on_seed_1(*a, **k):
        calls.append(a[6])
        if a[6] == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pad_protocol, "train_pad_student", dies_on_seed_1)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert not (tmp_path / "r.json").exists() and (tmp_path / "r.json.state" / "done" / "conv3_in_seed0.json").is_file()
    with pytest.raises(UserError, match=r"--epochs 1 there, 2 now.*--restart"):
        main([a if a != "1" or i != argv.index("--re-epochs") + 1 else "2" for i, a in enumerate(argv)])
    monkeypatch.setattr(pad_protocol, "train_pad_student", lambda *a, **k: (calls.append(a[6]), real(*a, **k))[1])
    res = main(argv)
    assert calls == [0, 1, 1]  # seed 0 was not trained again
    first = json.loads((tmp_path / "r.json").read_text())["students"]["conv3_in"]["runs"]
    assert [r["seed"] for r in first] == [0, 1] and res["students"]["conv3_in"]["summary"]["n"] == 2
    assert not (tmp_path / "r.json.state").exists()
