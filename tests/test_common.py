"""The shared data layer: registry, image-folder reader, transforms, atomic writes, manifests."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli.errors import UserError, one_line, run_cli
from common.compute.device import resolve_device
from common.data.dataconfig import resolve_data_config
from common.data.datasets import get_dataset
from common.data.imagefolder import ImageFolder, check_same_classes, check_train_val, find_classes, load_rgb
from common.data.transforms import pixel_bounds, to_pil, val_resize_size, val_transform
from common.run.atomic import atomic_dir, atomic_write_json
from common.run.manifest import build_manifest, sha256_file, write_manifest


def test_registry_names_and_aliases():
    assert get_dataset("tiny-imagenet").name == "tinyimagenet"
    assert get_dataset("image-woof").name == "imagenet-woof"
    assert get_dataset("image-nette").name == "imagenet-nette"
    assert get_dataset("CIFAR10").num_classes == 10
    assert get_dataset("cifar100").num_classes == 100
    assert get_dataset("imagenet-1k").num_classes == 1000
    assert get_dataset("custom").num_classes is None
    with pytest.raises(UserError, match="unknown dataset"):
        get_dataset("mnistt")


def test_registry_sizes_and_class_lists():
    assert get_dataset("tinyimagenet").default_input_size("resnet18_modified") == 64
    assert get_dataset("imagenet-nette").default_input_size("resnet18") == 224
    assert get_dataset("imagenet-nette").default_input_size("conv5") == 128
    assert get_dataset("imagenet-1k").default_input_size("conv4") == 64
    assert get_dataset("cifar10").default_input_size("conv3") == 32
    assert resolve_data_config(get_dataset("cifar10"), "conv3", 48).input_size == 48


def test_data_config_sources_in_order(tmp_path):
    """flag, then checkpoint meta, then the dataset registry, then the images' own size; never a silent 224."""
    from tests.conftest import make_tree

    cifar, custom = get_dataset("cifar10"), get_dataset("custom")
    meta = {"input_size": 40, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "classes": ["a", "b"]}
    cfg = resolve_data_config(cifar, "conv3", 48, meta)
    assert (cfg.input_size, cfg.source["input_size"], cfg.mean) == (48, "--input-size", (0.5, 0.5, 0.5))
    cfg = resolve_data_config(cifar, "conv3", None, meta)
    assert (cfg.input_size, cfg.classes, cfg.interpolation) == (40, ("a", "b"), "bilinear")
    cfg = resolve_data_config(cifar, "resnet18_modified", None, {}, classes=["x"])
    assert (cfg.input_size, cfg.mean, cfg.classes) == (32, cifar.mean, ("x",))
    assert cfg.source == {"input_size": "dataset cifar10", "mean": "dataset cifar10", "std": "dataset cifar10",
                          "classes": "data"}
    make_tree(tmp_path / "d", 2, 1, size=24)
    assert resolve_data_config(custom, "resnet18", None, {}, image_root=tmp_path / "d").input_size == 24
    with pytest.raises(UserError, match="--input-size is required"):
        resolve_data_config(custom, "resnet18", None, {})
    nette = get_dataset("imagenet-nette").wnids()
    assert len(nette) == 10 and nette[0] == "n01440764" and nette == sorted(nette)
    assert len(get_dataset("imagenet-100").wnids()) == 100
    wn = get_dataset("imagenet-1k").wnids()
    assert len(wn) == 1000 and wn == sorted(wn)
    assert get_dataset("cifar10").mean == (0.485, 0.456, 0.406)


def _save(path: Path, mode: str, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"L": 128, "P": 3, "RGBA": (10, 20, 30, 128), "CMYK": (0, 128, 255, 0), "RGB": (1, 2, 3)}[mode]
    img = Image.new(mode, size, color)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None
    img.save(path, format=fmt)


