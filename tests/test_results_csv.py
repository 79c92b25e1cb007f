"""relabel_eval's results table: rows are appended to our own table; any other CSV is never rewritten
unless --force."""
from __future__ import annotations

import pandas as pd
import pytest

from common.cli.errors import UserError
from relabel_eval.results import append_results_csv, check_results_csv


def _result(name: str) -> dict:
    summary = {"seeds": [1, 2], "final_top1_mean": 40.0, "final_top1_std": 1.0, "final_top5_mean": 90.0,
               "best_top1_mean": 41.0, "best_top1_std": 1.5, "train_time_s_mean": 3.0, "images_per_s_mean": 50.0}
    return {"name": name, "syn_data_path": "syn", "label_mode": "soft", "teacher": {"arch": "conv3"},
            "ipc": 10, "num_classes": 3, "protocol": {"epochs": 5, "device": "cpu"},
            "students": {"conv3": {"summary": summary, "batch_size": 10, "lr": 1e-3}}}


def test_rows_append_to_our_table(tmp_path):
    csv = tmp_path / "results.csv"
    append_results_csv(csv, _result("a"), tmp_path / "a.json")
    append_results_csv(csv, _result("b"), tmp_path / "b.json")
    assert list(pd.read_csv(csv)["name"]) == ["a", "b"]


def test_a_csv_that_is_not_ours_is_refused_and_left_alone(tmp_path):
    csv = tmp_path / "table.csv"
    csv.write_text("subject,score\nalice,3\n")
    before = csv.read_bytes()
    with pytest.raises(UserError, match="--results-csv .*not a relabel_eval results table.*--force"):
        check_results_csv(csv)
    with pytest.raises(UserError, match="--force"):
        append_results_csv(csv, _result("a"), tmp_path / "a.json")
    assert csv.read_bytes() == before
    append_results_csv(csv, _result("a"), tmp_path / "a.json", force=True)   # --force: a new table of ours
    table = pd.read_csv(csv)
    assert list(table["name"]) == ["a"] and "subject" not in table.columns
