"""``shapes``: the built-in default dataset, generated deterministically offline.

Ten classes of 32x32 RGB images of one geometric shape each, drawn at a random
position, size, rotation and colour over a textured background with clutter
(random lines and a distractor blob) and pixel noise. Small, low-contrast and
partly occluded shapes make it a real learning task: a ConvNet-3 teacher reaches
roughly 80-90% validation top-1, not 100%, so distillation methods can be told apart.
Every image is a function of (seed, split, class, index) alone.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "plus", "ring", "diamond", "star", "hbars", "vbars", "crescent")
SUPER = 4  # draw at 4x and downsample: anti-aliased edges


def _polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        a = rot + math.pi * 2 * i / k
        rr = (inner if (inner and i % 2) else r)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, cls: str, cx: float, cy: float, r: float, rot: float, fill, bg) -> None:
    if cls == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif cls == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, rot % (math.pi / 2) * 0.3 + math.pi / 4), fill=fill)
    elif cls == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, rot), fill=fill)
    elif cls == "plus":
        w = r * 0.38
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif cls == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=bg)
    elif cls == "diamond":
        draw.polygon([(cx, cy - r * 1.25), (cx + r * 0.75, cy), (cx, cy + r * 1.25), (cx - r * 0.75, cy)], fill=fill)
    elif cls == "star":
        draw.polygon(_polygon(cx, cy, r * 1.25, 5, rot, inner=r * 0.5), fill=fill)
    elif cls in ("hbars", "vbars"):
        n, w = 3, r * 0.3
        for i in range(n):
            off = -r + (2 * r) * i / (n - 1)
            if cls == "hbars":
                draw.rectangle([cx - r, cy + off - w / 2, cx + r, cy + off + w / 2], fill=fill)
            else:
                draw.rectangle([cx + off - w / 2, cy - r, cx + off + w / 2, cy + r], fill=fill)
    elif cls == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        dx, dy = 0.55 * r * math.cos(rot), 0.55 * r * math.sin(rot)
        draw.ellipse([cx + dx - r * 0.9, cy + dy - r * 0.9, cx + dx + r * 0.9, cy + dy + r * 0.9], fill=bg)
    else:
        raise ValueError(cls)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def render(seed: int, split: int, label: int, index: int, size: int = 32) -> Image.Image:
    """One image, a pure function of its arguments."""
    rng = np.random.default_rng([seed, split, label, index])
    S = size * SUPER
    # colour is a weak cue, as in real data: each class prefers a hue band (neighbours overlap);
    # the background is dark or light and the shape mid-bright, so shapes are visible but the
    # contrast varies
    hue = (label / len(CLASSES) + rng.normal(0, 0.12)) % 1.0
    fg = _hsv(hue, rng.uniform(0.35, 1.0), rng.uniform(0.45, 0.9))
    dark = rng.uniform() < 0.5
    bg = _hsv(rng.uniform(), rng.uniform(0, 0.7), rng.uniform(0.0, 0.3) if dark else rng.uniform(0.8, 1.0))
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    # clutter: lines and a blob in random colours
    for _ in range(int(rng.integers(0, 3))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, S, 4))
        d.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(1, 3)) * SUPER)
    blob = tuple(int(v) for v in rng.integers(0, 256, 3))
    bx, by, br = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.06, 0.15) * S
    d.ellipse([bx - br, by - br * 0.6, bx + br, by + br * 0.6], fill=blob)
    r = rng.uniform(0.22, 0.38) * S
    cx, cy = S / 2 + rng.uniform(-0.22, 0.22) * S, S / 2 + rng.uniform(-0.22, 0.22) * S
    draw_shape(d, CLASSES[label], cx, cy, r, rng.uniform(0, 2 * math.pi), fg, bg)
    # a second line drawn over the shape occludes part of it
    if rng.uniform() < 0.3:
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        d.line([float(v) for v in rng.uniform(0, S, 4)], fill=col, width=2 * SUPER)
    img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.8) * SUPER)).resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(4, 20), (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def generate(out: str | Path, train_per_class: int = 500, val_per_class: int = 100, seed: int = 0,
             size: int = 32, progress: bool = True) -> None:
    """Write ``out/train/<class>/*.png`` and ``out/val/<class>/*.png`` (caller makes it atomic)."""
    from tqdm import tqdm

    out = Path(out)
    jobs = [(split_id, split, label, i)
            for split_id, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class)))
            for label in range(len(CLASSES)) for i in range(n)]
    for split_id, split, label, i in tqdm(jobs, desc="shapes", disable=not progress, mininterval=1.0):
        folder = out / split / f"{label:02d}_{CLASSES[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        render(seed, split_id, label, i, size).save(folder / f"{split}_{i:05d}.png", optimize=False)
