"""The student's per-image augmentation, driven by explicit parameters.

Order as the released DELT evaluation: optional RandAugment (timm) on the PIL
image -> ToTensor -> optional RandomErasing -> RandomResizedCrop(size, scale) ->
horizontal flip; normalisation is done per batch on the device. RDED's evaluation
(``--protocol rded``) adds ShufflePatches after ToTensor. Every random
choice is drawn up front (:mod:`relabel_eval.plan`) as a crop box, a flip bit and
a per-image seed for RandAugment / erasing, so an epoch can be stored (FKD soft
labels) and replayed exactly, and DataLoader workers need no seeding.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common.cli.errors import UserError
from common.train.seed import seeded

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range
RA_IMG_MEAN = (124, 116, 104)  # fill colour the released code passes to timm
RA_TRANSLATE_FRACTION = 117 / 224  # released translate_const 117 at 224 px, scaled to the image size


def posterize_like_pillow12(img: Image.Image, bits_to_keep: int, **__) -> Image.Image:
    """timm's ``posterize`` without the Pillow 13 failure.

    timm's RandAugment asks for 0 bits at low magnitudes (``Posterize``) and at high
    ones (``PosterizeIncreasing``). Pillow <= 12 returned an all-black image for 0 bits
    (mask ``~255``); Pillow 13 raises. This reproduces the older result, which is what
    the published numbers were computed with, and keeps 1..7 bits as Pillow does.
    """
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits)


def build_rand_augment(config: str, image_side: int):
    """timm ``rand_augment_transform`` with the released hparams and a guarded posterize."""
    from timm.data import auto_augment as aa

    hparams = {"translate_const": int(round(RA_TRANSLATE_FRACTION * image_side)), "img_mean": RA_IMG_MEAN}
    try:
        tfm = aa.rand_augment_transform(config_str=config, hparams=hparams)
    except (AssertionError, ValueError, KeyError) as exc:
        raise UserError(f"--rand-augment-config {config}: not a timm RandAugment string "
                        f"(e.g. rand-m6-n2-mstd1.0): {exc}") from None
    for op in tfm.ops:
        if op.aug_fn is aa.posterize:
            op.aug_fn = posterize_like_pillow12
    return tfm


def seeded_global_rng(seed: int):
    """Seed python's and numpy's global RNGs (timm's RandAugment draws from them) for a block and
    restore their previous states afterwards."""
    return seeded(seed, torch_cpu=False)


def sample_crops(rng: np.random.Generator, sizes: np.ndarray, scale: tuple[float, float],
                 ratio: tuple[float, float] = RATIO, attempts: int = 10) -> np.ndarray:
    """RandomResizedCrop boxes ``(top, left, height, width)`` for images of ``sizes`` (N, 2: H, W).

    torchvision's rule, vectorised: up to 10 tries of an area fraction in ``scale`` and a
    log-uniform aspect ratio; the first box that fits wins; otherwise a centre crop
    clamped to ``ratio``.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    n = len(sizes)
    H, W = sizes[:, 0:1].astype(np.float64), sizes[:, 1:2].astype(np.float64)
    area = H * W
    target = area * rng.uniform(scale[0], scale[1], size=(n, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, attempts)))
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (h > 0) & (w <= W.astype(np.int64)) & (h <= H.astype(np.int64))
    first = np.where(ok.any(1), ok.argmax(1), -1)
    u = rng.random(size=(n, 2))
    out = np.zeros((n, 4), dtype=np.int64)
    for k in range(n):
        Hk, Wk = int(sizes[k, 0]), int(sizes[k, 1])
        if first[k] >= 0:
            hk, wk = int(h[k, first[k]]), int(w[k, first[k]])
            top = int(u[k, 0] * (Hk - hk + 1))
            left = int(u[k, 1] * (Wk - wk + 1))
        else:  # fallback: whole image, clamped to the ratio range (torchvision)
            in_ratio = Wk / Hk
            if in_ratio < ratio[0]:
                wk, hk = Wk, int(round(Wk / ratio[0]))
            elif in_ratio > ratio[1]:
                hk, wk = Hk, int(round(Hk * ratio[1]))
            else:
                wk, hk = Wk, Hk
            top, left = (Hk - hk) // 2, (Wk - wk) // 2
        out[k] = (top, left, hk, wk)
    return out


