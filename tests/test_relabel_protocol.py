"""relabel_eval: the protocol's small functions against hand-computed values."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.train.optim import split_decay_params
from models import build_model
from relabel_eval.augment import (
    SampleTransform,
    build_rand_augment,
    posterize_like_pillow12,
    sample_crops,
    seeded_global_rng,
)
from relabel_eval.baselines import dd_ars, dd_ranking
from relabel_eval.diversity import class_centroids, inter_class_cosine, intra_class_cosine
from relabel_eval.mix import MixParams, apply_mix, box_lambda, cutmix_box, draw_mix, kd_loss, mixed_ce, target_lambda
from relabel_eval.plan import AugConfig, make_epoch_plan
from relabel_eval.protocol import (
    adamw_lr_for,
    auto_batch_size,
    eval_epochs,
    lr_factor,
    make_optimizer,
    make_scheduler,
    mean_std,
    released_special_case,
)


def test_lr_factor_half_cosine_values():
    assert lr_factor(0, 300) == 1.0
    assert lr_factor(150, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.853553
    assert lr_factor(150, 300) == pytest.approx(0.8535533906)
    assert lr_factor(300, 300) == pytest.approx(0.5)  # a half cosine ends at 0.5x
    assert lr_factor(301, 300) == 0.0
    assert lr_factor(75, 300, cos=False) == pytest.approx(0.75)
    # --cos full (FADRM at IPC 50): a whole cosine, 0.5 at half-way, 0 at the end
    assert lr_factor(150, 300, cos="full") == pytest.approx(0.5)
    assert lr_factor(75, 300, cos="full") == pytest.approx(0.8535533906)
    assert lr_factor(300, 300, cos="full") == pytest.approx(0.0)


def test_cos_flag_accepts_full_true_and_false():
    from relabel_eval.args import get_args_parser

    parse = get_args_parser().parse_args
    base = ["--syn-data-path", "S", "--val-dir", "V"]
    assert [parse(base + extra).cos for extra in ([], ["--cos"], ["--cos", "full"], ["--cos", "false"])] == \
        [True, True, "full", False]


def test_scheduler_steps_per_epoch():
    model = build_model("conv3", 3, 32)
    opt = make_optimizer(model, adamw_lr=1e-3)
    sched = make_scheduler(opt, 4)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 8)) for e in range(5)]
    assert lrs == pytest.approx(expected)
    assert lrs[4] == pytest.approx(0.5e-3)


def test_parameter_groups_no_decay_on_bn_and_bias():
    model = build_model("conv3", 10, 32)
    decay, no_decay = split_decay_params(model)
    assert decay == ["features.0.weight", "features.4.weight", "features.8.weight", "classifier.weight"]
    assert "features.1.weight" in no_decay and "features.1.bias" in no_decay  # BatchNorm scale and shift
    assert "classifier.bias" in no_decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    opt = make_optimizer(model, adamw_lr=2e-3, adamw_weight_decay=0.01)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and opt.param_groups[0]["lr"] == 2e-3
    sgd = make_optimizer(model, sgd=True, learning_rate=0.1, weight_decay=5e-4)
    assert [g["weight_decay"] for g in sgd.param_groups] == [5e-4, 0.0]


def test_lr_table():
    assert adamw_lr_for("conv3") == (1e-3, "table")
    assert adamw_lr_for("mobilenet_v2") == (2.5e-3, "table")
    assert adamw_lr_for("efficientnet_b0") == (2e-3, "table")
    assert adamw_lr_for("vgg11") == (5e-4, "table")
    assert adamw_lr_for("vit_b_16") == (1e-4, "table")
    assert adamw_lr_for("vit_b_32") == (1e-4, "prefix")
    assert adamw_lr_for("resnet18_modified")[0] == 1e-3
    assert released_special_case("cifar100", "conv3", "conv3") == {"batch_size": 25, "adamw_lr": 2e-3}
    assert released_special_case("cifar10", "conv3", "conv3") == {}


@pytest.mark.parametrize("ipc,classes,family,expected", [
    (10, 10, "custom", 50), (20, 10, "cifar", 50), (1, 10, "cifar", 10), (50, 10, "imagenet", 100),
    (30, 10, "cifar", 100), (60, 10, "cifar", 100), (100, 10, "cifar", 100),
    (10, 100, "cifar", 100), (50, 1000, "imagenet", 200), (1, 1000, "imagenet", 20),
    (10, 200, "tiny", 100), (50, 200, "tiny", 100), (1, 10, "tiny", 10),   # tiny: 100, capped at IPC x classes
    (5, 10, "custom", 10),    # nearest row: IPC 1
    (15, 10, "custom", 50),   # tie between 10 and 20 -> 20 -> 50
    (25, 10, "custom", 100),  # tie between 20 and 30 -> 30 -> 100
    (200, 10, "custom", 100), (2, 3, "custom", 6), (10, 4, "custom", 40),
])
def test_batch_size_table(ipc, classes, family, expected):
    assert auto_batch_size(ipc, classes, family) == expected


def test_eval_epochs_and_mean_std():
    assert eval_epochs(25, 10) == [9, 19, 24]
    assert eval_epochs(20, 10) == [9, 19]
    assert eval_epochs(3, 10) == [2]
    m, s = mean_std([40.0, 42.0, 44.0])
    assert m == 42.0 and s == pytest.approx(2.0)  # sample std (ddof=1)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_cutmix_box_and_lambda():
    assert cutmix_box(32, 32, 0.75, 16, 16) == (8, 24, 8, 24)  # side int(32 * 0.5) = 16
    assert box_lambda((8, 24, 8, 24), 32, 32) == pytest.approx(0.75)
    assert cutmix_box(32, 32, 0.75, 0, 31) == (0, 8, 23, 32)  # clipped at the borders
    assert box_lambda((0, 8, 23, 32), 32, 32) == pytest.approx(1 - 8 * 9 / 1024)
    assert cutmix_box(32, 32, 1.0, 5, 5) == (5, 5, 5, 5)  # lambda 1: empty box
    # the draw: permutation, then lambda ~ Beta(1, 1), then the centre
    rng, ref = np.random.default_rng(7), np.random.default_rng(7)
    m = draw_mix(rng, 6, 32, 32, "cutmix")
    perm, lam = ref.permutation(6), ref.beta(1.0, 1.0)
    assert (m["perm"] == perm).all() and m["lam"] == lam
    assert m["box"] == cutmix_box(32, 32, lam, int(ref.integers(32)), int(ref.integers(32)))
    lams = [draw_mix(rng, 2, 8, 8, "cutmix")["lam"] for _ in range(2000)]
    assert np.mean(lams) == pytest.approx(0.5, abs=0.03) and np.var(lams) == pytest.approx(1 / 12, abs=0.01)


def test_apply_cutmix_and_mixup():
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)
    perm = torch.tensor([1, 2, 3, 0])
    mix = MixParams("cutmix", perm, 0.75, (2, 6, 1, 5))
    out = apply_mix(x, mix)
    assert torch.equal(out[:, :, 2:6, 1:5], x[perm][:, :, 2:6, 1:5])
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 1:5] = False
    assert torch.equal(out[..., mask], x[..., mask])
    assert torch.equal(x, torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8))  # input untouched
    assert target_lambda(mix, 8, 8) == pytest.approx(1 - 16 / 64)
    mu = apply_mix(x, MixParams("mixup", perm, 0.3))
    assert torch.allclose(mu, 0.3 * x + 0.7 * x[perm])


def test_kd_loss_matches_manual_kl():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7) * 3, torch.randn(5, 7) * 3
    T = 4.0
    p = torch.softmax(t / T, 1)
    log_q = torch.log_softmax(s / T, 1)
    manual = (p * (p.log() - log_q)).sum() / 5  # batchmean, no T^2
    assert kd_loss(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(t, t, 20.0).item() == pytest.approx(0.0, abs=1e-6)


def test_mixed_ce():
    torch.manual_seed(1)
    logits, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    perm = torch.tensor([3, 0, 1, 2])
    mix = MixParams("cutmix", perm, 0.5, (0, 4, 0, 4))
    lam = target_lambda(mix, 8, 8)  # 1 - 16/64
    expect = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert mixed_ce(logits, y, mix, lam).item() == pytest.approx(expect.item())
    assert mixed_ce(logits, y, MixParams("none"), 1.0).item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_crop_boxes_inside_image_and_in_scale():
    rng = np.random.default_rng(0)
    sizes = np.array([[32, 32]] * 300 + [[64, 48]] * 300)
    boxes = sample_crops(rng, sizes, (0.25, 1.0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()
    frac = h * w / (sizes[:, 0] * sizes[:, 1])
    assert frac.min() >= 0.2 and frac.max() <= 1.0
    assert len({tuple(b) for b in boxes}) > 200  # really random


def test_epoch_plan_is_a_function_of_seed_and_epoch():
    cfg = AugConfig(32, 0.25, 1.0, mix_type="cutmix")
    sizes = np.full((23, 2), 32)
    a, b = make_epoch_plan(3, 1, sizes, 10, cfg), make_epoch_plan(3, 1, sizes, 10, cfg)
    c = make_epoch_plan(3, 2, sizes, 10, cfg)
    for k in ("order", "crops", "flips", "seeds", "perms", "lams", "boxes"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.order, c.order)
    assert a.num_batches == 3 and [len(a.records(i)) for i in range(3)] == [10, 10, 3]
    assert sorted(a.order.tolist()) == list(range(23))
    assert sorted(a.perms[20:].tolist()) == [0, 1, 2]  # the in-batch permutation of the last batch


@pytest.mark.parametrize("config", ["rand-m10-n3-mstd1.0", "rand-m1-n4-mstd1.0", "rand-m0-n4",
                                    "rand-m10-n4-inc1-mstd2", "rand-m30-n4-mstd5-mmax30-inc1",
                                    "rand-m6-n2-mstd1.0"])
def test_rand_augment_any_magnitude(config):
    """timm asks Pillow 13 to posterize to 0 (or fewer) bits at these magnitudes; it must not crash."""
    ra = build_rand_augment(config, 32)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for seed in range(300):
        with seeded_global_rng(seed):
            out = ra(img)
        assert out.size == (32, 32) and out.mode == "RGB"


def test_posterize_guard_and_seeded_rand_augment():
    img = Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8))
    assert np.asarray(posterize_like_pillow12(img, 0)).max() == 0  # Pillow <= 12 result for 0 bits
    assert np.asarray(posterize_like_pillow12(img, -2)).max() == 0
    assert np.asarray(posterize_like_pillow12(img, 1)).max() == 128
    assert posterize_like_pillow12(img, 8) is img
    tf = SampleTransform(32, "rand-m9-n3-mstd1.0", erasing_p=0.5)
    arr = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    state = random.getstate()
    x1 = tf(arr, (0, 2, 3, 20, 24, True, 123))
    assert random.getstate() == state  # the global RNG is left as it was
    assert torch.equal(x1, tf(arr, (0, 2, 3, 20, 24, True, 123)))  # same seed, same image
    assert not torch.equal(x1, tf(arr, (0, 2, 3, 20, 24, True, 124)))
    assert x1.shape == (3, 32, 32)


def test_dd_ranking_known_numbers():
    s = dd_ranking(syn_soft=0.43, random_soft=0.30, syn_hard=0.20, full_hard=0.60)
    assert s["IOR"] == pytest.approx(0.13)
    assert s["HLR"] == pytest.approx(0.40)
    assert s["alpha"] == pytest.approx(-0.135)
    assert s["LRS"] == pytest.approx((math.exp(-0.135) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert s["LRS"] == pytest.approx(0.215213, abs=1e-6)
    denom = math.e - math.exp(-1)
    assert dd_ranking(1.0, 0.0, 1.0, 1.0)["LRS"] == pytest.approx((math.exp(0.5) - math.exp(-1)) / denom)
    assert dd_ranking(0.5, 0.5, 0.5, 0.5)["LRS"] == pytest.approx((1 - math.exp(-1)) / denom)


def test_diversity_scores():
    f = torch.tensor([[1.0, 2.0, 3.0]] * 4)
    labels = torch.tensor([0, 0, 1, 1])
    assert intra_class_cosine(f, labels, 2).tolist() == pytest.approx([1.0, 1.0])  # identical features -> 1
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    intra = intra_class_cosine(g, labels, 2)
    assert intra[0].item() == pytest.approx(1 / math.sqrt(2))  # orthogonal pair: both at 45 deg to the centroid
    assert intra[1].item() == pytest.approx(1.0)
    cents = class_centroids(g, labels, 2)  # (0.5, 0.5) and (1, 0)
    assert inter_class_cosine(cents) == pytest.approx(1 / math.sqrt(2))
    assert inter_class_cosine(torch.eye(3)) == pytest.approx(0.0)


def test_released_script_flags_parse():
    """The DELT and RDED validation commands parse (plus --teacher-path / paths, which they hard-code)."""
    from relabel_eval.context import student_archs
    from relabel_eval.train import get_args_parser

    delt = ("--wandb-project P --wandb-api-key K --val-dir /v --syn-data-path /s --exp-name E --subset imagenet-1k "
            "--arch-name resnet18 --use-rand-augment --rand-augment-config rand-m6-n2-mstd1.0 --random-erasing-p 0.0 "
            "--min-scale-crops 0.25 --max-scale-crops 1.0 --ipc 50 --val-ipc 50 --stud-name resnet18 --re-epochs 300 "
            "--gpu-device 0 --seed 3407 --teacher-path /t.pth").split()
    a = get_args_parser().parse_args(delt)
    assert (a.dataset, a.ipc, a.min_scale_crops, a.seed, a.use_rand_augment) == ("imagenet-1k", 50, 0.25, 3407, True)
    rded = ("--subset tinyimagenet --arch-name conv4 --factor 1 --num-crop 5 --mipc 300 --ipc 10 --stud-name conv4 "
            "--re-epochs 300 --syn-data-path /s --val-dir /v --teacher-path /t.pth --mix-type cutmix --cos True "
            "--re-batch-size 0 --adamw-lr 0 --sgd -lr 0.1 --momentum 0.9 --weight-decay 1e-4 --temperature 20").split()
    b = get_args_parser().parse_args(rded)
    assert b.cos is True and b.sgd and b.learning_rate == 0.1 and b.factor == 1
    assert get_args_parser().parse_args(rded + ["--cos", "false"]).cos is False
    assert get_args_parser().parse_args(rded + ["--mix-type", "None"]).mix_type == "none"
    assert student_archs(["conv3,resnet18_modified", "mobilenet_v2"], None) == ["conv3", "resnet18_modified",
                                                                                 "mobilenet_v2"]
    assert student_archs(None, "conv3") == ["conv3"]


def test_dd_ars_hand_computed():
    # syn beats random by 0.10 with augmentation and by 0.30 without: beta = 0.5 * 0.1 + 0.5 * 0.3 = 0.2
    s = dd_ars(syn_aug=0.50, random_aug=0.40, syn_noaug=0.45, random_noaug=0.15)
    assert s["with_aug"] == pytest.approx(0.10) and s["without_aug"] == pytest.approx(0.30)
    assert s["beta"] == pytest.approx(0.2)
    assert s["ARS"] == pytest.approx((math.exp(0.2) - math.exp(-1)) / (math.e - math.exp(-1)))
    # equal to random both ways: beta 0; the weight moves beta between the two differences
    assert dd_ars(0.3, 0.3, 0.2, 0.2)["ARS"] == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    assert dd_ars(0.5, 0.4, 0.45, 0.15, weight=1.0)["beta"] == pytest.approx(0.1)
