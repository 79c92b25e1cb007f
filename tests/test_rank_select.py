"""rank_select: selection rules, ranking metrics, the ranking CSV contract, end-to-end runs and errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.cli.errors import UserError, run_cli
from common.data.imagefolder import ImageFolder, find_classes
from common.data.transforms import val_transform
from rank_select import rank as rank_mod
from rank_select.select import (
    check_class_size,
    medium_walk,
    rank_width,
    select_indices,
    select_medium,
    select_min,
    select_random,
    select_top,
)
from tests.conftest import make_teacher, make_tree


def released_medium(scores, ipc):
    """DELT's data_selection.store_medium index walk, written as released (the reference)."""
    asc = np.argsort(np.asarray(scores), kind="stable")
    mid = math.ceil(len(asc) / 2)
    pos_neg, out = -1, []
    for indx in range(ipc):
        img_indx = mid + int(pos_neg * (indx + 1) / 2)
        pos_neg = pos_neg * -1
        out.append(asc[img_indx])  # the released code uses df.iloc[img_indx] on the ascending frame
    return out


# ----------------------------------------------------------------------------- selection rules

def test_medium_hand_computed_odd_and_even():
    # n = 5: ascending order of positions is 1, 3, 0, 4, 2; mid = 3 -> asc[3], asc[4], asc[2], asc[1], asc[0]
    assert select_medium([0.5, 0.1, 0.9, 0.3, 0.7], 5).tolist() == [4, 2, 0, 3, 1]
    # n = 4: ascending 1, 0, 3, 2; mid = 2 -> asc[2], asc[3], asc[1], (4 is past the end), asc[0]
    assert select_medium([0.4, 0.2, 0.8, 0.6], 4).tolist() == [3, 2, 0, 1]
    assert medium_walk(5) == [3, 4, 2, 1, 0]
    assert medium_walk(4) == [2, 3, 1, 0]
    assert medium_walk(1) == [0]


@pytest.mark.parametrize("n", list(range(1, 14)) + [50, 51, 500])
def test_medium_equals_released_walk(n):
    scores = np.random.default_rng(n).random(n)
    safe = 0  # the released walk indexes past the end once its upper side is used up
    while safe < n:
        try:
            released_medium(scores, safe + 1)
        except IndexError:
            break
        safe += 1
    assert safe >= n - 2 or n == 1
    ref = [int(i) for i in released_medium(scores, safe)]
    for ipc in range(safe + 1):
        assert select_medium(scores, ipc).tolist() == ref[:ipc]
    full = select_medium(scores, n).tolist()  # beyond it: the walk continues downwards, each image once
    assert sorted(full) == list(range(n)) and full[:safe] == ref


def test_ties_keep_file_name_order():
    scores = [0.5, 0.5, 0.5, 0.2, 0.5]
    assert select_top(scores, 5).tolist() == [0, 1, 2, 4, 3]
    assert select_min(scores, 5).tolist() == [3, 0, 1, 2, 4]
    # ascending (stable) = 3, 0, 1, 2, 4; mid = 3 -> asc[3], asc[4], asc[2], asc[1], asc[0]
    assert select_medium(scores, 5).tolist() == [2, 4, 1, 0, 3]
    assert select_top([0.3] * 4, 2).tolist() == [0, 1]


def test_top_min_and_truncation():
    scores = [0.2, 0.9, 0.4, 0.7, 0.1, 0.6]
    assert select_top(scores, 3).tolist() == [1, 3, 5]
    assert select_min(scores, 2).tolist() == [4, 0]
    assert select_medium(scores, 2).tolist() == [5, 3]  # asc: 4,0,2,5,3,1; mid 3 -> asc[3], asc[4]


def test_random_is_seeded_per_class_and_without_replacement():
    scores = np.linspace(0, 1, 20)
    a = select_random(scores, 10, seed=3, label=0)
    assert a.tolist() == select_random(scores, 10, seed=3, label=0).tolist()
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 20
    assert a.tolist() != select_random(scores, 10, seed=3, label=1).tolist()
    assert a.tolist() != select_random(scores, 10, seed=4, label=0).tolist()
    assert select_indices("random", scores, 10, seed=3, label=0).tolist() == a.tolist()
    with pytest.raises(UserError, match="selection-criteria"):
        select_indices("best", scores, 3)


