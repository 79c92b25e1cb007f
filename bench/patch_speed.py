"""RDED patch scoring throughput (patches/s): batched crops of many images per forward vs one image per forward.

    python bench/patch_speed.py --data-path ../shared/data/tinyimagenet-10/train \
        --observer-path runs/teachers/tin10_conv3.pth --images 300 --repeats 3

Both variants crop the same images with the same seeds (``rank_select.patches``'
``CropDataset``) and score every crop with the observer; "per image" runs one
forward pass per source image (its ``num_crop`` crops), "batched" runs
``--batch-size`` crops from many images per pass, as ``python -m rank_select.patches``
does. The losses must agree; the ratio of medians over ``--repeats`` is printed.
Without ``--data-path`` a generated shapes tree and a random conv3 are used.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rank_speed import bench_inputs, median_times  # noqa: E402  (bench/ is the script's folder)

from common.cli.flags import add_device_args  # noqa: E402
from common.compute.device import device_from_args  # noqa: E402
from common.data.imagefolder import find_classes, make_samples  # noqa: E402
from rank_select.patches import CropDataset, crop_losses  # noqa: E402


def score_all(ranker, dataset, images_per_forward: int, workers: int) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=images_per_forward, shuffle=False, num_workers=workers)
    out = []
    for crops, _, labels, _ in loader:
        m = crops.shape[1]
        flat = crops.flatten(0, 1)
        out.append(crop_losses(ranker, flat, labels.repeat_interleave(m), len(flat)))
    if ranker.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=None)
    p.add_argument("--observer-path", default=None)
    p.add_argument("--images", type=int, default=300, help="source images (spread over the classes)")
    p.add_argument("--num-crop", type=int, default=5)
    p.add_argument("--factor", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=500, help="crops per forward in the batched variant")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    add_device_args(p)
    args = p.parse_args()
    device = device_from_args(args)
    data, ranker, tmp = bench_inputs(args.data_path, args.observer_path, args.images, device, "observer")
    classes = find_classes(data)
    _, samples = make_samples(data, classes, per_class=max(1, args.images // len(classes)), shuffle_seed=0)
    ds = CropDataset(samples, list(range(len(samples))), args.num_crop, ranker.input_size // args.factor, 0)
    n_crops = len(ds) * args.num_crop

    variants = {"per image": 1, "batched": max(1, args.batch_size // args.num_crop)}
    results = {}

    def run(name):
        results[name] = score_all(ranker, ds, variants[name], args.workers)

    med = median_times({k: (lambda k=k: run(k)) for k in variants}, args.repeats)
    diff = (results["per image"] - results["batched"]).abs().max().item()
    print(f"device {device}, {len(ds)} images x {args.num_crop} crops = {n_crops} patches of "
          f"{ranker.input_size // args.factor}px (input {ranker.input_size}, {ranker.arch}), workers {args.workers}, "
          f"threads {torch.get_num_threads()}, {args.repeats} repeats (medians); max |loss difference| {diff:.1e}")
    for k in variants:
        print(f"{k:>10} ({variants[k] * args.num_crop:4d} crops/forward): {n_crops / med[k]:9.1f} patches/s")
    print(f"speed-up batched / per image: {med['per image'] / med['batched']:.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
