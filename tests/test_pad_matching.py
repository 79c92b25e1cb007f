"""Trajectory matching (recover.matching, recover.trajectory_matching): semantics pinned by hand."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from models import build_model
from recover.matching import (
    ParamLayout,
    functional_forward,
    init_soft_labels,
    keep_mask,
    matching_loss,
    select_correct,
    soft_cross_entropy,
    start_epoch_upper,
    unroll,
)


def _conv(seed=0):
    torch.manual_seed(seed)
    return build_model("conv3_in", 3, 16)


def _micro(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.GroupNorm(2, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3)).double()


def test_functional_forward_equals_module_forward():
    m = _conv()
    layout = ParamLayout(m)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(functional_forward(m, layout, layout.flatten(m), x), m(x))
    assert layout.n_params == sum(p.numel() for p in m.parameters())


def test_one_unrolled_step_equals_torch_sgd_step():
    m = _conv(1)
    layout = ParamLayout(m)
    x, soft = torch.randn(6, 3, 16, 16), torch.randn(6, 3)
    after = unroll(m, layout, layout.flatten(m), x, soft, torch.tensor(0.05), syn_steps=1, batch_syn=6)
    ref = copy.deepcopy(m)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    soft_cross_entropy(ref(x), soft).backward()
    opt.step()
    torch.testing.assert_close(after.detach(), layout.flatten(ref), rtol=1e-5, atol=1e-6)


def test_student_lr_zero_gives_loss_one_and_mask_zero_is_unmasked():
    m = _micro(2)
    layout = ParamLayout(m)
    start = layout.flatten(m)
    target = start + 0.1 * torch.randn_like(start)
    x, soft = torch.randn(6, 3, 4, 4, dtype=torch.double), torch.randn(6, 3, dtype=torch.double)
    for kind in ("depth", "loss"):
        final = unroll(m, layout, start, x, soft, torch.tensor(0.0, dtype=torch.double), 3, 3,
                       torch.Generator().manual_seed(0))
        assert matching_loss(final, start, target, 0.5, kind).item() == pytest.approx(1.0)
    final = unroll(m, layout, start, x, soft, torch.tensor(0.1, dtype=torch.double), 2, 3,
                   torch.Generator().manual_seed(0))
    plain = ((final - target) ** 2).sum() / ((start - target) ** 2).sum()
    for kind in ("depth", "loss"):
        torch.testing.assert_close(matching_loss(final, start, target, 0.0, kind), plain)


def test_masked_prefix_of_expert_params_does_not_change_the_loss():
    m = _conv(3)
    layout = ParamLayout(m)
    start = layout.flatten(m)
    target = start + 0.1 * torch.randn_like(start)
    x, soft = torch.randn(6, 3, 16, 16), torch.randn(6, 3)
    final = unroll(m, layout, start, x, soft, torch.tensor(0.1), 2, 3, torch.Generator().manual_seed(0))
    ratio = 0.3
    k = int(ratio * layout.n_params)
    assert keep_mask(layout.n_params, ratio).tolist() == list(range(k, layout.n_params))
    base = matching_loss(final, start, target, ratio)
    t2, s2 = target.clone(), start.clone()
    t2[:k] += 5.0
    s2[:k] -= 3.0
    torch.testing.assert_close(matching_loss(final, s2, t2, ratio), base)
    t2[k] += 5.0  # the first kept entry does count
    assert matching_loss(final, start, t2, ratio).item() != pytest.approx(base.item())
    # the shallowest parameters are the first conv's: a 0.3 mask of conv3_in covers the first blocks
    first = layout.layer_bounds()[0]
    assert first[0] == "features.0.weight" and first[1] == 0


def test_gradients_reach_images_labels_lr_and_match_finite_differences():
    m = _micro()
    layout = ParamLayout(m)
    start = layout.flatten(m).double()
    target = start + 0.05 * torch.randn(start.shape, generator=torch.Generator().manual_seed(1), dtype=torch.double)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.double).requires_grad_(True)
    y = torch.randn(4, 3, generator=g, dtype=torch.double).requires_grad_(True)
    lr = torch.tensor(0.3, dtype=torch.double, requires_grad=True)

    def f(x, y, lr):
        final = unroll(m, layout, start, x, y, lr, 3, 2, torch.Generator().manual_seed(5), "color")
        return matching_loss(final, start, target, 0.2)

    loss = f(x, y, lr)
    gx, gy, glr = torch.autograd.grad(loss, [x, y, lr])
    assert gx.abs().sum() > 0 and gy.abs().sum() > 0 and glr.abs() > 0
    eps = 1e-6
    for i, grad, picks in ((0, gx, [(0, 0, 1, 2), (3, 2, 0, 0)]), (1, gy, [(1, 2), (2, 0)]), (2, glr, [()])):
        for pos in picks:
            plus, minus = [t.detach().clone() for t in (x, y, lr)], [t.detach().clone() for t in (x, y, lr)]
            plus[i][pos] += eps
            minus[i][pos] -= eps
            fd = (f(*plus) - f(*minus)).item() / (2 * eps)
            assert grad[pos].item() == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_window_soft_label_init_and_correct_selection():
    assert [start_epoch_upper(i, 0, 10, 20, 100) for i in (0, 50, 100, 500)] == [10, 15, 20, 20]
    assert start_epoch_upper(0, 0, 20, 20, 100) == 20
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[4.0, 1.0], [3.0, 0.0]]])  # [E=2, N=2, C=2]
    labels = torch.tensor([0, 0])
    # image 0: both experts right -> mean; image 1: only expert 1 right -> its logits
    torch.testing.assert_close(init_soft_labels(logits, labels), torch.tensor([[3.0, 0.5], [3.0, 0.0]]))
    preds = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 1]])
    assert select_correct(preds, 0, 3, torch.tensor([3, 2, 1, 0])) == ([2, 1, 0], 0)
    assert select_correct(preds, 1, 3, torch.tensor([0, 1, 2, 3])) == ([0, 3, 1], 0)
    assert select_correct(preds, 1, 4, torch.tensor([0, 1, 2, 3])) == ([0, 3, 1, 2], 1)


def test_cli_outputs_and_resume_equals_uninterrupted(tiny_data, tmp_path):
    from torchvision.datasets import ImageFolder as TVImageFolder

    from recover.trajectory_matching import main as match
    from squeeze.trajectories import main as trajectories

    trajectories(["--data-path", str(tiny_data), "--num-experts", "1", "--epochs", "2", "--batch-train", "8",
                  "--input-size", "16", "--output-dir", str(tmp_path / "experts")])
    common = ["--experts", str(tmp_path / "experts"), "--data-path", str(tiny_data / "train"), "--ipc", "2",
              "--iterations", "2", "--syn-steps", "2", "--batch-syn", "3", "--max-start-epoch", "1",
              "--lr-img", "10", "--checkpoint-every", "1", "--threshold", "10"]
    full = match(common + ["--output-path", str(tmp_path / "a")])
    assert full["iterations_timed"] == 2
    logs = ["--log-dir", str(tmp_path / "logs")]  # the curve continues with the resumed run
    assert match(common + ["--output-path", str(tmp_path / "b"), "--max-iterations-this-run", "1", *logs])[
        "finished"] is False
    assert (tmp_path / "b.state" / "matching.pt").is_file() and not (tmp_path / "b").exists()
    from common.cli.errors import UserError

    with pytest.raises(UserError, match=r"--lr-img 10.0 there, 20.0 now.*--restart"):  # other settings: refused
        match([*common, "--output-path", str(tmp_path / "b"), "--lr-img", "20"])
    match(common + ["--output-path", str(tmp_path / "b"), *logs])
    assert not (tmp_path / "b.state").exists()
    la = torch.load(tmp_path / "a.labels.pt", weights_only=True)
    lb = torch.load(tmp_path / "b.labels.pt", weights_only=True)
    torch.testing.assert_close(la["labels"], lb["labels"])
    assert la["paths"] == ["00_circle/000.png", "00_circle/001.png"] + la["paths"][2:] and len(la["paths"]) == 6
    ha = json.loads((tmp_path / "a.loss.json").read_text())["history"]
    hb = json.loads((tmp_path / "b.loss.json").read_text())["history"]
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-5)
    from common.train.curves import read_scalars

    curve = read_scalars(tmp_path / "logs" / "matching_b")["loss"]
    assert curve == [(h["iteration"] + 1, pytest.approx(h["loss"])) for h in hb]  # step = iterations done
    for name in ("00_circle/000.png", "02_triangle/001.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    ds = TVImageFolder(str(tmp_path / "a"))
    assert len(ds) == 6 and ds.classes == sorted(p.name for p in (tiny_data / "train").iterdir())
    assert torch.load(tmp_path / "a.lr.pt", weights_only=True)["lr"] > 0
    assert (tmp_path / "a.loss.png").stat().st_size > 1000 and not (tmp_path / "a" / "labels.pt").exists()
