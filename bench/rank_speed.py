"""Ranking throughput (images/s): rank_select's scorer against a released-style loop, in one run.

    python bench/rank_speed.py --data-path ../shared/data/tinyimagenet-10/train \
        --ranker-path runs/teachers/tin10_conv3.pth --images 2000 --repeats 3

Baseline = what the released ``data_selection.py`` does: torchvision ImageFolder,
``torch.no_grad``, contiguous (NCHW) tensors, float32. Ours = ``score_dataset``
(common ImageFolder, ``inference_mode``, channels_last; AMP on CUDA). Both use the
same DataLoader settings and the same images; medians of ``--repeats`` runs.
Without ``--data-path`` a generated shapes tree and a random conv3 are used.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli.flags import add_device_args  # noqa: E402
from common.compute.device import device_from_args  # noqa: E402
from common.data.datasets import get_dataset  # noqa: E402
from common.data.imagefolder import ImageFolder, find_classes  # noqa: E402
from common.data.transforms import val_transform  # noqa: E402
from rank_select.rank import score_dataset, score_logits  # noqa: E402
from rank_select.ranker import load_ranker  # noqa: E402


def bench_inputs(data_path, model_path, images: int, device, role: str):
    """(data root, loaded model, temp dir or None): the given tree and checkpoint, else generated ones."""
    tmp = None
    if data_path is None:
        from tests.conftest import make_teacher, make_tree

        tmp = tempfile.TemporaryDirectory()
        data = make_tree(Path(tmp.name) / "train", 10, max(1, images // 10))
        model_path = make_teacher(Path(tmp.name) / "t.pth", find_classes(data))
    else:
        data = Path(data_path)
    return data, load_ranker(model_path, None, find_classes(data), get_dataset("custom"), None, device, role), tmp


def median_times(variants: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each callable over ``repeats`` rounds; round 0 warms up, the order alternates."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats + 1):
        names = list(variants) if r % 2 else list(variants)[::-1]
        for name in names:
            t0 = time.perf_counter()
            variants[name]()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def baseline(model, dataset, batch_size, workers, device) -> None:
    """Released-style scoring loop: no_grad, NCHW float32, softmax + gather."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    with torch.no_grad():
        for x, y in loader:
            p = torch.softmax(model(x.to(device)), 1)
            torch.gather(p, 1, y.to(device).unsqueeze(-1))
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=None)
    p.add_argument("--ranker-path", default=None)
    p.add_argument("--images", type=int, default=2000, help="images scored per repeat (every k-th image of the tree)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_device_args(p)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_from_args(args)
    data, ranker, tmp = bench_inputs(args.data_path, args.ranker_path, args.images, device, "ranker")
    classes = find_classes(data)
    ranker_path = ranker.path
    tf = val_transform(ranker.input_size, ranker.mean, ranker.std)
    ours_ds = ImageFolder(data, tf, classes=classes)
    n = min(args.images, len(ours_ds))
    # the same n images for both: every k-th image so that all classes take part
    idx = list(range(0, len(ours_ds), max(1, len(ours_ds) // n)))[:n]
    ours_ds = Subset(ours_ds, idx)
    base_ds = Subset(torchvision.datasets.ImageFolder(str(data), tf), idx)
    base_model = load_ranker(ranker_path, None, classes, get_dataset("custom"), None, device).model
    base_model = base_model.to(memory_format=torch.contiguous_format)

    # metrics identical up to float noise
    x, y = next(iter(DataLoader(ours_ds, batch_size=16)))
    with torch.no_grad():
        ref = torch.softmax(base_model(x.to(device)), 1).gather(1, y.to(device).view(-1, 1)).squeeze(1).float()
    from rank_select.ranker import forward_logits

    got = score_logits(forward_logits(ranker, x), y.to(device))["score"]
    print(f"max |score difference| ours vs baseline on 16 images: {(ref - got).abs().max().item():.2e}")

    med = median_times({"base": lambda: baseline(base_model, base_ds, args.batch_size, args.workers, device),
                        "ours": lambda: score_dataset(ranker, ours_ds, args.batch_size, args.workers)},
                       args.repeats)
    mb, mo = med["base"], med["ours"]
    print(f"device {device}, {n} images, input {ranker.input_size}, arch {ranker.arch}, batch {args.batch_size}, "
          f"workers {args.workers}, threads {torch.get_num_threads()}, {args.repeats} repeats (medians)")
    print(f"baseline (released-style): {n / mb:8.1f} images/s")
    print(f"rank_select score_dataset: {n / mo:8.1f} images/s")
    print(f"speed-up ours / baseline: {mb / mo:.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