def test_reader_modes_skips_and_order(tmp_path):
    root = tmp_path / "d"
    _save(root / "b_cls" / "z.png", "L")
    _save(root / "b_cls" / "a.png", "P")
    _save(root / "a_cls" / "x.png", "RGBA")
    _save(root / "a_cls" / "y.jpg", "CMYK")
    (root / "a_cls" / ".DS_Store").write_bytes(b"junk")
    (root / "a_cls" / "n123_boxes.txt").write_text("0 0 1 1")
    (root / ".hidden").mkdir()
    ds = ImageFolder(root)
    assert ds.classes == ["a_cls", "b_cls"]
    assert [Path(p).name for p, _ in ds.samples] == ["x.png", "y.jpg", "a.png", "z.png"]
    assert ds.targets == [0, 0, 1, 1]
    for i in range(len(ds)):
        img, _ = ds[i]
        assert img.mode == "RGB" and img.size == (20, 12)
    assert ds.count_per_class() == [2, 2]


def test_reader_per_class_limit_and_seeded_shuffle(tmp_path):
    root = tmp_path / "d"
    for i in range(6):
        _save(root / "c" / f"{i}.png", "RGB")
    first = ImageFolder(root, per_class=3)
    assert [Path(p).name for p, _ in first.samples] == ["0.png", "1.png", "2.png"]
    a = ImageFolder(root, per_class=3, shuffle_seed=7)
    b = ImageFolder(root, per_class=3, shuffle_seed=7)
    c = ImageFolder(root, per_class=3, shuffle_seed=8)
    assert a.samples == b.samples
    assert len(a) == 3 and (a.samples != first.samples or a.samples != c.samples)


def test_reader_cache_matches_disk(tmp_path):
    root = tmp_path / "d"
    _save(root / "c" / "0.png", "L")
    _save(root / "c" / "1.jpg", "RGB")
    disk, mem = ImageFolder(root), ImageFolder(root, cache=True)
    for i in range(2):
        assert np.array_equal(np.asarray(disk[i][0]), np.asarray(mem[i][0]))


