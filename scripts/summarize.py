"""Print our final top-1 (mean +- std over seeds) beside the published number.

    python scripts/summarize.py --published "DELT 43.0 (Table 1)" eval_seed*.json

Reads relabel_eval result files (one per seed, or one with several seeds) and
prints one line per student: final top-1 (the headline), best-during-training
top-1 (labelled as such, the number the released code reports) and the paper's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def collect(paths: list[str]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for p in paths:
        if not Path(p).is_file():
            print(f"warning: {p} missing (that seed did not run)", file=sys.stderr)
            continue
        res = json.loads(Path(p).read_text())
        for student, block in res.get("students", {}).items():
            acc = out.setdefault(student, {"final": [], "best": [], "seeds": []})
            for r in block.get("runs", []):
                acc["final"].append(float(r["final_top1"]))
                acc["best"].append(float(r["best_top1"]))
                acc["seeds"].append(r.get("seed"))
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--published", default="", help="the paper's number(s), printed beside ours")
    p.add_argument("results", nargs="+", help="relabel_eval JSON files")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    table = collect(args.results)
    if not table:
        print("no results found", file=sys.stderr)
        return 1
    for student, acc in table.items():
        print(f"{student}: final top-1 {mean_std(acc['final'])} over seeds {acc['seeds']} | "
              f"best-during-training {mean_std(acc['best'])} | published: {args.published or 'n/a'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
