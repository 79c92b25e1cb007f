"""relabel_eval --protocol: the BN double update (DELT/RDED's extra forward), RDED's ShufflePatches
and crop scale, and their resolution and recording."""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.cli.errors import UserError
from models import build_model
from relabel_eval import train as train_mod
from relabel_eval.augment import SampleTransform, shuffle_patches, shuffled_sizes, strip_bounds
from relabel_eval.eval_protocols import PROTOCOLS, double_update_momentum, resolve_aug
from relabel_eval.mix import MixParams, apply_mix, draw_mix
from relabel_eval.plan import AugConfig, make_epoch_plan
from relabel_eval.protocol import apply_bn_double_update


def _bn_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, torch.nn.BatchNorm2d)]


def test_bn_double_update_equals_the_released_extra_forward():
    """The released loop per batch: CutMix in place, then (no grad, train mode) student(images) on the
    mixed batch, then the training forward student(mix_images) on the SAME tensor with the SAME weights
    (optimizer.step comes after both), so both forwards see identical batch statistics. Two BN updates
    with momentum 0.1 then equal one with 0.19 exactly (up to float rounding): compared here over two
    optimisation steps, running stats and weights."""
    torch.manual_seed(0)
    released = build_model("conv3", 5, 16).train()
    cheap = copy.deepcopy(released)
    changed = apply_bn_double_update(cheap)
    assert len(changed) == 3 and all(v == pytest.approx(0.19) for v in changed.values())
    plain = copy.deepcopy(released)  # PyTorch's default 0.1, to show the comparison can fail
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (released, cheap, plain)]
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = torch.randn(8, 3, 16, 16)
        m = draw_mix(rng, 8, 16, 16, "cutmix", 1.0)
        xm = apply_mix(x, MixParams("cutmix", torch.from_numpy(m["perm"]), m["lam"], m["box"]))
        target = torch.softmax(torch.randn(8, 5), 1)
        with torch.no_grad():
            released(xm)  # the extra forward (logs train accuracy in the release)
        for model, opt in zip((released, cheap, plain), opts):
            opt.zero_grad()
            loss = F.kl_div(F.log_softmax(model(xm) / 20, 1), target, reduction="batchmean")
            loss.backward()
            opt.step()
    for (mr, vr), (mc, vc), (mp, _) in zip(_bn_stats(released), _bn_stats(cheap), _bn_stats(plain)):
        assert torch.allclose(mr, mc, rtol=1e-5, atol=1e-6) and torch.allclose(vr, vc, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(mr, mp, rtol=1e-3, atol=1e-4)
    for pr, pc in zip(released.parameters(), cheap.parameters()):
        assert torch.allclose(pr, pc, rtol=1e-5, atol=1e-6)  # batch-stat forward: same gradients
    assert double_update_momentum(0.1) == pytest.approx(1 - 0.9 ** 2)


def _released_shuffle_weight(img, factor):
    """RDED's ShufflePatches.shuffle_weight, transcribed (it draws with python's random.shuffle)."""
    h, w = img.shape[1:]
    tw = w // factor
    patches = []
    for i in range(factor):
        i = i * tw
        patches.append(img[..., i:i + tw] if i != factor - 1 else img[..., i:])
    random.shuffle(patches)
    return torch.cat(patches, -1)


@pytest.mark.parametrize("factor,h,w", [(2, 8, 8), (2, 9, 7), (3, 12, 10), (1, 5, 6)])
def test_shuffle_patches_matches_the_release(factor, h, w):
    img = torch.arange(3 * h * w, dtype=torch.float32).view(3, h, w)
    random.seed(7)
    ref = _released_shuffle_weight(img, factor)
    ref = _released_shuffle_weight(ref.permute(0, 2, 1), factor).permute(0, 2, 1)
    random.seed(7)  # the same draws as permutations of strip indices
    perm_w = list(range(factor))
    random.shuffle(perm_w)
    perm_h = list(range(factor))
    random.shuffle(perm_h)
    out = shuffle_patches(img, factor, perm_w, perm_h)
    assert torch.equal(out, ref)
    assert tuple(out.shape[1:]) == tuple(shuffled_sizes(np.array([[h, w]]), factor)[0])


def test_shuffle_patches_hand_computed():
    img = torch.arange(16.0).view(1, 4, 4)
    out = shuffle_patches(img, 2, [1, 0], [1, 0])  # swap left/right halves, then top/bottom halves
    assert out[0].tolist() == [[10, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5]]
    assert strip_bounds(7, 2) == [(0, 3), (3, 6)]  # the release drops the odd column
    assert strip_bounds(5, 1) == [(0, 5)]


def test_protocol_resolution():
    delt, rded = PROTOCOLS["delt"], PROTOCOLS["rded"]
    d = resolve_aug(delt, None, None, 1.0)
    assert (d.min_scale, d.max_scale, d.shuffle_factor) == (0.08, 1.0, 1)
    a = resolve_aug(delt, 2, 0.25, 1.0)
    assert (a.min_scale, a.max_scale, a.shuffle_factor) == (0.25, 1.0, 1)  # delt ignores --factor
    b = resolve_aug(rded, 2, None, 1.0)
    assert (b.min_scale, b.max_scale, b.shuffle_factor) == (0.5, 1.0, 2)
    with pytest.raises(ValueError, match="needs --factor"):
        resolve_aug(rded, None, None, 1.0)
    with pytest.raises(ValueError, match="--min-scale-crops"):
        resolve_aug(rded, 2, 0.3, 1.0)
    with pytest.raises(ValueError, match="need 0 < min"):
        resolve_aug(delt, None, 0.9, 0.5)
    assert delt.bn_double_update and rded.bn_double_update


def test_rded_plan_and_transform_on_odd_sizes():
    cfg = AugConfig(16, 0.5, 1.0, shuffle_factor=2)
    sizes = np.array([[33, 31], [20, 20]])
    plan = make_epoch_plan(3, 0, sizes, 2, cfg)
    eff = shuffled_sizes(sizes, 2)
    assert eff.tolist() == [[32, 30], [20, 20]]
    for k, i in enumerate(plan.order):  # every crop box fits the shuffled image
        top, left, h, w = plan.crops[k]
        assert top + h <= eff[i][0] and left + w <= eff[i][1] and h * w >= 0.5 * eff[i].prod() * 0.9
    tf = SampleTransform(16, shuffle_factor=2)
    rec = plan.records(0)
    arr = np.random.default_rng(0).integers(0, 255, size=(*sizes[rec[0][0]], 3), dtype=np.uint8)
    a, b = tf(arr, rec[0]), tf(arr, rec[0])
    assert a.shape == (3, 16, 16) and torch.equal(a, b)  # the strip orders come from the image's plan seed


def test_cli_records_protocol_and_bn(tiny_data, tiny_teacher, tmp_path):
    base = ["--syn-data-path", str(tiny_data / "train"), "--val-dir", str(tiny_data / "val"), "--teacher-path",
            str(tiny_teacher), "--workers", "0", "--device", "cpu", "--re-epochs", "1", "--ipc", "2"]
    res = train_mod.main([*base, "--protocol", "rded", "--factor", "2", "--output", str(tmp_path / "r.json")])
    p = json.loads((tmp_path / "r.json").read_text())["protocol"]
    assert (p["name"], p["factor"], p["bn_double_update"]) == ("rded", 2, True)
    assert (p["aug"]["min_scale"], p["aug"]["shuffle_factor"]) == (0.5, 2)
    assert res["manifest"]
    res = train_mod.main([*base, "--no-bn-double-update", "--output", str(tmp_path / "d.json")])
    p = res["protocol"]
    assert (p["name"], p["bn_double_update"], p["aug"]["min_scale"], p["aug"]["shuffle_factor"]) == \
        ("delt", False, 0.08, 1)
    with pytest.raises(UserError, match="needs --factor"):
        train_mod.main([*base, "--protocol", "rded", "--output", str(tmp_path / "x.json")])
