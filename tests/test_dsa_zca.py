"""DSA ops (common.ops.dsa) and ZCA whitening (common.ops.zca)."""
from __future__ import annotations

import pytest
import torch

from common.ops.dsa import FAMILIES, DSAParams, dsa, make_generator, parse_strategy
from common.ops.zca import ZCA


def _x(n=4, seed=0, dtype=torch.float32):
    return torch.randn(n, 3, 8, 8, generator=make_generator(seed), dtype=dtype)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_reach_images_through_every_op(family):
    x = _x().requires_grad_(True)
    y = dsa(x, family, make_generator(1))
    assert y.shape == x.shape
    (y * torch.arange(y.numel()).view_as(y).float()).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_seed_same_draw_and_different_seed_differs():
    x = _x(8)
    for family in FAMILIES:
        a = dsa(x, family, make_generator(3))
        b = dsa(x, family, make_generator(3))
        assert torch.equal(a, b), family
    outs = [dsa(x, "color_crop_cutout_flip_scale_rotate", make_generator(s)) for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_shared_draw_gives_identical_outputs_for_identical_inputs():
    one = _x(1)
    x = one.repeat(5, 1, 1, 1)
    for family in FAMILIES:
        y = dsa(x, family, make_generator(7), shared=True)
        assert torch.allclose(y, y[:1].expand_as(y)), family


def test_ops_match_hand_computed_values():
    x = _x(2)
    p = DSAParams()
    g = make_generator(5)
    r = torch.rand(2, generator=make_generator(5))
    from common.ops.dsa import rand_brightness, rand_contrast, rand_crop, rand_flip
    torch.testing.assert_close(rand_brightness(x, p, g), x + (r - 0.5).view(-1, 1, 1, 1) * p.brightness)
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    torch.testing.assert_close(rand_contrast(x, p, make_generator(5)), (x - m) * (r.view(-1, 1, 1, 1) + 0.5) + m)
    f = rand_flip(x, p, make_generator(5))
    for i in range(2):
        torch.testing.assert_close(f[i], x[i].flip(2) if r[i] < 0.5 else x[i])
    # crop: shift range is int(8 * 0.125 + 0.5) = 1; a shift of +1 in both axes moves content up-left
    g = make_generator(0)
    tx = torch.randint(-1, 2, (2,), generator=g)
    ty = torch.randint(-1, 2, (2,), generator=g)
    c = rand_crop(x, p, make_generator(0))
    for i in range(2):
        xp = torch.nn.functional.pad(x[i], [1, 1, 1, 1])
        a, b = int(tx[i]) + 1, int(ty[i]) + 1
        torch.testing.assert_close(c[i], xp[:, a:a + 8, b:b + 8])


def test_scale_and_rotate_identity_at_neutral_params():
    x = _x(2)
    p = DSAParams(ratio_scale=1.0, ratio_rotate=0.0)
    from common.ops.dsa import rand_rotate, rand_scale
    torch.testing.assert_close(rand_scale(x, p, make_generator(0)), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rand_rotate(x, p, make_generator(0)), x, atol=1e-5, rtol=1e-5)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError):
        parse_strategy("color_blur")
    assert parse_strategy("none") == []


def test_zca_round_trip_whitening_and_kornia_equivalence(tmp_path):
    from kornia.enhance import ZCAWhitening

    g = make_generator(0)
    x = torch.randn(64, 3, 4, 4, generator=g) @ torch.randn(4, 4, generator=g)
    zca = ZCA.fit(x)
    z = zca.whiten(x)
    torch.testing.assert_close(zca.inverse(z), x, atol=1e-4, rtol=1e-4)
    ref = ZCAWhitening(eps=0.1, compute_inv=True)
    ref.fit(x)
    torch.testing.assert_close(z, ref(x), atol=1e-5, rtol=1e-5)
    zca.save(tmp_path / "zca.pt")
    torch.testing.assert_close(ZCA.load(tmp_path / "zca.pt").whiten(x), z)
    # whitening decorrelates: off-diagonal covariance much smaller than before
    flat = z.reshape(64, -1)
    cov = torch.cov(flat.T)
    off = cov - torch.diag(torch.diag(cov))
    before = torch.cov(x.reshape(64, -1).T)
    assert off.abs().mean() < 0.2 * (before - torch.diag(torch.diag(before))).abs().mean()
    xg = x[:2].clone().requires_grad_(True)
    zca.whiten(xg).sum().backward()
    assert xg.grad.abs().sum() > 0
