"""recover's options past DELT: FADRM's resolution stages and residual, EDC's class-aware BN matching
(``squeeze.class_stats``), several teachers in turn; resume with all of them; bad inputs."""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import recover.loop as loop_mod
import recover.synthesize as synth
import squeeze.class_stats as cstats
from common.cli.errors import UserError
from common.data.imagefolder import ImageFolder
from common.data.transforms import val_transform
from common.run.state import state_dir
from models import load_model
from recover.loop import LoopConfig, recover_batch
from recover.losses import BNStatLoss, ClassStats, bn_layers, bn_stat_term, class_groups
from recover.schedule import cosine_lr, stage_bounds, uniform_schedule
from tests.conftest import ROOT, make_teacher, make_tree
from tests.test_bad_inputs import assert_one_line_error, run_one_line, snapshot

CLASSES = ["00_circle", "01_square", "02_triangle"]
BOUNDS = (torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    base = tmp_path_factory.mktemp("options")
    make_tree(base / "data" / "train", 3, 8)
    t1 = make_teacher(base / "t1.pth", CLASSES, data_root=base / "data" / "train", seed=0)
    t2 = make_teacher(base / "t2.pth", CLASSES, data_root=base / "data" / "train", seed=1)
    make_teacher(base / "r18.pth", CLASSES, arch="resnet18", data_root=base / "data" / "train", seed=2)
    return base, t1, t2


def teacher_model(path):
    model, _ = load_model(path, classes=CLASSES)
    return loop_mod.prepare_teacher(model, channels_last=False)


class SpyAdam(torch.optim.Adam):
    """Records every construction (a copy of the parameter as it was then, and the parameter itself)
    and the lr of every step."""
    made: list = []
    lrs: list = []

    def __init__(self, params, **kw):
        params = list(params)
        SpyAdam.made.append((params[0].detach().clone(), params[0]))
        super().__init__(params, **kw)

    def step(self, closure=None):
        SpyAdam.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.fixture
def spy_adam(monkeypatch):
    SpyAdam.made, SpyAdam.lrs = [], []
    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    return SpyAdam


# --------------------------------------------------------------------------- FADRM: stages, residual, lr

def test_stage_bounds_hand_computed():
    assert stage_bounds(2000, 4) == [0, 500, 1000, 1500, 2000]  # FADRM's 4 x 500
    assert stage_bounds(10, 3) == [0, 3, 6, 10]
    assert stage_bounds(7, 1) == [0, 7]


def test_stage_sizes_lr_and_adam_per_stage(shared, spy_adam):
    teacher = teacher_model(shared[0] / "r18.pth")  # global pooling: takes any size
    seen = []
    teacher.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[-1]))
    cfg = LoopConfig(input_size=32, lr=0.25, r_bn=0.01, jitter=0, stage_sizes=(16, 32, 16, 32), channels_last=False)
    init = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-2, 2)
    res = recover_batch(teacher, init, torch.tensor([0, 0]), uniform_schedule(2, 8), cfg, random.Random(0), BOUNDS)
    assert seen == [16, 16, 32, 32, 16, 16, 32, 32]  # the teacher sees each stage's size
    assert len(spy_adam.made) == 4  # Adam rebuilt once per stage, not per iteration
    assert [p.shape[-1] for p, _ in spy_adam.made] == [16, 32, 16, 32]
    # one cosine over all 8 iterations (not per stage): 0.5 (1 + cos(pi it / 8)) 0.25, by hand
    hand = [0.25, 0.2404849, 0.2133883, 0.1728354, 0.125, 0.0771646, 0.0366117, 0.0095151]
    assert spy_adam.lrs == pytest.approx(hand, abs=1e-7)
    assert spy_adam.lrs == [cosine_lr(0.25, it, 8) for it in range(8)]
    assert res.images.shape == (2, 3, 32, 32)


