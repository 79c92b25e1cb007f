"""The comparison table of scripts/compare.sh, and the cost probe it runs every synthesis step under.

    python scripts/compare_table.py table --out OUT --methods "full random delt ..." --protocols "soft hard ..."
    python scripts/compare_table.py measure --stats OUT/stats/delt.jsonl --step recover -- python -m recover ...

``table`` reads what compare.sh left under OUT (one row per method, nothing re-run):

- ``OUT/eval/<method>/<protocol>.json`` (``random``: ``<protocol>_d<i>.json``, draw i evaluated with seed i):
  relabel_eval results; each run's final (and best-during-training) top-1 over seeds;
- ``OUT/sets/<method>/manifest.json``: the stage's own cost record (recover: ``image_iterations``,
  ``planned_image_iterations``, ``wall_time_s``; rank_select and rank_select.patches: ``wall_time_s``);
- ``OUT/stats/<method>.jsonl``: wall seconds and peak resident memory of every step, from ``measure``;
- ``OUT/status/<method>.json``: ok, failed (with the exit code) or skipped (with why);
- ``OUT/diversity.json`` (relabel_eval.diversity), when present;

and writes ``OUT/compare.md``, ``OUT/compare.csv``, ``OUT/compare.json`` (columns in :data:`COLUMNS`),
``OUT/compare_cost.png`` (soft-label top-1 against synthesis seconds, log x, error bars over seeds) and
``OUT/compare_protocols.png`` (top-1 per protocol, grouped bars). LRS (with IOR and HLR) and ARS are
DD-Ranking's formulas (relabel_eval.baselines.dd_ranking / dd_ars) on these runs. docs/compare.md
describes every column.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("full", "random", "top", "medium", "min", "herding", "kcenter", "sre2l", "cda", "delt", "rded",
           "scdd", "datm", "pad")
PROTOCOLS = ("soft", "hard", "rded", "pad", "noaug")
BN_MATCHING = ("sre2l", "cda", "delt", "scdd")  # the rows the BUDGET rule sets the iterations of
SELECTIONS = ("top", "medium", "min", "herding", "kcenter")
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
COLUMNS = (["method", "status", "note", "seeds", "soft_top1_mean", "soft_top1_std", "soft_best_top1_mean"]
           + [f"{p}_top1_{s}" for p in PROTOCOLS if p != "soft" for s in ("mean", "std")]
           + ["ior", "hlr", "lrs", "ars", "intra_class_cosine", "inter_class_cosine", "synthesis_seconds",
              "teacher_passes", "budgeted", "budget", "planned_image_iterations", "peak_memory_mb", "images",
              "image_bytes", "label_bytes"])


# ----------------------------------------------------------------------------- measure

def measure(stats: Path, step: str, command: list[str]) -> int:
    """Run ``command``; append its wall seconds, peak resident memory (the largest process it ran,
    MiB) and exit code to ``stats`` (one JSON line). Returns the command's exit code."""
    if not command:
        print("error: measure: give the command after --", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rc = subprocess.call(command)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # KiB on Linux
    stats.parent.mkdir(parents=True, exist_ok=True)
    with open(stats, "a") as f:
        f.write(json.dumps({"step": step, "wall_s": round(wall, 3), "peak_rss_mb": round(peak, 1), "rc": rc,
                            "command": command}) + "\n")
    return rc


# ----------------------------------------------------------------------------- reading

def _json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def runs_of(files: list[Path]) -> list[dict]:
    """Every seed's run (final_top1, best_top1) in relabel_eval results files (one student each)."""
    runs = []
    for f in files:
        doc = _json(f)
        if not doc or not isinstance(doc.get("students"), dict):
            continue
        for entry in doc["students"].values():
            runs += [r for r in entry.get("runs", []) if isinstance(r.get("final_top1"), (int, float))]
            break  # one student per row (the first, as compare.sh evaluates one)
    return runs


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1, 0 for one value), as relabel_eval's summaries; None when empty."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def eval_files(out: Path, method: str, protocol: str) -> list[Path]:
    d = out / "eval" / method
    if method == "random":
        return sorted(d.glob(f"{protocol}_d*.json"))
    f = d / f"{protocol}.json"
    return [f] if f.is_file() else []


def stats_lines(out: Path, name: str) -> list[dict]:
    path = out / "stats" / f"{name}.jsonl"
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return [x for x in lines if x.get("rc") == 0]


def set_dirs(out: Path, method: str, train: Path | None) -> list[Path]:
    if method == "full":
        return [train] if train else []
    if method == "random":
        return sorted(p for p in (out / "sets").glob("random_d*") if p.is_dir())
    return [out / "sets" / method]


