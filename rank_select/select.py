"""Selection rules: which IPC images of one class to keep, in priority order.

Every rule takes the class's scores in file-name order and returns positions into
that list, first pick first (the pick's rank becomes the output file's ``000_``
prefix, the EarlyLate priority). Sorting is stable, so images with equal scores
keep file-name order (the released code uses an unstable sort there).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from common.cli.errors import UserError
from common.data.imagefolder import random_real_indices
from rank_select.args import CRITERIA, FEATURE_CRITERIA


def _as_array(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def select_top(scores, k: int) -> np.ndarray:
    """The ``k`` highest scores, highest first."""
    return np.argsort(-_as_array(scores), kind="stable")[:k]


def select_min(scores, k: int) -> np.ndarray:
    """The ``k`` lowest scores, lowest first."""
    return np.argsort(_as_array(scores), kind="stable")[:k]


def medium_walk(n: int) -> list[int]:
    """Positions in the ascending score order visited by DELT's ``medium`` rule.

    The released code starts at ``mid = ceil(n/2)`` and takes
    ``mid + int(s_i * (i + 1) / 2)`` with ``s_0 = -1`` flipping sign each pick:
    mid, mid+1, mid-1, mid+2, mid-2, ... It indexes past the end once the upper
    side is used up (``k`` close to ``n``); here positions outside ``[0, n)`` are
    skipped and the walk continues downwards, so every image is reachable and the
    sequence is identical to the released one wherever that one works.
    """
    mid = math.ceil(n / 2)
    out, sign, i = [], -1, 0
    while len(out) < n:
        pos = mid + int(sign * (i + 1) / 2)
        if 0 <= pos < n:
            out.append(pos)
        sign, i = -sign, i + 1
    return out


def select_medium(scores, k: int) -> np.ndarray:
    """DELT's default: the ``k`` images around the median score, walking outwards."""
    ascending = np.argsort(_as_array(scores), kind="stable")
    return ascending[medium_walk(len(ascending))[:k]]


def select_random(scores, k: int, seed: int, label: int = 0) -> np.ndarray:
    """``k`` images drawn without replacement: the random-real baseline (``common.data.imagefolder``)."""
    return np.asarray(random_real_indices(len(_as_array(scores)), k, seed, label), dtype=np.int64)


def select_indices(criterion: str, scores, k: int, seed: int = 0, label: int = 0, features=None) -> np.ndarray:
    """Dispatch on ``--selection-criteria``; returns positions, first pick first.

    ``herding`` and ``kcenter`` select on ``features`` (the class's penultimate-feature matrix,
    rows in the same file-name order as ``scores``; :mod:`rank_select.coreset`).
    """
    if criterion in FEATURE_CRITERIA:
        if features is None:
            raise UserError(f"--selection-criteria {criterion} selects on the ranker's features; none were computed")
        from rank_select.coreset import select_herding, select_kcenter

        return (select_herding if criterion == "herding" else select_kcenter)(features, k)
    if criterion == "top":
        return select_top(scores, k)
    if criterion == "min":
        return select_min(scores, k)
    if criterion == "medium":
        return select_medium(scores, k)
    if criterion == "random":
        return select_random(scores, k, seed, label)
    raise UserError(f"--selection-criteria {criterion}: choose one of {', '.join(CRITERIA)}")


def check_class_size(cls: str, n: int, ipc: int, allow_fewer: bool) -> int:
    """How many images this class gives; a one-line error when it has fewer than IPC."""
    if n >= ipc:
        return ipc
    if not allow_fewer:
        raise UserError(f"class {cls} has only {n} images but --ipc is {ipc}; lower --ipc or pass "
                        f"--allow-fewer to take all {n}")
    return n


def rank_width(ipc: int) -> int:
    """Digits of the rank prefix: 3 (``000_``), wider when IPC >= 1000."""
    return max(3, len(str(ipc)))
