"""Soft labels that fit on a disk and the 2025-26 evaluation recipes: label pruning (LPLD), top-k targets and
LPQLD's temperature, train-mode and ensemble teachers, MSE/CE losses, lr stretch, EMA and --protocol edc."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.run.state import state_dir
from models import load_model
from relabel_eval import relabel as relabel_mod
from relabel_eval import train as train_mod
from relabel_eval.context import BatchMaker, resolve_common, teacher_logits
from relabel_eval.mix import MixParams, lpqld_temperature, mixed_ce, soft_label_loss, topk_to_logits
from relabel_eval.plan import make_epoch_plan
from relabel_eval.relabel import SoftLabelStore, imagenet_projection, kept_records, tensor_bytes
from tests.conftest import make_teacher
from tests.test_relabel_train import _eval_args

FLAGS = ["--workers", "0", "--device", "cpu", "--seed", "5", "--re-batch-size", "10"]  # 24 images: batches 10, 10, 4


def _relabel(data: Path, teachers: list[Path], out: Path, *extra: str) -> dict:
    return relabel_mod.main(["--syn-data-path", str(data / "train"), "--teacher-path", *map(str, teachers), *FLAGS,
                             "--output-dir", str(out), *extra])


@pytest.fixture
def second_teacher(tmp_path, tiny_data):
    from common.data.imagefolder import find_classes

    return make_teacher(tmp_path / "teacher2.pth", find_classes(tiny_data / "train"), data_root=tiny_data / "train",
                        seed=1)


# ----------------------------------------------------------------------------- 1. label pruning (LPLD)

def test_pruned_labels_storage_equals_the_formula(tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "soft"
    m = _relabel(tiny_data, [tiny_teacher], out, "--epochs", "4", "--label-keep", "0.5", "--label-topk", "2")
    keep = kept_records(5, 4, 3, 0.5)
    kept = [(e, int(b)) for e in range(4) for b in keep[e]]
    assert len(kept) == 6 == m["records"] and m["records_total"] == 12
    sizes = {0: 10, 1: 10, 2: 4}
    images = sum(sizes[b] for _, b in kept)
    # kept records x images x (metadata + K x (2 + 2)), plus each record's lambda, box and batch index
    meta_image = 4 + 4 * 2 + 1 + 4 + 2   # index int32, crop 4 x int16, flip, aug seed int32, partner int16
    meta_record = 8 + 4 * 2 + 4          # lambda float64, CutMix box 4 x int16, batch index int32
    expected = len(kept) * meta_record + images * (meta_image + 2 * (2 + 2))
    assert m["record_images"] == images and m["label_bytes"] == expected
    stored = sum(tensor_bytes(torch.load(out / f"epoch_{e:04d}.pt", weights_only=True)) for e in range(4))
    assert stored == expected  # what the files really hold
    # full labels: C fp16 logits per image; the ImageNet-1K projection of the same formula (IPC 10, 300 epochs)
    full = _relabel(tiny_data, [tiny_teacher], tmp_path / "full", "--epochs", "4")
    assert full["label_bytes"] == 12 * meta_record + 4 * 24 * (meta_image + 3 * 2)
    p10 = imagenet_projection(10, 300, 1.0, 0)
    assert p10["records"] == 300 * 100 and p10["bytes"] == 30000 * meta_record + 3_000_000 * (meta_image + 2000)
    p50 = imagenet_projection(50, 300, 1 / 40, 3)
    assert p50["batch_size"] == 200 and p50["records"] == 300 * 250 // 40
    assert p50["bytes"] == p50["records"] * (meta_record + 200 * (meta_image + 12))
    assert set(m["imagenet1k_projection"]) == {"8", "10", "50"}


def test_pruned_replay_draws_only_stored_records_the_same_way(tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "soft"
    _relabel(tiny_data, [tiny_teacher], out, "--epochs", "4", "--label-keep", "0.4")
    store = SoftLabelStore(out)
    args = train_mod.get_args_parser().parse_args(_eval_args(tiny_data, tiny_teacher, tmp_path, *FLAGS))
    common = resolve_common(args, need_teacher=True)
    pool, _, ids = store.pool()
    keep = kept_records(5, 4, 3, 0.4)
    assert sorted(map(tuple, ids.tolist())) == sorted((e, int(b)) for e in range(4) for b in keep[e])
    maker = BatchMaker(common)
    seen = set()
    for epoch in range(3):
        plan, logits = store.epoch(epoch, seed=7)
        plan2, logits2 = SoftLabelStore(out).epoch(epoch, seed=7)  # a second run, same seed
        assert torch.equal(logits, logits2) and np.array_equal(plan.order, plan2.order)
        drawn = store.draw(7, epoch)
        assert plan.num_batches == 3 == len(drawn)
        for b, (x, _, _) in zip(range(3), [(x, y, mix) for _, x, y, mix in maker.batches(plan)]):
            e, ob = ids[drawn[b]]
            seen.add((int(e), int(ob)))
            original = make_epoch_plan(5, int(e), common.data.sizes, 10, common.aug)
            s, o = plan.batch_slice(b), original.batch_slice(int(ob))
            assert np.array_equal(plan.order[s], original.order[o]) and np.array_equal(plan.crops[s], original.crops[o])
            assert plan.lams[b] == original.lams[ob] and np.array_equal(plan.boxes[b], original.boxes[ob])
            # the stored label is the teacher's on exactly this (re-made) batch
            assert torch.equal(logits[s], teacher_logits(common.teacher, x, common.device, False).half().float())
    assert seen <= set(map(tuple, ids.tolist()))
    other = np.concatenate([store.draw(8, e) for e in range(3)])
    assert not np.array_equal(other, np.concatenate([store.draw(7, e) for e in range(3)]))


def test_pruned_training_is_reproducible(tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "soft"
    _relabel(tiny_data, [tiny_teacher], out, "--epochs", "2", "--label-keep", "0.5", "--topk", "2")
    results = []
    for i in range(2):
        argv = _eval_args(tiny_data, tiny_teacher, tmp_path / f"r{i}", *FLAGS, "--label-mode", "fkd",
                          "--soft-label-dir", str(out), "--re-epochs", "2", "--eval-every", "1")
        argv[argv.index("--teacher-path"):argv.index("--teacher-path") + 2] = []
        (tmp_path / f"r{i}").mkdir()
        r = train_mod.main(argv)["students"]["conv3"]["runs"][0]["history"]
        results.append([(h["loss"], h["val_top1"]) for h in r])
    assert results[0] == results[1]


# ----------------------------------------------------------------------------- 2. top-k targets (LPQLD)

def test_topk_targets_are_softmax_over_the_kept_logits_and_replay_identically(tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "soft"
    _relabel(tiny_data, [tiny_teacher], out, "--epochs", "1", "--topk", "2")
    targets = [F.softmax(SoftLabelStore(out).load(0)[1] / 20.0, dim=1) for _ in range(2)]
    assert torch.equal(targets[0], targets[1])
    st = torch.load(out / "epoch_0000.pt", weights_only=True)
    v, i = st["topk_values"].float(), st["topk_indices"].long()
    hand = torch.zeros(len(v), 3).scatter_(1, i, torch.exp(v / 20) / torch.exp(v / 20).sum(1, keepdim=True))
    assert torch.allclose(targets[0], hand, atol=1e-6) and (targets[0] == 0).sum() == len(v)  # zero elsewhere
    assert torch.equal(topk_to_logits(st["topk_values"], st["topk_indices"], 3), SoftLabelStore(out).load(0)[1])


def test_lpqld_temperature_schedule():
    assert [lpqld_temperature(e) for e in (0, 29, 30, 60)] == [20.0, 20.0, 20.0 * 0.7, 20.0 * 0.7 ** 2]
    assert lpqld_temperature(180) == pytest.approx(20 * 0.7 ** 6) and lpqld_temperature(210) == 2.0
    cfg = train_mod.TrainConfig(epochs=300, batch_size=10, lr=1e-3, temperature=4.0)
    assert cfg.temperature_at(100) == 4.0
    assert train_mod.TrainConfig(300, 10, 1e-3, 4.0, temperature_schedule="lpqld").temperature_at(100) == 20 * 0.7 ** 3


def test_lpqld_student_temperature_is_the_argmin_of_the_last_batch_kl():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5) * 3, torch.randn(6, 5) * 4
    t[:, 3:] = float("-inf")  # top-3 labels: zero target elsewhere
    T = 20.0
    target = F.softmax(t / T, dim=1)

    def hand_kl(ts):  # sum over the batch of sum_c p_c (log p_c - log q_c), p_c = 0 terms dropped
        q = F.log_softmax(s / ts, dim=1)
        return sum(float(p * (torch.log(p) - qc)) for row_p, row_q in zip(target, q)
                   for p, qc in zip(row_p, row_q) if p > 0)

    from relabel_eval.mix import LPQLD_STUDENT_TEMPERATURES, student_temperature_losses

    assert LPQLD_STUDENT_TEMPERATURES[0] == 0.01 and LPQLD_STUDENT_TEMPERATURES[-1] == 1.0
    assert len(LPQLD_STUDENT_TEMPERATURES) == 100
    losses = student_temperature_losses(s, t, T)
    for i in (0, 49, 99):
        assert losses[i].item() == pytest.approx(hand_kl(LPQLD_STUDENT_TEMPERATURES[i]), rel=1e-4)
    # the loss at a student temperature is that KL averaged over the batch
    from relabel_eval.mix import kd_loss

    assert kd_loss(s, t, T, 0.5).item() == pytest.approx(hand_kl(0.5) / 6, rel=1e-4)
    assert kd_loss(s, t, T).item() == pytest.approx(kd_loss(s, t, T, T).item())


def test_lpqld_training_starts_the_student_at_1_and_refits_after_every_epoch(tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "soft"
    _relabel(tiny_data, [tiny_teacher], out, "--epochs", "3", "--topk", "2")
    args = train_mod.get_args_parser().parse_args(_eval_args(tiny_data, tiny_teacher, tmp_path, *FLAGS))
    common = resolve_common(args, need_teacher=True)
    val = train_mod.ValSet(tiny_data / "val", common.data.classes, 32, common.mean, common.std)
    cfg = train_mod.TrainConfig(epochs=3, batch_size=10, lr=1e-3, temperature=20.0, label_mode="fkd", eval_every=1,
                                temperature_schedule="lpqld")
    store = SoftLabelStore(out)
    full, full_model = train_mod.train_student(common, BatchMaker(common), val, "conv3", 3, cfg, store=store)
    h = full["history"]
    assert h[0]["student_temperature"] == 1.0
    assert [r["student_temperature"] for r in h[1:]] == [r["student_temperature_next"] for r in h[:-1]]
    assert all(0.01 <= r["student_temperature_next"] <= 1.0 for r in h)
    # killed after epoch 2 and resumed: the refitted temperature comes back from the checkpoint
    state = tmp_path / "state.pt"

    def crash(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mod.train_student(common, BatchMaker(common), val, "conv3", 3, cfg, state_path=state, store=store,
                                on_epoch_end=crash)
    resumed, resumed_model = train_mod.train_student(common, BatchMaker(common), val, "conv3", 3, cfg,
                                                     state_path=state, store=store)
    assert [r["student_temperature"] for r in resumed["history"]] == [r["student_temperature"] for r in h]
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    # other schedules keep one temperature on both sides
    plain = train_mod.TrainConfig(epochs=1, batch_size=10, lr=1e-3, temperature=20.0, label_mode="fkd")
    assert not plain.calibrates_student_temperature


# ----------------------------------------------------------------------------- 3. train-mode and ensemble teachers

def _common(tiny_data, teachers, tmp_path, *extra):
    argv = _eval_args(tiny_data, teachers[0], tmp_path, *FLAGS, *extra)
    i = argv.index("--teacher-path")
    argv[i + 1:i + 2] = [str(t) for t in teachers]
    return resolve_common(train_mod.get_args_parser().parse_args(argv), need_teacher=True)


@pytest.mark.parametrize("group", [0, 4])
def test_train_mode_labels_equal_a_train_mode_forward(tiny_data, tiny_teacher, tmp_path, group):
    out = tmp_path / "soft"
    extra = ["--teacher-bn-group", str(group)] if group else []
    _relabel(tiny_data, [tiny_teacher], out, "--epochs", "1", "--teacher-mode", "train", *extra)
    common = _common(tiny_data, [tiny_teacher], tmp_path, "--teacher-mode", "train", *extra)
    before = {k: v.clone() for k, v in common.teacher.state_dict().items()}
    plan, stored = SoftLabelStore(out).load(0)
    reference, _ = load_model(tiny_teacher)
    reference.train()  # a plain train-mode forward (it moves this copy's running statistics; not the teacher's)
    for b, x, _, _ in BatchMaker(common).batches(plan):
        chunks = x.split(group) if group else [x]
        with torch.no_grad():
            direct = torch.cat([reference(c) for c in chunks]).float()
        assert torch.equal(stored[plan.batch_slice(b)], direct.half().float())
        eval_mode = teacher_logits(common.teacher.teachers[0].eval(), x, common.device, False)
        assert not torch.allclose(direct, eval_mode, atol=1e-3)  # the mode changes the labels
        assert torch.equal(teacher_logits(common.teacher, x, common.device, False), direct)
    after = common.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and num_batches_tracked
    assert not common.teacher.teachers[0].training


def test_ensemble_is_the_mean_of_the_teachers(tiny_data, tiny_teacher, second_teacher, tmp_path):
    out = tmp_path / "soft"
    _relabel(tiny_data, [tiny_teacher, second_teacher], out, "--epochs", "1")
    one = _common(tiny_data, [tiny_teacher], tmp_path)
    two = _common(tiny_data, [second_teacher], tmp_path)
    both = _common(tiny_data, [tiny_teacher, second_teacher], tmp_path)
    weighted = _common(tiny_data, [tiny_teacher, second_teacher], tmp_path, "--teacher-weights", "1", "3")
    plan, stored = SoftLabelStore(out).load(0)
    for b, x, _, _ in BatchMaker(one).batches(plan):
        a, c = (teacher_logits(m.teacher, x, one.device, False) for m in (one, two))
        assert not torch.allclose(a, c)
        mean = teacher_logits(both.teacher, x, one.device, False)
        assert torch.equal(mean, torch.stack([a, c]).mean(0))
        assert torch.allclose(teacher_logits(weighted.teacher, x, one.device, False), 0.25 * a + 0.75 * c, atol=1e-6)
        assert torch.equal(stored[plan.batch_slice(b)], mean.half().float())  # stored labels alike
    m = json.loads((out / "manifest.json").read_text())
    assert m["teacher"]["paths"] == [str(tiny_teacher), str(second_teacher)] and "teacher_2" in m["inputs"]


def _bare(tmp_path: Path, data: Path, arch: str, seed: int) -> Path:
    """A ``arch`` teacher saved as a plain state dict, as torchvision's weight files are (no architecture)."""
    from common.data.imagefolder import find_classes
    from models import read_checkpoint

    full = make_teacher(tmp_path / f"{arch}_full.pth", find_classes(data / "train"), arch=arch,
                        data_root=data / "train", seed=seed)
    torch.save(read_checkpoint(full)["model"], tmp_path / f"{arch}_bare.pth")
    return tmp_path / f"{arch}_bare.pth"


