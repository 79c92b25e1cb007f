"""relabel_eval.export --format ddranking: the files DD-Ranking reads, read back and checked."""
from __future__ import annotations

import json

import pytest
import torch
from torchvision.datasets import ImageFolder as TVImageFolder

from common.cli.errors import UserError
from common.data.imagefolder import find_classes
from common.data.transforms import val_transform
from models import load_model
from relabel_eval import export as export_mod
from relabel_eval import relabel as relabel_mod
from tests.conftest import make_teacher


def test_ddranking_export_reads_back(tiny_data, tiny_teacher, tmp_path):
    syn, out = tiny_data / "train", tmp_path / "dd"
    soft = tmp_path / "soft"
    relabel_mod.main(["--syn-data-path", str(syn), "--teacher-path", str(tiny_teacher), "--workers", "0",
                      "--device", "cpu", "--ipc", "3", "--epochs", "1", "--output-dir", str(soft)])
    export_mod.main(["--format", "ddranking", "--syn-data-path", str(syn), "--output-dir", str(out), "--ipc", "3",
                     "--teacher-path", str(tiny_teacher), "--soft-label-dir", str(soft)])
    classes = find_classes(syn)
    images, labels = torch.load(out / "images.pt"), torch.load(out / "labels.pt")
    assert images.shape == (9, 3, 32, 32) and labels.shape == (9, 3)
    # the plain ImageFolder copy: torchvision loads it, same classes, IPC 3 each, first files by name
    tv = TVImageFolder(str(out / "images"))
    assert tv.classes == classes and tv.targets == [0] * 3 + [1] * 3 + [2] * 3
    assert [p.split("/")[-1] for p, _ in tv.samples[:3]] == ["img_000.png", "img_001.png", "img_002.png"]
    # images.pt row k = image k of that folder, normalised as validation; labels.pt = teacher logits on it
    teacher, meta = load_model(tiny_teacher, classes=classes)
    tf = val_transform(32, meta["mean"], meta["std"])
    ref = torch.stack([tf(tv.loader(p)) for p, _ in tv.samples])
    assert torch.allclose(images, ref, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(labels, teacher(ref), atol=1e-5)
    m = json.loads((out / "manifest.json").read_text())
    assert m["ipc"] == 3 and m["classes"] == classes and m["labels_pt"]["ddranking_soft_label_mode"] == "S"
    # DD-Ranking's own hard labels for an image tensor: IPC copies of class 0, then class 1, ...
    hard = torch.arange(3).repeat_interleave(3)
    assert torch.equal(hard, torch.tensor(tv.targets))
    other = make_teacher(tmp_path / "other.pth", classes, seed=9)
    with pytest.raises(UserError, match="another teacher"):
        export_mod.main(["--format", "ddranking", "--syn-data-path", str(syn), "--output-dir", str(tmp_path / "x"),
                         "--ipc", "3", "--teacher-path", str(other), "--soft-label-dir", str(soft)])
    with pytest.raises(UserError, match="not an earlier export"):
        export_mod.main(["--format", "ddranking", "--syn-data-path", str(syn), "--output-dir", str(tiny_data),
                         "--input-size", "32"])
