"""The machine's matrix-multiply rate (GFLOP/s), to scale the README's timings to other hardware.

    python bench/matmul_rate.py [--size 1024] [--repeats 20] [--threads N] [--device cpu|cuda] [--bf16]

Times ``torch.mm`` of two square matrices (2 n^3 FLOPs each) and prints the median rate over
``--repeats`` calls after a warm-up, in fp32 (and bf16 with ``--bf16``), with the thread count and
the CPU's native bf16 support, so a wall time measured here can be scaled by the ratio of rates.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rate(n: int, repeats: int, dtype, device) -> float:
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        torch.mm(a, b)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="also time bf16")
    args = p.parse_args(argv)
    import torch

    from common.compute.accel import cpu_has_native_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fp32 = rate(args.size, args.repeats, torch.float32, device)
    line = (f"matmul {args.size}x{args.size} on {device} ({torch.get_num_threads()} threads; "
            f"native bf16: {cpu_has_native_bf16() if device.type == 'cpu' else 'n/a'}): fp32 {fp32:.1f} GFLOP/s")
    if args.bf16:
        line += f", bf16 {rate(args.size, args.repeats, torch.bfloat16, device):.1f} GFLOP/s"
    print(line)


if __name__ == "__main__":
    main()
