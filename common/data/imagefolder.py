"""One image-folder reader for every stage.

Rules (torchvision's, plus what real data needs):
- class index = position of the folder name in sorted order; files sorted by name;
- non-image files (``.DS_Store``, ``*_boxes.txt``, hidden files) are skipped;
- every image is decoded to 8-bit RGB by :func:`to_rgb` (grayscale, palette, RGBA
  and CMYK occur in Tiny-ImageNet and ImageNet; 16-bit PNGs and float TIFFs in
  scientific data), after applying its EXIF orientation;
- a corrupt or truncated file raises a :class:`UserError` naming the file, or is
  skipped and listed in ``dataset.skipped`` with ``skip_corrupt=True``.
"""
from __future__ import annotations

import os
import random
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from common.cli.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def find_classes(root: str | os.PathLike, what: str = "data path") -> list[str]:
    """Sorted class folder names under ``root``; a clear error when there are none."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: {what} does not exist")
    if not root.is_dir():
        raise UserError(f"{root}: {what} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: {what} has no class folders (expected ROOT/<class>/<image>)")
    return classes


def list_class_files(class_dir: str | os.PathLike) -> list[str]:
    """Sorted image file names in one class folder."""
    return sorted(e.name for e in os.scandir(class_dir) if e.is_file() and is_image_file(e.name))


def select_per_class(files: Sequence[str], limit: int | None, shuffle_seed: int | None = None) -> list[str]:
    """The first ``limit`` files, or ``limit`` files drawn with a seeded shuffle."""
    files = list(files)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(files)
    if limit is not None:
        files = files[:limit]
    return files


def random_real_indices(n: int, k: int, seed: int, label: int) -> list[int]:
    """The random-real baseline: ``k`` of a class's ``n`` files (positions in file-name order), first pick first.

    Seeded by ``seed + label`` (class index), as ``select_per_class``'s seeded shuffle, so
    ``relabel_eval.baselines random`` and ``rank_select --selection-criteria random``
    pick the same images for the same seed.
    """
    order = list(range(n))
    random.Random(seed + label).shuffle(order)
    return order[:k]


def make_samples(root: str | os.PathLike, classes: Sequence[str] | None = None,
                 per_class: int | None = None, shuffle_seed: int | None = None,
                 allow_empty: bool = False, what: str = "data path") -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(path, label), ...])`` for an ImageFolder tree.

    ``classes`` restricts or orders the class folders (labels follow its order);
    by default all folders in sorted order. With ``shuffle_seed`` each class draws
    its ``per_class`` files with a seeded shuffle (seed + class index).
    """
    root = Path(root)
    found = find_classes(root, what)
    if classes is None:
        classes = found
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise UserError(f"{root}: missing class folder(s) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        files = list_class_files(root / cls)
        if not files and not allow_empty:
            raise UserError(f"{root / cls}: class folder has no images")
        seed = None if shuffle_seed is None else shuffle_seed + label
        for name in select_per_class(files, per_class, seed):
            samples.append((str(root / cls / name), label))
    return list(classes), samples


ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB, as the user sees it.

    - EXIF orientation is applied first (a phone photo stored sideways comes out upright);
    - ``RGB`` is kept; ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``HSV`` go through Pillow's
      own conversion (``1`` -> 0/255; CMYK naively, as Pillow does);
    - transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, and ``P``/``L``/``RGB`` with a
      ``transparency`` entry) is composited over white;
    - 16-bit integer modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit integer ``I``
      (how Pillow may present 16-bit data) are read as 16-bit intensities: the 8-bit value is
      ``round(v / 257)`` with ``v`` clipped to [0, 65535] (so 65535 -> 255, and v = 257 k -> k exactly);
    - 32-bit float ``F``: values in [0, 1] are intensities (``round(255 v)``); an image whose
      maximum is above 1 is read as already on the 0-255 scale (``round(v)``); both clipped to
      [0, 255]; NaN or infinite pixels are an error;
    - ``LAB`` goes through Pillow's ImageCms (CIELab D50 -> sRGB).
    """
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block: the pixels are still good, keep them as stored
        pass
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im.copy()
    if mode.startswith("I;16") or mode == "I":
        return _gray_to_rgb(np.clip(np.asarray(im).astype(np.float64), 0, 65535) / 257.0)
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError("float image with NaN or infinite pixels")
        return _gray_to_rgb(a * 255.0 if a.size and a.max() <= 1.0 else a)
    if mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        return ImageCms.applyTransform(im, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
    return im.convert("RGB")


CORRUPT = "corrupt or unreadable image"  # a command with --skip-corrupt (squeeze) adds that hint to the line


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image fully and decode it to 8-bit RGB (:func:`to_rgb`); a bad file names itself."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: {CORRUPT} ({exc}); remove or replace the file") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    return load_rgb(path).size


def infer_input_size(root: str | os.PathLike, skip_corrupt: bool = False) -> int:
    """The shorter side of the first image found: the natural input size of a custom dataset.

    With ``skip_corrupt`` an unreadable file is passed over (it is skipped later too).
    """
    classes = find_classes(root)
    for cls in classes:
        for name in list_class_files(Path(root) / cls):
            try:
                return min(image_size(Path(root) / cls / name))
            except UserError:
                if not skip_corrupt:
                    raise
    raise UserError(f"{root}: no readable images found")


class ImageFolder(torch.utils.data.Dataset):
    """ImageFolder with the project's rules; returns ``(transform(img), label)``.

    ``cache=True`` decodes every image once into a uint8 array in memory (for small
    distilled sets, evaluated for hundreds of epochs). ``skip_corrupt=True`` checks
    every file up front and lists the bad ones in ``self.skipped`` instead of failing.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 classes: Sequence[str] | None = None, per_class: int | None = None,
                 shuffle_seed: int | None = None, cache: bool = False, skip_corrupt: bool = False,
                 allow_empty: bool = False, what: str = "data path"):
        self.root = Path(root)
        self.transform = transform
        self.classes, self.samples = make_samples(root, classes, per_class, shuffle_seed, allow_empty, what)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.skipped: list[str] = []
        self._cache: list[np.ndarray] | None = None
        if skip_corrupt or cache:
            kept, arrays = [], []
            for path, label in self.samples:
                try:
                    img = load_rgb(path)
                except UserError:
                    if not skip_corrupt:
                        raise
                    self.skipped.append(path)
                    continue
                kept.append((path, label))
                if cache:
                    arrays.append(np.asarray(img, dtype=np.uint8))
            left = {label for _, label in kept}
            empty = [c for i, c in enumerate(self.classes) if i not in left]
            if empty and not allow_empty:
                raise UserError(f"{self.root / empty[0]}: no readable image left in this class after skipping "
                                f"{len(self.skipped)} corrupt file(s)")
            if self.skipped:
                print(f"warning: skipped {len(self.skipped)} corrupt image(s) under {root}: "
                      f"{', '.join(self.skipped[:3])}{' ...' if len(self.skipped) > 3 else ''}", file=sys.stderr)
            self.samples = kept
            self._cache = arrays if cache else None
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def arrays(self) -> list[np.ndarray] | None:
        """The decoded HWC uint8 images when built with ``cache=True`` (else None)."""
        return self._cache

    def load(self, index: int) -> Image.Image:
        if self._cache is not None:
            return Image.fromarray(self._cache[index])
        return load_rgb(self.samples[index][0])

    def __getitem__(self, index: int):
        img = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.samples[index][1]

    def count_per_class(self) -> list[int]:
        return np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes)).tolist()


def check_same_classes(expected: Sequence[str], found: Sequence[str], expected_what: str, found_what: str) -> None:
    """Stop with one line when two class lists differ (order matters: it is the label mapping)."""
    expected, found = list(expected), list(found)
    if expected == found:
        return
    if len(expected) != len(found):
        raise UserError(f"{found_what} has {len(found)} classes but {expected_what} has {len(expected)}")
    only_e = sorted(set(expected) - set(found))
    only_f = sorted(set(found) - set(expected))
    if only_e or only_f:
        raise UserError(f"{found_what} classes differ from {expected_what}: "
                        f"{found_what} lacks {only_e[:3]}, has extra {only_f[:3]}")
    i = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
    raise UserError(f"{found_what} class order differs from {expected_what} at index {i} "
                    f"({found[i]} vs {expected[i]})")


def check_train_val(train_root: str | os.PathLike, val_root: str | os.PathLike) -> list[str]:
    """Train and val class folders must be the same list; return it."""
    train_classes = find_classes(train_root, "train folder")
    val_classes = find_classes(val_root, "val folder")
    check_same_classes(train_classes, val_classes, f"train folder {train_root}", f"val folder {val_root}")
    return train_classes
