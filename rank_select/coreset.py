"""Classic coreset rules on teacher features, per class: herding and k-center greedy.

Both take one class's feature matrix ``F`` (n x d, rows in file-name order) and return
positions into it, first pick first, like the score rules in :mod:`rank_select.select`.

- **Herding** (Welling 2009; the coreset baseline of Chen et al. 2010 and DeepCore): with
  the class mean ``mu`` and the running sum ``S`` of the ``t - 1`` features picked so far, pick
  ``argmin_i || t * mu - S - F_i ||`` among the images not yet picked, i.e. the image that
  brings the mean of the picked set closest to the class mean.
- **k-center greedy** (Sener & Savarese 2018): pick the image farthest (Euclidean) from its
  nearest picked image. The first pick is the image closest to the class mean, so the
  selection needs no seed (DeepCore draws the first pick at random).

Ties go to the lower position (file-name order), so a selection is reproducible.
"""
from __future__ import annotations

import numpy as np


def _features(features) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (n, d) matrix, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or inf")
    return f


def select_herding(features, k: int) -> np.ndarray:
    """``k`` positions by herding, first pick first."""
    f = _features(features)
    n = f.shape[0]
    k = min(k, n)
    mu = f.mean(axis=0)
    picked: list[int] = []
    free = np.ones(n, dtype=bool)
    running = np.zeros_like(mu)
    for t in range(1, k + 1):
        target = t * mu - running
        dist = np.where(free, ((f - target) ** 2).sum(axis=1), np.inf)
        i = int(np.argmin(dist))  # the first minimum: ties go to the lower position
        picked.append(i)
        free[i] = False
        running += f[i]
    return np.asarray(picked, dtype=np.int64)


def select_kcenter(features, k: int) -> np.ndarray:
    """``k`` positions by k-center greedy, first pick first (the first is the one nearest the mean)."""
    f = _features(features)
    n = f.shape[0]
    k = min(k, n)
    first = int(np.argmin(((f - f.mean(axis=0)) ** 2).sum(axis=1)))
    picked = [first]
    nearest = ((f - f[first]) ** 2).sum(axis=1)  # squared distance to the nearest picked image
    nearest[first] = -1.0
    for _ in range(1, k):
        i = int(np.argmax(nearest))
        picked.append(i)
        nearest = np.minimum(nearest, ((f - f[i]) ** 2).sum(axis=1))
        nearest[picked] = -1.0
    return np.asarray(picked, dtype=np.int64)
