"""An epoch of student training as data: sample order, per-image augmentation, per-batch mixing.

Everything random in an epoch is drawn here, in the main process, from a numpy
generator seeded by ``(seed, epoch)``. The same plan therefore comes out of an
online run, a resumed run and ``relabel_eval.relabel`` (which stores it beside the
teacher's logits), and replaying a stored plan reproduces the batches exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from relabel_eval.augment import sample_crops, shuffled_sizes
from relabel_eval.mix import MixParams, draw_mix
from relabel_eval.protocol import MIX_ALPHA


@dataclass(frozen=True)
class AugConfig:
    input_size: int
    min_scale: float = 0.08
    max_scale: float = 1.0
    rand_augment: str | None = None
    erasing_p: float = 0.0
    mix_type: str = "cutmix"
    mix_alpha: float | None = None  # None: 1.0 for CutMix, 0.8 for Mixup
    shuffle_factor: int = 1  # RDED's ShufflePatches factor (--protocol rded); 1: none
    plain: bool = False  # --no-image-aug: every image resized whole, never flipped

    def alpha(self) -> float | None:
        if self.mix_type == "none":
            return None
        return self.mix_alpha if self.mix_alpha is not None else MIX_ALPHA[self.mix_type]

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.plain:  # absent unless set: configurations (and fingerprints) from before the flag stay equal
            del d["plain"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AugConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class EpochPlan:
    order: np.ndarray   # (N,) image index at each position of the epoch
    crops: np.ndarray   # (N, 4) RandomResizedCrop box (top, left, height, width) of that image
    flips: np.ndarray   # (N,) horizontal flip
    seeds: np.ndarray   # (N,) seed of the image's RandAugment / RandomErasing draws
    batch_size: int
    mix_type: str
    perms: np.ndarray   # (N,) per batch, the in-batch permutation of the mixing partner
    lams: np.ndarray    # (num_batches,) Beta draw of each batch
    boxes: np.ndarray   # (num_batches, 4) CutMix box (y1, y2, x1, x2); zeros otherwise
    # (num_batches + 1,) first position of every batch, for batches of unequal size (a replay of pruned
    # label records, whose short last batch of an epoch may come anywhere); None: every batch_size long
    bounds: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_batches(self) -> int:
        if self.bounds is not None:
            return len(self.bounds) - 1
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def batch_slice(self, b: int) -> slice:
        if self.bounds is not None:
            return slice(int(self.bounds[b]), int(self.bounds[b + 1]))
        return slice(b * self.batch_size, min((b + 1) * self.batch_size, len(self.order)))

    def subset(self, batches) -> EpochPlan:
        """A plan of the given batches of this one, in the given order (repeats allowed)."""
        batches = [int(b) for b in batches]
        slices = [self.batch_slice(b) for b in batches]
        rows = np.concatenate([np.arange(s.start, s.stop) for s in slices]) if slices else np.zeros(0, np.int64)
        bounds = np.concatenate([[0], np.cumsum([s.stop - s.start for s in slices])]).astype(np.int64)
        idx = np.asarray(batches, dtype=np.int64)
        return EpochPlan(self.order[rows], self.crops[rows], self.flips[rows], self.seeds[rows], self.batch_size,
                         self.mix_type, self.perms[rows], self.lams[idx], self.boxes[idx].reshape(-1, 4), bounds)

    def records(self, b: int) -> list[tuple]:
        """Per-image records ``(index, top, left, h, w, flip, seed)`` of batch ``b`` (sent to the dataset)."""
        s = self.batch_slice(b)
        return [(int(i), *map(int, c), bool(f), int(sd))
                for i, c, f, sd in zip(self.order[s], self.crops[s], self.flips[s], self.seeds[s])]

    def mix(self, b: int) -> MixParams:
        if self.mix_type == "none":
            return MixParams("none")
        s = self.batch_slice(b)
        return MixParams(self.mix_type, torch.from_numpy(self.perms[s].astype(np.int64)), float(self.lams[b]),
                         tuple(int(v) for v in self.boxes[b]))

    def to_state(self) -> dict:
        return {"order": torch.from_numpy(self.order.astype(np.int64)),
                "crops": torch.from_numpy(self.crops.astype(np.int32)),
                "flips": torch.from_numpy(self.flips.astype(np.bool_)),
                "seeds": torch.from_numpy(self.seeds.astype(np.int64)),
                "batch_size": int(self.batch_size), "mix_type": self.mix_type,
                "perms": torch.from_numpy(self.perms.astype(np.int64)),
                "lams": torch.from_numpy(self.lams.astype(np.float64)),
                "boxes": torch.from_numpy(self.boxes.astype(np.int32))}

    @classmethod
    def from_state(cls, d: dict) -> EpochPlan:
        return cls(order=d["order"].numpy().astype(np.int64), crops=d["crops"].numpy().astype(np.int64),
                   flips=d["flips"].numpy().astype(bool), seeds=d["seeds"].numpy().astype(np.int64),
                   batch_size=int(d["batch_size"]), mix_type=str(d["mix_type"]),
                   perms=d["perms"].numpy().astype(np.int64), lams=d["lams"].numpy().astype(np.float64),
                   boxes=d["boxes"].numpy().astype(np.int64))


def make_epoch_plan(seed: int, epoch: int, sizes: np.ndarray, batch_size: int, cfg: AugConfig,
                    shuffle: bool = True) -> EpochPlan:
    """Draw epoch ``epoch`` of a run seeded ``seed`` for images of ``sizes`` ((N, 2): H, W)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    n = len(sizes)
    order = rng.permutation(n) if shuffle else np.arange(n)
    # crop boxes are drawn on the image as RandomResizedCrop sees it: after ShufflePatches
    crops = sample_crops(rng, shuffled_sizes(sizes, cfg.shuffle_factor)[order], (cfg.min_scale, cfg.max_scale))
    flips = rng.random(n) < 0.5
    if cfg.plain:  # drawn all the same, so the rest of the epoch (seeds, mixing) is the augmented run's
        crops = np.concatenate([np.zeros((n, 2), np.int64), sizes[order]], axis=1)
        flips = np.zeros(n, dtype=bool)
    seeds = rng.integers(0, 2 ** 31 - 1, size=n, dtype=np.int64)
    nb = (n + batch_size - 1) // batch_size
    perms = np.arange(n, dtype=np.int64)
    lams = np.ones(nb, dtype=np.float64)
    boxes = np.zeros((nb, 4), dtype=np.int64)
    S = cfg.input_size
    for b in range(nb):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        m = draw_mix(rng, hi - lo, S, S, cfg.mix_type, cfg.alpha())
        perms[lo:hi] = m["perm"]
        lams[b] = m["lam"]
        boxes[b] = m["box"]
    return EpochPlan(order, crops, flips, seeds, int(batch_size), cfg.mix_type, perms, lams, boxes)
