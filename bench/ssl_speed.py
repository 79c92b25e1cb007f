"""Speed of MoCo v2 pre-training (``python -m squeeze.ssl``) against a straightforward two-view loop.

Both loops train the same MoCo model (same backbone, lightly projection head, momentum
encoder and NTXentLoss queue, same initial weights) on the same images for the same
number of steps:

- ours: ``squeeze.ssl_train.run_epoch`` over ``squeeze.moco.TwoViews`` (images decoded
  once into memory, each view seeded from (seed, epoch, image, view), channels_last);
- reference: the loop a lightly tutorial writes: torchvision ``ImageFolder`` with
  ``MoCoV2Transform`` (decode per sample, unseeded views), plain NCHW tensors.

Reported: training images/s of each (median of ``--repeats`` runs, the two interleaved
so that load from other processes hits both alike) and their ratio, in one run. Usage::

    python bench/ssl_speed.py [--data ../shared/data/tinyimagenet-10/train] [--arch conv3]
        [--input-size 32] [--batch-size 64] [--steps 4] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/tinyimagenet-10/train"))
    p.add_argument("--arch", default="conv3")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="training steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="also write the result as JSON here")
    args = p.parse_args(argv)

    import torch
    import torchvision
    from lightly.transforms import MoCoV2Transform

    from common.compute.device import resolve_device
    from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD
    from common.data.imagefolder import ImageFolder
    from models import build_backbone
    from squeeze.moco import MOCO_V2_BLUR_SIGMAS, MoCo, TwoViews, view_transform
    from squeeze.ssl_train import run_epoch

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size, n_img = args.input_size, args.batch_size * args.steps

    def fresh_model():
        torch.manual_seed(0)
        backbone, dim, _ = build_backbone(args.arch, size)
        return MoCo(backbone, dim, 2048, 128, queue_size=4096, temperature=0.2).to(device)

    # the same n_img images for both loops
    ours_ds = TwoViews(ImageFolder(args.data, None, cache=True), view_transform(size, IMAGENET_MEAN, IMAGENET_STD))
    g = torch.Generator().manual_seed(0)
    subset = torch.randperm(len(ours_ds), generator=g)[:n_img].tolist()
    k = size / 224.0
    ref_tf = MoCoV2Transform(input_size=size, sigmas=(MOCO_V2_BLUR_SIGMAS[0] * k, MOCO_V2_BLUR_SIGMAS[1] * k),
                             normalize={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
    ref_ds = torchvision.datasets.ImageFolder(args.data, transform=ref_tf)

    def run_ours() -> float:
        model = fresh_model().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.03, momentum=0.9,
                              weight_decay=1e-4)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ours_ds, subset), batch_size=args.batch_size,
                                             shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        _, n = run_epoch(model, loader, opt, None, device, 0.99, max_steps=args.steps)
        return n / (time.perf_counter() - t0)

    def run_reference() -> float:
        from lightly.models.utils import update_momentum

        model = fresh_model()
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.03, momentum=0.9,
                              weight_decay=1e-4)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ref_ds, subset), batch_size=args.batch_size,
                                             shuffle=True, drop_last=True)
        model.train()
        t0, n = time.perf_counter(), 0
        for (x0, x1), _ in loader:
            x0, x1 = x0.to(device), x1.to(device)
            update_momentum(model.backbone, model.backbone_momentum, 0.99)
            update_momentum(model.projection_head, model.projection_head_momentum, 0.99)
            q = model.projection_head(model.backbone(x0).flatten(1))
            with torch.no_grad():
                key = model.projection_head_momentum(model.backbone_momentum(x1).flatten(1))
            loss = model.criterion(q, key)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += x0.shape[0]
        return n / (time.perf_counter() - t0)

    run_ours(), run_reference()  # warm-up: first-touch allocations, lazy imports
    ours, ref = [], []
    for r in range(args.repeats):
        ours.append(run_ours())
        ref.append(run_reference())
        print(f"repeat {r + 1}/{args.repeats}: ours {ours[-1]:.1f} img/s, reference {ref[-1]:.1f} img/s",
              file=sys.stderr)
    import os

    res = {"bench": "ssl_speed", "arch": args.arch, "input_size": size, "batch_size": args.batch_size,
           "steps": args.steps, "repeats": args.repeats, "threads": args.threads, "device": str(device),
           "ours_images_per_s": statistics.median(ours), "reference_images_per_s": statistics.median(ref),
           "ratio_ours_over_reference": statistics.median(ours) / statistics.median(ref),
           "ours_runs": ours, "reference_runs": ref, "loadavg": list(os.getloadavg())}
    print(json.dumps(res, indent=2))
    if args.output:
        from common.run.atomic import atomic_write_json

        atomic_write_json(args.output, res)
    return res


if __name__ == "__main__":
    main()
