"""PAD's difficulty scores (rank_select.difficulty) and curriculum experts (squeeze.trajectories)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from squeeze.trajectories import curriculum_indices, curriculum_range

KW = dict(init_ratio=0.75, add_end_epoch=4, rm_epoch_first=6, rm_epoch_second=8, rm_easy_ratio_first=0.1,
          rm_easy_ratio_second=0.2)


def test_curriculum_subset_sizes_equal_hand_computed_values():
    # n = 20: 15, 16 (0.8125 n), 17 (0.875 n), 18 (0.9375 n), 20, 20, 20, then drop int(2.0), then int(4.0)
    assert [curriculum_range(20, e, **KW) for e in range(10)] == [
        (0, 15), (0, 16), (0, 17), (0, 18), (0, 20), (0, 20), (0, 20), (2, 20), (2, 20), (4, 20)]
    # n = 13 (per-class sizes come from the data): 9, 10, 11, 12, 13, 13, 13, drop 1, 1, then 2
    assert [curriculum_range(13, e, **KW) for e in range(10)] == [
        (0, 9), (0, 10), (0, 11), (0, 12), (0, 13), (0, 13), (0, 13), (1, 13), (1, 13), (2, 13)]
    orders = [list(range(100, 120)), list(range(13))[::-1]]
    idx = curriculum_indices(orders, 0, **KW)
    assert idx.tolist() == list(range(100, 115)) + list(range(12, 3, -1))  # each class's easiest first
    assert curriculum_indices(orders, 9, **KW).tolist() == list(range(104, 120)) + list(range(10, -1, -1))
    # the released defaults: 0.75 at epoch 0, all data from epoch 20, easiest 10% out after 40, 20% after 60
    assert curriculum_range(500, 0) == (0, 375) and curriculum_range(500, 20) == (0, 500)
    assert curriculum_range(500, 41) == (50, 500) and curriculum_range(500, 61) == (100, 500)


def test_grand_equals_autograd_gradient_norm():
    from rank_select.difficulty import scores_from_outputs

    torch.manual_seed(0)
    head = torch.nn.Linear(5, 3).double()
    h = torch.randn(4, 5, dtype=torch.double)
    y = torch.tensor([0, 2, 1, 2])
    logits = head(h)
    el2n, grand = scores_from_outputs(logits, y, h, head.weight)
    for i in range(4):
        hi = h[i:i + 1].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(head(hi), y[i:i + 1])
        gw, gb, gh = torch.autograd.grad(loss, [head.weight, head.bias, hi])
        ref = torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum() + gh.pow(2).sum())
        assert grand[i].item() == pytest.approx(ref.item(), rel=1e-5)
        p = torch.softmax(logits[i], 0)
        assert el2n[i].item() == pytest.approx((p - torch.eye(3)[y[i]].double()).norm().item(), rel=1e-5)


def test_difficulty_then_curriculum_experts_resume(tiny_data, tmp_path):
    from rank_select.difficulty import main as difficulty
    from squeeze.trajectories import main as trajectories

    csv = tmp_path / "diff.csv"
    difficulty(["--data-path", str(tiny_data / "train"), "--num-models", "2", "--epochs", "1", "--batch-size", "8",
                "--input-size", "16",
                "--output", str(csv), "--sort-by", "grand"])
    df = pd.read_csv(csv)
    assert list(df.columns) == ["path", "class", "label", "el2n", "grand", "difficulty", "order"]
    assert len(df) == 24 and (df["difficulty"] == df["grand"]).all()
    for _, g in df.groupby("label"):
        assert g["grand"].is_monotonic_increasing and g["order"].tolist() == list(range(8))
    order = json.loads((tmp_path / "diff.order.json").read_text())
    assert order["order"]["00_circle"] == df[df.label == 0]["path"].tolist()

    common = ["--data-path", str(tiny_data), "--num-experts", "1", "--epochs", "3", "--batch-train", "8",
              "--input-size", "16", "--difficulty", str(tmp_path / "diff.order.json"), "--add-end-epoch", "2",
              "--init-ratio", "0.5", "--rm-epoch-first", "2"]
    trajectories(common + ["--output-dir", str(tmp_path / "full")])
    traj = torch.load(tmp_path / "full" / "expert_000.pt", weights_only=True)
    man = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert traj.shape == (4, man["n_params"]) and traj.dtype == torch.float32
    side = json.loads((tmp_path / "full" / "expert_000.json").read_text())
    assert side["subset_sizes"] == [3 * 4, 3 * 6, 3 * 8 - 3 * 0]  # int(0.5*8), int(0.75*8), 8; no drop at e=2
    trajectories(common + ["--output-dir", str(tmp_path / "cut"), "--max-epochs-this-run", "1"])
    assert not (tmp_path / "cut" / "expert_000.pt").exists()
    trajectories(common + ["--output-dir", str(tmp_path / "cut")])
    torch.testing.assert_close(torch.load(tmp_path / "cut" / "expert_000.pt", weights_only=True), traj)
    # more experts join the folder with other device flags; other training settings are refused, named
    trajectories(common[:3] + ["2"] + common[4:] + ["--output-dir", str(tmp_path / "cut"), "--device", "cpu",
                                                   "--gpu-device", "-1", "--max-epochs-this-run", "1"])
    from common.cli.errors import UserError

    with pytest.raises(UserError, match=r"other arguments .*\(--lr-teacher 0.01 there, 0.02 now\).*--restart"):
        trajectories(common + ["--output-dir", str(tmp_path / "cut"), "--lr-teacher", "0.02"])


def test_shards_follow_flags_or_the_launch(monkeypatch):
    from common.cli.errors import UserError
    from squeeze.trajectories import resolve_shard

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert resolve_shard(None, None) == (1, 0)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_shard(None, None) == (4, 2)
    assert resolve_shard(2, 1) == (2, 1)
    with pytest.raises(UserError):
        resolve_shard(2, 2)
