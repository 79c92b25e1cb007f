"""Helpers of ``bench/gpu_check.sh``: run one stage and record its cost, compare the fp32 and
``--amp`` recoveries, print the summary table.

    python bench/gpu_check.py exec --name NAME --record FILE.jsonl [--units N] -- -m MODULE ARGS...
    python bench/gpu_check.py compare-recover FP32_DIR AMP_DIR [--max-pixel-diff 0.10] [--max-loss-diff 0.05]
    python bench/gpu_check.py summary FILE.jsonl [--json OUT.json]

``exec`` runs ``python -m MODULE ARGS`` in this process exactly as ``python -m`` would
(``runpy``), after importing the stage's modules, so the recorded wall time is the
stage's work (parse, load, compute, write) without the interpreter's imports. It appends
one JSON line: exit code, wall seconds, ``units / wall`` (images or image-iterations per
second, when ``--units`` is given), the peak CUDA memory (``torch.cuda.max_memory_allocated``)
or, on CPU, the process's peak resident memory, and whether ``torch.compile`` produced
graphs. The exit code is the stage's.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import runpy
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_module(module: str) -> str:
    """The module holding a stage's ``main`` (a package's ``__main__`` names it), else the module."""
    main = ROOT / module.replace(".", "/") / "__main__.py"
    if main.is_file():
        text = main.read_text()
        m = re.search(r"run_stage\(\s*\"[\w.]+\",\s*\"([\w.]+)\"", text) or re.search(r"from (\S+) import main", text)
        if m:
            return m.group(1)
    return module


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if len(cmd) < 2 or cmd[0] != "-m":
        print("error: exec needs -- -m MODULE ARGS...", file=sys.stderr)
        return 2
    module, argv = cmd[1], cmd[2:]
    sys.path.insert(0, str(ROOT))
    import importlib

    import torch

    importlib.import_module(stage_module(module))  # imports outside the timed part
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sys.argv = [module, *argv]
    t0 = time.perf_counter()
    code = 0
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # a traceback is a failure of the check, recorded and re-raised
        code = 1
        _append(args, module, code, time.perf_counter() - t0, cuda, error=f"{type(exc).__name__}: {exc}")
        raise
    _append(args, module, code, time.perf_counter() - t0, cuda)
    return code


def _append(args, module: str, code: int, wall: float, cuda: bool, error: str | None = None) -> None:
    import torch

    rec = {"name": args.name, "module": module, "rc": code, "wall_s": round(wall, 3), "units": args.units,
           "unit": args.unit, "device": "cuda" if cuda else "cpu"}
    if args.units:
        rec["units_per_s"] = round(args.units / max(wall, 1e-9), 1)
    if cuda:
        torch.cuda.synchronize()
        rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rec["peak_mem_kind"] = "cuda allocated"
        rec["gpu"] = torch.cuda.get_device_name()
    else:
        rec["peak_mem_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        rec["peak_mem_kind"] = "process RSS"
    dynamo = sys.modules.get("torch._dynamo.utils")
    if dynamo is not None:
        stats = dynamo.counters.get("stats", {})
        rec["compiled_graphs"] = int(stats.get("unique_graphs", 0))
    if error:
        rec["error"] = error
    with open(args.record, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_images(root: Path):
    import numpy as np
    from PIL import Image

    files = sorted(p for p in root.glob("[!.]*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return [p.relative_to(root) for p in files], [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in files]


def compare_recover(fp32: Path, amp: Path, max_pixel_diff: float, max_loss_diff: float) -> dict:
    """Same command and seed, fp32 vs ``--amp``: mean |pixel difference| (fraction of the 0..255
    range) over all images, and the relative difference of every batch's first and last loss."""
    import numpy as np

    names_a, imgs_a = read_images(fp32)
    names_b, imgs_b = read_images(amp)
    if not names_a or names_a != names_b:
        raise SystemExit(f"error: {fp32} and {amp} do not hold the same image files")
    pixel = float(np.mean([np.abs(a - b).mean() for a, b in zip(imgs_a, imgs_b)]) / 255.0)
    man_a = json.loads((fp32 / "manifest.json").read_text())
    man_b = json.loads((amp / "manifest.json").read_text())
    first, last = [], []
    for cls, rec in man_a["per_class"].items():
        for (fa, la), (fb, lb) in zip(rec["loss_first_last"], man_b["per_class"][cls]["loss_first_last"]):
            first.append(abs(fa - fb) / max(abs(fa), 1e-12))
            last.append(abs(la - lb) / max(abs(la), 1e-12))
    res = {"images": len(names_a), "mean_abs_pixel_diff": round(pixel, 5), "max_pixel_diff": max_pixel_diff,
           "first_loss_rel_diff": round(max(first), 5), "last_loss_rel_diff": round(max(last), 5),
           "max_loss_diff": max_loss_diff, "amp": man_b["settings"].get("amp"),
           "ok": pixel <= max_pixel_diff and max(first) <= max_loss_diff and max(last) <= max_loss_diff}
    return res