def erase_box(rng: np.random.Generator, H: int, W: int, scale=(0.02, 0.33), ratio=(0.3, 3.3),
              attempts: int = 10) -> tuple[int, int, int, int] | None:
    """A RandomErasing box ``(top, left, h, w)`` (torchvision's rule) or None when nothing fits."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        erase_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        h = int(round(math.sqrt(erase_area * aspect)))
        w = int(round(math.sqrt(erase_area / aspect)))
        if h < H and w < W:
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    return None


def strip_bounds(length: int, factor: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the ``factor`` strips released ShufflePatches cuts a side of ``length`` into.

    As released (RDED ``validation/utils.py``): strip k starts at ``k * (length // factor)``
    and is ``length // factor`` wide, except that a strip whose start equals
    ``factor - 1`` runs to the end (with factor 1: the whole side). So a remainder of
    ``length % factor`` pixels is dropped for factor >= 2 and the image shrinks.
    """
    tw = length // factor
    out = []
    for k in range(factor):
        start = k * tw
        out.append((start, length) if start == factor - 1 else (start, start + tw))
    return out


def shuffled_side(length: int, factor: int) -> int:
    """Side of an image after ShufflePatches (see :func:`strip_bounds`)."""
    return sum(b - a for a, b in strip_bounds(length, factor))


def shuffled_sizes(sizes: np.ndarray, factor: int) -> np.ndarray:
    """``(N, 2)`` H, W after ShufflePatches with ``factor`` (unchanged for factor 1)."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if factor <= 1:
        return sizes
    return np.array([[shuffled_side(int(h), factor), shuffled_side(int(w), factor)] for h, w in sizes],
                    dtype=np.int64).reshape(-1, 2)


def shuffle_patches(x: torch.Tensor, factor: int, perm_w, perm_h) -> torch.Tensor:
    """RDED's ShufflePatches on a CHW tensor with explicit permutations.

    The width is cut into strips (:func:`strip_bounds`) put in the order ``perm_w``
    (output strip i = input strip ``perm_w[i]``), then the height the same way with
    ``perm_h``; the release draws both orders with ``random.shuffle``.
    """
    def one_axis(t: torch.Tensor, perm) -> torch.Tensor:
        pieces = [t[..., a:b] for a, b in strip_bounds(t.shape[-1], factor)]
        return torch.cat([pieces[int(i)] for i in perm], -1)

    x = one_axis(x, perm_w)
    return one_axis(x.transpose(1, 2), perm_h).transpose(1, 2).contiguous()


def patch_orders(seed: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The two ShufflePatches orders of an image, drawn from its plan seed."""
    rng = np.random.default_rng([int(seed), 2])
    return rng.permutation(factor), rng.permutation(factor)


class SampleTransform:
    """``(uint8 HxWx3 array, record) -> float CHW tensor in [0, 1]`` (not normalised).

    ``record`` is ``(index, top, left, height, width, flip, seed)`` from the epoch plan.
    """

    def __init__(self, input_size: int, rand_augment: str | None = None, erasing_p: float = 0.0,
                 shuffle_factor: int = 1):
        self.input_size = int(input_size)
        self.rand_augment = rand_augment or None
        self.erasing_p = float(erasing_p)
        self.shuffle_factor = int(shuffle_factor)
        self._ra: dict[int, object] = {}

    def _ra_for(self, side: int):
        if side not in self._ra:
            self._ra[side] = build_rand_augment(self.rand_augment, side)
        return self._ra[side]

    def __call__(self, arr: np.ndarray, record) -> torch.Tensor:
        _, top, left, h, w, flip, seed = record
        if self.rand_augment:
            img = Image.fromarray(arr)
            with seeded_global_rng(seed):
                img = self._ra_for(min(img.size))(img)
            arr = np.asarray(img)
        x = torch.tensor(arr).permute(2, 0, 1).float().div_(255)  # copies: cached arrays are read-only
        if self.erasing_p > 0:
            rng = np.random.default_rng([int(seed), 1])
            if rng.random() < self.erasing_p:
                box = erase_box(rng, x.shape[1], x.shape[2])
                if box is not None:
                    t, l, eh, ew = box
                    x[:, t:t + eh, l:l + ew] = 0.0
        if self.shuffle_factor > 1:
            x = shuffle_patches(x, self.shuffle_factor, *patch_orders(seed, self.shuffle_factor))
        x = TF.resized_crop(x, int(top), int(left), int(h), int(w), [self.input_size, self.input_size],
                            interpolation=InterpolationMode.BILINEAR, antialias=True)
        if flip:
            x = x.flip(-1)
        return x
