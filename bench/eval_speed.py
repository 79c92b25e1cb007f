"""Epoch throughput of relabel_eval's student loop against a loop written like the released one.

The reference (DELT/RDED ``validation/main.py``, device-agnostic here): images re-read
from disk and decoded every epoch (torchvision loader), per-image ToTensor ->
RandomResizedCrop -> flip -> Normalize in the DataLoader, CutMix on the batch, the
teacher on every batch, an extra no-grad student forward only to log train accuracy,
``.item()`` per batch, contiguous (NCHW) tensors. Ours: ``relabel_eval.train.train_one_epoch``
(decoded once into memory, no extra forward, channels_last, batch normalisation on the
device). Same data, models, batch size, workers and threads; the two loops alternate
epoch by epoch and the ratio of median epoch times is printed. Optionally (``--fkd``) the FKD
replay epoch (stored soft labels, no teacher) is timed too, with full labels, pruned labels
(``--label-keep 0.1``, LPLD), top-3 labels (LPQLD) and both, each epoch's label read included,
beside the label bytes each takes.

    python bench/eval_speed.py [--data-path DIR] [--teacher-path CKPT] [--ipc 10] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torchvision.datasets.folder import default_loader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli.flags import add_device_args, device_spec  # noqa: E402
from common.data.imagefolder import find_classes  # noqa: E402
from models import build_model, make_meta, save_checkpoint  # noqa: E402
from relabel_eval import relabel as relabel_mod  # noqa: E402
from relabel_eval import train as train_mod  # noqa: E402
from relabel_eval.context import BatchMaker, resolve_common  # noqa: E402
from relabel_eval.plan import make_epoch_plan  # noqa: E402
from relabel_eval.protocol import make_optimizer  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/tinyimagenet-10/train")


class RefDataset(torch.utils.data.Dataset):
    """The released ImageFolder with ``mem=False``: every item is read and decoded from disk."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(default_loader(path)), label


