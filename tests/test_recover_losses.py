"""The BN-statistic loss equals a direct computation on a small BatchNorm network."""
from __future__ import annotations

import torch
from torch import nn

from recover.losses import BNStatLoss, bn_layers, bn_stat_term
from recover.reference import ReleasedBNHook


def small_bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return net.eval()


def direct_loss(net, x, multiplier):
    """By hand: BN inputs, biased variance via the definition, L2 norms, first-BN weight."""
    a1 = net[0](x)
    a2 = net[3](net[2](net[1](a1)))
    total = 0.0
    for w, a, bn in ((multiplier, a1, net[1]), (1.0, a2, net[4])):
        mu = a.mean(dim=(0, 2, 3))
        var = ((a - mu.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
        total = total + w * (((mu - bn.running_mean) ** 2).sum().sqrt() + ((var - bn.running_var) ** 2).sum().sqrt())
    return total


def test_bn_loss_equals_direct_computation():
    net = small_bn_net()
    x = torch.randn(6, 3, 8, 8)
    expected10, expected1 = direct_loss(net, x, 10.0), direct_loss(net, x, 1.0)
    with BNStatLoss(net, first_bn_multiplier=10.0) as bn:
        net(x)
        assert torch.allclose(bn.loss(), expected10, rtol=1e-5, atol=1e-6)
    with BNStatLoss(net, first_bn_multiplier=1.0) as bn:
        y = net(x)
        assert torch.allclose(bn.loss(), expected1, rtol=1e-5, atol=1e-6)
    assert torch.allclose(y, net(x), atol=1e-6)  # the swapped BN computes the same output
    # the BN layers are put back on exit
    assert isinstance(net[1], nn.BatchNorm2d) and isinstance(net[4], nn.BatchNorm2d)


def test_bn_term_matches_released_permute_reshape_and_gradient():
    net = small_bn_net()
    x = torch.randn(5, 3, 8, 8, requires_grad=True)
    hook = ReleasedBNHook(net[1])
    net(x)
    released = hook.r_feature
    hook.close()
    ours = bn_stat_term(net[0](x), net[1].running_mean, net[1].running_var)
    assert torch.allclose(ours, released, rtol=1e-5)
    g1, = torch.autograd.grad(ours, x)
    g2, = torch.autograd.grad(released, x)
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-6)
    # channels_last input gives the same value
    a = net[0](x).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(bn_stat_term(a, net[1].running_mean, net[1].running_var), released, rtol=1e-5)


def test_fused_bn_gradient_matches_autograd():
    net = small_bn_net()
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    loss_ref = net(x).square().sum() + 0.3 * direct_loss(net, x, 10.0)
    g_ref, = torch.autograd.grad(loss_ref, x)
    with BNStatLoss(net, 10.0) as bn:
        loss = net(x).square().sum() + 0.3 * bn.loss()
        g, = torch.autograd.grad(loss, x)
    assert torch.allclose(loss, loss_ref, rtol=1e-5)
    assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_every_batchnorm_including_downsample():
    from models import build_model

    model = build_model("resnet18_modified", 10, 32)
    layers = bn_layers(model)
    assert len(layers) == 20  # bn1 + 8 blocks x 2 + 3 downsample BNs
    assert model.layer2[0].downsample[1] in layers
    assert layers[0] is model.bn1  # the first-BN multiplier goes to the stem's BN
    with BNStatLoss(model.eval(), 10.0) as bn:
        assert [s[2] for s in bn.swapped] == layers and bn.weights[:2] == [10.0, 1.0]
        assert type(model.bn1).__name__ == type(model.layer2[0].downsample[1]).__name__ == "StatBatchNorm"
    assert bn_layers(model) == layers
