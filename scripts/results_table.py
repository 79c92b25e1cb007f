"""Collect relabel_eval, recover/rank_select and diversity outputs into one table.

    python scripts/results_table.py --out runs/quickstart/table.md \
        --row method=DELT ipc=10 syn=runs/q/delt soft=runs/q/delt_soft.json hard=runs/q/delt_hard.json \
              div=runs/q/div.json:DELT \
        --row method=random-real ipc=10 syn=runs/q/random soft=...

Per row: final top-1 mean +- std over seeds under soft labels (the headline) and
hard labels, the best-during-training soft top-1 (labelled), synthesis seconds
(from the output's manifest.json: recover's wall time, rank_select's scoring time)
and intra-class diversity (mean cosine to the class centroid; lower is more
diverse). Writes Markdown and CSV (pandas) and prints the Markdown.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from the repository root
from common.run.atomic import atomic_write_text  # noqa: E402


def _runs(path: str | None) -> list[dict]:
    if not path or not Path(path).is_file():
        return []
    res = json.loads(Path(path).read_text())
    return [r for block in res.get("students", {}).values() for r in block.get("runs", [])]


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def synthesis_seconds(syn_dir: str | None) -> float | None:
    """Wall time of the stage that made the set (recover, rank_select, patches), from its manifest."""
    if not syn_dir or not (Path(syn_dir) / "manifest.json").is_file():
        return None
    m = json.loads((Path(syn_dir) / "manifest.json").read_text())
    if "wall_time_s" in m:
        return float(m["wall_time_s"])
    t = m.get("timings") or {}
    secs = [v for k, v in t.items() if k.endswith("_s") and isinstance(v, (int, float))]
    return float(sum(secs)) if secs else None


def diversity(spec: str | None) -> tuple[float | None, float | None]:
    if not spec:
        return None, None
    path, _, name = spec.partition(":")
    if not Path(path).is_file():
        return None, None
    sets = json.loads(Path(path).read_text()).get("sets", {})
    s = sets.get(name) if name else next(iter(sets.values()), None)
    if not s:
        return None, None
    return s.get("intra_class_mean"), s.get("inter_class_centroid_cosine")


def build(rows: list[dict[str, str]]) -> pd.DataFrame:
    out = []
    for r in rows:
        soft, hard = _runs(r.get("soft")), _runs(r.get("hard"))
        intra, inter = diversity(r.get("div"))
        secs = synthesis_seconds(r.get("syn"))
        out.append({
            "method": r["method"], "IPC": int(r.get("ipc", 0)),
            "soft top-1 (final)": _ms([x["final_top1"] for x in soft]),
            "hard top-1 (final)": _ms([x["final_top1"] for x in hard]),
            "soft top-1 (best during training)": _ms([x["best_top1"] for x in soft]),
            "seeds": len(soft) or len(hard),
            "synthesis s": "-" if secs is None else f"{secs:.0f}",
            "diversity (intra cos, lower=more diverse)": "-" if intra is None else f"{intra:.3f}",
            "inter-class cos": "-" if inter is None else f"{inter:.3f}",
        })
    return pd.DataFrame(out)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", action="append", nargs="+", required=True, metavar="KEY=VALUE",
                   help="method=NAME ipc=N [syn=DIR] [soft=JSON] [hard=JSON] [div=JSON:SETNAME]")
    p.add_argument("--out", required=True, help="Markdown file (a CSV is written beside it)")
    p.add_argument("--title", default="", help="a heading line written above the table")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    rows = [dict(kv.split("=", 1) for kv in row) for row in args.row]
    df = build(rows)
    md = (f"{args.title}\n\n" if args.title else "") + to_markdown(df)
    atomic_write_text(args.out, md)
    df.to_csv(Path(args.out).with_suffix(".csv"), index=False)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