def test_corrupt_file_named_or_skipped(tmp_path):
    root = tmp_path / "d"
    _save(root / "c" / "good.png", "RGB", size=(64, 64))
    _save(root / "c" / "trunc.jpg", "RGB", size=(64, 64))
    data = (root / "c" / "trunc.jpg").read_bytes()
    (root / "c" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "c" / "garbage.png").write_bytes(b"not an image at all")
    ds = ImageFolder(root)
    with pytest.raises(UserError, match="garbage.png: corrupt"):
        ds[0]
    with pytest.raises(UserError, match="trunc.jpg"):
        load_rgb(root / "c" / "trunc.jpg")
    skipping = ImageFolder(root, skip_corrupt=True)
    assert [Path(p).name for p, _ in skipping.samples] == ["good.png"]
    assert sorted(Path(p).name for p in skipping.skipped) == ["garbage.png", "trunc.jpg"]


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_classes(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        find_classes(tmp_path / "empty")
    (tmp_path / "e" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="class folder has no images"):
        ImageFolder(tmp_path / "e")
    _save(tmp_path / "t" / "a" / "0.png", "RGB")
    _save(tmp_path / "t" / "b" / "0.png", "RGB")
    _save(tmp_path / "v" / "a" / "0.png", "RGB")
    _save(tmp_path / "v" / "c" / "0.png", "RGB")
    with pytest.raises(UserError, match="classes differ"):
        check_train_val(tmp_path / "t", tmp_path / "v")
    with pytest.raises(UserError, match="order differs .* index 0"):
        check_same_classes(["a", "b"], ["b", "a"], "teacher", "data")


def test_run_cli_one_line(capsys):
    def bad(argv):
        raise UserError("x.pth: broken\nsecond line")

    assert run_cli(bad, []) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: x.pth: broken"
    wrapped = RuntimeError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File x\ncommon.errors.UserError: a.jpg: corrupt or unreadable image\n")
    assert one_line(wrapped) == "a.jpg: corrupt or unreadable image"


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(UserError):
        resolve_device("tpu")


def test_gpu_device_means_exactly_cuda_n_in_every_stage():
    import argparse

    from common.cli.flags import add_device_args, device_spec
    from rank_select.patches import get_args_parser as patches_parser
    from rank_select.rank import get_args_parser as rank_parser
    from recover.synthesize import get_args_parser as recover_parser
    from relabel_eval.train import get_args_parser as eval_parser
    from squeeze.train import get_args_parser as squeeze_parser

    p = argparse.ArgumentParser()
    add_device_args(p)
    assert device_spec(p.parse_args([])) == "auto"
    assert device_spec(p.parse_args(["--gpu-device", "-1"])) == "auto"
    assert device_spec(p.parse_args(["--gpu-device", "2"])) == "cuda:2"
    assert device_spec(p.parse_args(["--gpu-device", "1,3"])) == "cuda:1"
    assert device_spec(p.parse_args(["--device", "cuda:2", "--gpu-device", "2"])) == "cuda:2"
    assert device_spec(p.parse_args(["--device", "cpu"])) == "cpu"
    with pytest.raises(UserError, match="--gpu-device 1 means --device cuda:1, but --device cpu"):
        device_spec(p.parse_args(["--device", "cpu", "--gpu-device", "1"]))
    with pytest.raises(UserError, match="expected a GPU index"):
        device_spec(p.parse_args(["--gpu-device", "x"]))
    base = {"squeeze": ["--data-path", "d", "--output", "o"], "rank": ["--data-path", "d", "--output-path", "o"],
            "patches": ["--data-path", "d", "--output-path", "o"], "recover": [],
            "eval": ["--syn-data-path", "s", "--val-dir", "v"]}
    for name, parser in (("squeeze", squeeze_parser), ("rank", rank_parser), ("patches", patches_parser),
                         ("recover", recover_parser), ("eval", eval_parser)):
        assert device_spec(parser().parse_args(base[name] + ["--gpu-device", "3"])) == "cuda:3", name


def test_transforms_and_pixel_space():
    assert val_resize_size(32) == 32 and val_resize_size(64) == 73 and val_resize_size(224) == 256
    img = Image.new("RGB", (80, 60), (255, 0, 128))
    x = val_transform(64)(img)
    assert x.shape == (3, 64, 64)
    lo, hi = pixel_bounds()
    assert torch.allclose(x[:, 0, 0], torch.stack([hi[0, 0, 0], lo[1, 0, 0], x[2, 0, 0]]))
    back = to_pil(x)
    assert back.getpixel((10, 10)) == (255, 0, 128)


def test_atomic_dir_and_manifest(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("crash")
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(os.listdir(out)) == ["b.txt"]
    ck = tmp_path / "t.pth"
    ck.write_bytes(b"weights")
    m = build_manifest("test", {"ipc": 10, "path": Path("x")}, inputs={"teacher": ck}, seconds=1.5)
    assert m["inputs"]["teacher"]["sha256"] == sha256_file(ck)
    assert m["args"] == {"ipc": 10, "path": "x"} and "torch" in m["versions"]
    p = write_manifest(out, m)
    assert json.loads(p.read_text())["seconds"] == 1.5
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


def test_viz_replaces_its_own_grid_but_not_a_users_png(tmp_path, capsys):
    """A second run of the same common.viz command replaces the grid it wrote (its PNG says so);
    a PNG it did not write is replaced only with --force."""
    from PIL import Image

    from common import viz
    from common.cli.errors import run_cli
    from tests.conftest import make_tree

    make_tree(tmp_path / "set", 2, 2)
    out = tmp_path / "grid.png"
    argv = [str(tmp_path / "set"), "--out", str(out), "--per-class", "2"]
    assert run_cli(viz.main, argv) == 0 and viz.written_by_viz(out)
    assert run_cli(viz.main, argv) == 0  # our own grid: replaced
    user = tmp_path / "mine.png"
    Image.new("RGB", (4, 4)).save(user)
    before = user.read_bytes()
    capsys.readouterr()
    assert run_cli(viz.main, [str(tmp_path / "set"), "--out", str(user)]) == 2
    assert "--force" in capsys.readouterr().err and user.read_bytes() == before
    assert run_cli(viz.main, [str(tmp_path / "set"), "--out", str(user), "--force"]) == 0
    assert viz.written_by_viz(user)
