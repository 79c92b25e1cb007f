"""Speed of the recover loop, measured in one run on the same data and teacher.

(a) image-iterations/s of ``recover.loop.recover_batch`` against a straightforward loop
    written the way the released code works (``recover.reference``: hooks with
    permute-and-reshape variance, torchvision transforms on the batch each iteration,
    list indexing, per-channel clip, per-iteration ``loss.item()`` and clone), both
    under glibc's default allocator and with freed memory kept (``recover.cpu``, what
    ``python -m recover`` does on CPU), so the loop's own gain and the allocator's are
    told apart; also channels_last and bf16 autocast (``--amp``), and how much bf16
    changes the loss curve from the same start and random draws;
(b) wall-time ratio EarlyLate / uniform at the same ITR for one class of IPC 50
    (ITR/RI scaled down from 4000/500, same 8 rounds: the ideal is 231/400 = 0.5775);
(c) achieved GFLOP/s (teacher forward + input-gradient backward, counted by
    ``torch.utils.flop_counter``) against the measured fp32 / bf16 matmul GFLOP/s;
(d) the cost of each option past DELT on the same batch and iterations, as a wall-time ratio to
    plain DELT (one teacher, global BN matching): FADRM's resolution stages with the residual mix
    (``--stage-sizes``: down-up 7/8 size stages when the teacher pools globally, else stages at the
    input size), class-aware BN matching (``--bn-match class``; ``mix`` with ``--stats-momentum 0.8``
    as EDC), two teachers in turn, and all together (``--options-only`` runs just this part).

Timings are medians of ``--repeats`` runs, the variants interleaved so that load from
other processes hits all of them alike. Usage::

    python bench/recover_speed.py [--teacher runs/teachers/tin10_conv3.pth]
        [--data ../shared/data/tinyimagenet-10/train] [--device cpu] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli.flags import add_device_args  # noqa: E402
from common.compute.device import device_from_args  # noqa: E402
from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from common.data.imagefolder import find_classes, list_class_files, load_rgb  # noqa: E402
from common.data.transforms import pil_to_normalized, pixel_bounds  # noqa: E402
from models import build_model, load_model, make_meta, save_checkpoint  # noqa: E402
from recover.cpu import keep_freed_memory  # noqa: E402
from recover.loop import LoopConfig, prepare_teacher, recover_batch  # noqa: E402
from recover.losses import ClassStats, bn_layers  # noqa: E402
from recover.reference import reference_recover_batch, released_augment  # noqa: E402
from recover.schedule import early_late_schedule, image_iteration_ratio, uniform_schedule  # noqa: E402


def load_init(root: Path, classes: list[str], per_class: int, size: int, mean, std) -> tuple[torch.Tensor, list]:
    xs, items = [], []
    for c, cls in enumerate(classes):
        for i, name in enumerate(list_class_files(root / cls)[:per_class]):
            xs.append(pil_to_normalized(load_rgb(root / cls / name), mean, std, size))
            items.append((c, i))
    return torch.stack(xs), items


def get_teacher(args, classes, device):
    path = Path(args.teacher)
    note = str(path)
    if not path.is_file():  # fallback: random conv3 whose BN statistics are set on the data
        size = args.input_size
        x, _ = load_init(Path(args.data), classes, 20, size, IMAGENET_MEAN, IMAGENET_STD)
        torch.manual_seed(0)
        model = build_model("conv3", len(classes), size).train()
        with torch.no_grad():
            model(x)
        path = Path("/tmp/recover_speed_teacher.pth")
        save_checkpoint(path, model, make_meta("conv3", len(classes), size, classes=classes))
        note = f"{args.teacher} missing: random conv3 with BN statistics from the data"
    model, meta = load_model(path, classes=classes, device=device)
    return model, meta, note


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each callable, run round-robin ``repeats`` times after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def count_flops(teacher, n: int, size: int, device, channels_last: bool) -> int:
    """FLOPs of one teacher forward + input-gradient backward for ``n`` images."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(n, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        teacher(x).sum().backward()
    return fc.get_total_flops()


