"""Shared fixtures: tiny generated ImageFolder trees and a small BatchNorm teacher.

Everything here is generated in the test's temporary directory in well under a
second; no test needs ../shared or the network.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


class Evil:
    """A planted pickle: unpickling it creates the folder ``marker``, proof that pickle code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def make_tree(root: Path, num_classes: int = 3, per_class: int = 8, size: int = 32, split: int = 0,
              seed: int = 0) -> Path:
    """An ImageFolder of ``shapes`` images: ``root/<NN_name>/img_XXX.png``."""
    from common.data.shapes import CLASSES, render

    for c in range(num_classes):
        d = root / f"{c:02d}_{CLASSES[c]}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            render(seed, split, c, i, size).save(d / f"img_{i:03d}.png")
    return root


def make_teacher(path: Path, classes: list[str], arch: str = "conv3", input_size: int = 32,
                 data_root: Path | None = None, seed: int = 0) -> Path:
    """A randomly initialised teacher whose BN running statistics were set on real batches."""
    from common.data.imagefolder import ImageFolder
    from common.data.transforms import val_transform
    from models import build_model, make_meta, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(arch, len(classes), input_size)
    if data_root is not None:
        ds = ImageFolder(data_root, val_transform(input_size))
        x = torch.stack([ds[i][0] for i in range(len(ds))])
    else:
        x = torch.randn(16, 3, input_size, input_size)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    save_checkpoint(path, model, make_meta(arch, len(classes), input_size, classes=classes, dataset="custom"))
    return path


@pytest.fixture
def one_torch_thread():
    """torch's intra-op threads set to one for the test (as a killed or torchrun subprocess runs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """``tmp/data/{train,val}``: 3 classes, 8 train and 4 val 32x32 images per class."""
    base = tmp_path / "data"
    make_tree(base / "train", 3, 8, split=0)
    make_tree(base / "val", 3, 4, split=1)
    return base


@pytest.fixture
def tiny_teacher(tmp_path: Path, tiny_data: Path) -> Path:
    from common.data.imagefolder import find_classes

    classes = find_classes(tiny_data / "train")
    return make_teacher(tmp_path / "teacher.pth", classes, data_root=tiny_data / "train")
