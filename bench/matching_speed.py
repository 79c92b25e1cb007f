"""Trajectory-matching iterations/s: ours (torch.func.functional_call) vs a ReparamModule-style reference.

    OMP_NUM_THREADS=1 python bench/matching_speed.py --ipc 10 --classes 10 --syn-steps 10 --repeats 5

The reference is written the way the released MTT/DATM/PAD code works
(``reparam_module.py`` + ``PAD.py``): the network's parameters are deleted from its
modules and, on every forward, each module attribute is set to a view of one flat
parameter vector; the unroll keeps the list of every intermediate parameter vector,
computes the soft cross-entropy, takes ``autograd.grad(create_graph=True)`` and
appends ``params - lr * grad``. Ours is ``recover.matching.unroll`` +
``matching_loss``. Both run one matching iteration (unroll, loss, backward to the
images, labels and lr) on the same data, expert vectors and augmentation seeds; the
losses must agree. Prints the medians of interleaved repeats and the ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rank_speed import median_times  # noqa: E402  (bench/ is the script's folder)

from common.ops.dsa import dsa  # noqa: E402
from models import build_model  # noqa: E402
from recover.matching import ParamLayout, batch_order, matching_loss, soft_cross_entropy, unroll  # noqa: E402


class FlatParamModule(nn.Module):
    """The released ReparamModule's mechanism: parameters become views of a flat vector set before each forward."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.infos = []
        for _, m in module.named_modules():
            for n, p in list(m.named_parameters(recurse=False)):
                self.infos.append((m, n, p.shape, p.numel()))
        for m, n, _, _ in self.infos:
            delattr(m, n)

    def forward(self, x: torch.Tensor, flat_param: torch.Tensor) -> torch.Tensor:
        offset = 0
        for m, n, shape, k in self.infos:
            setattr(m, n, flat_param[offset:offset + k].view(shape))
            offset += k
        return self.module(x)


def reference_iteration(net: FlatParamModule, start, target, images, labels, lr, steps, batch, seed, ratio):
    gen = torch.Generator().manual_seed(seed)
    student_params = [start.detach().clone().requires_grad_(True)]
    for idx in batch_order(len(images), batch, steps, gen):
        x = dsa(images[idx], generator=gen)
        ce = soft_cross_entropy(net(x, flat_param=student_params[-1]), labels[idx])
        grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - lr * grad)
    k = int(ratio * len(start))
    loss = ((student_params[-1] - target) ** 2)[k:].sum() / ((start - target) ** 2)[k:].sum()
    loss.backward()
    return loss.detach()


def ours_iteration(model, layout, start, target, images, labels, lr, steps, batch, seed, ratio):
    gen = torch.Generator().manual_seed(seed)
    final = unroll(model, layout, start, images, labels, lr, steps, batch, gen, "color_crop_cutout_flip_scale_rotate")
    loss = matching_loss(final, start, target, ratio)
    loss.backward()
    return loss.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="conv3_in")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--syn-steps", type=int, default=10)
    p.add_argument("--batch-syn", type=int, default=None)
    p.add_argument("--depth-ratio", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch, args.classes, args.input_size)
    layout = ParamLayout(model)
    start = layout.flatten(model)
    target = start + 0.01 * torch.randn_like(start)
    ref_net = FlatParamModule(build_model(args.arch, args.classes, args.input_size))
    n = args.ipc * args.classes
    batch = args.batch_syn or n
    images = torch.randn(n, 3, args.input_size, args.input_size, requires_grad=True)
    labels = torch.randn(n, args.classes, requires_grad=True)
    lr = torch.tensor(0.01, requires_grad=True)
    a = ours_iteration(model, layout, start, target, images, labels, lr, args.syn_steps, batch, 1, args.depth_ratio)
    b = reference_iteration(ref_net, start, target, images, labels, lr, args.syn_steps, batch, 1, args.depth_ratio)
    if not torch.allclose(a, b, rtol=1e-4):
        raise SystemExit(f"losses differ: ours {a.item()} reference {b.item()}")
    times = median_times({
        "ours": lambda: ours_iteration(model, layout, start, target, images, labels, lr, args.syn_steps, batch, 2,
                                       args.depth_ratio),
        "reference": lambda: reference_iteration(ref_net, start, target, images, labels, lr, args.syn_steps, batch,
                                                 2, args.depth_ratio),
    }, args.repeats)
    import resource

    res = {"config": vars(args), "threads": torch.get_num_threads(), "loss_ours": a.item(),
           "loss_reference": b.item(), "ours_it_per_s": 1 / times["ours"],
           "reference_it_per_s": 1 / times["reference"], "median_s_ours": times["ours"],
           "median_s_reference": times["reference"], "speedup_ours_over_reference": times["reference"] / times["ours"],
           "peak_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