def test_class_size_and_rank_width():
    assert check_class_size("cat", 10, 5, False) == 5
    with pytest.raises(UserError, match="class cat has only 3 images but --ipc is 5"):
        check_class_size("cat", 3, 5, False)
    assert check_class_size("cat", 3, 5, True) == 3
    assert rank_width(1) == 3 and rank_width(999) == 3 and rank_width(1000) == 4


# ----------------------------------------------------------------------------- metrics and CSV

def test_score_logits_against_reference():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    m = rank_mod.score_logits(logits, labels)
    p0 = torch.exp(torch.tensor([2.0, 1.0, 0.0])) / torch.exp(torch.tensor([2.0, 1.0, 0.0])).sum()
    p1 = torch.softmax(torch.tensor([0.0, 3.0, 1.0]), 0)
    assert torch.allclose(m["score"], torch.stack([p0[0], p1[2]]))
    assert torch.allclose(m["loss"], -torch.log(torch.stack([p0[0], p1[2]])))
    assert m["margin"].tolist() == [1.0, -2.0]  # 2 - 1; 1 - 3
    assert m["pred"].tolist() == [0, 1]
    e0 = torch.sqrt((p0[0] - 1) ** 2 + p0[1] ** 2 + p0[2] ** 2)
    e1 = torch.sqrt(p1[0] ** 2 + p1[1] ** 2 + (p1[2] - 1) ** 2)
    assert torch.allclose(m["el2n"], torch.stack([e0, e1]))


def test_ranking_frame_sorted_by_class_then_score_with_stable_ties():
    paths = ["a/1.png", "a/2.png", "a/3.png", "b/1.png", "b/2.png"]
    metrics = {"score": np.array([0.2, 0.5, 0.2, 0.1, 0.9]), "loss": np.zeros(5), "margin": np.zeros(5),
               "pred": np.zeros(5), "el2n": np.zeros(5)}
    df = rank_mod.ranking_frame(paths, ["a", "b"], [0, 0, 0, 1, 1], metrics)
    assert list(df.columns) == ["path", "class", "label", "score", "loss", "margin", "pred", "el2n"]
    assert df["path"].tolist() == ["a/2.png", "a/1.png", "a/3.png", "b/2.png", "b/1.png"]


# ----------------------------------------------------------------------------- end to end

def run(argv):
    return rank_mod.main([str(a) for a in argv])


def base_args(data, out, teacher=None, csv=None, ipc=3, criterion="medium"):
    args = ["--data-path", data, "--output-path", out, "--ipc", ipc, "--selection-criteria", criterion,
            "--workers", 0, "--batch-size", 5]
    if teacher:
        args += ["--ranker-path", teacher]
    if csv:
        args += ["--ranking-file", csv]
    return args


def test_end_to_end_scores_copies_and_manifest(tmp_path, tiny_data, tiny_teacher):
    train, out, csv = tiny_data / "train", tmp_path / "init", tmp_path / "rank" / "ranking.csv"
    run(base_args(train, out, tiny_teacher, csv, ipc=3))
    classes = find_classes(train)
    df = pd.read_csv(csv)
    assert len(df) == 24 and list(df.columns)[:7] == ["path", "class", "label", "score", "loss", "margin", "pred"]
    # scores equal a direct forward pass of the teacher under the val transform
    from models import load_model
    model, meta = load_model(tiny_teacher)
    ds = ImageFolder(train, val_transform(32, meta["mean"], meta["std"]))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[torch.arange(len(ds)), torch.tensor(ds.targets)]
    direct = {Path(s).relative_to(train).as_posix(): float(v) for (s, _), v in zip(ds.samples, p)}
    assert np.allclose(df["score"], [direct[q] for q in df["path"]], atol=1e-5)
    for cls in classes:
        part = df[df["class"] == cls]
        assert part["score"].is_monotonic_decreasing
        files = sorted(f.name for f in (out / cls).iterdir())
        assert [f[:4] for f in files] == ["000_", "001_", "002_"]
        # medium over 8 images: ascending order, positions 4, 5, 3
        asc = part.sort_values("score", kind="stable")["path"].tolist()  # no ties in real scores
        assert [f"{cls}/{f[4:]}" for f in files] == [asc[4], asc[5], asc[3]]
        for f in files:  # bytes copied, not re-encoded
            assert (out / cls / f).read_bytes() == (train / cls / f[4:]).read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "rank_select" and m["inputs"]["ranker"]["sha256"]
    assert m["wall_time_s"] >= m["timings"]["scoring_s"] > 0 and m["timings"]["images_per_sec"] > 0
    assert [e["source"] for e in m["classes"][classes[0]]] == [f"{classes[0]}/{f[4:]}" for f in
                                                               sorted(p.name for p in (out / classes[0]).iterdir())]
    assert Path(f"{csv}.manifest.json").is_file()


