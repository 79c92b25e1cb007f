"""rank_select --selection-criteria herding|kcenter: the selected files equal herding / k-center greedy
computed directly on the teacher's penultimate features from a plain forward pass; features are scored
in the same pass as the scores, stored beside the ranking (weights-only) and resumed with the scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli.errors import UserError
from common.data.imagefolder import ImageFolder, find_classes
from common.data.transforms import val_transform
from rank_select import rank as rank_mod
from rank_select.coreset import select_herding, select_kcenter


def run(argv):
    return rank_mod.main([str(a) for a in argv])


def args_for(data, out, criterion, teacher=None, csv=None, ipc=3):
    a = ["--data-path", data, "--output-path", out, "--ipc", ipc, "--selection-criteria", criterion,
         "--workers", 0, "--batch-size", 5]
    if teacher:
        a += ["--ranker-path", teacher]
    if csv:
        a += ["--ranking-file", csv]
    return a


def direct_features(teacher, train):
    """The teacher's penultimate features of every training image (plain model, plain forward)."""
    from models import load_model, penultimate_features

    model, meta = load_model(teacher)
    model.eval()
    ds = ImageFolder(train, val_transform(32, meta["mean"], meta["std"]))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    feats = penultimate_features(model, x).numpy()
    paths = [Path(s).relative_to(train).as_posix() for s, _ in ds.samples]
    return paths, feats


def expected_selection(paths, feats, rule, ipc):
    out = {}
    for cls in sorted({p.split("/")[0] for p in paths}):
        pos = [i for i, p in enumerate(paths) if p.startswith(cls + "/")]
        out[cls] = [paths[pos[j]] for j in rule(feats[pos], ipc)]
    return out


def selected(out):
    m = json.loads((out / "manifest.json").read_text())
    return {cls: [e["source"] for e in rows] for cls, rows in m["classes"].items()}, m


@pytest.mark.parametrize("criterion,rule", [("herding", select_herding), ("kcenter", select_kcenter)])
def test_selection_equals_rule_on_direct_features(tmp_path, tiny_data, tiny_teacher, criterion, rule):
    train, out, csv = tiny_data / "train", tmp_path / criterion, tmp_path / "ranking.csv"
    run(args_for(train, out, criterion, tiny_teacher, csv, ipc=3))
    paths, feats = direct_features(tiny_teacher, train)
    want = expected_selection(paths, feats, rule, 3)
    got, m = selected(out)
    assert got == want
    assert m["selection_criteria"] == criterion and m["features"]["dim"] == feats.shape[1]
    for cls, srcs in want.items():  # rank prefixes follow the pick order; bytes copied
        files = sorted(p.name for p in (out / cls).iterdir())
        assert [f"{cls}/{f[4:]}" for f in files] == srcs
        assert (out / cls / files[0]).read_bytes() == (train / srcs[0]).read_bytes()
    # the features were stored beside the ranking, weights-only, in file-name order
    stored = torch.load(rank_mod.features_path(csv), weights_only=True)
    assert stored["paths"] == paths
    assert np.allclose(stored["features"].numpy(), feats, atol=1e-5)
    # the other rule reuses them without the ranker: no scoring, the same as the rule on the direct features
    other, other_rule = ("kcenter", select_kcenter) if criterion == "herding" else ("herding", select_herding)
    run(args_for(train, tmp_path / "other", other, None, csv, ipc=2))
    got2, m2 = selected(tmp_path / "other")
    assert m2["reused_ranking"] and got2 == expected_selection(paths, feats, other_rule, 2)


def test_ranking_without_features_is_scored_again_or_refused(tmp_path, tiny_data, tiny_teacher, capsys):
    train, csv = tiny_data / "train", tmp_path / "ranking.csv"
    run(args_for(train, tmp_path / "medium", "medium", tiny_teacher, csv))
    assert not rank_mod.features_path(csv).exists()  # scores only: no features unless a rule needs them
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match="features.*--ranker-path"):
        run(args_for(train, tmp_path / "herding", "herding", None, csv))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before writing anything
    run(args_for(train, tmp_path / "herding", "herding", tiny_teacher, csv))
    assert "scoring again" in capsys.readouterr().err
    paths, feats = direct_features(tiny_teacher, train)
    assert selected(tmp_path / "herding")[0] == expected_selection(paths, feats, select_herding, 3)