def cmd_compare(args: argparse.Namespace) -> int:
    res = compare_recover(Path(args.fp32), Path(args.amp), args.max_pixel_diff, args.max_loss_diff)
    print(json.dumps(res))
    verdict = "agree" if res["ok"] else "DISAGREE"
    print(f"recover fp32 vs --amp ({res['amp'] or 'fp32: no native reduced precision here'}): {verdict}: "
          f"mean |pixel diff| {res['mean_abs_pixel_diff']:.4f} of the range (tolerance {args.max_pixel_diff}), "
          f"first-loss rel diff {res['first_loss_rel_diff']:.4f}, last-loss rel diff {res['last_loss_rel_diff']:.4f} "
          f"(tolerance {args.max_loss_diff}) over {res['images']} images", file=sys.stderr)
    return 0 if res["ok"] else 1


def cmd_summary(args: argparse.Namespace) -> int:
    recs = [json.loads(line) for line in Path(args.record).read_text().splitlines() if line.strip()]
    print(f"{'stage':<24} {'rc':>3} {'wall s':>8} {'rate':>22} {'peak MiB':>10}  notes")
    for r in recs:
        rate = f"{r['units_per_s']:.0f} {r.get('unit') or 'units'}/s" if r.get("units_per_s") else "-"
        notes = [r.get("peak_mem_kind", "")]
        if r.get("compiled_graphs") or "compile" in r["name"]:
            notes.append(f"compiled graphs {r['compiled_graphs']}")
        if r.get("error"):
            notes.append(r["error"][:80])
        print(f"{r['name']:<24} {r['rc']:>3} {r['wall_s']:>8.1f} {rate:>22} {r.get('peak_mem_mib', 0):>10.0f}  "
              f"{'; '.join(n for n in notes if n)}")
    if args.json:
        Path(args.json).write_text(json.dumps(recs, indent=1))
    return 0 if all(r["rc"] == 0 for r in recs) else 1


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exec", help="run one stage (python -m MODULE ARGS) and record its cost")
    e.add_argument("--name", required=True)
    e.add_argument("--record", required=True, help="JSON-lines file to append to")
    e.add_argument("--units", type=float, default=None, help="work done (images, image-iterations) for a rate")
    e.add_argument("--unit", default="img", help="name of the unit (default: img)")
    e.add_argument("command", nargs=argparse.REMAINDER, help="-- -m MODULE ARGS...")
    c = sub.add_parser("compare-recover", help="fp32 vs --amp recovery of the same command")
    c.add_argument("fp32")
    c.add_argument("amp")
    c.add_argument("--max-pixel-diff", type=float, default=0.10)
    c.add_argument("--max-loss-diff", type=float, default=0.05)
    s = sub.add_parser("summary", help="print the table of the recorded stages")
    s.add_argument("record")
    s.add_argument("--json", default=None)
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    return {"exec": cmd_exec, "compare-recover": cmd_compare, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