def test_reuse_csv_without_ranker_and_atomic_replace(tmp_path, tiny_data, tiny_teacher, capsys):
    train, out, csv = tiny_data / "train", tmp_path / "init", tmp_path / "ranking.csv"
    run(base_args(train, out, tiny_teacher, csv, ipc=4, criterion="top"))
    before = csv.read_bytes()
    run(base_args(train, out, None, csv, ipc=2, criterion="min"))  # no ranker needed: the CSV is reused
    assert "reusing ranking" in capsys.readouterr().err
    assert csv.read_bytes() == before
    m = json.loads((out / "manifest.json").read_text())
    assert m["reused_ranking"] and m["wall_time_s"] >= m["timings"]["reused_ranking_scoring_s"] > 0
    df = pd.read_csv(csv)
    for cls in find_classes(train):
        files = sorted(f.name for f in (out / cls).iterdir())
        assert len(files) == 2  # the previous IPC-4 output was replaced, nothing left over
        lowest = df[df["class"] == cls].sort_values("score", kind="stable")["path"].tolist()[:2]
        assert [f"{cls}/{f[4:]}" for f in files] == lowest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".init")]


def test_csv_from_another_root_is_refused(tmp_path, tiny_data, tiny_teacher):
    train, csv = tiny_data / "train", tmp_path / "ranking.csv"
    run(base_args(train, tmp_path / "a", tiny_teacher, csv))
    other = make_tree(tmp_path / "other", 3, 7)  # same classes, one file fewer per class
    with pytest.raises(UserError, match="belongs to another data root.*--rerank"):
        run(base_args(other, tmp_path / "b", tiny_teacher, csv))
    renamed = make_tree(tmp_path / "renamed", 3, 8)
    (renamed / "00_circle").rename(renamed / "00_disc")
    with pytest.raises(UserError, match="classes differ"):
        run(base_args(renamed, tmp_path / "c", None, csv))
    run(base_args(other, tmp_path / "b", tiny_teacher, csv) + ["--rerank"])
    assert len(pd.read_csv(csv)) == 21


def test_released_csv_format_is_read(tmp_path, tiny_data):
    train = tiny_data / "train"
    rows = [{"score": 1.0 / (i + 1), "img_path": f"{c}/img_{i:03d}.png", "class": c}
            for c in find_classes(train) for i in range(8)]
    pd.DataFrame(rows).to_csv(tmp_path / "released.csv")  # with the pandas index column, as released
    run(base_args(train, tmp_path / "out", None, tmp_path / "released.csv", ipc=2, criterion="top"))
    assert sorted(p.name for p in (tmp_path / "out" / "00_circle").iterdir()) == ["000_img_000.png",
                                                                                  "001_img_001.png"]


def test_scoring_resumes_to_the_same_result(tmp_path, tiny_data, tiny_teacher):
    from common.data.datasets import get_dataset
    from rank_select.ranker import load_ranker

    train = tiny_data / "train"
    ranker = load_ranker(tiny_teacher, None, find_classes(train), get_dataset("custom"), None,
                         torch.device("cpu"))
    ds = ImageFolder(train, val_transform(32, ranker.mean, ranker.std))
    full = rank_mod.score_dataset(ranker, ds, 5, 0)
    partial = tmp_path / "out.state" / "scores.pt"

    def stop(batch_idx):
        if batch_idx == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rank_mod.score_dataset(ranker, ds, 5, 0, partial, save_every=0, fingerprint="fp", on_batch=stop)
    assert torch.load(partial, weights_only=True)["done"] == 15
    seen = []
    resumed = rank_mod.score_dataset(ranker, ds, 5, 0, partial, save_every=0, fingerprint="fp",
                                     on_batch=seen.append)
    assert len(seen) == 2  # only the last 9 images were scored again
    assert not partial.exists()
    for k in full:
        assert np.allclose(full[k], resumed[k])


