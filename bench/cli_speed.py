"""How fast every command answers ``--help`` and a missing-path error (no work done).

    python bench/cli_speed.py [--root DIR [DIR ...]] [--repeats 5] [--only recover relabel_eval ...]

For each command, runs ``python -m CMD --help`` and ``python -m CMD <flags naming a path that
does not exist>`` from each ``--root`` (default: this checkout; add an older checkout, e.g. a
``git archive`` of another commit, to compare under the same load: the roots alternate run by
run), ``--repeats`` times each, and prints the median wall time, the exit codes (0 for --help,
2 for the error) and the error line. Whether torch was imported is read from
``python -X importtime``'s log of one more run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MISSING = "/nonexistent/dd-cli-speed"

# command -> flags whose first path does not exist (outputs go to a temporary folder)
COMMANDS = {
    "squeeze": ["--data-path", MISSING, "--output", "{tmp}/teacher.pth"],
    "squeeze.evaluate": ["--arch-path", f"{MISSING}.pth", "--data-path", MISSING],
    "rank_select": ["--data-path", MISSING, "--ranker-path", f"{MISSING}.pth", "--output-path", "{tmp}/sel"],
    "rank_select.patches": ["--data-path", MISSING, "--observer-path", f"{MISSING}.pth", "--output-path",
                            "{tmp}/rded"],
    "recover": ["--arch-path", f"{MISSING}.pth", "--init-data-path", MISSING, "--syn-data-path", "{tmp}/syn"],
    "relabel_eval": ["--syn-data-path", MISSING, "--val-dir", MISSING, "--teacher-path", f"{MISSING}.pth",
                     "--output", "{tmp}/eval.json"],
    "relabel_eval.relabel": ["--syn-data-path", MISSING, "--teacher-path", f"{MISSING}.pth", "--epochs", "1",
                             "--output-dir", "{tmp}/soft"],
    "relabel_eval.diversity": ["--syn-data-path", MISSING, "--teacher-path", f"{MISSING}.pth", "--output",
                               "{tmp}/div.json"],
    "squeeze.ssl": ["--data-path", MISSING, "--output", "{tmp}/ssl.pth"],
    "squeeze.linear_probe": ["--backbone", f"{MISSING}.pth", "--data-path", MISSING, "--output", "{tmp}/probe.pth"],
    "squeeze.bn_stats": [f"{MISSING}.pth", "--output", "{tmp}/bn"],
    "squeeze.class_stats": ["--arch-path", f"{MISSING}.pth", "--data-path", MISSING, "--output", "{tmp}/cs.pt"],
    "rank_select.difficulty": ["--data-path", MISSING, "--output", "{tmp}/difficulty.csv"],
    "relabel_eval.baselines": ["random", "--train-dir", MISSING, "--ipc", "2", "--output-dir", "{tmp}/random"],
    "hub": ["pack", MISSING, "--out", "{tmp}/set.tar.gz"],
    "common.prepare": ["tinyimagenet", "--src", f"{MISSING}.zip", "--out", "{tmp}/tiny"],
    "common.viz": [MISSING, "--out", "{tmp}/grid.png"],
    "squeeze.trajectories": ["--data-path", MISSING, "--output-dir", "{tmp}/experts"],
    "recover.trajectory_matching": ["--experts", MISSING, "--data-path", MISSING, "--output-path", "{tmp}/syn"],
    "relabel_eval.export": ["--format", "ddranking", "--syn-data-path", MISSING, "--output-dir", "{tmp}/dd"],
}


def run(root: Path, argv: list[str], env: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    err = [line for line in res.stderr.splitlines() if line.strip()]
    return dt, res.returncode, (err[-1] if err else "")


def imports_torch(root: Path, argv: list[str], env: dict) -> bool:
    res = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=root, env=env, capture_output=True,
                         text=True)
    return any(line.startswith("import time:") and line.split("|")[-1].strip() == "torch"
               for line in res.stderr.splitlines())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", nargs="+", default=[str(ROOT)], help="checkouts to time (default: this one)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="+", default=None, choices=sorted(COMMANDS), help="time only these commands")
    args = p.parse_args(argv)
    roots = [Path(r).resolve() for r in args.root]
    names = args.only or list(COMMANDS)
    rows: dict[Path, list] = {r: [] for r in roots}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cli_speed_") as tmp:
        for name in names:
            err_argv = ["-m", name, *[a.format(tmp=tmp) for a in COMMANDS[name]]]
            help_argv = ["-m", name, "--help"]
            t = {r: ([], []) for r in roots}
            last = {}
            for _ in range(args.repeats):  # roots and the two calls alternate
                for r in roots:
                    env = {**os.environ, "PYTHONPATH": str(r)}
                    dt, rc_help, _ = run(r, help_argv, env)
                    t[r][0].append(dt)
                    dt, rc_err, line = run(r, err_argv, env)
                    t[r][1].append(dt)
                    last[r] = (rc_help, rc_err, line)
            for r in roots:
                env = {**os.environ, "PYTHONPATH": str(r)}
                rows[r].append((name, statistics.median(t[r][0]), last[r][0], imports_torch(r, help_argv, env),
                                statistics.median(t[r][1]), last[r][1], imports_torch(r, err_argv, env), last[r][2]))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; median of {args.repeats} runs, roots alternating")
    for r in roots:
        print(f"\n{r}")
        print(f"{'command':<24} {'--help s':>9} {'rc':>3} {'torch':>6} {'missing path s':>15} {'rc':>3} "
              f"{'torch':>6}  error line")
        for name, th, rh, ih, te, re_, ie, line in rows[r]:
            print(f"{name:<24} {th:>9.2f} {rh:>3} {'yes' if ih else 'no':>6} {te:>15.2f} {re_:>3} "
                  f"{'yes' if ie else 'no':>6}  {line[:90]}")


if __name__ == "__main__":
    main()
