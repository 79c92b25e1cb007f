"""common.prepare: shapes determinism, Tiny-ImageNet from the official layout, subsets, CIFAR."""
from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import prepare
from common.cli.errors import UserError
from common.data.imagefolder import ImageFolder, find_classes
from common.data.shapes import CLASSES, render


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def test_shapes_deterministic_and_atomic(tmp_path):
    a = prepare.main(["shapes", "--out", str(tmp_path / "a"), "--train-per-class", "3", "--val-per-class", "2"])
    b = prepare.main(["shapes", "--out", str(tmp_path / "b"), "--train-per-class", "3", "--val-per-class", "2"])
    assert _digest(a) == _digest(b)
    assert find_classes(a / "train") == [f"{i:02d}_{c}" for i, c in enumerate(CLASSES)]
    assert len(ImageFolder(a / "train")) == 30 and len(ImageFolder(a / "val")) == 20
    assert (a / "manifest.json").is_file()
    c = prepare.main(["shapes", "--out", str(tmp_path / "c"), "--train-per-class", "3", "--val-per-class", "2",
                      "--seed", "1"])
    assert _digest(c) != _digest(a)
    with pytest.raises(UserError, match="output exists"):
        prepare.main(["shapes", "--out", str(a), "--train-per-class", "1", "--val-per-class", "1"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_shapes_images_differ_within_and_across_splits():
    x0, x1 = np.asarray(render(0, 0, 3, 0)), np.asarray(render(0, 0, 3, 1))
    v0 = np.asarray(render(0, 1, 3, 0))
    assert x0.shape == (32, 32, 3) and x0.dtype == np.uint8
    assert not np.array_equal(x0, x1) and not np.array_equal(x0, v0)
    assert np.array_equal(x0, np.asarray(render(0, 0, 3, 0)))


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="JPEG")
    return buf.getvalue()


def _fake_tiny_zip(path: Path) -> None:
    wnids = ["n02", "n01"]  # unsorted on purpose
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        zf.writestr("tiny-imagenet-200/words.txt", "n01\tone\nn02\ttwo\n")
        for w in wnids:
            zf.writestr(f"tiny-imagenet-200/train/{w}/{w}_boxes.txt", "x 0 0 1 1\n")
            for i in range(3):
                zf.writestr(f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG", _jpeg((i * 40, 0, 0)))
        ann = []
        for i in range(4):
            w = wnids[i % 2]
            zf.writestr(f"tiny-imagenet-200/val/images/val_{i}.JPEG", _jpeg((0, i * 40, 0)))
            ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10")
        zf.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(ann) + "\n")
        zf.writestr("tiny-imagenet-200/test/images/test_0.JPEG", _jpeg((1, 1, 1)))


def test_tinyimagenet_from_official_zip(tmp_path):
    _fake_tiny_zip(tmp_path / "tiny.zip")
    out = prepare.main(["tinyimagenet", "--src", str(tmp_path / "tiny.zip"), "--out", str(tmp_path / "tiny")])
    assert find_classes(out / "train") == ["n01", "n02"] and find_classes(out / "val") == ["n01", "n02"]
    assert sorted(p.name for p in (out / "train" / "n01").iterdir()) == [f"n01_{i}.JPEG" for i in range(3)]
    assert sorted(p.name for p in (out / "val" / "n02").iterdir()) == ["val_0.JPEG", "val_2.JPEG"]
    assert sorted(p.name for p in (out / "val" / "n01").iterdir()) == ["val_1.JPEG", "val_3.JPEG"]
    assert not (out / "test").exists()
    # the extracted folder works too
    with zipfile.ZipFile(tmp_path / "tiny.zip") as zf:
        zf.extractall(tmp_path / "extracted")
    out2 = prepare.main(["tinyimagenet", "--src", str(tmp_path / "extracted" / "tiny-imagenet-200"),
                         "--out", str(tmp_path / "tiny2")])
    assert sorted(str(p.relative_to(out2)) for p in out2.rglob("*.JPEG")) == \
        sorted(str(p.relative_to(out)) for p in out.rglob("*.JPEG"))


def test_imagenet_subset_from_local_tree(tmp_path):
    from common.data.datasets import get_dataset

    wnids = get_dataset("imagenet-nette").wnids()
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for w in wnids + ["n99999999"]:
            d = root / split / w
            d.mkdir(parents=True)
            (d / f"{w}_0.JPEG").write_bytes(_jpeg((5, 5, 5)))
    out = prepare.main(["imagenet-nette", "--imagenet-root", str(root), "--out", str(tmp_path / "nette")])
    assert find_classes(out / "train") == sorted(wnids) and "n99999999" not in find_classes(out / "val")
    assert (out / "train" / wnids[0] / f"{wnids[0]}_0.JPEG").is_symlink()
    import shutil

    shutil.rmtree(root / "train" / wnids[3])
    with pytest.raises(UserError, match="missing 1 wnid folder"):
        prepare.main(["imagenet-nette", "--imagenet-root", str(root), "--out", str(tmp_path / "n2")])


def test_cifar_offline_message_and_layout(tmp_path, monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, *a, **k):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(UserError, match="download to .* failed .*cifar-\\*-python.tar.gz"):
        prepare.main(["cifar10", "--out", str(tmp_path / "c"), "--download-root", str(tmp_path / "dl")])
    assert not (tmp_path / "c").exists()

    class Fake:
        classes = ["airplane", "automobile"]

        def __init__(self, root, train, download):
            n = 4 if train else 2
            self.data = np.full((n, 32, 32, 3), 7, np.uint8)
            self.targets = [i % 2 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Fake)
    out = prepare.main(["cifar10", "--out", str(tmp_path / "c"), "--download-root", str(tmp_path / "dl")])
    assert find_classes(out / "train") == ["00_airplane", "01_automobile"]
    assert len(ImageFolder(out / "train")) == 4 and len(ImageFolder(out / "val")) == 2