def test_features_of_an_older_ranking_are_not_reused(tmp_path, tiny_data, tiny_teacher, capsys):
    """Herding scores and stores features; the ranking is then scored again by another ranker without
    features (--rerank, medium): the old features file no longer belongs to the CSV, so herding scores again."""
    from tests.conftest import make_teacher

    train, csv = tiny_data / "train", tmp_path / "ranking.csv"
    other = make_teacher(tmp_path / "other.pth", find_classes(train), data_root=train, seed=1)
    run(args_for(train, tmp_path / "h1", "herding", tiny_teacher, csv))
    run(args_for(train, tmp_path / "m", "medium", other, csv) + ["--rerank"])
    capsys.readouterr()
    run(args_for(train, tmp_path / "h2", "herding", other, csv))
    assert "scoring again" in capsys.readouterr().err
    paths, feats = direct_features(other, train)
    assert selected(tmp_path / "h2")[0] == expected_selection(paths, feats, select_herding, 3)


def test_features_resume_with_the_scores(tmp_path, tiny_data, tiny_teacher):
    from common.data.datasets import get_dataset
    from rank_select.ranker import load_ranker

    train = tiny_data / "train"
    ranker = load_ranker(tiny_teacher, None, find_classes(train), get_dataset("custom"), None, torch.device("cpu"))
    ds = ImageFolder(train, val_transform(32, ranker.mean, ranker.std))
    full = rank_mod.score_dataset(ranker, ds, 5, 0, features=True)
    partial = tmp_path / "state" / "scores.pt"

    def stop(batch_idx):
        if batch_idx == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rank_mod.score_dataset(ranker, ds, 5, 0, partial, save_every=0, fingerprint="fp", on_batch=stop,
                               features=True)
    state = torch.load(partial, weights_only=True)
    assert state["done"] == 15 and state["features"].shape[0] == 15
    seen = []
    resumed = rank_mod.score_dataset(ranker, ds, 5, 0, partial, save_every=0, fingerprint="fp",
                                     on_batch=seen.append, features=True)
    assert len(seen) == 2 and not partial.exists()
    assert set(resumed) == set(full) and resumed["features"].shape == full["features"].shape
    for k in full:
        assert np.allclose(full[k], resumed[k], atol=1e-6)


def test_partial_without_features_is_not_resumed_for_features(tmp_path, tiny_data, tiny_teacher):
    from common.data.datasets import get_dataset
    from rank_select.ranker import load_ranker

    train = tiny_data / "train"
    ranker = load_ranker(tiny_teacher, None, find_classes(train), get_dataset("custom"), None, torch.device("cpu"))
    ds = ImageFolder(train, val_transform(32, ranker.mean, ranker.std))
    partial = tmp_path / "scores.pt"

    def stop(batch_idx):
        if batch_idx == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rank_mod.score_dataset(ranker, ds, 5, 0, partial, save_every=0, fingerprint="fp", on_batch=stop)
    seen = []
    out = rank_mod.score_dataset(ranker, ds, 5, 0, partial, save_every=0, fingerprint="fp", on_batch=seen.append,
                                 features=True)
    assert len(seen) == 5 and out["features"].shape[0] == 24  # scored from the start


def test_sharded_gather_keeps_feature_rows_in_order(tmp_path, tiny_data, tiny_teacher, monkeypatch):
    """Two ranks' interleaved shares (features included) are put back in dataset order."""
    from common.data.datasets import get_dataset
    from rank_select.ranker import load_ranker

    train = tiny_data / "train"
    ranker = load_ranker(tiny_teacher, None, find_classes(train), get_dataset("custom"), None, torch.device("cpu"))
    ds = ImageFolder(train, val_transform(32, ranker.mean, ranker.std))
    full = rank_mod.score_dataset(ranker, ds, 5, 0, features=True)
    other = rank_mod.score_dataset(ranker, torch.utils.data.Subset(ds, range(1, 24, 2)), 5, 0, features=True)
    monkeypatch.setattr(rank_mod, "all_gather_object", lambda mine: [mine, other])
    got = rank_mod.score_sharded(ranker, ds, 5, 0, tmp_path / "p.pt", 120.0, "fp", 0, 2, features=True)
    for k in full:
        assert np.allclose(got[k], full[k], atol=1e-6)