# ----------------------------------------------------------------------------- one-line errors

def cli(argv, capsys):
    code = run_cli(rank_mod.main, [str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.startswith("error:")], err


def test_errors_are_one_line(tmp_path, tiny_data, tiny_teacher, capsys):
    train = tiny_data / "train"
    code, errs, _ = cli(base_args(train, tmp_path / "o", tiny_teacher, ipc=9), capsys)
    assert code == 2 and len(errs) == 1 and "00_circle has only 8 images but --ipc is 9" in errs[0]
    assert not (tmp_path / "o").exists()
    code, errs, _ = cli(base_args(train, tmp_path / "o", tiny_teacher, ipc=9) + ["--allow-fewer"], capsys)
    assert code == 0 and len(list((tmp_path / "o" / "00_circle").iterdir())) == 8

    other_teacher = make_teacher(tmp_path / "t4.pth", ["a", "b", "c", "d"])
    code, errs, _ = cli(base_args(train, tmp_path / "o2", other_teacher), capsys)
    assert code == 2 and len(errs) == 1 and "4-class classifier but the data has 3" in errs[0]
    reordered = make_teacher(tmp_path / "t3.pth", list(reversed(find_classes(train))))
    code, errs, _ = cli(base_args(train, tmp_path / "o2", reordered), capsys)
    assert code == 2 and "class list does not match" in errs[0]

    code, errs, _ = cli(base_args(train, train / "sub", tiny_teacher), capsys)
    assert code == 2 and "overlaps the data path" in errs[0]
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep")
    code, errs, _ = cli(base_args(train, tmp_path / "precious", tiny_teacher), capsys)
    assert code == 2 and "was not written by rank_select" in errs[0]
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep"
    code, errs, _ = cli(base_args(train, tmp_path / "o3"), capsys)
    assert code == 2 and "--ranker-path" in errs[0]


def test_parser_accepts_released_flags():
    args = rank_mod.get_args_parser().parse_args(
        ["--dataset", "tiny-imagenet", "--data-path", "d", "--output-path", "o", "--ranker-path", "r.pth",
         "--store-rank-file", "--ranker-arch", "resnet18", "--ranking-file", "r.csv", "--selection-criteria",
         "medium", "--ipc", "50", "--gpu-device", "0", "--batch-size", "200", "--workers", "16"])
    assert args.ranker_arch == "resnet18" and args.gpu_device == "0" and args.ipc == 50


def test_released_arch_names_resolve_to_the_modified_resnet():
    import argparse

    from rank_select.ranker import model_path_from_args, resolve_arch

    stem3, stem7 = {"conv1.weight": torch.zeros(64, 3, 3, 3)}, {"conv1.weight": torch.zeros(64, 3, 7, 7)}
    assert resolve_arch("resnet18", {}, stem3, "r.pth") == "resnet18_modified"  # bare RDED/DELT weights
    assert resolve_arch("resnet18", {}, stem7, "r.pth") == "resnet18"
    assert resolve_arch("resnet18", {"arch": "resnet18_modified"}, {}, "r.pth") == "resnet18_modified"
    assert resolve_arch(None, {"arch": "conv3"}, {}, "r.pth") == "conv3"
    assert resolve_arch("conv4", {"arch": "conv3"}, {}, "r.pth") == "conv4"  # load_model then refuses it
    ns = argparse.Namespace(ranker_path="a.pth", ranker_weights="b.pth", ranker_arch="resnet18")
    with pytest.raises(UserError, match="alternatives"):
        model_path_from_args(ns, "ranker")
    ns = argparse.Namespace(ranker_path=None, ranker_weights="b.pth", ranker_arch=None)
    with pytest.raises(UserError, match="needs --ranker-arch"):
        model_path_from_args(ns, "ranker")
