"""Who is optimised when: batch layout, the EarlyLate round schedule and the lr cosine.

EarlyLate (DELT, CVPR 2025): a class's IPC images, in file-name order, are split
into R consecutive chunks; chunk j joins the optimisation at round j and stays to
the class's last round, so the first images (rank 000, the most typical ones
after ``rank_select``) get R * RI iterations and the last chunk RI. SRe2L/CDA are
the uniform case: every image active for all ITR iterations.

Everything here is plain Python on indices, so the hand-computed cases of
docs/methods/delt.md ("EarlyLate") are tested directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

Item = tuple[int, int]  # (class label, image index within the class)


# ---------------------------------------------------------------------------------------------
# rounds and chunks
# ---------------------------------------------------------------------------------------------
def class_rounds(num_classes: int, iteration: int, round_iterations: int, min_iterations: int | None = None,
                 seed: int = 0) -> list[int]:
    """R_c for every class: ``ITR // RI``, or with ``MIN_ITR < ITR`` a seeded uniform draw
    from ``[MIN_ITR // RI, ITR // RI]`` per class (the released code draws with torch.randint)."""
    max_rounds = iteration // round_iterations
    if min_iterations is None or min_iterations >= iteration:
        return [max_rounds] * num_classes
    min_rounds = max(1, min_iterations // round_iterations)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(min_rounds, max_rounds + 1, (num_classes,), generator=gen).tolist()


def chunk_sizes(ipc: int, rounds: int) -> list[int]:
    """IPC images in ``rounds`` consecutive chunks: ``IPC // R`` each, the first ``IPC % R`` one larger."""
    base, extra = divmod(ipc, rounds)
    return [base + (1 if j < extra else 0) for j in range(rounds)]


def join_round(index: int, ipc: int, rounds: int) -> int:
    """The round at which the class's ``index``-th image (file-name order) joins."""
    if not 0 <= index < ipc:
        raise ValueError(f"image index {index} outside [0, {ipc})")
    end = 0
    for j, size in enumerate(chunk_sizes(ipc, rounds)):
        end += size
        if index < end:
            return j
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# one batch
# ---------------------------------------------------------------------------------------------
@dataclass
class Schedule:
    """The rounds of one batch. ``rounds[r]`` lists the batch positions active in round r
    (empty rounds already dropped); each round lasts ``round_length`` iterations."""

    round_length: int
    rounds: list[list[int]]
    size: int
    dropped_rounds: int = 0
    iterations: list[int] = field(init=False)

    def __post_init__(self) -> None:
        counts = [0] * self.size
        for active in self.rounds:
            for pos in active:
                counts[pos] += self.round_length
        self.iterations = counts

    @property
    def total_iterations(self) -> int:
        return self.round_length * len(self.rounds)

    @property
    def image_iterations(self) -> int:
        return sum(self.iterations)

    def round_of(self, iteration: int) -> int:
        return iteration // self.round_length


def uniform_schedule(size: int, iteration: int, round_iterations: int = 0) -> Schedule:
    """SRe2L/CDA: all images active for all iterations (split in rounds of RI when RI > 0,
    which only matters for ``--round-lr-reset``)."""
    length = round_iterations if round_iterations else iteration
    return Schedule(length, [list(range(size)) for _ in range(iteration // length)], size)


def early_late_schedule(items: Sequence[Item], ipc: int, round_iterations: int,
                        rounds_per_class: Sequence[int]) -> Schedule:
    """The EarlyLate rounds of a batch holding ``items`` = (class, in-class index) pairs.

    The batch runs ``max R_c`` rounds over its classes; class c's image i is active from
    ``join_round(i, ipc, R_c)`` up to round ``R_c - 1``. Rounds where nothing is active
    (a batch holding only the tail of a class that started in an earlier batch) are
    dropped, and the batch's total iterations shrink with them.
    """
    max_rounds = max(rounds_per_class[c] for c, _ in items)
    slots: list[list[int]] = [[] for _ in range(max_rounds)]
    for pos, (c, i) in enumerate(items):
        r_c = rounds_per_class[c]
        for r in range(join_round(i, ipc, r_c), r_c):
            slots[r].append(pos)
    kept = [s for s in slots if s]
    return Schedule(round_iterations, kept, len(items), dropped_rounds=max_rounds - len(kept))


def image_iteration_ratio(ipc: int, iteration: int, round_iterations: int) -> float:
    """EarlyLate image-iterations over uniform ones for one whole class: ``RI * sum_j (R-j)|chunk_j| / (IPC*ITR)``."""
    rounds = iteration // round_iterations
    el = round_iterations * sum((rounds - j) * n for j, n in enumerate(chunk_sizes(ipc, rounds)))
    return el / (ipc * iteration)


# ---------------------------------------------------------------------------------------------
# batches of whole classes
# ---------------------------------------------------------------------------------------------
@dataclass
class Group:
    """The unit of work, resume and sharding: whole classes and the batches that cover them.

    With ``batch_size >= IPC`` a group is one batch of ``batch_size // IPC`` whole classes;
    with ``batch_size < IPC`` a group is one class split over consecutive batches, its
    in-class index continuing from batch to batch."""

    index: int
    classes: list[int]
    batches: list[list[Item]]


def plan_groups(num_classes: int, ipc: int, batch_size: int) -> list[Group]:
    groups: list[Group] = []
    if batch_size >= ipc:
        per = batch_size // ipc
        for g, start in enumerate(range(0, num_classes, per)):
            classes = list(range(start, min(start + per, num_classes)))
            groups.append(Group(g, classes, [[(c, i) for c in classes for i in range(ipc)]]))
    else:
        for c in range(num_classes):
            batches = [[(c, i) for i in range(s, min(s + batch_size, ipc))] for s in range(0, ipc, batch_size)]
            groups.append(Group(c, [c], batches))
    return groups


# ---------------------------------------------------------------------------------------------
# learning rate
# ---------------------------------------------------------------------------------------------
def cosine_lr(base_lr: float, iteration: int, total: int) -> float:
    """SRe2L's ``lr_cosine_policy`` without warm-up: ``0.5 (1 + cos(pi it / total)) lr``."""
    return 0.5 * (1.0 + math.cos(math.pi * iteration / total)) * base_lr


def lr_at(base_lr: float, iteration: int, total: int, round_length: int | None = None,
          reset_per_round: bool = False) -> float:
    """Cosine over the batch's total iterations (faithful default); with ``reset_per_round``
    the cosine restarts every round and decays to 0 over ``round_length`` iterations
    (the released ``--round-lr-reset`` is overwritten by a second scheduler call: a no-op)."""
    if reset_per_round and round_length:
        return cosine_lr(base_lr, iteration % round_length, round_length)
    return cosine_lr(base_lr, iteration, total)


# ---------------------------------------------------------------------------------------------
# resolution stages (FADRM)
# ---------------------------------------------------------------------------------------------
def stage_bounds(total: int, num_stages: int) -> list[int]:
    """First iteration of each of ``num_stages`` equal shares of ``total`` iterations, then ``total``:
    stage k runs iterations ``[k * total // S, (k + 1) * total // S)`` (FADRM's equal budgets,
    e.g. 2000 in 4 stages: 0, 500, 1000, 1500, 2000)."""
    if num_stages < 1:
        raise ValueError("at least one stage")
    return [k * total // num_stages for k in range(num_stages)] + [total]