def test_residual_mix_at_stage_boundary_equals_formula(shared, spy_adam):
    teacher = teacher_model(shared[0] / "r18.pth")
    cfg = LoopConfig(input_size=32, lr=0.1, r_bn=0.01, jitter=2, stage_sizes=(16, 32), residual_alpha=0.3,
                     channels_last=False)
    init = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    recover_batch(teacher, init, torch.tensor([1, 1, 1]), uniform_schedule(3, 4), cfg, random.Random(2), BOUNDS)
    (start0, x_stage0), (mixed, _) = spy_adam.made
    # stage 0 starts from the initial image resized to 16 (bilinear, as F.interpolate)
    assert torch.equal(start0, F.interpolate(init, size=(16, 16), mode="bilinear", align_corners=False))
    # at the boundary: x <- (1 - A) resize(x, 32) + A x0, x = stage 0's last iterate
    up = F.interpolate(x_stage0.detach(), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(mixed, 0.7 * up + 0.3 * init, atol=1e-6)
    assert not torch.allclose(mixed, up, atol=1e-3)  # the mix did something


def test_no_options_keeps_one_adam_and_the_old_loop(shared, spy_adam):
    _, t1, _ = shared
    teacher = teacher_model(t1)
    cfg = LoopConfig(input_size=32, lr=0.1, r_bn=0.01, jitter=2, channels_last=False)
    init = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    recover_batch(teacher, init, torch.tensor([0, 1]), uniform_schedule(2, 3), cfg, random.Random(2), BOUNDS)
    assert len(spy_adam.made) == 1 and torch.equal(spy_adam.made[0][0], init)


# --------------------------------------------------------------------------- several teachers

def test_teacher_rotation_order_restarts_every_batch(shared):
    _, t1, t2 = shared
    teachers = [teacher_model(t1), teacher_model(t2), teacher_model(t1)]
    order = []
    for k, t in enumerate(teachers):
        t.register_forward_pre_hook(lambda m, inp, k=k: order.append(k))
    cfg = LoopConfig(input_size=32, lr=0.1, r_bn=0.01, jitter=0, channels_last=False)
    init = torch.rand(2, 3, 32, 32)
    for _ in range(2):  # two batches: FADRM's counter starts at 0 for each batch
        recover_batch(teachers, init, torch.tensor([0, 1]), uniform_schedule(2, 7), cfg, random.Random(0), BOUNDS)
    assert order == [0, 1, 2, 0, 1, 2, 0] * 2
    for t in teachers:  # every BN layer put back
        assert all(type(m) is nn.BatchNorm2d for m in t.modules() if "BatchNorm" in type(m).__name__)


def bare(path: Path, out: Path) -> Path:
    """``path``'s weights saved as a plain state dict (as torchvision's files: no meta, no architecture)."""
    from models import read_checkpoint

    torch.save(read_checkpoint(path)["model"], out)
    return out


def test_arch_name_per_teacher_loads_bare_state_dicts_and_rotates_both(shared, tmp_path, monkeypatch):
    """--arch-name A B names each --arch-path's architecture (bare weight files record none); both
    teachers take turns, and the manifest records each teacher's arch beside its sha256."""
    base = shared[0]
    conv = bare(shared[1], tmp_path / "conv3_bare.pth")
    r18 = bare(base / "r18.pth", tmp_path / "resnet18_bare.pth")
    calls: list[str] = []
    prepare = synth.prepare_teacher

    def spy(model, **kw):
        model = prepare(model, **kw)
        model.register_forward_pre_hook(lambda m, inp, name=type(model).__name__: calls.append(name))
        return model

    monkeypatch.setattr(synth, "prepare_teacher", spy)
    common = ["--init-data-path", str(base / "data" / "train"), "--syn-data-path", str(tmp_path / "syn"),
              "--ipc", "2", "--iteration", "4", "--batch-size", "6", "--lr", "0.25", "--r-bn", "0.01",
              "--jitter", "4", "--seed", "3", "--device", "cpu"]
    with pytest.raises(UserError, match="does not record its architecture; pass --arch-name"):
        synth.main([*common, "--exp-name", "unnamed", "--arch-path", str(conv), str(r18)])
    calls.clear()
    man = synth.main([*common, "--exp-name", "two", "--arch-path", str(conv), str(r18),
                      "--arch-name", "conv3", "resnet18"])
    assert calls == ["ConvNet", "ResNet"] * 2  # one batch of 3 classes x 2 images, 4 iterations: 0 1 0 1
    assert [(t["arch"], t["sha256"]) for t in man["teachers"]] == [
        ("conv3", synth.sha256_file(conv)), ("resnet18", synth.sha256_file(r18))]
    assert man["args"]["arch_name"] == ["conv3", "resnet18"]
    assert sorted(images(tmp_path / "syn" / "two")) == [f"{c}/img_{i:03d}.png" for c in CLASSES for i in (0, 1)]


def test_one_arch_name_with_one_teacher_as_before(shared, tmp_path):
    base, t1, _ = shared
    common = ["--init-data-path", str(base / "data" / "train"), "--syn-data-path", str(tmp_path / "syn"),
              "--ipc", "2", "--iteration", "2", "--batch-size", "6", "--seed", "3", "--device", "cpu"]
    named = synth.main([*common, "--exp-name", "named", "--arch-path", str(t1), "--arch-name", "conv3"])
    plain = synth.main([*common, "--exp-name", "plain", "--arch-path", str(t1)])
    assert named["args"]["arch_name"] == "conv3" and named["args"]["arch_path"] == str(t1)  # plain strings
    assert "teachers" not in named and named["settings"]["arch_name"] == "conv3"
    assert plain["args"]["arch_name"] is None
    assert images(tmp_path / "syn" / "named") == images(tmp_path / "syn" / "plain")


def test_arch_name_count_mismatch_is_one_line_before_torch(shared, tmp_path):
    """python -m recover: another number of --arch-name than --arch-path stops with exit 2 and one error line
    naming both flags, before torch is imported."""
    from tests.test_cli_fast import HEAVY, run

    base, t1, t2 = shared
    res, imported, errors = run(["-m", "recover", "--init-data-path", str(base / "data" / "train"),
                                 "--syn-data-path", str(tmp_path / "syn"), "--arch-path", str(t1), str(t2),
                                 "--arch-name", "conv3", "conv3", "conv3"], tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("import time:") and ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert lines == errors and len(errors) == 1
    assert errors[0].startswith("error: --arch-name: 3 name(s) for 2 --arch-path"), errors
    assert not imported & set(HEAVY) and not (tmp_path / "syn").exists()


# --------------------------------------------------------------------------- class statistics

def bn_inputs(model, x):
    """Every BN layer's input for ``x`` (module order), through a plain forward."""
    got = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: got.append(inp[0])) for m in bn_layers(model)]
    model(x)
    for h in hooks:
        h.remove()
    return got


