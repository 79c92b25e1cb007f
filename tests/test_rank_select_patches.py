"""rank_select.patches (RDED): crops, scoring, selection, stitching layout, determinism, resume, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from common.cli.errors import run_cli
from common.data.imagefolder import find_classes, load_rgb
from common.run.state import state_dir
from rank_select import patches as P


def test_stitch_layout_cell_k_of_image_j_is_sorted_patch_k_times_ipc_plus_j():
    ipc, factor, cell = 3, 2, 4
    # sorted patch number i is filled with the value i
    patches = torch.arange(ipc * factor ** 2, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, cell, cell)
    out = P.stitch(patches.clone(), ipc, factor, 2 * cell)
    assert out.shape == (ipc, 3, 8, 8)
    for j in range(ipc):
        for k in range(factor ** 2):
            r, c = divmod(k, factor)
            block = out[j, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            assert torch.all(block == k * ipc + j), (j, k)


def test_stitch_uneven_size_and_factor_one():
    patches = torch.arange(4, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    out = P.stitch(patches, 1, 2, 9)  # cells of 5 and 4 pixels, as the released mix_images
    assert P.cell_sizes(9, 2) == [5, 4]
    assert torch.all(out[0, :, :5, :5] == 0) and torch.all(out[0, :, :5, 5:] == 1)
    assert torch.all(out[0, :, 5:, :5] == 2) and torch.all(out[0, :, 5:, 5:] == 3)
    same = torch.rand(3, 3, 8, 8)
    assert torch.equal(P.stitch(same, 3, 1, 8), same)
    with pytest.raises(ValueError):
        P.stitch(same, 2, 1, 8)


def test_best_crop_and_selection_with_known_losses():
    losses = torch.tensor([[0.9, 0.3, 0.5], [0.2, 0.2, 0.8], [1.5, 1.1, 1.0], [0.05, 0.7, 0.6]])
    idx, best = P.best_crop_per_image(losses)
    assert idx.tolist() == [1, 0, 2, 0]  # first crop on ties
    assert torch.allclose(best, torch.tensor([0.3, 0.2, 1.0, 0.05]))
    assert P.select_patches(best, 3).tolist() == [3, 1, 0]


def test_pad_is_centred_zero_padding():
    x = torch.ones(1, 3, 3, 3)
    y = P.pad_to(x, 6)
    assert y.shape == (1, 3, 6, 6)
    assert y[0, 0].sum() == 9 and torch.all(y[0, :, 1:4, 1:4] == 1)  # one row/col before, two after
    assert torch.equal(P.pad_to(x, 3), x)


def test_crop_losses_equal_reference(tiny_data, tiny_teacher):
    from common.data.datasets import get_dataset
    from common.data.transforms import normalize
    from rank_select.ranker import load_ranker

    train = tiny_data / "train"
    ranker = load_ranker(tiny_teacher, None, find_classes(train), get_dataset("custom"), None, torch.device("cpu"))
    crops = torch.rand(5, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1])
    got = P.crop_losses(ranker, crops, labels, batch_size=2)
    x = F.pad(normalize(crops, ranker.mean, ranker.std), (8, 8, 8, 8))
    with torch.no_grad():
        ref = F.cross_entropy(ranker.model(x), labels, reduction="none")
    assert torch.allclose(got, ref, atol=1e-5)


def test_random_crops_are_seeded_square_and_inside_the_image():
    img = torch.rand(3, 40, 56)
    a, boxes = P.random_crops(img, 5, 16, seed=7)
    b, boxes_b = P.random_crops(img, 5, 16, seed=7)
    assert torch.equal(a, b) and torch.equal(boxes, boxes_b)
    assert a.shape == (5, 3, 16, 16)
    for crop, (t, l, h, w) in zip(a, boxes.tolist()):
        assert h == w and 0 <= t and t + h <= 40 and 0 <= l and l + w <= 56
        assert torch.equal(crop, TF.resized_crop(img, t, l, h, w, [16, 16], antialias=True))
    c, _ = P.random_crops(img, 5, 16, seed=8)
    assert not torch.equal(a, c)
    state = torch.get_rng_state()
    P.random_crops(img, 2, 8, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched


def run(data, teacher, out, *extra):
    return P.main([str(a) for a in ["--data-path", data, "--observer-path", teacher, "--output-path", out,
                                    "--workers", 0, "--mipc", 6, "--num-crop", 3, "--batch-size", 9, *extra]])


def read_images(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_end_to_end_deterministic_and_manifest_boxes_reproduce_patches(tmp_path, tiny_data, tiny_teacher):
    train = tiny_data / "train"
    run(train, tiny_teacher, tmp_path / "a", "--ipc", 2, "--factor", 1, "--seed", 5)
    run(train, tiny_teacher, tmp_path / "b", "--ipc", 2, "--factor", 1, "--seed", 5)
    run(train, tiny_teacher, tmp_path / "c", "--ipc", 2, "--factor", 1, "--seed", 6)
    a, b, c = (read_images(tmp_path / d) for d in "abc")
    assert len(a) == 6 and a == b and a != c
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["stage"] == "rank_select.patches" and m["inputs"]["observer"]["sha256"]
    assert m["wall_time_s"] >= m["timings"]["scoring_s"] > 0 and m["timings"]["crops_scored"] == 3 * 6 * 3
    for cls in find_classes(train):
        assert sorted(p.name for p in (tmp_path / "a" / cls).iterdir()) == ["000_rded.png", "001_rded.png"]
        entry = m["classes"][cls]
        assert entry["pool_size"] == 6
        losses = [im["patches"][0]["loss"] for im in entry["images"]]
        assert losses == sorted(losses)
        for im in entry["images"]:  # factor 1: the image is its single patch, cut from the recorded box
            (cell,) = im["patches"]
            t, l, h, w = cell["box_tlhw"]
            src = TF.to_tensor(load_rgb(train / cell["source"]))
            expect = P.to_uint8_image(TF.resized_crop(src, t, l, h, w, [32, 32], antialias=True))
            got = Image.open(tmp_path / "a" / cls / im["file"])
            assert np.array_equal(np.asarray(got), np.asarray(expect))


def test_factor_two_stitches_four_pool_images(tmp_path, tiny_data, tiny_teacher):
    train = tiny_data / "train"
    run(train, tiny_teacher, tmp_path / "f2", "--ipc", 1, "--factor", 2, "--save-format", "jpg")
    m = json.loads((tmp_path / "f2" / "manifest.json").read_text())
    for cls in find_classes(train):
        (im,) = m["classes"][cls]["images"]
        assert im["file"] == "000_rded.jpg"
        assert [p["cell"] for p in im["patches"]] == [0, 1, 2, 3]
        assert len({p["source"] for p in im["patches"]}) == 4  # one best crop per source image
        assert Image.open(tmp_path / "f2" / cls / im["file"]).size == (32, 32)


def test_interrupted_run_resumes_to_identical_output(tmp_path, tiny_data, tiny_teacher, monkeypatch, capsys):
    train = tiny_data / "train"
    run(train, tiny_teacher, tmp_path / "clean", "--ipc", 2)
    calls = []
    real = P.write_class

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "write_class", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(train, tiny_teacher, tmp_path / "out", "--ipc", 2)
    assert not (tmp_path / "out").exists() and state_dir(tmp_path / "out").exists()
    monkeypatch.setattr(P, "write_class", real)
    run(train, tiny_teacher, tmp_path / "out", "--ipc", 2)
    assert "resuming: 1 of 3 classes already done" in capsys.readouterr().err
    assert read_images(tmp_path / "out") == read_images(tmp_path / "clean")
    assert not state_dir(tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == find_classes(train) + ["manifest.json"]


def test_errors_are_one_line(tmp_path, tiny_data, tiny_teacher, capsys):
    train = tiny_data / "train"
    argv = ["--data-path", train, "--observer-path", tiny_teacher, "--output-path", tmp_path / "o",
            "--workers", 0, "--mipc", 6, "--ipc", 2, "--factor", 2]
    code = run_cli(P.main, [str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "class 00_circle has only 6 images" in err[0]
    assert not (tmp_path / "o").exists()
    code = run_cli(P.main, [str(a) for a in argv] + ["--allow-fewer"])
    assert code == 0 and len(list((tmp_path / "o" / "00_circle").iterdir())) == 1
    capsys.readouterr()
    assert run_cli(P.main, [str(a) for a in argv[:-2]] + ["--ipc", "0"]) == 2  # refused by the parser
    assert capsys.readouterr().err.startswith("error: argument --ipc: must be an integer >= 1, got 0")


def test_parser_accepts_rded_names():
    a = P.get_args_parser().parse_args(["--subset", "tinyimagenet", "--arch-name", "conv4", "--train-dir", "d",
                                        "--syn-data-path", "o", "--arch-path", "t.pth", "--factor", "1",
                                        "--num-crop", "5", "--mipc", "300", "--ipc", "10"])
    assert (a.dataset, a.observer_arch, a.data_path, a.output_path, a.observer_path) == (
        "tinyimagenet", "conv4", "d", "o", "t.pth")
    assert a.save_format == "png"
