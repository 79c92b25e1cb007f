"""Results files: seed summaries, the appended CSV results table, per-run epoch logs."""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pandas as pd

from common.cli.errors import UserError
from common.run.atomic import atomic_write_text
from relabel_eval.protocol import mean_std


def summarize_runs(runs: list[dict]) -> dict:
    """Mean and sample std (ddof=1) over seeds of the final and best accuracies."""
    out: dict = {"seeds": [r["seed"] for r in runs], "n": len(runs), "std_ddof": 1}
    for key in ("final_top1", "final_top5", "best_top1", "train_time_s", "images_per_s"):
        m, s = mean_std(r[key] for r in runs if r.get(key) is not None)
        out[f"{key}_mean"], out[f"{key}_std"] = m, s
    return out


RESULT_COLUMNS = ("name", "syn_data_path", "student", "final_top1_mean", "results_json")


def is_results_table(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a results table this toolkit wrote (its header has our columns)."""
    try:
        header = set(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return False
    return all(c in header for c in RESULT_COLUMNS)


def check_results_csv(path: str | os.PathLike, force: bool = False) -> None:
    """Before any work: an existing ``--results-csv`` must be our results table (rows are appended to it);
    any other file is never rewritten unless ``force``."""
    path = Path(path)
    if path.is_file() and not force and not is_results_table(path):
        raise UserError(f"--results-csv {path}: exists and is not a relabel_eval results table (no "
                        f"{', '.join(RESULT_COLUMNS)} columns); choose another path, or pass --force to replace it")


def append_results_csv(path: str | os.PathLike, result: dict, output_json: str | os.PathLike,
                       force: bool = False) -> Path:
    """Append one row per student to a CSV table (created if missing); written atomically.

    A file that is not our results table is refused (see :func:`check_results_csv`), or replaced with ``force``.
    """
    path = Path(path)
    check_results_csv(path, force)
    rows = []
    teacher = result.get("teacher") or {}
    for stud, entry in result["students"].items():
        s = entry["summary"]
        rows.append({
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "name": result["name"],
            "syn_data_path": result["syn_data_path"], "label_mode": result["label_mode"],
            "teacher": teacher.get("arch"), "student": stud, "ipc": result["ipc"],
            "num_classes": result["num_classes"], "epochs": result["protocol"]["epochs"],
            "batch_size": entry["batch_size"], "lr": entry["lr"], "seeds": " ".join(map(str, s["seeds"])),
            "final_top1_mean": round(s["final_top1_mean"], 3), "final_top1_std": round(s["final_top1_std"], 3),
            "final_top5_mean": round(s["final_top5_mean"], 3),
            "best_top1_mean": round(s["best_top1_mean"], 3), "best_top1_std": round(s["best_top1_std"], 3),
            "train_time_s_mean": round(s["train_time_s_mean"], 2),
            "images_per_s_mean": round(s["images_per_s_mean"], 1), "device": result["protocol"]["device"],
            "results_json": str(output_json),
        })
    new = pd.DataFrame(rows)
    if path.is_file() and is_results_table(path):
        try:
            new = pd.concat([pd.read_csv(path), new], ignore_index=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise UserError(f"{path}: results table is not a readable CSV ({exc})") from None
    buf = io.StringIO()
    new.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())
    return path


def write_history_csv(history: list[dict], path: str | os.PathLike) -> None:
    buf = io.StringIO()
    pd.DataFrame(history).to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def load_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: results file not found")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a JSON file ({exc})") from None
    if res.get("stage") != "relabel_eval" or "students" not in res:
        raise UserError(f"{path}: not a relabel_eval results file")
    return res


def headline_accuracy(path: str | os.PathLike, student: str | None = None, metric: str = "final_top1") -> float:
    """Mean accuracy (%) over seeds of one student in a results file."""
    res = load_results(path)
    studs = res["students"]
    if student is None:
        if len(studs) != 1:
            raise UserError(f"{path}: has students {', '.join(studs)}; pick one with --student")
        student = next(iter(studs))
    if student not in studs:
        raise UserError(f"{path}: no student {student} (has {', '.join(studs)})")
    return float(studs[student]["summary"][f"{metric}_mean"])