def matmul_gflops(device, dtype, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    t, _ = median_time(run, repeats)
    return 4 * 2 * n ** 3 / t / 1e9


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(ROOT / "runs/teachers/tin10_conv3.pth"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/tinyimagenet-10/train"))
    p.add_argument("--input-size", type=int, default=32, help="only for the fallback teacher")
    add_device_args(p, default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--iters", type=int, default=10, help="(a) iterations per timed run, batch of 100")
    p.add_argument("--itr", type=int, default=80, help="(b) ITR; RI = ITR / 8 as 4000/500")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--options-only", action="store_true", help="only (d): the options' cost against plain DELT")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_from_args(args)
    data = Path(args.data)
    classes = find_classes(data)
    teacher, meta, note = get_teacher(args, classes, device)
    size, mean, std = meta["input_size"], meta["mean"], meta["std"]
    lo, hi = pixel_bounds(mean, std)
    bounds = (lo.view(1, 3, 1, 1), hi.view(1, 3, 1, 1))
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; teacher {note} "
          f"({meta['arch']}, input {size})")
    res: dict = {"device": str(device), "threads": torch.get_num_threads(), "teacher": note}

    # (a) batch of 100 = 10 images of each of 10 classes (the acceptance's IPC 10 batch), uniform schedule
    per = max(1, 100 // len(classes))
    x0, items = load_init(data, classes, per, size, mean, std)
    x0 = x0.to(device)
    labels = torch.tensor([c for c, _ in items], device=device)
    sched = uniform_schedule(len(items), args.iters)
    cfg = LoopConfig(input_size=size, lr=0.25, r_bn=0.01, jitter=4, milestone=1.0, channels_last=False)
    cl = LoopConfig(**{**cfg.__dict__, "channels_last": True})
    amp = LoopConfig(**{**cl.__dict__, "amp": True})

    def ours(c, tuned=True):
        def run():
            keep_freed_memory(tuned)
            prepare_teacher(teacher, channels_last=c.channels_last)
            recover_batch(teacher, x0, labels, sched, c, random.Random(0), bounds)
            sync(device)
        return run

    def reference(tuned=False):
        def run():
            keep_freed_memory(tuned)
            prepare_teacher(teacher, channels_last=False)
            random.seed(0)
            torch.manual_seed(0)
            reference_recover_batch(teacher, x0, labels, sched, 0.25, 0.01, 10.0, "cosine", 1.0, mean, std,
                                    released_augment(size, 4))
            sync(device)
        return run

    if args.options_only:
        res["d_options_over_delt"] = option_costs(teacher, x0, labels, sched, cl, bounds, device, args.repeats)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        print(json.dumps(res))
        return res

    variants = {"reference": reference(), "ours_fp32_glibc_default": ours(cfg, False),
                "reference_kept_memory": reference(True), "ours_fp32": ours(cfg), "ours_fp32_channels_last": ours(cl),
                "ours_bf16_channels_last": ours(amp)}
    if device.type != "cpu":
        variants = {k: v for k, v in variants.items() if k in ("reference", "ours_fp32", "ours_fp32_channels_last",
                                                               "ours_bf16_channels_last")}
    t = interleaved(variants, args.repeats)
    keep_freed_memory(True)
    img_its = sched.image_iterations
    rates = {k: img_its / v for k, v in t.items()}
    res["a_image_iterations_per_s"] = rates
    res["a_speedup_vs_reference"] = {k: v / rates["reference"] for k, v in rates.items()}
    print(f"(a) {len(items)} images x {args.iters} iterations, median of {args.repeats} (reference: released-style "
          f"loop, glibc default allocator; *_glibc_default / *_kept_memory: allocator setting, see recover/cpu.py):")
    for k, v in rates.items():
        print(f"    {k:26s} {v:8.1f} image-iterations/s  {v / rates['reference']:5.2f}x reference")

    # bf16 vs fp32 loss curves from the same start and the same random draws (60 iterations); for scale,
    # fp32 contiguous vs fp32 channels_last differ only in rounding order
    curve = uniform_schedule(len(items), 60)
    prepare_teacher(teacher, channels_last=False)
    f32_nchw = recover_batch(teacher, x0, labels, curve, cfg, random.Random(1), bounds)
    prepare_teacher(teacher, channels_last=True)
    f32 = recover_batch(teacher, x0, labels, curve, cl, random.Random(1), bounds)
    b16 = recover_batch(teacher, x0, labels, curve, amp, random.Random(1), bounds)

    def rel(a, b):
        return ((a.losses - b.losses).abs() / b.losses.abs()).tolist()

    res["amp_loss_curve"] = {
        "fp32_first_last": [f32.losses[0].item(), f32.losses[-1].item()],
        "bf16_first_last": [b16.losses[0].item(), b16.losses[-1].item()],
        "bf16_vs_fp32_rel_diff_median_max": [statistics.median(rel(b16, f32)), max(rel(b16, f32))],
        "layout_only_rel_diff_median_max": [statistics.median(rel(f32_nchw, f32)), max(rel(f32_nchw, f32))],
        "bf16_vs_fp32_image_mean_abs_diff": (b16.images - f32.images).abs().mean().item(),
        "layout_only_image_mean_abs_diff": (f32_nchw.images - f32.images).abs().mean().item()}
    a = res["amp_loss_curve"]
    print(f"    bf16 vs fp32 over 60 iterations: loss fp32 {f32.losses[0]:.4f} -> {f32.losses[-1]:.4f}, bf16 "
          f"{b16.losses[0]:.4f} -> {b16.losses[-1]:.4f}; per-iteration relative difference median "
          f"{a['bf16_vs_fp32_rel_diff_median_max'][0]:.3%} max {a['bf16_vs_fp32_rel_diff_median_max'][1]:.3%} "
          f"(fp32 NCHW vs channels_last: {a['layout_only_rel_diff_median_max'][0]:.3%} / "
          f"{a['layout_only_rel_diff_median_max'][1]:.3%}); final images mean |diff| "
          f"{a['bf16_vs_fp32_image_mean_abs_diff']:.3f} (layout only: {a['layout_only_image_mean_abs_diff']:.3f}) "
          f"in normalised units")

    # (b) EarlyLate / uniform, one class of IPC 50, ITR/RI with 8 rounds
    itr, ri = args.itr, args.itr // 8
    x50, items50 = load_init(data, classes[:1], 50, size, mean, std)
    x50 = x50.to(device)
    y50 = torch.zeros(50, dtype=torch.long, device=device)
    el = early_late_schedule(items50, 50, ri, [8])
    un = uniform_schedule(50, itr)
    prepare_teacher(teacher, channels_last=True)

    def run_sched(s, c):
        def run():
            recover_batch(teacher, x50, y50, s, c, random.Random(0), bounds)
            sync(device)
        return run

    tb = interleaved({"uniform": run_sched(un, cl), "early_late": run_sched(el, cl)}, args.repeats)
    ideal = image_iteration_ratio(50, itr, ri)
    res["b_early_late_over_uniform"] = {"itr": itr, "ri": ri, "wall_ratio": tb["early_late"] / tb["uniform"],
                                        "image_iteration_ratio": ideal, "uniform_s": tb["uniform"],
                                        "early_late_s": tb["early_late"]}
    print(f"(b) IPC 50, ITR {itr}, RI {ri}: uniform {tb['uniform']:.2f} s, EarlyLate {tb['early_late']:.2f} s, "
          f"wall ratio {tb['early_late'] / tb['uniform']:.3f} (image-iteration ratio {ideal:.4f})")

    # (c) achieved GFLOP/s of our loop vs matmul
    flops_it = count_flops(teacher, len(items), size, device, channels_last=True)
    achieved = {k: flops_it * args.iters / t[k] / 1e9 for k in t}
    mm32 = matmul_gflops(device, torch.float32)
    mm16 = matmul_gflops(device, torch.bfloat16)
    res["c_gflops"] = {"model_gflop_per_iteration": flops_it / 1e9, "achieved": achieved,
                       "matmul_fp32": mm32, "matmul_bf16": mm16}
    print(f"(c) teacher fwd+bwd {flops_it / 1e9:.2f} GFLOP per iteration of {len(items)} images; achieved "
          + ", ".join(f"{k} {v:.1f}" for k, v in achieved.items())
          + f" GFLOP/s; matmul fp32 {mm32:.1f}, bf16 {mm16:.1f} GFLOP/s "
          f"(ours fp32 channels_last at {achieved['ours_fp32_channels_last'] / mm32:.0%} of fp32 matmul)")
    res["d_options_over_delt"] = option_costs(teacher, x0, labels, sched, cl, bounds, device, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    return res


def option_costs(teacher, x0, labels, sched, cfg: LoopConfig, bounds, device, repeats: int) -> dict:
    """(d) wall time of each option past DELT over plain DELT's, same batch, iterations and random draws."""
    import copy

    size = cfg.input_size
    prepare_teacher(teacher, channels_last=cfg.channels_last)
    small = size * 7 // 8  # 200/224 in FADRM
    try:
        with torch.no_grad():
            teacher(torch.zeros(1, 3, small, small, device=device))
        stages = (small, size, small, size)
    except RuntimeError:  # a conv teacher's classifier takes one size: FADRM's Tiny-ImageNet form
        stages = (size, size, size, size)
    num_classes = int(labels.max()) + 1
    stats = ClassStats([m.running_mean.detach().expand(num_classes, -1).clone() for m in bn_layers(teacher)],
                       [m.running_var.detach().expand(num_classes, -1).clone() for m in bn_layers(teacher)])
    second = prepare_teacher(copy.deepcopy(teacher), channels_last=cfg.channels_last)
    edc = {"bn_match": "mix", "class_bn_weight": 0.5, "stats_momentum": 0.8}
    fadrm = {"stage_sizes": stages, "residual_alpha": 0.5}
    setups = {
        "delt": ({}, [teacher]),
        f"stages_{'-'.join(map(str, stages))}_residual": (fadrm, [teacher]),
        "bn_match_class": ({"bn_match": "class"}, [teacher]),
        "bn_match_mix_momentum_0.8": (edc, [teacher]),
        "two_teachers": ({}, [teacher, second]),
        "all_together": ({**fadrm, **edc}, [teacher, second]),
    }

    def run_with(opts, teachers):
        c = LoopConfig(**{**cfg.__dict__, **opts})
        cs = [stats] * len(teachers) if c.bn_match != "global" else None

        def run():
            recover_batch(teachers, x0, labels, sched, c, random.Random(0), bounds, class_stats=cs)
            sync(device)
        return run

    t = interleaved({k: run_with(*v) for k, v in setups.items()}, repeats)
    ratios = {k: v / t["delt"] for k, v in t.items()}
    print(f"(d) options past DELT, {len(x0)} images x {sched.total_iterations} iterations, median of {repeats}: "
          f"plain DELT {t['delt']:.2f} s")
    for k, v in t.items():
        print(f"    {k:34s} {v:7.2f} s  {ratios[k]:5.2f}x DELT")
    return {"seconds": t, "ratio_to_delt": ratios, "stage_sizes": list(stages)}


if __name__ == "__main__":
    main()