def test_arch_name_per_teacher_loads_bare_state_dicts(tiny_data, tmp_path):
    """--teacher-path A B --arch-name a b: each bare weight file is built as its own architecture (conv3 and
    conv4 here), in train mode in groups as FADRM+ relabels, and the labels are the mean of the two; relabel
    stores those labels and records both names."""
    from common.cli.errors import UserError

    conv3, conv4 = _bare(tmp_path, tiny_data, "conv3", 0), _bare(tmp_path, tiny_data, "conv4", 1)
    with pytest.raises(UserError, match="does not record its architecture; pass --arch-name"):
        _common(tiny_data, [conv3, conv4], tmp_path)
    with pytest.raises(UserError, match="conv3_bare.pth: weights do not fit a conv4"):  # names follow the paths
        _common(tiny_data, [conv3, conv4], tmp_path, "--arch-name", "conv4", "conv3")
    mode = ("--teacher-mode", "train", "--teacher-bn-group", "4")
    both = _common(tiny_data, [conv3, conv4], tmp_path, "--arch-name", "conv3", "conv4", *mode)
    assert [len(t.features) for t in both.teacher.teachers] == [12, 16] and both.teacher_meta["arch"] == "conv3"
    one3 = _common(tiny_data, [conv3], tmp_path, "--arch-name", "conv3", *mode)
    one4 = _common(tiny_data, [conv4], tmp_path, "--arch-name", "conv4", *mode)
    out = tmp_path / "soft"
    m = _relabel(tiny_data, [conv3, conv4], out, "--epochs", "1", "--arch-name", "conv3", "conv4", *mode)
    assert m["args"]["arch_name"] == ["conv3", "conv4"] and m["teacher"]["paths"] == [str(conv3), str(conv4)]
    plan, stored = SoftLabelStore(out).load(0)
    for b, x, _, _ in BatchMaker(both).batches(plan):
        a, c = (teacher_logits(t.teacher, x, both.device, False) for t in (one3, one4))
        mean = teacher_logits(both.teacher, x, both.device, False)
        assert torch.equal(mean, torch.stack([a, c]).mean(0))
        assert torch.equal(stored[plan.batch_slice(b)], mean.half().float())


