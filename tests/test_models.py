"""Model zoo and checkpoint contract: round trips, foreign formats, mismatch errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common.cli.errors import UserError
from models import build_model, has_batchnorm, load_model, make_meta, penultimate_features, save_checkpoint
from models.checkpoint import infer_conv_input_size, read_checkpoint

CLASSES = [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("arch,size,feat", [("conv3", 32, 128 * 4 * 4), ("conv4", 64, 128 * 4 * 4),
                                            ("conv5", 128, 128 * 4 * 4), ("conv6", 64, 128),
                                            ("conv3_in", 32, 2048), ("resnet18_modified", 32, 512)])
def test_architectures(arch, size, feat):
    m = build_model(arch, 7, size).eval()
    x = torch.randn(2, 3, size, size)
    assert m(x).shape == (2, 7)
    assert penultimate_features(m, x).shape == (2, feat)
    assert has_batchnorm(m) == (not arch.endswith("_in"))


def test_modified_resnet_stem_and_torchvision_names():
    m = build_model("resnet18_modified", 10)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.bias is None
    assert isinstance(m.maxpool, nn.Identity)
    assert build_model("resnet50_modified", 10).fc.in_features == 2048
    assert build_model("mobilenet_v2", 5).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    conv_in = build_model("conv3_in", 10)
    assert isinstance(conv_in.features[1], nn.GroupNorm) and conv_in.features[1].num_groups == 128
    with pytest.raises(UserError, match="unknown architecture"):
        build_model("resnet9000", 10)


def test_round_trip_exact(tmp_path):
    m = build_model("conv3", 10, 32)
    with torch.no_grad():
        m.train()(torch.randn(8, 3, 32, 32))  # non-trivial BN running stats
    meta = make_meta("conv3", 10, 32, classes=CLASSES, dataset="cifar10", val_top1=55.5)
    save_checkpoint(tmp_path / "t.pth", m, meta)
    m2, meta2 = load_model(tmp_path / "t.pth", classes=CLASSES)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert meta2["val_top1"] == 55.5 and meta2["classes"] == CLASSES and not m2.training
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m.eval()(x), m2(x))


def test_foreign_formats(tmp_path):
    m = build_model("resnet18_modified", 10, 32)
    sd = {"module." + k: v for k, v in m.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "rded.pth")                  # RDED style, DataParallel prefixes
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "sre2l.pth")  # SRe2L style
    torch.save(m.state_dict(), tmp_path / "bare.pth")                 # bare torchvision weights
    x = torch.randn(2, 3, 32, 32)
    ref = m.eval()(x)
    for name in ("rded.pth", "sre2l.pth", "bare.pth"):
        loaded, meta = load_model(tmp_path / name, arch="resnet18_modified", num_classes=10)
        assert torch.allclose(loaded(x), ref), name
        assert meta["mean"] == [0.485, 0.456, 0.406]
    with pytest.raises(UserError, match="does not record its architecture"):
        load_model(tmp_path / "bare.pth")


def test_torchvision_densenet_file_with_legacy_key_names(tmp_path):
    """torchvision's densenet121-a639ec97.pth names its layers ``denselayerN.norm.1``; they load as torchvision
    loads them (renamed to ``norm1``), as a bare state dict given --arch-name."""
    import re

    m = build_model("densenet121", 3, 32).eval()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
              for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}  # as in the file
    assert any(".norm.1." in k for k in legacy) and not any(".norm1." in k for k in legacy)
    torch.save(legacy, tmp_path / "densenet121-legacy.pth")
    loaded, meta = load_model(tmp_path / "densenet121-legacy.pth", arch="densenet121", num_classes=3, input_size=32)
    x = torch.randn(2, 3, 32, 32)
    assert meta["arch"] == "densenet121" and torch.allclose(loaded(x), m(x))


def test_conv_input_size_inferred_from_classifier(tmp_path):
    m = build_model("conv4", 10, 64)
    torch.save({"model": m.state_dict()}, tmp_path / "c.pth")
    assert infer_conv_input_size("conv4", read_checkpoint(tmp_path / "c.pth")["model"]) == 64
    loaded, meta = load_model(tmp_path / "c.pth", arch="conv4")
    assert meta["input_size"] == 64 and loaded(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_mismatch_errors(tmp_path):
    m = build_model("conv3", 100, 32)
    save_checkpoint(tmp_path / "c100.pth", m, make_meta("conv3", 100, 32, classes=[f"k{i}" for i in range(100)]))
    with pytest.raises(UserError, match="100-class classifier but the data has 10 classes"):
        load_model(tmp_path / "c100.pth", classes=CLASSES)
    m10 = build_model("conv3", 10, 32)
    save_checkpoint(tmp_path / "c10.pth", m10, make_meta("conv3", 10, 32, classes=CLASSES))
    swapped = CLASSES[1:2] + CLASSES[:1] + CLASSES[2:]
    with pytest.raises(UserError, match="class list does not match"):
        load_model(tmp_path / "c10.pth", classes=swapped)
    with pytest.raises(UserError, match="checkpoint is a conv3"):
        load_model(tmp_path / "c10.pth", arch="resnet18")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "junk.pth")
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.pth")
    torch.save({"model": m10.state_dict()}, tmp_path / "wrongarch.pth")
    with pytest.raises(UserError, match="weights do not fit"):
        load_model(tmp_path / "wrongarch.pth", arch="conv4", num_classes=10)


class Evil:
    """Any pickled class instance: weights_only loading must refuse it without running it."""


def test_weights_only_refuses_pickled_objects(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "meta": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="weights-only"):
        read_checkpoint(tmp_path / "evil.pth")
