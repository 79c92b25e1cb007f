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


def test_one_worker_rule_for_every_stage(monkeypatch):
    import argparse

    from common.cli.flags import workers_from_args
    from common.compute import accel

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(accel, "usable_cpus", lambda: 8)
    unset, given = argparse.Namespace(workers=None), argparse.Namespace(workers=3)
    # CPU: squeeze's trainers augment in the main process (0), the other stages use cores - 1 up to 4
    assert workers_from_args(unset, "cpu", cpu_in_main=True) == 0
    assert workers_from_args(unset, "cpu") == 4
    # CUDA: every stage keeps the GPU fed the same way, cores - 1 up to 16
    assert workers_from_args(unset, "cuda", cpu_in_main=True) == workers_from_args(unset, "cuda") == 7
    # --workers wins everywhere
    assert workers_from_args(given, "cpu", cpu_in_main=True) == workers_from_args(given, "cuda") == 3
    monkeypatch.setattr(accel, "usable_cpus", lambda: 2)
    assert (workers_from_args(unset, "cpu"), workers_from_args(unset, "cpu", cpu_in_main=True)) == (1, 0)


def test_no_stage_has_its_own_worker_rule():
    """Every stage's worker count comes from common.cli.flags.workers_from_args."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    own_rule = re.compile(r"args\.workers\s+if|if\s+args\.workers\s+is|default_workers\(")
    offenders = [str(p.relative_to(root)) for d in ("squeeze", "recover", "rank_select", "relabel_eval")
                 for p in (root / d).glob("*.py") if own_rule.search(p.read_text())]
    assert offenders == []
