"""One shard-assignment rule for commands that split independent units over processes (torch-free).

``--num-shards/--shard-index`` when given, else the launch (torchrun's RANK/WORLD_SIZE, srun's
SLURM_*) as :func:`common.compute.launch.dist_info` reads it; unit ``i`` belongs to shard
``i mod num_shards`` (round robin), so the shards hold disjoint units and together all of them.
Used by ``squeeze.trajectories`` (experts) and ``recover`` (class groups).
"""
from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from common.cli.errors import UserError
from common.compute.launch import dist_info

T = TypeVar("T")


def resolve_shard(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``(num_shards, shard_index)`` from the flags, else from the launch; one line for an impossible pair."""
    launch = dist_info()
    num_shards = launch.world_size if num_shards is None else num_shards
    shard_index = launch.rank if shard_index is None else shard_index
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    return num_shards, shard_index


def in_shard(index: int, num_shards: int, shard_index: int) -> bool:
    """Unit ``index`` belongs to shard ``index mod num_shards``."""
    return index % num_shards == shard_index


def shard_items(items: Iterable[T], num_shards: int, shard_index: int,
                index: Callable[[T], int] | None = None) -> list[T]:
    """The items of this shard (``index(item)``, by default the item itself, decides)."""
    return [it for it in items if in_shard(index(it) if index else int(it), num_shards, shard_index)]  # type: ignore[arg-type]
