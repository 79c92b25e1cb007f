"""Differentiable Siamese Augmentation (DSA), as the MTT/DATM/PAD code applies it.

Every op is differentiable with respect to the images (affine ops through
``grid_sample``, crop through indexing, cutout through a mask), so trajectory
matching can back-propagate through the augmentation into the synthetic pixels.

Semantics follow the released ``DiffAugment`` (``ParamDiffAug``, ``aug_mode='S'``):
- one *family* of the strategy (``color``, ``crop``, ``cutout``, ``flip``, ``scale``,
  ``rotate``) is drawn per call, and all ops of that family are applied in order
  (``color`` = brightness, saturation, contrast);
- parameters are drawn per sample; ``shared=True`` gives every sample the first
  sample's draw (DSA's ``batchmode``, the "siamese" draw reused across a batch);
- ranges: flip p 0.5, scale in [1/1.2, 1.2] per axis, rotate +-15 degrees, crop shift
  +-0.125 of the side (zero padded by one pixel, then clamped), cutout 0.5 of the side,
  brightness +(U-0.5)*1.0, saturation factor U*2.0, contrast factor U+0.5.
Draws come from a ``torch.Generator`` (CPU), so the same seed gives the same draw.
Kornia's augmentations parameterise colour and crop differently (HSV saturation,
clamped [0, 1] brightness, resized crops), so these ops are written in plain torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


def _rand(n: int, gen: torch.Generator | None, shared: bool) -> torch.Tensor:
    r = torch.rand(n, generator=gen)
    return r[:1].expand(n).clone() if shared else r


def _randint(lo: int, hi: int, n: int, gen: torch.Generator | None, shared: bool) -> torch.Tensor:
    r = torch.randint(lo, hi, (n,), generator=gen)
    return r[:1].expand(n).clone() if shared else r


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def rand_scale(x, p: DSAParams, gen=None, shared=False):
    r = p.ratio_scale
    n = x.shape[0]
    sx = _rand(n, gen, shared) * (r - 1.0 / r) + 1.0 / r
    sy = _rand(n, gen, shared) * (r - 1.0 / r) + 1.0 / r
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return _affine(x, theta)


def rand_rotate(x, p: DSAParams, gen=None, shared=False):
    n = x.shape[0]
    a = (_rand(n, gen, shared) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(-a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _affine(x, theta)


def rand_flip(x, p: DSAParams, gen=None, shared=False):
    f = (_rand(x.shape[0], gen, shared) < p.prob_flip).to(x.device).view(-1, 1, 1, 1)
    return torch.where(f, x.flip(3), x)


def rand_brightness(x, p: DSAParams, gen=None, shared=False):
    b = _rand(x.shape[0], gen, shared).to(x.device, x.dtype).view(-1, 1, 1, 1)
    return x + (b - 0.5) * p.brightness


def rand_saturation(x, p: DSAParams, gen=None, shared=False):
    m = x.mean(dim=1, keepdim=True)
    s = _rand(x.shape[0], gen, shared).to(x.device, x.dtype).view(-1, 1, 1, 1)
    return (x - m) * (s * p.saturation) + m


def rand_contrast(x, p: DSAParams, gen=None, shared=False):
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    c = _rand(x.shape[0], gen, shared).to(x.device, x.dtype).view(-1, 1, 1, 1)
    return (x - m) * (c + p.contrast) + m


def rand_crop(x, p: DSAParams, gen=None, shared=False):
    """Translate by up to ``ratio_crop_pad`` of the side; outside pixels come from a 1-pixel zero pad."""
    n, _, h, w = x.shape
    sh, sw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    tx = _randint(-sh, sh + 1, n, gen, shared).to(x.device).view(n, 1, 1)
    ty = _randint(-sw, sw + 1, n, gen, shared).to(x.device).view(n, 1, 1)
    gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    xp = F.pad(x, [1, 1, 1, 1])
    return xp.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)


def rand_cutout(x, p: DSAParams, gen=None, shared=False):
    n, _, h, w = x.shape
    ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
    ox = _randint(0, h + (1 - ch % 2), n, gen, shared).to(x.device).view(n, 1, 1)
    oy = _randint(0, w + (1 - cw % 2), n, gen, shared).to(x.device).view(n, 1, 1)
    gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


FAMILIES = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "crop": (rand_crop,),
    "cutout": (rand_cutout,),
    "flip": (rand_flip,),
    "scale": (rand_scale,),
    "rotate": (rand_rotate,),
}


def parse_strategy(strategy: str) -> list[str]:
    """``'color_crop_...'`` -> family names; ``''``/``'none'`` -> []; unknown names raise ValueError."""
    if not strategy or strategy.lower() == "none":
        return []
    names = strategy.split("_")
    bad = [s for s in names if s not in FAMILIES]
    if bad:
        raise ValueError(f"unknown DSA op(s) {bad}; choose from {'_'.join(FAMILIES)}")
    return names


def dsa(x: torch.Tensor, strategy: str = DEFAULT_STRATEGY, generator: torch.Generator | None = None,
        shared: bool = False, params: DSAParams = DSAParams()) -> torch.Tensor:
    """Apply one randomly chosen family of ``strategy`` to the NCHW batch ``x`` (DSA's mode 'S')."""
    names = parse_strategy(strategy)
    if not names:
        return x
    family = names[int(torch.randint(0, len(names), (1,), generator=generator))]
    for op in FAMILIES[family]:
        x = op(x, params, generator, shared)
    return x.contiguous()


def make_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g
