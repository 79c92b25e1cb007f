"""SC-DD: MoCo v2 pre-training (views, exact resume), the frozen-BN linear probe, external SSL layouts, bn_stats."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from common.cli.errors import UserError, run_cli
from common.data.imagefolder import ImageFolder
from common.train.curves import read_scalars
from models import build_backbone, build_model, make_meta, read_checkpoint, save_checkpoint
from models.external_ssl import map_ssl_state_dict, read_linear_classifier, read_ssl_checkpoint
from squeeze import bn_stats, linear_probe, ssl
from squeeze.moco import TwoViews, knn_scores, view_transform
from squeeze.ssl_train import last_path
from tests.conftest import make_tree

CLASSES = ["00_circle", "01_square", "02_triangle"]


def _ssl_args(data, out, *extra):
    return ["--data-path", str(data), "--arch-name", "conv3", "--input-size", "16", "--epochs", "2",
            "--batch-size", "8", "--queue-size", "16", "--proj-hidden-dim", "32", "--proj-dim", "16",
            "--moco-momentum", "0.9", "--knn-every", "1", "--device", "cpu", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    """Tiny data and one uninterrupted 2-epoch MoCo run, made once for the module."""
    base = tmp_path_factory.mktemp("ssl")
    make_tree(base / "data" / "train", 3, 8, split=0)
    make_tree(base / "data" / "val", 3, 4, split=1)
    full = base / "full.pth"
    ssl.main(_ssl_args(base / "data", full))
    return base, base / "data", full


def test_views_differ_per_view_and_are_seeded(ssl_run):
    _, data, _ = ssl_run
    base = ImageFolder(data / "train", None)
    view = view_transform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    a, b = TwoViews(base, view, seed=1), TwoViews(base, view, seed=1)
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    v0, v1, y = a[5]
    assert y == base.samples[5][1] and v0.shape == (3, 16, 16)
    assert not torch.equal(v0, v1)                       # the two views of an image differ
    w0, w1, _ = b[5]
    assert torch.equal(v0, w0) and torch.equal(v1, w1)   # and are a function of (seed, epoch, index, view)
    a[3]                                                 # order does not matter
    assert torch.equal(a[5][0], v0)
    b.set_epoch(1)
    assert not torch.equal(b[5][0], v0)                  # a new epoch draws new views
    assert not torch.equal(TwoViews(base, view, seed=2)[5][0], v0)
    # the global generators are untouched
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])


def test_view_blur_scaled_to_input_size():
    blur = [t for t in view_transform(32, (0.5,) * 3, (0.5,) * 3).transform.transforms
            if type(t).__name__ == "GaussianBlur"][0]
    assert blur.sigmas == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))


def test_knn_scores_hand_computed():
    train_f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    val_f = torch.tensor([[2.0, 0.0]])
    s = knn_scores(val_f, train_f, train_y, 2, k=2, t=0.5)
    # nearest two: [1,0] (cos 1, class 0) and [1,1] (cos 1/sqrt2, class 1)
    assert s[0, 0].item() == pytest.approx(np.exp(1 / 0.5))
    assert s[0, 1].item() == pytest.approx(np.exp((1 / np.sqrt(2)) / 0.5))


def test_ssl_writes_backbone_and_resume_equals_uninterrupted(ssl_run):
    base, data, full = ssl_run
    ck = read_checkpoint(full)
    assert ck["meta"]["teacher_kind"] == "ssl-backbone" and ck["meta"]["ssl_method"] == "mocov2"
    assert ck["meta"]["arch"] == "conv3" and not any(k.startswith("classifier") for k in ck["model"])
    report = json.loads(full.with_suffix(".json").read_text())
    assert len(report["loss_curve"]) == 2 and all(np.isfinite(report["loss_curve"]))
    assert [k["epoch"] for k in report["knn_curve"]] == [1, 2]

    part = base / "part.pth"
    logs = ["--log-dir", str(base / "logs")]  # curves: not part of the fingerprint, continued with the run
    ssl.main(_ssl_args(data, part, "--max-epochs-this-run", "1", *logs))
    assert not part.exists() and read_checkpoint(last_path(part))["epoch"] == 0
    assert last_path(part) == base / "part.pth.state" / "last.pth"  # beside the output (common.run.state)
    with pytest.raises(UserError, match=r"--lr 0.03 there, 0.1 now.*--restart"):  # other settings: refused
        ssl.main(_ssl_args(data, part, "--lr", "0.1"))
    ssl.main(_ssl_args(data, part, *logs))  # the same command continues (the queue is restored with the weights)
    curves = read_scalars(base / "logs" / "squeeze_ssl_part")
    assert [s for s, _ in curves["loss"]] == [1, 2]
    assert [v for _, v in curves["loss"]] == pytest.approx(report["loss_curve"])
    assert [v for _, v in curves["knn/top1"]] == pytest.approx([k["knn_top1"] for k in report["knn_curve"]])
    a, b = read_checkpoint(full)["model"], read_checkpoint(part)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not (base / "part.pth.state").exists() and not (base / "full.pth.state").exists()


def _bn_buffers(sd):
    return {k: v for k, v in sd.items() if "running" in k or "num_batches" in k}


def test_linear_probe_keeps_bn_statistics_and_recover_takes_it(ssl_run):
    base, data, full = ssl_run
    out = base / "probe.pth"
    # augmented batches through the backbone every step: the path where train-mode BN would update
    linear_probe.main(["--backbone", str(full), "--data-path", str(data), "--epochs", "2", "--batch-size", "8",
                       "--train-aug", "crop", "--device", "cpu", "--output", str(out)])
    src, probe = read_checkpoint(full)["model"], read_checkpoint(out)
    bn = _bn_buffers(src)
    assert len(bn) == 9
    for k, v in bn.items():
        assert torch.equal(v, probe["model"][k]), k           # bit-identical BN running statistics
    for k, v in src.items():
        assert torch.equal(v, probe["model"][k]), k           # the whole backbone is frozen
    assert not torch.equal(probe["model"]["classifier.weight"], torch.zeros(3, 128 * 4))
    meta = probe["meta"]
    assert meta["teacher_kind"] == "ssl-linear-probe" and meta["ssl_method"] == "mocov2"
    assert meta["classes"] == CLASSES and meta["input_size"] == 16 and 0 <= meta["val_top1"] <= 100

    # cached frozen features (--train-aug none): same invariant
    a = base / "probe_a.pth"
    linear_probe.main(["--backbone", str(full), "--data-path", str(data), "--epochs", "2", "--batch-size", "8",
                       "--device", "cpu", "--train-aug", "none", "--output", str(a)])
    pa = read_checkpoint(a)
    assert pa["meta"]["probe"]["train_aug"] == "none"
    assert all(torch.equal(v, pa["model"][k]) for k, v in src.items())

    # recover and squeeze.evaluate take the SC-DD teacher unchanged
    import recover.synthesize as synth
    from squeeze import evaluate as squeeze_eval

    synth.main(["--arch-path", str(out), "--syn-data-path", str(base / "syn"), "--exp-name", "scdd", "--ipc", "2",
                "--iteration", "3", "--batch-size", "6", "--lr", "0.4", "--r-bn", "0.005", "--jitter", "2",
                "--device", "cpu"])
    made = sorted(p.name for p in (base / "syn" / "scdd").iterdir() if p.is_dir() and p.name[0] != ".")
    assert made == CLASSES
    assert all(len(list((base / "syn" / "scdd" / c).iterdir())) == 2 for c in CLASSES)
    res = squeeze_eval.main(["--arch-path", str(out), "--data-path", str(data), "--device", "cpu"])
    assert res["top1"] == pytest.approx(meta["val_top1"])

    # relabel with a different (supervised) teacher: the result records both
    from relabel_eval import train as relabel_train
    from tests.conftest import make_teacher

    sup = make_teacher(base / "supervised.pth", CLASSES, input_size=16, data_root=data / "train")
    r = relabel_train.main(["--syn-data-path", str(base / "syn" / "scdd"), "--val-dir", str(data / "val"),
                            "--teacher-path", str(sup), "--re-epochs", "1", "--workers", "0", "--device", "cpu",
                            "--output", str(base / "eval.json")])
    assert r["teacher"]["path"] == str(sup)
    assert r["recovery_teacher"]["path"] == str(out) and r["recovery_teacher"]["teacher_kind"] == "ssl-linear-probe"


def _resnet18_sd():
    torch.manual_seed(0)
    m = build_model("resnet18", 5, 32)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    return m.state_dict()


@pytest.mark.parametrize("aug", ["crop", "none"])
def test_linear_probe_killed_then_rerun_equals_uninterrupted(ssl_run, aug, capsys):
    base, data, full = ssl_run

    def probe(out, *extra):
        return linear_probe.main(["--backbone", str(full), "--data-path", str(data), "--epochs", "3",
                                  "--batch-size", "8", "--train-aug", aug, "--device", "cpu", "--output", str(out),
                                  *extra])

    probe(base / f"whole_{aug}.pth")
    part = base / f"part_{aug}.pth"
    assert probe(part, "--max-epochs-this-run", "1") == {"stopped": True}
    assert not part.exists() and (base / f"part_{aug}.pth.state" / "probe.pt").is_file()
    with pytest.raises(UserError, match=r"--lr 0.1 there, 0.2 now.*--restart"):
        probe(part, "--lr", "0.2")
    capsys.readouterr()
    probe(part)  # the same command continues after epoch 1
    assert "resumed the linear probe from" in capsys.readouterr().err
    a, b = read_checkpoint(base / f"whole_{aug}.pth"), read_checkpoint(part)
    assert torch.equal(a["model"]["classifier.weight"], b["model"]["classifier.weight"])
    assert a["meta"]["val_top1"] == b["meta"]["val_top1"]
    hist = lambda p: [h["train_loss"] for h in json.loads(p.with_suffix(".json").read_text())["history"]]  # noqa: E731
    assert hist(part) == hist(base / f"whole_{aug}.pth") and len(hist(part)) == 3
    assert not (base / f"part_{aug}.pth.state").exists()


def test_external_ssl_key_mappings(tmp_path):
    sd = _resnet18_sd()
    backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    mlp = {"fc.0.weight": torch.randn(16, 512), "fc.0.bias": torch.randn(16), "fc.2.weight": torch.randn(8, 16),
           "fc.2.bias": torch.randn(8)}
    layouts = {
        "mocov2": {**{f"module.encoder_q.{k}": v for k, v in {**backbone, **mlp}.items()},
                   **{f"module.encoder_k.{k}": v + 1 for k, v in {**backbone, **mlp}.items()},
                   "module.queue": torch.randn(8, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)},
        "mocov3": {**{f"module.base_encoder.{k}": v for k, v in {**backbone, **mlp}.items()},
                   **{f"module.momentum_encoder.{k}": v + 1 for k, v in backbone.items()},
                   "module.predictor.0.weight": torch.randn(8, 8)},
        "swav": {**{f"module.{k}": v for k, v in backbone.items()},
                 "module.projection_head.0.weight": torch.randn(16, 512),
                 "module.prototypes.weight": torch.randn(30, 8)},
        "dino": dict(backbone),
        "lightly": {**{f"backbone.{k}": v for k, v in backbone.items()},
                    "projection_head.layers.0.weight": torch.randn(16, 512)},
    }
    for layout, ext in layouts.items():
        got, name, head = map_ssl_state_dict(ext)
        assert name == layout and head is None
        assert got.keys() == backbone.keys(), layout
        assert all(torch.equal(got[k], backbone[k]) for k in backbone), layout
    # MoCo's lincls output: the full model, classifier returned separately
    got, name, head = map_ssl_state_dict({f"module.{k}": v for k, v in sd.items()})
    assert name == "lincls" and torch.equal(head["weight"], sd["fc.weight"]) and got.keys() == backbone.keys()

    # files: MoCo's {"state_dict": ...} with an argparse record, DINO's training checkpoint ("teacher")
    import argparse

    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": layouts["mocov2"], "args": argparse.Namespace(a=1)},
               tmp_path / "moco.pth.tar")
    got, name, _, _ = read_ssl_checkpoint(tmp_path / "moco.pth.tar")
    assert name == "mocov2" and got.keys() == backbone.keys()
    teacher = {**{f"backbone.{k}": v for k, v in backbone.items()}, "head.mlp.0.weight": torch.randn(4, 512)}
    torch.save({"student": {f"module.{k}": v + 1 for k, v in teacher.items()}, "teacher": teacher, "epoch": 3},
               tmp_path / "dino_ckpt.pth")
    got, name, _, _ = read_ssl_checkpoint(tmp_path / "dino_ckpt.pth")
    assert name == "dino" and all(torch.equal(got[k], backbone[k]) for k in backbone)

    # an unknown layout: one line naming the layouts expected
    with pytest.raises(UserError, match=r"unknown self-supervised checkpoint layout.*encoder_q\..*base_encoder\."):
        map_ssl_state_dict({"blocks.0.weight": torch.zeros(1)}, "x.pth")

    # released linear classifiers: DINO/SwAV linear.*, MoCo lincls fc.*
    torch.save({"state_dict": {"module.linear.weight": sd["fc.weight"], "module.linear.bias": sd["fc.bias"]}},
               tmp_path / "dino_linear.pth")
    assert torch.equal(read_linear_classifier(tmp_path / "dino_linear.pth")["weight"], sd["fc.weight"])
    torch.save({"x": torch.zeros(1)}, tmp_path / "nolinear.pth")
    with pytest.raises(UserError, match="no linear classifier"):
        read_linear_classifier(tmp_path / "nolinear.pth")


def test_probe_on_external_backbone_with_released_classifier(tmp_path):
    data = tmp_path / "data"
    make_tree(data / "train", 5, 2, split=0)
    make_tree(data / "val", 5, 2, split=1)
    sd = _resnet18_sd()
    mlp = {"fc.0.weight": torch.randn(16, 512), "fc.0.bias": torch.randn(16)}
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in {**sd, **mlp}.items()
                               if not k.startswith("fc.") or k in mlp}}, tmp_path / "mocov3.pth.tar")
    torch.save({"state_dict": {"module.linear.weight": sd["fc.weight"], "module.linear.bias": sd["fc.bias"]}},
               tmp_path / "linear.pth")
    out = tmp_path / "t.pth"
    args = ["--backbone", str(tmp_path / "mocov3.pth.tar"), "--data-path", str(data), "--input-size", "32",
            "--device", "cpu", "--output", str(out)]
    assert run_cli(linear_probe.main, args) == 2  # no architecture recorded: --arch-name required
    linear_probe.main(args + ["--arch-name", "resnet18", "--linear-path", str(tmp_path / "linear.pth")])
    got = read_checkpoint(out)
    assert all(torch.equal(got["model"][k], v) for k, v in sd.items())  # backbone and classifier as released
    assert got["meta"]["ssl_method"] == "mocov3" and got["meta"]["teacher_kind"] == "ssl-linear-probe"
    # a backbone that does not fit the architecture: one line
    assert run_cli(linear_probe.main, args + ["--arch-name", "resnet50"]) == 2


def test_bn_stats_spread_and_outputs(tmp_path, capsys):
    m = build_model("conv3", 3, 16)
    with torch.no_grad():
        m.features[1].running_mean.copy_(torch.arange(128.0))
        m.features[1].running_var.fill_(2.0)
    save_checkpoint(tmp_path / "a.pth", m, make_meta("conv3", 3, 16))
    b, _, _ = build_backbone("conv3", 16)
    save_checkpoint(tmp_path / "b.pth", b, make_meta("conv3", 0, 16, teacher_kind="ssl-backbone"))
    out = bn_stats.main([str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--names", "sup", "ssl",
                         "--output", str(tmp_path / "cmp")])
    first = out["layers"]["sup"][0]
    assert first["layer"] == "features.1" and first["channels"] == 128
    assert first["mean_spread"] == pytest.approx(float(torch.arange(128.0).var(unbiased=False)))
    assert first["var_spread"] == 0.0 and len(out["layers"]["ssl"]) == 3
    assert (tmp_path / "cmp.png").stat().st_size > 1000 and (tmp_path / "cmp.csv").read_text().count("\n") == 7
    assert "features.9" in capsys.readouterr().out
    assert run_cli(bn_stats.main, [str(tmp_path / "a.pth"), "--names", "x", "y"]) == 2


@pytest.mark.parametrize("arch,dim", [("resnet18_modified", 512), ("resnet50", 2048), ("conv4", 128)])
def test_backbone_is_the_model_minus_its_classifier(arch, dim):
    backbone, d, head = build_backbone(arch, 16)
    full = build_model(arch, 7, 16).state_dict()
    assert d == dim and set(backbone.state_dict()) == {k for k in full if not k.startswith(head + ".")}


def test_moco_step_queue_and_momentum_update():
    from squeeze.moco import MoCo, train_step

    torch.manual_seed(0)
    backbone, dim, head = build_backbone("conv3", 16)
    model = MoCo(backbone, dim, hidden_dim=16, out_dim=8, queue_size=8)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    key_before = {k: v.clone() for k, v in model.backbone_momentum.state_dict().items()}
    x = torch.rand(4, 3, 16, 16)
    loss = train_step(model, x, x.flip(-1), opt, 0.5)
    assert torch.isfinite(loss) and int(model.criterion.memory_bank.bank_ptr) == 4   # keys enqueued
    assert all(not p.requires_grad for p in model.backbone_momentum.parameters())
    # the key encoder moved halfway towards the (initially identical) query encoder: unchanged at step 1
    moved = model.backbone_momentum.state_dict()
    w = next(k for k in key_before if k.endswith("weight") and key_before[k].ndim == 4)
    assert torch.equal(moved[w], key_before[w])
    q1 = model.backbone.state_dict()[w].clone()   # the query weights after the first SGD step
    train_step(model, x, x, opt, 0.5)             # EMA first (m 0.5), then the second SGD step
    assert torch.allclose(model.backbone_momentum.state_dict()[w], 0.5 * key_before[w] + 0.5 * q1, atol=1e-6)
    assert not torch.equal(q1, key_before[w])
