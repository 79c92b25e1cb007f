"""common.compute.distributed: launch parsing, the single-process no-op, and a real 2-process gloo group."""
from __future__ import annotations

import builtins
import json
import textwrap

import pytest
import torch

from common.cli.errors import UserError
from common.compute import distributed as D
from tests.multiproc import launch


def test_dist_info_torchrun_slurm_single():
    assert D.dist_info({}) == D.DistInfo(0, 1, 0, "single")
    assert D.dist_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == D.DistInfo(3, 4, 1, "torchrun")
    assert D.dist_info({"RANK": "0", "WORLD_SIZE": "1"}) == D.DistInfo(0, 1, 0, "single")
    # srun: the step's task count, not the allocation's (a plain python in sbatch is one process)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}
    assert D.dist_info(slurm) == D.DistInfo(5, 8, 1, "slurm")
    assert D.dist_info({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}).distributed is False
    assert D.dist_info({**slurm, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}).distributed is False
    # torchrun's variables take precedence inside a SLURM job
    assert D.dist_info({**slurm, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).launcher == "torchrun"
    with pytest.raises(UserError, match="not a valid launch"):
        D.dist_info({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="RANK"):
        D.dist_info({"RANK": "x", "WORLD_SIZE": "2"})


def test_single_process_is_untouched():
    before = builtins.print
    ctx = D.init_distributed("cpu", environ={})
    try:
        assert ctx.device == torch.device("cpu") and ctx.backend is None and ctx.is_main
        assert builtins.print is before and not D.is_initialized()
        assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
        assert D.sum_over_ranks(2, 3.5) == [2.0, 3.5]
        assert D.all_gather_object({"a": 1}) == [{"a": 1}]
        res = {"top1": 50.0, "top5": 100.0, "loss": 1.0, "images": 4}
        assert D.reduce_metrics(res) is res
        m = torch.nn.Linear(2, 2)
        assert D.wrap_ddp(m) is m and D.unwrap(m) is m
        assert list(D.shard(5)) == [0, 1, 2, 3, 4] and list(D.shard(5, 1, 2)) == [1, 3]
        D.barrier()
    finally:
        D.cleanup()
    with pytest.raises(UserError, match="MASTER_ADDR"):
        D.init_distributed("cpu", environ={"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="srun"):
        D.init_distributed("cpu", environ={"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"})


WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tqdm import tqdm
    from common.compute import distributed as D
    ctx = D.init_distributed("cpu")
    import torch
    out = Path(sys.argv[1])
    print("plain print", ctx.rank)
    print("forced print", ctx.rank, force=True)
    bar = tqdm(range(3), desc=f"bar of rank {ctx.rank}")
    list(bar)
    # each rank holds a disjoint shard of 5 "images": rank 0 -> 0, 2, 4; rank 1 -> 1, 3
    mine = list(D.shard(5))
    hits = sum(i % 2 == 0 for i in mine)
    res = {"top1": 100.0 * hits / len(mine), "top5": 100.0, "loss": float(sum(mine)) / len(mine), "images": len(mine)}
    m = torch.nn.BatchNorm1d(2)
    m.running_mean.fill_(float(ctx.rank + 1))
    D.broadcast_buffers(m)
    t = torch.full((2,), float(ctx.rank + 1))
    D.all_reduce_sum(t)
    D.save_on_main({"saved_by": ctx.rank}, out / "ckpt.pt")
    D.barrier()
    rec = {"rank": ctx.rank, "world": ctx.world_size, "backend": ctx.backend, "main": D.is_main_process(),
           "sums": D.sum_over_ranks(ctx.rank + 1, 10), "gather": D.all_gather_object(ctx.rank * 10),
           "bcast": D.broadcast_object("from 0" if ctx.rank == 0 else "other"), "metrics": D.reduce_metrics(res),
           "bn": m.running_mean.tolist(), "t": t.tolist(), "saved": torch.load(out / "ckpt.pt")}
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(rec))
    D.cleanup()
""")


def test_two_processes_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = launch([str(script), str(tmp_path)], nproc=2, timeout=60).check()
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, rec in enumerate(recs):
        assert rec["rank"] == r and rec["world"] == 2 and rec["backend"] == "gloo" and rec["main"] == (r == 0)
        assert rec["sums"] == [3.0, 20.0] and rec["gather"] == [0, 10] and rec["bcast"] == "from 0"
        assert rec["t"] == [3.0, 3.0] and rec["bn"] == [1.0, 1.0]  # rank 0's buffers everywhere
        assert rec["saved"] == {"saved_by": 0}
        # the whole set: images 0..4, top-1 hits 0, 2, 4; mean "loss" (0+1+2+3+4)/5
        assert rec["metrics"] == {"top1": 60.0, "top5": 100.0, "loss": 2.0, "images": 5}
    # rank 1 is muted (except force=True); its progress bar too
    assert "plain print 0" in res.stdout[0] and "forced print 0" in res.stdout[0]
    assert "plain print 1" not in res.stdout[1] and "forced print 1" in res.stdout[1]
    assert "bar of rank 0" in res.stderr[0] and "bar of rank 1" not in res.stderr[1]