def test_one_arch_name_with_one_teacher_is_recorded_as_before(tiny_data, tiny_teacher, tmp_path):
    """One --arch-name with one --teacher-path stays a plain string: the fingerprint and manifest of a run
    made before several names were accepted are unchanged (so it resumes, and is not relabelled)."""
    from common.run.state import fingerprint

    argv = _eval_args(tiny_data, tiny_teacher, tmp_path, "--arch-name", "conv3")
    args = train_mod.get_args_parser().parse_args(argv)
    assert args.arch_name == "conv3" and args.teacher_path == str(tiny_teacher) and args.teacher_paths is None
    assert fingerprint(args, train_mod.NOT_RESULT)["arch_name"] == "conv3"
    assert train_mod.get_args_parser().parse_args(argv[:-2]).arch_name is None
    m = _relabel(tiny_data, [tiny_teacher], tmp_path / "soft", "--epochs", "1", "--arch-name", "conv3")
    assert m["args"]["arch_name"] == "conv3" and m["fingerprint"]["arch_name"] == "conv3"
    assert m["teacher"] == {"paths": [str(tiny_teacher)], "weights": None, "mode": "eval", "bn_group": 0}


@pytest.mark.parametrize("module", ["relabel_eval", "relabel_eval.relabel"])
def test_arch_name_count_mismatch_is_one_line_before_torch(tiny_data, tiny_teacher, second_teacher, tmp_path,
                                                          module):
    """Another number of --arch-name than --teacher-path: exit 2, one error line naming both flags, no
    traceback, before torch is imported; main() called directly raises the same error."""
    from common.cli.errors import UserError
    from tests.test_cli_fast import HEAVY, run

    out = ["--val-dir", str(tiny_data / "val"), "--output", str(tmp_path / "res.json")] \
        if module == "relabel_eval" else ["--epochs", "1", "--output-dir", str(tmp_path / "soft")]
    argv = ["--syn-data-path", str(tiny_data / "train"), "--teacher-path", str(tiny_teacher), str(second_teacher),
            "--arch-name", "conv3", "conv3", "conv3", *out]
    res, imported, errors = run(["-m", module, *argv], tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("import time:") and ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert lines == errors and len(errors) == 1
    assert errors[0].startswith("error: --arch-name: 3 name(s) for 2 --teacher-path"), errors
    assert not imported & set(HEAVY) and not (tmp_path / "res.json").exists() and not (tmp_path / "soft").exists()
    main = train_mod.main if module == "relabel_eval" else relabel_mod.main
    with pytest.raises(UserError, match="--arch-name: 1 name"):
        main([*argv[:argv.index("--arch-name") + 2], *argv[argv.index("--arch-name") + 4:]])


# ----------------------------------------------------------------------------- 4. loss, lr stretch, EMA

def test_mse_and_mse_ce_equal_hand_computations():
    s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    t = torch.tensor([[0.0, 2.0, 1.0], [1.5, 1.0, 3.0]])
    assert soft_label_loss("mse", s, t, 20.0).item() == pytest.approx((1 + 0 + 1 + 1 + 4 + 0) / 6)
    y = torch.tensor([1, 2])
    mix = MixParams("cutmix", torch.tensor([1, 0]), 0.7, (0, 1, 0, 1))
    rows, labels = s.tolist(), [1, 2]

    def ce(i, c):
        return -math.log(math.exp(rows[i][c]) / sum(math.exp(v) for v in rows[i]))

    ce_y = [ce(i, labels[i]) for i in range(2)]
    ce_p = [ce(i, labels[1 - i]) for i in range(2)]  # the partner's label (perm [1, 0])
    hand_ce = 0.6 * sum(ce_y) / 2 + 0.4 * sum(ce_p) / 2
    assert mixed_ce(s, y, mix, 0.6).item() == pytest.approx(hand_ce, rel=1e-6)
    # EDC's mse_gt: the CE term is on each image's own label, the mixing ignored
    got = soft_label_loss("mse+ce", s, t, 20.0, y, mix, 0.6, 0.025).item()
    assert got == pytest.approx(7 / 6 + 0.025 * sum(ce_y) / 2, rel=1e-6)


def _history(tiny_data, tiny_teacher, tmp, *extra):
    tmp.mkdir()
    r = train_mod.main(_eval_args(tiny_data, tiny_teacher, tmp, *FLAGS, "--re-epochs", "3", "--eval-every", "1",
                                  *extra))
    return r["students"]["conv3"]["runs"][0]


def test_stretch_one_and_ema_zero_leave_the_protocol_unchanged(tiny_data, tiny_teacher, tmp_path):
    base = _history(tiny_data, tiny_teacher, tmp_path / "a")
    same = _history(tiny_data, tiny_teacher, tmp_path / "b", "--lr-stretch", "1", "--ema-decay", "0", "--kd-loss", "kl")
    strip = [{k: v for k, v in h.items() if k not in ("epoch_time_s", "images_per_s")} for h in base["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in ("epoch_time_s", "images_per_s")}
                     for h in same["history"]]
    new = _history(tiny_data, tiny_teacher, tmp_path / "c", "--lr-stretch", "2", "--ema-decay", "0.5")
    lr0 = base["history"][0]["lr"]
    assert [h["lr"] for h in new["history"]] == pytest.approx(
        [lr0 * 0.5 * (1 + math.cos(math.pi * e / 6 / 2)) for e in range(3)])
    assert "final_ema_top1" in new and "ema_val_top1" in new["history"][-1]
    assert "final_ema_top1" not in base


def test_ema_weights_follow_the_decay(tiny_data, tiny_teacher):
    model = torch.nn.Linear(2, 2)
    ema = train_mod.new_ema(model, 0.9)
    w0 = model.weight.detach().clone()
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert train_mod.new_ema(model, 0.0) is None


def test_ema_averages_parameters_and_validates_with_the_live_bn_statistics():
    # EDC averages parameters only and validates them with the live model's BN running statistics
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = train_mod.new_ema(model, 0.5)
    ema.update_parameters(model)
    model.train()
    model(torch.randn(8, 3) * 5 + 2)  # the student's BN statistics move; the EMA's copy does not average them
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.update_parameters(model)
    live = train_mod.ema_for_validation(ema, model)
    assert torch.equal(live[1].running_mean, model[1].running_mean)
    assert torch.equal(live[1].num_batches_tracked, model[1].num_batches_tracked)
    assert torch.allclose(live[0].weight, model[0].weight - 1.0)  # 0.5 x old + 0.5 x new, new = old + 2


# ----------------------------------------------------------------------------- 5. --protocol edc

def test_protocol_edc(tiny_data, tiny_teacher, tmp_path):
    tmp_path.joinpath("e").mkdir()
    r = train_mod.main(_eval_args(tiny_data, tiny_teacher, tmp_path / "e", "--workers", "0", "--re-epochs", "2",
                                  "--protocol", "edc"))
    p = r["protocol"]
    # EDC's "smoothing lr" (st = 2) is the half cosine every protocol here uses: no extra stretch
    assert (p["name"], p["kd_loss"], p["ce_weight"], p["lr_stretch"], p["ema_decay"]) == \
        ("edc", "mse+ce", 0.025, 1.0, 0.99)
    assert (p["bn_double_update"], p["aug"]["min_scale"]) == (False, 0.5)
    assert r["students"]["conv3"]["batch_size"] == 24  # EDC's 100, at most the 24 images
    assert "final_ema_top1" in r["students"]["conv3"]["runs"][0]


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("extra, needle", [
    (["--teacher-weights", "1", "2"], "--teacher-weights"),
    (["--teacher-bn-group", "4"], "--teacher-bn-group"),
    (["--ce-weight", "0.1"], "--ce-weight"),
    (["--no-image-aug", "--use-rand-augment"], "--use-rand-augment"),
    (["--no-image-aug", "--min-scale-crops", "0.5"], "--min-scale-crops"),
])
def test_bad_recipe_flags_are_one_line(tiny_data, tiny_teacher, tmp_path, capsys, extra, needle):
    from tests.test_relabel_train import _one_line_error

    msg = _one_line_error(capsys, _eval_args(tiny_data, tiny_teacher, tmp_path, *extra))
    assert needle in msg and not (tmp_path / "res.json").exists()


def test_mse_on_topk_labels_is_refused(tiny_data, tiny_teacher, tmp_path, capsys):
    from tests.test_relabel_train import _one_line_error

    _relabel(tiny_data, [tiny_teacher], tmp_path / "soft", "--epochs", "1", "--topk", "2")
    argv = _eval_args(tiny_data, tiny_teacher, tmp_path, "--label-mode", "fkd", "--soft-label-dir",
                      str(tmp_path / "soft"), "--kd-loss", "mse", "--re-epochs", "1")
    argv[argv.index("--teacher-path"):argv.index("--teacher-path") + 2] = []
    assert "top 2" in _one_line_error(capsys, argv)
    assert not state_dir(tmp_path / "res.json").exists()


# ----------------------------------------------------------------------------- 6. resume with every option on

def test_sigkill_relabel_with_every_option_equals_uninterrupted(tiny_data, tiny_teacher, second_teacher, tmp_path):
    from tests.test_runstate import kill_midway, same

    argv = ["--syn-data-path", str(tiny_data / "train"), "--teacher-path", str(tiny_teacher), str(second_teacher),
            "--teacher-weights", "1", "2", "--teacher-mode", "train", "--teacher-bn-group", "4", "--label-keep", "0.5",
            "--topk", "2", "--epochs", "8", *FLAGS, "--output-dir"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed subprocess (float sums depend on the thread count)
    try:
        relabel_mod.main(argv + [str(tmp_path / "ref")])
        out = tmp_path / "killed"
        kill_midway("relabel_eval.relabel", argv + [str(out)],
                    lambda: (state_dir(out) / "work" / "epoch_0001.pt").exists())
        assert not (out / "manifest.json").exists()
        relabel_mod.main(argv + [str(out)])
    finally:
        torch.set_num_threads(n)
    for e in range(8):
        a = torch.load(tmp_path / "ref" / f"epoch_{e:04d}.pt", weights_only=True)
        b = torch.load(out / f"epoch_{e:04d}.pt", weights_only=True)
        assert same(a, b)
    ref, got = (json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "ref", out))
    assert ref["label_bytes"] == got["label_bytes"] and ref["records"] == got["records"]
    assert not state_dir(out).exists()


def test_resumed_training_with_every_option_equals_uninterrupted(tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "soft"
    _relabel(tiny_data, [tiny_teacher], out, "--epochs", "3", "--label-keep", "0.5")
    store = SoftLabelStore(out)
    args = train_mod.get_args_parser().parse_args(_eval_args(tiny_data, tiny_teacher, tmp_path, *FLAGS))
    common = resolve_common(args, need_teacher=True)
    val = train_mod.ValSet(tiny_data / "val", common.data.classes, 32, common.mean, common.std)
    maker = BatchMaker(common)
    cfg = train_mod.TrainConfig(epochs=3, batch_size=10, lr=1e-3, temperature=20.0, label_mode="fkd", eval_every=1,
                                kd_loss="mse+ce", ce_weight=0.025, lr_stretch=2.0, ema_decay=0.9)
    full, full_model = train_mod.train_student(common, maker, val, "conv3", 3, cfg, store=store)

    def crash(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_student(common, maker, val, "conv3", 3, cfg, state_path=state, store=store, on_epoch_end=crash)
    resumed, resumed_model = train_mod.train_student(common, maker, val, "conv3", 3, cfg, state_path=state,
                                                     store=store)
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    keys = ("loss", "lr", "val_top1", "ema_val_top1", "ema_val_top5")
    assert [[h[k] for k in keys] for h in full["history"]] == [[h[k] for k in keys] for h in resumed["history"]]


# ------------------------------------------------------------------ --no-image-aug (ARS without augmentation)

def test_no_image_aug_uses_every_image_whole_and_unflipped_with_the_same_rest_of_the_epoch():
    from relabel_eval.plan import AugConfig, make_epoch_plan

    sizes = np.array([[32, 32], [40, 30], [28, 36]] * 4)
    aug = AugConfig(32, mix_type="cutmix")
    plain = AugConfig(32, mix_type="cutmix", plain=True)
    a, b = make_epoch_plan(7, 3, sizes, 4, aug), make_epoch_plan(7, 3, sizes, 4, plain)
    assert (b.crops == np.concatenate([np.zeros((12, 2), int), sizes[b.order]], axis=1)).all()
    assert not b.flips.any() and a.flips.any()
    for k in ("order", "seeds", "perms", "lams", "boxes"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    # the flag is absent from the configuration unless set (older fingerprints stay valid)
    assert "plain" not in aug.to_dict() and plain.to_dict()["plain"] is True
    assert AugConfig.from_dict(plain.to_dict()) == plain and AugConfig.from_dict(aug.to_dict()) == aug