def ref_cutmix(images, alpha=1.0):
    """Released ``cutmix``: numpy global RNG, in place."""
    rand_index = torch.randperm(images.size(0), device=images.device)
    lam = np.random.beta(alpha, alpha)
    W, H = images.size(2), images.size(3)
    cut = np.sqrt(1.0 - lam)
    cw, ch = int(W * cut), int(H * cut)
    cx, cy = np.random.randint(W), np.random.randint(H)
    x1, y1 = np.clip(cx - cw // 2, 0, W), np.clip(cy - ch // 2, 0, H)
    x2, y2 = np.clip(cx + cw // 2, 0, W), np.clip(cy + ch // 2, 0, H)
    images[:, :, x1:x2, y1:y2] = images[rand_index, :, x1:x2, y1:y2]
    return images


def ref_epoch(loader, teacher, student, optimizer, device, T_kd=20.0):
    teacher.eval()
    student.train()
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    n = 0
    for images, labels in loader:
        with torch.no_grad():
            images, labels = images.to(device), labels.to(device)
            mix = ref_cutmix(images)
            pred = student(images)  # extra forward, only for the train-accuracy log
            soft = F.softmax(teacher(mix) / T_kd, dim=1)
        optimizer.zero_grad()
        _ = (pred.argmax(1) == labels).float().mean().item()
        out = student(mix)
        loss = kl(F.log_softmax(out / T_kd, dim=1), soft)
        loss.backward()
        optimizer.step()
        _ = loss.item()
        n += images.size(0)
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None,
                   help="ImageFolder to time on (default: tinyimagenet-10 train if present, else generated shapes)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--teacher-path", default=None, help="teacher checkpoint (default: a fresh conv3; speed only)")
    p.add_argument("--arch", default="conv3", help="teacher and student architecture")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=0, help="0: the protocol's table")
    p.add_argument("--repeats", type=int, default=7, help="timed epochs per loop (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=None)
    add_device_args(p, default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--fkd", action="store_true", help="also time the FKD replay epoch")
    args = p.parse_args()
    args.device = device_spec(args)  # --gpu-device N means --device cuda:N, as in every stage
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    data = Path(args.data_path) if args.data_path else None
    if data is None:
        from tests.conftest import make_tree

        data = make_tree(tmp / "shapes", 10, args.ipc, size=32)
    # the distilled-set stand-in: the first IPC images of each class, as relabel_eval reads them
    flags = ["--syn-data-path", str(data), "--val-dir", str(data), "--ipc", str(args.ipc), "--device", args.device,
             "--input-size", str(args.input_size), "--amp" if args.device.startswith("cuda") else "--no-amp"]
    if args.workers is not None:
        flags += ["--workers", str(args.workers)]
    teacher_path = args.teacher_path
    if teacher_path is None:
        classes = find_classes(data)
        torch.manual_seed(0)
        teacher_path = tmp / "teacher.pth"
        save_checkpoint(teacher_path, build_model(args.arch, len(classes), args.input_size),
                        make_meta(args.arch, len(classes), args.input_size, classes=classes))
    flags += ["--teacher-path", str(teacher_path), "--re-batch-size", str(args.batch_size)]
    targs = train_mod.get_args_parser().parse_args(flags)
    common = resolve_common(targs, need_teacher=True)
    device = common.device
    bs = train_mod.batch_size_for(targs, common, args.arch)[0]
    N = len(common.data)

    # ours
    maker = BatchMaker(common)
    ours_student = build_model(args.arch, common.num_classes, args.input_size).to(device)
    ours_student = ours_student.to(memory_format=torch.channels_last)
    ours_opt = make_optimizer(ours_student, adamw_lr=1e-3)
    scaler = common.precision.grad_scaler()  # fp16 only (GPUs without bf16)
    online = train_mod.OnlineTeacher(common)

    # reference
    ref_teacher = build_model(args.arch, common.num_classes, args.input_size)
    ref_teacher.load_state_dict(common.teacher.state_dict())
    ref_teacher = ref_teacher.to(device).eval()
    ref_student = build_model(args.arch, common.num_classes, args.input_size).to(device)
    ref_opt = make_optimizer(ref_student, adamw_lr=1e-3)
    tf = T.Compose([T.ToTensor(), T.RandomResizedCrop(args.input_size, scale=(0.08, 1.0), antialias=True),
                    T.RandomHorizontalFlip(), T.Normalize(common.mean, common.std)])
    samples = [(str(data / f), int(y)) for f, y in zip(common.data.files, common.data.labels)]
    ref_loader = torch.utils.data.DataLoader(RefDataset(samples, tf), batch_size=bs, shuffle=True,
                                             num_workers=common.workers, pin_memory=device.type == "cuda")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def time_ours(epoch, targets=online, plan=None):
        plan = plan or make_epoch_plan(0, epoch, common.data.sizes, bs, common.aug)
        sync()
        t0 = time.perf_counter()
        train_mod.train_one_epoch(ours_student, maker, plan, targets, ours_opt, scaler, 20.0)
        sync()
        return time.perf_counter() - t0

    def time_ref():
        sync()
        t0 = time.perf_counter()
        with common.precision.autocast():  # the same precision as ours
            ref_epoch(ref_loader, ref_teacher, ref_student, ref_opt, device)
        sync()
        return time.perf_counter() - t0

    store, variants = None, {}
    if args.fkd:
        relabel_mod.main([*flags[:2], *flags[4:], "--epochs", str(args.warmup + args.repeats), "--seed", "0",
                          "--output-dir", str(tmp / "soft")])
        store = relabel_mod.SoftLabelStore(tmp / "soft")
        for name, extra in (("full labels", []), ("pruned 1/10", ["--label-keep", "0.1"]), ("top-3", ["--topk", "3"]),
                            ("pruned 1/10 + top-3", ["--label-keep", "0.1", "--topk", "3"])):
            folder = tmp / f"soft_{len(variants)}"
            manifest = relabel_mod.main([*flags[:2], *flags[4:], "--epochs", str(args.warmup + args.repeats),
                                         "--seed", "0", "--output-dir", str(folder), *extra])
            variants[name] = (relabel_mod.SoftLabelStore(folder), manifest["label_bytes"], [])

    def time_replay(vstore, epoch):
        sync()
        t0 = time.perf_counter()  # the label read (a file, or a draw from the kept records) counts
        plan, logits = vstore.epoch(epoch, 0)
        train_mod.train_one_epoch(ours_student, maker, plan, train_mod.StoredLogits(logits, plan, device), ours_opt,
                                  scaler, 20.0)
        sync()
        return time.perf_counter() - t0

    t_ref, t_ours, t_fkd = [], [], []
    for e in range(args.warmup + args.repeats):
        r, o = time_ref(), time_ours(e)
        f = None
        if store is not None:
            plan, logits = store.load(e)
            f = time_ours(e, train_mod.StoredLogits(logits, plan, device), plan)
        replay = {name: time_replay(v[0], e) for name, v in variants.items()}
        if e >= args.warmup:
            t_ref.append(r)
            t_ours.append(o)
            if f is not None:
                t_fkd.append(f)
            for name, t in replay.items():
                variants[name][2].append(t)
    med_ref, med_ours = statistics.median(t_ref), statistics.median(t_ours)
    print(f"device {device} ({torch.get_num_threads()} threads), workers {common.workers}, {args.arch} teacher and "
          f"student at {args.input_size}px, {N} images ({common.num_classes} classes x IPC {args.ipc}) from {data}, "
          f"batch {bs}, CutMix, {args.repeats} timed epochs each after {args.warmup} warm-up, loops alternating")
    print(f"reference loop (released style): median epoch {med_ref * 1000:.1f} ms  ({N / med_ref:.0f} img/s)")
    print(f"relabel_eval loop (online teacher): median epoch {med_ours * 1000:.1f} ms  ({N / med_ours:.0f} img/s)")
    if t_fkd:
        med_fkd = statistics.median(t_fkd)
        print(f"relabel_eval loop (FKD replay): median epoch {med_fkd * 1000:.1f} ms  ({N / med_fkd:.0f} img/s)  "
              f"ratio vs reference {med_ref / med_fkd:.2f}x")
    for name, (_, nbytes, times) in variants.items():
        med = statistics.median(times)
        print(f"FKD replay, {name:20s}: median epoch {med * 1000:.1f} ms incl. label read ({N / med:.0f} img/s); "
              f"labels {nbytes / 1e6:.3f} MB")
    print(f"speed-up (reference / ours, medians): {med_ref / med_ours:.2f}x")


if __name__ == "__main__":
    main()
