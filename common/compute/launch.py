"""Where this process sits in a launch (torchrun, srun, or a single process), read from the
environment without importing torch."""
from __future__ import annotations

import os
from dataclasses import dataclass

from common.cli.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the launch (torch-free: read from the environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single, torchrun or slurm

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"environment variable {name}={env[name]!r} is not an integer") from None


def dist_info(environ=None) -> DistInfo:
    """The launch as torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) or srun (``SLURM_*``) describes it."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
        local = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        rank = _env_int(env, "SLURM_PROCID")
        # the tasks of this srun step, not the allocation's SLURM_NTASKS: a plain `python` in an
        # sbatch script (no srun) must not wait for peers that never start
        world = _env_int(env, "SLURM_STEP_NUM_TASKS")
        local = _env_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        launcher = "slurm"
    else:
        return DistInfo()
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"distributed environment: rank {rank} / world size {world} / local rank {local} "
                        f"is not a valid launch (launcher: {launcher})")
    return DistInfo(rank, world, local, launcher if world > 1 else "single")
