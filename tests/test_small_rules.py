"""One rule for each small thing: the per-epoch seed, the DataLoader worker default, error lines."""
from __future__ import annotations

from common.train.seed import epoch_seed, sampler_seed


def test_epoch_and_sampler_seed_hand_computed():
    assert sampler_seed(0) == 0
    assert sampler_seed(1) == 100003
    assert sampler_seed(42) == 4200126
    assert epoch_seed(1, 0) == 100003
    assert epoch_seed(1, 5) == 100008
    assert epoch_seed(1, 5, rank=2) == 100003 + 5 + 15838
    assert epoch_seed(42, 3, 1) == 4200126 + 3 + 7919
    # distinct per epoch and per rank of one run
    seeds = {epoch_seed(7, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400
