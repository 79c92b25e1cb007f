"""The optimisation loop: same images as the released-style loop, Adam(0.5, 0.9), active images only, clamp."""
from __future__ import annotations

import random

import pytest
import torch

from common.data.transforms import pixel_bounds
from models import build_model
from recover.augment import crop_flip_roll
from recover.loop import ADAM_BETAS, LoopConfig, NonFiniteLoss, prepare_teacher, recover_batch
from recover.reference import reference_recover_batch
from recover.schedule import Schedule, early_late_schedule

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = build_model("conv3", 3, 16)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 16, 16) * 0.5)  # BN running statistics
    return prepare_teacher(model.eval(), channels_last=False)


def bounds():
    lo, hi = pixel_bounds(MEAN, STD)
    return lo.view(1, 3, 1, 1), hi.view(1, 3, 1, 1)


def real_like(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1)


def test_equals_released_style_loop(teacher):
    """Same draws, same schedule: our fused loop and the released-style loop give the same images
    (this pins Adam's betas, the lr cosine, the loss, the crop curriculum, the clamp, the last iterate)."""
    cfg = LoopConfig(input_size=16, lr=0.2, r_bn=0.05, first_bn_multiplier=10.0, jitter=2, milestone=1.0,
                     channels_last=False)
    items = [(0, i) for i in range(4)] + [(1, i) for i in range(4)]
    schedule = early_late_schedule(items, 4, 3, [2, 2])
    x0, labels = real_like(8), torch.tensor([c for c, _ in items])
    ours = recover_batch(teacher, x0, labels, schedule, cfg, random.Random(5), bounds())
    rng = random.Random(5)
    ref = reference_recover_batch(teacher, x0, labels, schedule, cfg.lr, cfg.r_bn, cfg.first_bn_multiplier,
                                  "cosine", 1.0, MEAN, STD,
                                  lambda x, mc: crop_flip_roll(x, 16, mc, 2, rng))
    assert not torch.equal(ours.images, x0)
    assert torch.allclose(ours.images, ref, atol=1e-4, rtol=1e-4)
    assert ours.losses.shape == (schedule.total_iterations,) and torch.isfinite(ours.losses).all()
    assert ADAM_BETAS == (0.5, 0.9)


def test_adam_betas_and_lr_by_hand(teacher):
    """Three steps written out: Adam with betas (0.5, 0.9), eps 1e-8, bias correction, lr cosine over 3."""
    cfg = LoopConfig(input_size=16, lr=0.05, r_bn=0.0, jitter=1, channels_last=False)
    x0, y = real_like(2), torch.tensor([0, 1])
    res = recover_batch(teacher, x0, y, Schedule(3, [[0, 1]], 2), cfg, random.Random(7), bounds())
    rng, x = random.Random(7), x0.clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    b1, b2 = 0.5, 0.9
    for t, lr in enumerate([0.05, 0.05 * 0.75, 0.05 * 0.25], start=1):  # 0.5 (1 + cos(pi t / 3)) lr
        xg = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(teacher(crop_flip_roll(xg, 16, 0.08, 1, rng)), y)
        g, = torch.autograd.grad(loss, xg)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + 1e-8)
        x = torch.max(torch.min(x, bounds()[1]), bounds()[0])
    assert ADAM_BETAS == (b1, b2)
    assert torch.allclose(res.images, x, atol=1e-5)
    assert not torch.allclose(res.images, x0, atol=1e-3)


def test_only_active_images_change_and_clamp(teacher):
    cfg = LoopConfig(input_size=16, lr=0.5, r_bn=0.05, jitter=1, channels_last=False)
    x0 = real_like(4)
    # a schedule stopped after round 0 of 2: images 2 and 3 have not joined yet
    res = recover_batch(teacher, x0, torch.tensor([0, 0, 1, 1]), Schedule(4, [[0, 1]], 4), cfg, random.Random(0),
                        bounds())
    assert torch.equal(res.images[2:], x0[2:])
    assert not torch.equal(res.images[0], x0[0]) and not torch.equal(res.images[1], x0[1])
    # noise init starts outside the valid range; every image ends inside it (clamp after each step)
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    res = recover_batch(teacher, noise, torch.tensor([0, 0, 1, 1]), Schedule(2, [[0, 1, 2, 3]], 4), cfg,
                        random.Random(0), bounds())
    lo, hi = bounds()
    assert (res.images >= lo - 1e-6).all() and (res.images <= hi + 1e-6).all()
    assert (res.images == hi).any() and (res.images == lo).any()


def test_channels_last_and_per_image_augment_run(teacher):
    cfg = LoopConfig(input_size=16, lr=0.1, r_bn=0.01, jitter=2, per_image_augment=True, channels_last=True)
    res = recover_batch(prepare_teacher(teacher, channels_last=True), real_like(3), torch.tensor([0, 1, 2]),
                        Schedule(2, [[0, 1, 2]], 3), cfg, random.Random(0), bounds())
    teacher.to(memory_format=torch.contiguous_format)
    assert res.images.shape == (3, 3, 16, 16) and torch.isfinite(res.images).all()


def test_non_finite_loss_stops(teacher):
    x0 = real_like(2)
    x0[1] = float("nan")
    cfg = LoopConfig(input_size=16, lr=0.1, r_bn=0.01, channels_last=False)
    with pytest.raises(NonFiniteLoss) as exc:
        recover_batch(teacher, x0, torch.tensor([0, 1]), Schedule(3, [[0], [0, 1]], 2), cfg, random.Random(0),
                      bounds(), check_every=2)
    assert exc.value.iteration == 3  # image 1 joins at round 1 (iteration 3)
