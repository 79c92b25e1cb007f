"""Kill-and-rerun check: SIGKILL recover, relabel_eval and squeeze mid-run, rerun, compare with an uninterrupted run.

    python bench/kill_rerun.py [--work runs/kill_rerun] [--stages recover relabel_eval squeeze compare]

Each stage runs as ``python -m`` in a subprocess on tiny generated data (``shapes``): once
uninterrupted, once killed with SIGKILL as soon as its first unit of work is on disk (a
recover class, a relabel_eval seed, a squeeze epoch), then rerun with the command the
README gives for resuming. It prints, per stage, whether the final outputs are identical
(recover: every image byte for byte; relabel_eval: every seed's final/best top-1 and
per-epoch losses; squeeze: every weight of the teacher) and exits 1 on any difference.
``compare``: ``bash scripts/compare.sh`` (a few rows and protocols, tiny budgets) once uninterrupted,
once killed (SIGKILL to the script and every stage under it) twice, in an evaluation and in a
synthesis, then rerun with the same command, and once more: the table's accuracy, score, budget and
storage columns must equal the uninterrupted run's, and the extra rerun must leave the table
byte-identical (the same command twice does no work).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(args: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, stdout=f, stderr=f, check=True)


def kill_when(argv: list[str], log: Path, ready, env: dict | None = None) -> float:
    """Start ``argv`` in its own process group and SIGKILL the group (a script and every stage under it) as
    soon as ``ready()`` is true; returns the seconds it ran."""
    t0 = time.monotonic()
    with open(log, "ab") as f:
        p = subprocess.Popen(argv, cwd=ROOT, env=env or ENV, stdout=f, stderr=f, start_new_session=True)
        while p.poll() is None and not ready():
            time.sleep(0.05)
        if p.poll() is not None:
            raise SystemExit(f"{' '.join(argv[:3])} finished before it could be killed; make the run longer")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return time.monotonic() - t0


def run_and_kill(args: list[str], log: Path, ready) -> float:
    """``python ARGS``, SIGKILLed as soon as ``ready()`` is true."""
    return kill_when([sys.executable, *args], log, ready)


# compare.csv columns that depend on the clock or the machine, not on the results
CLOCK_COLUMNS = {"synthesis_seconds", "peak_memory_mb"}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".png", ".jpg")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/kill_rerun")
    p.add_argument("--stages", nargs="+", default=["recover", "relabel_eval", "squeeze"])
    a = p.parse_args()
    work = (ROOT / a.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    data = work / "data"
    run(["-m", "common.prepare", "shapes", "--out", str(data), "--train-per-class", "12", "--val-per-class", "4"],
        log)
    teacher = work / "teacher.pth"
    sq = ["-m", "squeeze", "--data-path", str(data), "--arch-name", "conv3", "--epochs", "4", "--batch-size", "20",
          "--device", "cpu", "--workers", "0"]
    run([*sq, "--output", str(teacher)], log)
    ok = True

    if "recover" in a.stages:
        cmd = ["-m", "recover", "--init-data-path", str(data / "train"), "--arch-path", str(teacher), "--ipc", "3",
               "--iteration", "40", "--batch-size", "6", "--lr", "0.1", "--r-bn", "0.01", "--device", "cpu"]
        run([*cmd, "--syn-data-path", str(work / "rec_full")], log)
        killed = work / "rec_killed"
        s = run_and_kill([*cmd, "--syn-data-path", str(killed)], log,
                         lambda: any((killed / c).is_dir() for c in os.listdir(data / "train")))
        run([*cmd, "--syn-data-path", str(killed)], log)
        a_, b_ = tree_digest(work / "rec_full"), tree_digest(killed)
        same = a_ == b_ and len(a_) == 30
        ok &= same
        print(f"recover: killed after {s:.1f} s, rerun with the same command: {len(b_)} images, "
              f"identical to the uninterrupted run: {same}")

    if "relabel_eval" in a.stages:
        cmd = ["-m", "relabel_eval", "--syn-data-path", str(data / "train"), "--val-dir", str(data / "val"),
               "--teacher-path", str(teacher), "--ipc", "5", "--re-epochs", "6", "--eval-every", "2",
               "--seeds", "1", "2", "--workers", "0", "--device", "cpu"]
        run([*cmd, "--output", str(work / "ev_full.json")], log)
        out = work / "ev_killed.json"
        s = run_and_kill([*cmd, "--output", str(out)], log,
                         lambda: any(p.suffix in (".pt", ".json") and p.name != "fingerprint.json"
                                     for p in work.rglob("*") if "ev_killed" in str(p) and p.is_file()))
        run([*cmd, "--output", str(out)], log)

        def key(path: Path):
            r = json.loads(path.read_text())
            return [(run["seed"], run["final_top1"], run["best_top1"], [h["loss"] for h in run["history"]])
                    for st in r["students"].values() for run in st["runs"]]

        same = key(work / "ev_full.json") == key(out)
        ok &= same
        print(f"relabel_eval: killed after {s:.1f} s, rerun with the same command: per-seed top-1 and epoch "
              f"losses identical to the uninterrupted run: {same} {key(out)[0][:3]}")

    if "squeeze" in a.stages:
        import torch

        full, part = work / "sq_full.pth", work / "sq_killed.pth"
        run([*sq, "--output", str(full)], log)
        last = part.with_name(part.name + ".state") / "last.pth"  # the run state beside the output (common.run.state)
        s = run_and_kill([*sq, "--output", str(part)], log, lambda: last.exists())
        run([*sq, "--output", str(part), "--resume"], log)
        wa = torch.load(full, weights_only=True)["model"]
        wb = torch.load(part, weights_only=True)["model"]
        same = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        ok &= same
        print(f"squeeze: killed after {s:.1f} s (after epoch 1 was saved), rerun with --resume: teacher weights "
              f"identical to the uninterrupted run: {same}")
    if "compare" in a.stages:
        import pandas as pd

        env = {**ENV, "DATA_ROOT": str(data), "TEACHER": str(teacher), "ARCH": "conv3", "INPUT_SIZE": "32",
               "IPC": "3", "METHODS": "random top herding delt", "PROTOCOLS": "soft hard noaug", "SEEDS": "1 2",
               "RE_EPOCHS": "4", "EVAL_EVERY": "2", "BUDGET": "1200", "ROUND_ITR": "20", "GPU": "cpu"}

        def compare(out: Path) -> None:
            with open(log, "ab") as f:
                subprocess.run(["bash", "scripts/compare.sh"], cwd=ROOT, env={**env, "OUT": str(out)}, stdout=f,
                               stderr=f, check=True)

        def table(out: Path):
            df = pd.read_csv(out / "compare.csv")
            return df.drop(columns=[c for c in df.columns if c in CLOCK_COLUMNS]).astype(object).fillna("").to_dict(
                "records")

        full, killed = work / "cmp_full", work / "cmp_killed"
        compare(full)
        kenv = {**env, "OUT": str(killed)}
        script = ["bash", "scripts/compare.sh"]
        # first in an evaluation (a seed's checkpoint on disk), then in DELT's synthesis (a class on disk)
        s1 = kill_when(script, log, lambda: any(p.is_file() for p in (killed / "eval").rglob("*.state/*.pt")), kenv)
        s2 = kill_when(script, log, lambda: any(p.is_dir() for p in (killed / "sets" / "delt").glob("*")), kenv)
        compare(killed)
        first = (killed / "compare.md").read_bytes(), (killed / "compare.csv").read_bytes()
        compare(killed)
        twice = first == ((killed / "compare.md").read_bytes(), (killed / "compare.csv").read_bytes())
        same = table(full) == table(killed)
        ok &= same and twice
        print(f"compare.sh: killed after {s1:.1f} s (in an evaluation) and {s2:.1f} s (in DELT's synthesis), rerun "
              f"with the same command: table identical to the uninterrupted run (clock columns aside): {same}; "
              f"the same command once more: table byte-identical, no work: {twice}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
