"""One process vs torchrun: wall time and images/s of squeeze and relabel_eval, side by side.

    python bench/torchrun_speed.py --data-path ../shared/data/tinyimagenet-10 \
        --teacher runs/teachers/tin10_conv3.pth --syn-data-path runs/init_random_ipc10 \
        --nproc 2 --repeats 1 --out runs/bench_torchrun

Each repeat runs, interleaved: squeeze with one process (``--threads`` intra-op threads,
global batch B) and with ``torchrun --nproc_per_node=N`` (1 thread each, ``--batch-size
B/N`` so the global batch is the same), then relabel_eval (one seed) the same two ways
(DDP; the batch is global there). On CPU the processes use gloo. Prints medians of the
wall times (process start to exit, so imports and data decoding are included) and of the
stages' own images/s, and the ratio one-process / torchrun. On a shared machine the
scheduler's share per process changes the result: report the load average with it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--teacher", required=True, help="teacher checkpoint for relabel_eval")
    p.add_argument("--syn-data-path", required=True, help="distilled set for relabel_eval (e.g. random real IPC 10)")
    p.add_argument("--arch-name", default="conv3")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--squeeze-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="squeeze's global batch")
    p.add_argument("--re-epochs", type=int, default=30)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of the one-process runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="runs/bench_torchrun")
    return p


def timed(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=6 * 3600).returncode
    if rc != 0:
        sys.exit(f"error: {' '.join(cmd[:6])} ... exited {rc}; see {log}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.batch_size % args.nproc:
        sys.exit(f"error: --batch-size {args.batch_size} is not divisible by --nproc {args.nproc}")
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    one_env = {**base, "OMP_NUM_THREADS": str(args.threads)}
    multi_env = {**base, "OMP_NUM_THREADS": "1"}
    py = [sys.executable, "-m"]
    tr = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "--standalone", "-m"]
    sq = ["squeeze", "--data-path", args.data_path, "--arch-name", args.arch_name, "--input-size",
          str(args.input_size), "--epochs", str(args.squeeze_epochs), "--workers", "0", "--device", args.device]
    re = ["relabel_eval", "--syn-data-path", args.syn_data_path, "--val-dir", str(Path(args.data_path) / "val"),
          "--teacher-path", args.teacher, "--stud-name", args.arch_name, "--re-epochs", str(args.re_epochs),
          "--eval-every", str(args.re_epochs), "--use-rand-augment", "--workers", "0", "--device", args.device,
          "--seed", "0"]
    rows: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.repeats):
        for name, cmd, env, res in (
                ("squeeze 1 process", py + sq + ["--batch-size", str(args.batch_size), "--output",
                                                 str(out / f"sq1_{r}.pth")], one_env, out / f"sq1_{r}.json"),
                (f"squeeze torchrun x{args.nproc}", tr + sq + ["--batch-size", str(args.batch_size // args.nproc),
                                                               "--output", str(out / f"sqN_{r}.pth")], multi_env,
                 out / f"sqN_{r}.json"),
                ("relabel_eval 1 process", py + re + ["--output", str(out / f"re1_{r}.json")], one_env,
                 out / f"re1_{r}.json"),
                (f"relabel_eval torchrun x{args.nproc}", tr + re + ["--output", str(out / f"reN_{r}.json")],
                 multi_env, out / f"reN_{r}.json")):
            wall = timed(cmd, env, out / f"{name.replace(' ', '_')}_{r}.log")
            rep = json.loads(res.read_text())
            if "history" in rep:  # squeeze
                ips = statistics.mean(h["images_per_second"] for h in rep["history"])
            else:
                ips = next(iter(rep["students"].values()))["summary"]["images_per_s_mean"]
            rows.setdefault(name, []).append((wall, ips))
            print(f"repeat {r + 1}: {name}: {wall:.1f} s wall, {ips:.1f} images/s (load {os.getloadavg()[0]:.1f})",
                  file=sys.stderr)
    print(f"| run | wall s (median of {args.repeats}) | images/s (median) |")
    print("|---|---|---|")
    for name, vals in rows.items():
        print(f"| {name} | {statistics.median(v[0] for v in vals):.1f} | {statistics.median(v[1] for v in vals):.1f} |")
    names = list(rows)
    for a, b in ((names[0], names[1]), (names[2], names[3])):
        ratio = statistics.median(v[0] for v in rows[a]) / statistics.median(v[0] for v in rows[b])
        print(f"wall ratio {a} / {b}: {ratio:.2f}")
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