def folder_bytes(root: Path) -> tuple[int, int]:
    """(number of images, their bytes) under an ImageFolder."""
    n = size = 0
    if root.is_dir():
        for dirpath, _, files in os.walk(root):
            for name in files:
                if Path(name).suffix.lower() in IMAGE_EXT:
                    n += 1
                    size += os.path.getsize(os.path.join(dirpath, name))
    return n, size


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


# ----------------------------------------------------------------------------- the table

def cost(out: Path, method: str, train_images: int | None, args: argparse.Namespace) -> dict:
    """synthesis_seconds, teacher_passes, planned_image_iterations, peak_memory_mb of one row."""
    manifest = _json(out / "sets" / method / "manifest.json") or {}
    steps = stats_lines(out, method)
    seconds = _num(manifest.get("wall_time_s"))
    passes = None
    planned = None
    note = ""
    if method in ("full", "random"):
        seconds, passes = 0.0, 0  # no synthesis; no teacher
    elif method in SELECTIONS:
        passes = train_images  # one forward per training image (the ranking), shared by the selections
    elif method in BN_MATCHING:
        passes = _num(manifest.get("image_iterations"))  # each a teacher forward and backward
        planned = _num(manifest.get("planned_image_iterations"))
        extra = [s for s in steps if s.get("step") != "recover"]  # SC-DD's SSL backbone and probe
        if method == "delt":  # + its initialisation: the medium selection (ranking forwards)
            init = _json(out / "sets" / "medium" / "manifest.json") or {}
            seconds = (seconds or 0.0) + (_num(init.get("wall_time_s")) or 0.0)
            passes = (passes or 0) + (train_images or 0)
        seconds = (seconds or 0.0) + sum(s["wall_s"] for s in extra) if seconds is not None or extra else None
    elif method == "rded":
        a = manifest.get("args") or {}
        if all(_num(a.get(k)) for k in ("mipc", "num_crop")):
            passes = int(args.num_classes * a["mipc"] * a["num_crop"])  # observer forwards of the crops
    elif method in ("pad", "datm"):
        shared = stats_lines(out, "experts_pad") if method == "pad" else []
        seconds = sum(s["wall_s"] for s in steps + shared) if steps or shared else None
        steps = steps + shared
        note = "experts (trajectories), not the teacher"
    if seconds is None and steps:
        seconds = sum(s["wall_s"] for s in steps)
    peaks = [s["peak_rss_mb"] for s in steps if _num(s.get("peak_rss_mb"))]
    peak_manifest = _num(manifest.get("peak_rss_mb"))
    peak = max(peaks + ([peak_manifest] if peak_manifest else [])) if peaks or peak_manifest else None
    return {"synthesis_seconds": seconds, "teacher_passes": passes, "planned_image_iterations": planned,
            "peak_memory_mb": peak, "cost_note": note}


