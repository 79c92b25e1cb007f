"""python -m common.prepare imagenet-1k on a miniature of the official files: a devkit (meta.mat with
leaf and non-leaf synsets, the val ground truth), a flat val folder, and training images as class
folders or as ILSVRC2012_img_train.tar's tar of per-class tars."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import common.data.imagenet as imnet
from common import prepare
from common.cli.errors import run_cli

WNIDS = ["n01440764", "n01443537", "n01484850"]
# ILSVRC2012_IDs as the devkit numbers them (not in wnid order) plus one non-leaf synset
SYNSETS = [(2, "n01484850", 0), (1, "n01443537", 0), (3, "n01440764", 0), (1001, "n00001740", 3)]
VAL_IDS = [3, 1, 2, 2, 3, 1]  # the ground truth of val images 1..6


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), seed * 20 % 255, dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def official(tmp_path, monkeypatch):
    monkeypatch.setattr(imnet, "imagenet1k_wnids", lambda: list(WNIDS))
    kit = tmp_path / "kit" / "ILSVRC2012_devkit_t12"
    (kit / "data").mkdir(parents=True)
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
          ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    syn = np.array([(i, w, w, "", n, np.array([]), 0, 0) for i, w, n in SYNSETS], dtype=dt)
    scipy.io.savemat(kit / "data" / "meta.mat", {"synsets": syn})
    (kit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in VAL_IDS))
    with tarfile.open(tmp_path / "devkit.tar.gz", "w:gz") as tar:
        tar.add(kit, arcname="ILSVRC2012_devkit_t12")
    val = tmp_path / "val_flat"
    val.mkdir()
    for k in range(len(VAL_IDS)):
        (val / f"ILSVRC2012_val_{k + 1:08d}.JPEG").write_bytes(jpeg(k))
    train = tmp_path / "train"
    for c, w in enumerate(WNIDS):
        (train / w).mkdir(parents=True)
        for j in range(2):
            (train / w / f"{w}_{j}.JPEG").write_bytes(jpeg(10 * c + j))
    with tarfile.open(tmp_path / "train.tar", "w") as outer:
        for w in WNIDS:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted((train / w).iterdir()):
                    inner.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{w}.tar")
            info.size = len(buf.getvalue())
            outer.addfile(info, io.BytesIO(buf.getvalue()))
    return tmp_path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.JPEG"))}


@pytest.mark.parametrize("train", ["train", "train.tar"])
@pytest.mark.parametrize("devkit", ["devkit.tar.gz", "kit"])
def test_val_regrouped_by_the_devkit(official, train, devkit):
    out = official / "out"
    assert run_cli(prepare.main, ["imagenet-1k", "--train-src", str(official / train), "--val-src",
                                  str(official / "val_flat"), "--devkit", str(official / devkit),
                                  "--out", str(out)]) == 0
    by_id = {i: w for i, w, n in SYNSETS if n == 0}
    expect_val = {f"val/{by_id[cid]}/ILSVRC2012_val_{k + 1:08d}.JPEG": jpeg(k) for k, cid in enumerate(VAL_IDS)}
    expect_train = {f"train/{w}/{w}_{j}.JPEG": jpeg(10 * c + j) for c, w in enumerate(WNIDS) for j in range(2)}
    assert tree(out) == {**expect_train, **expect_val}
    assert sorted(p.name for p in (out / "val").iterdir()) == WNIDS  # the non-leaf synset is not a class


def test_bad_inputs_touch_nothing(official, capsys):
    (official / "val_flat" / "ILSVRC2012_val_00000006.JPEG").unlink()  # one val image missing
    argv = ["imagenet-1k", "--train-src", str(official / "train"), "--val-src", str(official / "val_flat"),
            "--devkit", str(official / "devkit.tar.gz"), "--out", str(official / "out")]
    assert run_cli(prepare.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --val-src") and "5 images" in err[0]
    assert not (official / "out").exists()
    bad_kit = official / "bad.tar.gz"
    bad_kit.write_bytes(b"not a tar")
    argv[argv.index("--devkit") + 1] = str(bad_kit)
    assert run_cli(prepare.main, argv) == 2
    assert capsys.readouterr().err.startswith("error: --devkit")
    assert not (official / "out").exists()