@pytest.fixture(scope="module")
def stats_file(shared):
    base, t1, _ = shared
    out = base / "stats" / "t1.pt"
    cstats.main(["--arch-path", str(t1), "--data-path", str(base / "data" / "train"), "--output", str(out),
                 "--batch-size", "5", "--device", "cpu"])
    return out


def test_class_stats_equal_direct_computation(shared, stats_file):
    base, t1, _ = shared
    obj = torch.load(stats_file, weights_only=True)  # plain tensors, a string and lists
    meta = json.loads(obj["meta"])
    assert meta["classes"] == CLASSES and meta["teacher_sha256"] == synth.sha256_file(t1)
    assert meta["images_per_class"] == [8, 8, 8]
    model = teacher_model(t1)
    ds = ImageFolder(base / "data" / "train", val_transform(32))
    x1 = torch.stack([ds[i][0] for i in range(len(ds)) if ds.samples[i][1] == 1])  # class 1's images only
    with torch.no_grad():
        direct = bn_inputs(model, x1)
    assert len(direct) == len(obj["mean"]) == 3
    for k, inp in enumerate(direct):
        var, mean = torch.var_mean(inp.double(), dim=(0, 2, 3), correction=0)
        assert torch.allclose(obj["mean"][k][1].double(), mean, atol=1e-5, rtol=1e-5)
        assert torch.allclose(obj["var"][k][1].double(), var, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(obj["mean"][k][0].double(), mean, atol=1e-3)  # another class differs


def test_class_stats_resume_equals_uninterrupted(shared, stats_file, tmp_path, monkeypatch):
    base, t1, _ = shared
    out = tmp_path / "cs.pt"
    argv = ["--arch-path", str(t1), "--data-path", str(base / "data" / "train"), "--output", str(out),
            "--batch-size", "5", "--save-every", "1", "--device", "cpu"]
    real, calls = cstats.Accumulator.state, []

    def killed_after_two(self, done):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed after two saved resume points
        return real(self, done)

    monkeypatch.setattr(cstats.Accumulator, "state", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        cstats.main(argv)
    assert not out.exists() and (state_dir(out) / "partial.pt").is_file()
    monkeypatch.undo()
    seen, real_load = [], cstats.Accumulator.load
    monkeypatch.setattr(cstats.Accumulator, "load", lambda self, st: seen.append(st["batches_done"]) or
                        real_load(self, st))
    cstats.main(argv)
    assert seen == [2] and not state_dir(out).exists()  # resumed after batch 2 of 5
    a, b = torch.load(out, weights_only=True), torch.load(stats_file, weights_only=True)
    assert all(torch.equal(x, y) for x, y in zip(a["mean"] + a["var"], b["mean"] + b["var"]))


# --------------------------------------------------------------------------- class-aware matching

def random_stats(model, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = bn_layers(model)
    return ClassStats([torch.randn(num_classes, m.num_features, generator=g) for m in layers],
                      [torch.rand(num_classes, m.num_features, generator=g) + 0.5 for m in layers])


def test_class_match_on_one_class_batch_equals_global_against_that_class(shared):
    _, t1, _ = shared
    model = teacher_model(t1)
    stats = random_stats(model)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    # global matching (the plain definition) against class 2's statistics
    want = sum(w * bn_stat_term(inp, stats.mean[k][2], stats.var[k][2])
               for k, (w, inp) in enumerate(zip([10.0, 1.0, 1.0], bn_inputs(model, x))))
    g_want, = torch.autograd.grad(want, x)
    with BNStatLoss(model, 10.0, "class", stats) as bn:
        bn.set_groups(class_groups([2, 2, 2, 2]))
        model(x)
        got = bn.loss()
    g_got, = torch.autograd.grad(got, x)
    assert torch.allclose(got, want, rtol=1e-5) and torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-7)
    # the same through the loop: class matching whose class-2 statistics ARE the running statistics gives
    # the images of global matching
    run = ClassStats([s.clone() for s in stats.mean], [s.clone() for s in stats.var])
    for k, m in enumerate(bn_layers(model)):
        run.mean[k][2], run.var[k][2] = m.running_mean, m.running_var
    init = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    out = {}
    for mode in ("global", "class", "mix"):
        cfg = LoopConfig(input_size=32, lr=0.1, r_bn=1.0, jitter=2, bn_match=mode, channels_last=False)
        out[mode] = recover_batch(model, init, torch.tensor([2, 2, 2]), uniform_schedule(3, 3), cfg,
                                  random.Random(5), BOUNDS, class_stats=[run]).images
    assert torch.allclose(out["class"], out["global"], atol=1e-5)
    assert torch.allclose(out["mix"], out["global"], atol=1e-5)


def test_class_match_sums_over_classes_and_mix_weighs(shared):
    _, t1, _ = shared
    model = teacher_model(t1)
    stats = random_stats(model, seed=1)
    labels = [0, 0, 1, 1, 1, 0]  # class 0 not contiguous: an index group
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    inputs = bn_inputs(model, x)
    w = [10.0, 1.0, 1.0]
    idx = {c: [i for i, v in enumerate(labels) if v == c] for c in (0, 1)}
    per_class = sum(w[k] * bn_stat_term(inp[idx[c]], stats.mean[k][c], stats.var[k][c])
                    for k, inp in enumerate(inputs) for c in (0, 1))
    glob = sum(w[k] * bn_stat_term(inp, m.running_mean, m.running_var)
               for k, (inp, m) in enumerate(zip(inputs, bn_layers(model))))
    for mode, want in (("class", per_class), ("mix", 0.75 * glob + 0.25 * per_class)):
        with BNStatLoss(model, 10.0, mode, stats, class_weight=0.25) as bn:
            bn.set_groups(class_groups(labels))
            with torch.no_grad():
                model(x)
            assert torch.allclose(bn.loss(), want, rtol=1e-5), mode


def test_stats_momentum_matches_the_ema():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    model[1].running_mean.normal_()
    x1, x2 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with BNStatLoss(model, 1.0, "global", momentum=0.8) as bn:
        with torch.no_grad():
            model(x1)
            first = bn.loss()
            model(x2)
            second = bn.loss()
    with torch.no_grad():
        v1, m1 = torch.var_mean(model[0](x1), dim=(0, 2, 3), correction=0)
        v2, m2 = torch.var_mean(model[0](x2), dim=(0, 2, 3), correction=0)
    rm, rv = model[1].running_mean, model[1].running_var
    assert torch.allclose(first, bn_stat_term(model[0](x1), rm, rv), rtol=1e-5)  # first: the current statistics
    ema_m, ema_v = 0.8 * m1 + 0.2 * m2, 0.8 * v1 + 0.2 * v2
    want = torch.linalg.vector_norm(ema_m - rm) + torch.linalg.vector_norm(ema_v - rv)
    assert torch.allclose(second, want, rtol=1e-5)


# --------------------------------------------------------------------------- command line, resume

def argv(base: Path, out: Path, *extra: str) -> list[str]:
    return ["--init-data-path", str(base / "data" / "train"), "--syn-data-path", str(out),
            "--ipc", "4", "--iteration", "4", "--round-iterations", "1", "--use-early-late", "--batch-size", "8",
            "--lr", "0.25", "--r-bn", "0.01", "--jitter", "4", "--milestone", "1", "--seed", "3", "--device", "cpu",
            *extra]


def all_options(base, t1, t2, stats1, stats2):
    # conv3 teachers take one input size: two stages at 32 (FADRM's Tiny-ImageNet setting is 64,64)
    return ["--arch-path", str(t1), str(t2), "--stage-sizes", "32,32", "--residual-alpha", "0.5",
            "--class-stats", str(stats1), str(stats2), "--bn-match", "mix", "--class-bn-weight", "0.5",
            "--stats-momentum", "0.8"]


def images(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("[!.]*/*"))}


@pytest.fixture(scope="module")
def stats2(shared):
    base, _, t2 = shared
    out = base / "stats" / "t2.pt"
    cstats.main(["--arch-path", str(t2), "--data-path", str(base / "data" / "train"), "--output", str(out),
                 "--device", "cpu"])
    return out


def test_sigkill_with_every_option_then_restart_equals_uninterrupted(shared, stats_file, stats2, tmp_path):
    base, t1, t2 = shared
    opts = all_options(base, t1, t2, stats_file, stats2)
    ref = synth.main(argv(base, tmp_path / "syn", "--exp-name", "ref", *opts))
    assert [t["sha256"] for t in ref["teachers"]] == [synth.sha256_file(t1), synth.sha256_file(t2)]
    assert ref["settings"]["teacher_sha256"] == [synth.sha256_file(t1), synth.sha256_file(t2)]
    assert ref["stage_sizes"] == [32, 32] and ref["bn_match"]["mode"] == "mix"
    assert len(ref["settings"]["class_stats_sha256"]) == 2
    out = tmp_path / "syn" / "killed"
    cmd = [sys.executable, "-m", "recover", *argv(base, tmp_path / "syn", "--exp-name", "killed", *opts)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None and not list(state_dir(out).glob("done/*.json")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # group [0, 1] done, group [2] running
    assert proc.wait() == -signal.SIGKILL
    assert not (out / CLASSES[2]).exists()
    synth.main(cmd[3:])
    assert images(out) == images(tmp_path / "syn" / "ref")
    # the options change the images
    plain = synth.main(argv(base, tmp_path / "syn", "--exp-name", "plain", "--arch-path", str(t1)))
    assert "teachers" not in plain and "stage_sizes" not in plain and "stage_sizes" not in plain["settings"]
    assert images(tmp_path / "syn" / "plain") != images(out)


# --------------------------------------------------------------------------- bad inputs

def test_bad_inputs_are_one_line_and_leave_nothing(shared, stats_file, tmp_path, capsys):
    base, t1, t2 = shared
    other = make_teacher(tmp_path / "other.pth", ["a", "b", "c"])
    rev = make_teacher(tmp_path / "rev.pth", list(reversed(CLASSES)))
    obj = torch.load(stats_file, weights_only=True)
    bad_shape = tmp_path / "shape.pt"
    torch.save({**obj, "mean": [obj["mean"][0][:, :5]] + obj["mean"][1:]}, bad_shape)
    other_classes = tmp_path / "classes.pt"
    torch.save({**obj, "meta": json.dumps({**json.loads(obj["meta"]), "classes": ["x", "y", "z"]})}, other_classes)
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "class_stats/1", "meta": "{}", "mean": [Evil()]}, evil)
    raw = tmp_path / "evil_raw.pt"
    with open(raw, "wb") as f:
        pickle.dump(Evil(), f)
    t1s = ["--arch-path", str(t1)]
    cases = [
        (t1s + ["--residual-alpha", "0.5"], "--stage-sizes"),
        (t1s + ["--stage-sizes", "16,24"], "last stage must be the input size 32"),
        (t1s + ["--stage-sizes", "16,x"], "--stage-sizes"),
        (t1s + ["--stage-sizes", "16,32"], "cannot take 16x16 inputs"),
        (t1s + ["--bn-match", "class"], "needs --class-stats"),
        (t1s + ["--class-stats", str(stats_file)], "only used by --bn-match"),
        (["--arch-path", str(t2), "--bn-match", "class", "--class-stats", str(stats_file)], "another teacher"),
        (t1s + ["--bn-match", "mix", "--class-stats", str(other_classes)], "class list"),
        (t1s + ["--bn-match", "mix", "--class-stats", str(bad_shape)], "BN layer 0"),
        (t1s + ["--bn-match", "mix", "--class-stats", str(evil)], "not a safe torch file"),
        (t1s + ["--bn-match", "mix", "--class-stats", str(raw)], "not a safe torch file"),
        (t1s + ["--bn-match", "mix", "--class-stats", str(tmp_path / "missing.pt")], "missing.pt: file not found"),
        (["--arch-path", str(t1), str(other)], "class list does not match"),
        (["--arch-path", str(t1), str(t2), "--arch-name", "conv3"], "--arch-name: 1 name(s) for 2 --arch-path"),
        (["--arch-path", str(t1), str(t2), "--arch-name", "resnet18", "conv3"],
         "checkpoint is a conv3 but --arch-name says resnet18"),
        (t1s + ["--stats-momentum", "1"], "--stats-momentum"),
        (t1s + ["--class-bn-weight", "0.3"], "--class-bn-weight weighs --bn-match mix"),
    ]
    before = snapshot(tmp_path)
    for extra, match in cases:
        code, err = run_one_line(synth.main, argv(base, tmp_path / "out", *extra), capsys)
        assert_one_line_error(code, err, match)
        assert snapshot(tmp_path) == before, extra
    assert not marker.exists()
    # squeeze.class_stats: a teacher for other classes, a missing folder
    for extra, match in ((["--arch-path", str(rev)], "class"), (["--arch-path", str(tmp_path / "no.pth")], "no.pth")):
        from common.cli.entry import run_stage

        capsys.readouterr()
        code = run_stage("squeeze.args:class_stats_parser", "squeeze.class_stats",
                         ["--data-path", str(base / "data" / "train"), "--output", str(tmp_path / "o.pt"),
                          "--device", "cpu", *extra])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert_one_line_error(code, err, match)
        assert snapshot(tmp_path) == before


def test_class_stats_momentum_is_per_class():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    stats = ClassStats([torch.randn(3, 4)], [torch.rand(3, 4) + 0.5])
    xa, xb = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    with BNStatLoss(model, 1.0, "class", stats, momentum=0.6) as bn, torch.no_grad():
        bn.set_groups(class_groups([0, 0, 1, 1]))
        model(xa)
        bn.loss()
        bn.set_groups(class_groups([1, 1, 2, 2]))
        model(xb)
        got = bn.loss()
        fa, fb = model[0](xa), model[0](xb)

    def mv(f):
        v, m = torch.var_mean(f, dim=(0, 2, 3), correction=0)
        return m, v

    (m1a, v1a), (m1b, v1b), (m2b, v2b) = mv(fa[2:]), mv(fb[:2]), mv(fb[2:])
    # class 1 continues its average (seen in the first batch); class 2 starts from its current statistics
    want = (torch.linalg.vector_norm(0.6 * m1a + 0.4 * m1b - stats.mean[0][1])
            + torch.linalg.vector_norm(0.6 * v1a + 0.4 * v1b - stats.var[0][1])
            + torch.linalg.vector_norm(m2b - stats.mean[0][2]) + torch.linalg.vector_norm(v2b - stats.var[0][2]))
    assert torch.allclose(got, want, rtol=1e-5)


def test_rded_patches_as_init_with_residual_stages(shared, tmp_path):
    """RDED patches (rank_select.patches, factor 2: stitched 2x2) as the initial images of FADRM's schedule;
    the residual pulls towards the patches: the result is closer to them than without it."""
    import rank_select.patches as P

    base, _, _ = shared
    r18 = base / "r18.pth"
    P.main([str(a) for a in ["--data-path", base / "data" / "train", "--observer-path", r18, "--output-path",
                             tmp_path / "patches", "--workers", 0, "--mipc", 8, "--num-crop", 2, "--batch-size", 8,
                             "--ipc", 2, "--factor", 2, "--input-size", 32, "--seed", 0]])
    common = ["--init-data-path", str(tmp_path / "patches"), "--arch-path", str(r18), "--syn-data-path",
              str(tmp_path / "syn"), "--ipc", "2", "--iteration", "4", "--batch-size", "6", "--lr", "0.25",
              "--r-bn", "0.01", "--jitter", "2", "--seed", "1", "--device", "cpu", "--stage-sizes", "24,32"]
    m = synth.main(common + ["--exp-name", "mixed", "--residual-alpha", "1"])
    synth.main(common + ["--exp-name", "free"])
    assert m["stage_sizes"] == [24, 32] and m["residual_alpha"] == 1.0
    import numpy as np
    from PIL import Image

    def px(p):
        return np.asarray(Image.open(p), dtype=np.float64)

    cls = CLASSES[0]
    for f in m["per_class"][cls]["files"]:
        init = px(next((tmp_path / "patches" / cls).glob(Path(f).stem + ".*")))
        # alpha 1: the second stage restarts from the patch itself, so it ends nearer to it than a free run
        assert np.abs(px(tmp_path / "syn" / "mixed" / cls / f) - init).mean() < \
            np.abs(px(tmp_path / "syn" / "free" / cls / f) - init).mean()