def build_rows(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    train = Path(args.train) if args.train else None
    ranking = out / "ranking.csv"
    train_images = None
    if ranking.is_file():
        train_images = max(sum(1 for _ in open(ranking)) - 1, 0)
    elif train is not None and train.is_dir():
        train_images = folder_bytes(train)[0]
    diversity = (_json(out / "diversity.json") or {}).get("sets", {})
    rows = []
    acc: dict[tuple[str, str], list[dict]] = {}
    for m in args.methods:
        for p in args.protocols:
            acc[m, p] = runs_of(eval_files(out, m, p))
    for m in args.methods:
        status = _json(out / "status" / f"{m}.json") or {}
        row: dict = {c: None for c in COLUMNS}
        row["method"] = m
        row["status"] = status.get("status") or ("ok" if acc[m, "soft"] else "missing")
        row["note"] = status.get("note") or ""
        soft = acc[m, "soft"]
        row["seeds"] = len(soft)
        row["soft_top1_mean"], row["soft_top1_std"] = mean_std([r["final_top1"] for r in soft])
        row["soft_best_top1_mean"] = mean_std([r["best_top1"] for r in soft if _num(r.get("best_top1"))])[0]
        for p in args.protocols:
            if p != "soft":
                row[f"{p}_top1_mean"], row[f"{p}_top1_std"] = mean_std([r["final_top1"] for r in acc[m, p]])
        div = diversity.get(m) or {}
        row["intra_class_cosine"] = _num(div.get("intra_class_mean"))
        row["inter_class_cosine"] = _num(div.get("inter_class_centroid_cosine"))
        c = cost(out, m, train_images, args)
        if c.pop("cost_note"):
            row["note"] = "; ".join(x for x in (row["note"], "cost: trajectory matching and its experts") if x)
        row.update(c)
        row["budgeted"] = bool(args.budget) and m in BN_MATCHING
        row["budget"] = args.budget if row["budgeted"] else None
        images = image_bytes = 0
        for d in set_dirs(out, m, train):
            n, b = folder_bytes(d)
            images, image_bytes = images + n, image_bytes + b
        if m == "random" and images:  # one draw's storage (every draw has the same size)
            draws = len(set_dirs(out, m, train))
            images, image_bytes = images // draws, image_bytes // draws
        row["images"] = images or None
        row["image_bytes"] = image_bytes or None
        labels = [out / "sets" / f"{m}{suffix}" for suffix in (".labels.pt", ".lr.pt")]
        if images:  # stored labels: PAD's and DATM's learned labels and lr; none for the teacher-relabelled sets
            row["label_bytes"] = sum(p.stat().st_size for p in labels if p.is_file()) if m in ("pad", "datm") else 0
        rows.append(row)
    add_ddranking(rows)
    return rows


def add_ddranking(rows: list[dict]) -> None:
    """IOR, HLR, LRS (dd_ranking) and ARS (dd_ars) per row, from the random and full rows' accuracies."""
    from relabel_eval.baselines import dd_ars, dd_ranking

    by = {r["method"]: r for r in rows}
    rnd, full = by.get("random") or {}, by.get("full") or {}
    for r in rows:
        if r["method"] == "full":
            continue
        pct = [r.get("soft_top1_mean"), rnd.get("soft_top1_mean"), r.get("hard_top1_mean"), full.get("hard_top1_mean")]
        if all(v is not None for v in pct):
            s = dd_ranking(*(v / 100.0 for v in pct))
            r["ior"], r["hlr"], r["lrs"] = s["IOR"], s["HLR"], s["LRS"]
        aug = [r.get("soft_top1_mean"), rnd.get("soft_top1_mean"), r.get("noaug_top1_mean"),
               rnd.get("noaug_top1_mean")]
        if all(v is not None for v in aug):
            r["ars"] = dd_ars(*(v / 100.0 for v in aug))["ARS"]


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else ""
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    protos = [p for p in args.protocols if p != "soft"]
    head = ["method", "soft top-1 (final)", "best during training"] + [f"{p} top-1" for p in protos] + [
        "LRS", "ARS", "intra cos", "synthesis s", "teacher passes", "peak MiB", "image bytes", "label bytes", "status"]
    lines = [f"# Comparison: IPC {args.ipc}, seeds {' '.join(args.seeds)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def pm(p, r=r):
            m, s = r.get(f"{p}_top1_mean"), r.get(f"{p}_top1_std")
            return "" if m is None else f"{m:.2f} +- {s:.2f}"
        budget = ""
        if r["budgeted"]:
            spent = r.get("teacher_passes")
            budget = f" (budget {r['budget']}, spent {int(spent) if spent is not None else '?'})"
        cells = [r["method"] + budget, pm("soft"), fmt(r["soft_best_top1_mean"])] + [pm(p) for p in protos] + [
            fmt(r["lrs"], 4), fmt(r["ars"], 4), fmt(r["intra_class_cosine"], 3), fmt(r["synthesis_seconds"], 1),
            fmt(int(r["teacher_passes"]) if r["teacher_passes"] is not None else None), fmt(r["peak_memory_mb"], 0),
            fmt(r["image_bytes"]), fmt(r["label_bytes"]),
            r["status"] + (f": {r['note']}" if r["note"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "", "Notes:",
        "- top-1 in %, mean +- sample std over seeds (random: draw i evaluated with seed i); the final epoch's "
        "accuracy, except the column labelled best during training (the maximum over the evaluations made "
        "during training: optimistic, shown for comparison with papers that report it).",
        "- soft: soft-label KD from the one teacher (the DELT/RDED protocol, the headline); hard: the same "
        "student trained with cross-entropy on the class labels; rded: RDED's protocol (ShufflePatches, "
        "crop scale 1/factor); pad: PAD's protocol (ZCA, DSA, learned labels and lr where the set has them, "
        "else hard labels); noaug: soft-label KD without CutMix, every image whole and unflipped (for ARS).",
        "- LRS = DD-Ranking's label-robust score (IOR = soft - random soft, HLR = full hard - hard); ARS = its "
        "augmentation-robust score (soft and noaug against random's); accuracies as fractions; ddranking 0.2.0 "
        "formulas, our runs (docs/compare.md).",
        "- synthesis s: wall seconds making the set (teacher training excluded; shared by every row); teacher "
        "passes: teacher image forwards (+ backwards for recover) the set cost; peak MiB: peak resident "
        "memory of the largest process (CPU; GPU memory is not measured here).",
    ]
    if args.budget:
        notes.append(f"- equal budget: BUDGET = {args.budget} teacher image-iterations; the BN-matching rows "
                     f"(marked) ran ITR = {args.itr} iterations = BUDGET / (classes x IPC); DELT's EarlyLate "
                     "spends fewer by design (its spent count is shown).")
    else:
        notes.append(f"- no BUDGET: the BN-matching rows ran ITR = {args.itr} iterations each.")
    if "noaug" not in args.protocols:
        notes.append("- ARS is empty: the noaug protocol was not run (PROTOCOLS).")
    return "\n".join(lines + notes) + "\n"


def figures(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pts = [r for r in rows if r["soft_top1_mean"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    positive = [r["synthesis_seconds"] for r in pts if (r["synthesis_seconds"] or 0.0) > 0]
    floor = min(positive) / 3 if positive else 0.1  # rows without synthesis (full, random) sit left of the rest
    for r in pts:
        x = max(r["synthesis_seconds"] or 0.0, floor)
        ax.errorbar([x], [r["soft_top1_mean"]], yerr=[r["soft_top1_std"] or 0.0], fmt="o", capsize=3)
        ax.annotate(r["method"], (x, r["soft_top1_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, max(positive + [floor]) * 3)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decade labels only
    ax.axvline(floor * 1.5, color="grey", lw=0.5, ls=":")
    ax.set_xlabel(f"synthesis wall seconds (log; rows without synthesis drawn at {floor:.2g} s, left of the line)")
    ax.set_ylabel("soft-label KD top-1 (%)")
    ax.set_title(f"Accuracy vs synthesis cost (IPC {args.ipc})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "compare_cost.png", dpi=120)
    plt.close(fig)

    protos = [p for p in args.protocols if any(r.get(f"{p}_top1_mean") is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.6 * len(rows) * max(len(protos), 1) / 2), 4.5))
    width = 0.8 / max(len(protos), 1)
    for j, p in enumerate(protos):
        xs = [i + (j - (len(protos) - 1) / 2) * width for i in range(len(rows))]
        ys = [r.get(f"{p}_top1_mean") or 0.0 for r in rows]
        err = [r.get(f"{p}_top1_std") or 0.0 for r in rows]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=p)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["method"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("final top-1 (%)")
    ax.set_title(f"Every set under every protocol (IPC {args.ipc})")
    ax.legend(title="protocol", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "compare_protocols.png", dpi=120)
    plt.close(fig)


def table(args: argparse.Namespace) -> list[dict]:
    from common.run.atomic import atomic_write_json, atomic_write_text

    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"error: --out {out}: no such folder (run scripts/compare.sh first)")
    rows = build_rows(args)
    import pandas as pd

    atomic_write_text(out / "compare.md", markdown(rows, args))
    atomic_write_text(out / "compare.csv", pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False))
    atomic_write_json(out / "compare.json", {"ipc": args.ipc, "seeds": args.seeds, "budget": args.budget,
                                            "itr": args.itr, "protocols": args.protocols, "rows": rows})
    figures(rows, args, out)
    print((out / "compare.md").read_text())
    return rows


def _words(text: str) -> list[str]:
    return text.split()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/compare_table.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="write OUT/compare.{md,csv,json} and the two figures")
    t.add_argument("--out", required=True, help="compare.sh's OUT folder")
    t.add_argument("--methods", type=_words, default=list(METHODS), help="the rows, space-separated")
    t.add_argument("--protocols", type=_words, default=list(PROTOCOLS), help="the protocols, space-separated")
    t.add_argument("--seeds", type=_words, default=[], help="the evaluation seeds (for the title)")
    t.add_argument("--ipc", type=int, required=True)
    t.add_argument("--itr", type=int, default=0, help="recover iterations of the BN-matching rows")
    t.add_argument("--budget", type=int, default=0, help="BUDGET (teacher image-iterations); 0: none")
    t.add_argument("--num-classes", type=int, default=0, help="classes (RDED's observer passes)")
    t.add_argument("--train", default=None, help="the training folder (the full row's storage)")
    m = sub.add_parser("measure", help="run a command; append its wall time and peak memory to --stats")
    m.add_argument("--stats", required=True)
    m.add_argument("--step", required=True)
    m.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "measure":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return measure(Path(args.stats), args.step, cmd)
    bad = [m for m in args.methods if m not in METHODS] + [p for p in args.protocols if p not in PROTOCOLS]
    if bad:
        print(f"error: unknown method or protocol {bad[0]!r} (methods: {' '.join(METHODS)}; protocols: "
              f"{' '.join(PROTOCOLS)})", file=sys.stderr)
        return 2
    table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
