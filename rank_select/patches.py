"""rank_select.patches: RDED's synthesis from realistic patches (Sun et al., CVPR 2024).

    python -m rank_select.patches --dataset tinyimagenet --data-path DATA/train \
        --observer-path runs/teacher.pth --output-path runs/rded_ipc10 --ipc 10 --factor 1

Per class, from a seeded pool of ``--mipc`` real images: ``--num-crop`` square
RandomResizedCrops per image (scale (0.08, 1), ratio 1) resized to
``input_size // factor``; each crop is scored by the observer's cross-entropy for
the true class, zero-padded (centred) to ``input_size`` in normalised space; each
image keeps its lowest-loss crop; the kept crops are sorted by loss ascending and
the first ``ipc * factor^2`` are stitched: output image j, grid cell k (row-major)
holds sorted crop ``k * ipc + j``. Unlike the released code every draw is seeded
(per seed, class and image), so the same seed gives identical images. Finished
classes survive an interruption in ``OUT.state/`` beside the output
(``common.run.state``): the same command run again resumes.
``manifest.json`` records the source file and crop box of every patch.

Under torchrun the classes still to do are dealt out to the processes (every ``world``-th one
from the rank's); each process scores and stitches its classes into the run state's shared
work folder, and rank 0 swaps in the output once every class is done. The observer scores
each class's crops in batches that never mix classes, so a class comes out the same, to the
last bit of every recorded loss, whichever process makes it and whatever else it makes: N
processes, and a resumed run, write the one-process output byte for byte (timings aside).
"""
from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("rank_select.args:patches_parser", "rank_select.patches"))

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from common.cli.errors import UserError, bar_vanishes_on_error
from common.cli.flags import device_spec, workers_from_args
from common.cli.paths import check_output_dir
from common.compute.distributed import barrier, cleanup, init_distributed, sum_over_ranks
from common.data.datasets import check_class_count, get_dataset
from common.data.imagefolder import find_classes, load_rgb, make_samples
from common.data.transforms import normalize
from common.run.atomic import atomic_save_image
from common.run.manifest import build_manifest, sha256_file, write_manifest
from common.run.state import RunState, check_not_inside, check_output, fingerprint, replace_output
from common.train.seed import seed_everything
from rank_select.args import patches_parser
from rank_select.ranker import Ranker, forward_logits, load_ranker, model_path_from_args
from rank_select.select import rank_width

STAGE = "rank_select.patches"
# Arguments that do not change the images (besides common.run.state.NOT_RESULT).
NOT_RESULT = {"output_path", "batch_size"}
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (1.0, 1.0)


get_args_parser = patches_parser  # torch-free, in rank_select.args (python -m answers before torch is imported)


# ----------------------------------------------------------------------------- crops (per image)

def crop_seed(seed: int, label: int, position: int) -> int:
    """One independent seed per (run seed, class, image position in the class pool)."""
    return int(np.random.SeedSequence([seed, label, position]).generate_state(1)[0])


def random_crops(img: torch.Tensor, num_crop: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_crop`` square RandomResizedCrops of a CHW [0, 1] image -> (crops [m,3,size,size], boxes [m,4]).

    Boxes are ``(top, left, height, width)`` in source pixels; draws use torchvision's
    ``RandomResizedCrop.get_params`` under a private generator state seeded by ``seed``.
    """
    crops, boxes = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(num_crop):
            i, j, h, w = T.RandomResizedCrop.get_params(img, list(CROP_SCALE), list(CROP_RATIO))
            crops.append(TF.resized_crop(img, i, j, h, w, [size, size], antialias=True))
            boxes.append((i, j, h, w))
    return torch.stack(crops), torch.tensor(boxes, dtype=torch.int64)


class CropDataset(Dataset):
    """Pool images -> their seeded crops, computed in DataLoader workers."""

    def __init__(self, samples: Sequence[tuple[str, int]], positions: Sequence[int], num_crop: int,
                 crop_size: int, seed: int):
        self.samples, self.positions = list(samples), list(positions)
        self.num_crop, self.crop_size, self.seed = num_crop, crop_size, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = TF.to_tensor(load_rgb(path))
        crops, boxes = random_crops(img, self.num_crop, self.crop_size,
                                    crop_seed(self.seed, label, self.positions[index]))
        return crops, boxes, label, index


class _Decode(Dataset):
    """Decode each file (:func:`load_rgb` names a bad one); nothing is kept."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> int:
        load_rgb(self.paths[index])
        return 0


def check_images(paths: Sequence[str], workers: int) -> None:
    """Every pool image decodes, before anything is written: a bad file in a later class must not leave
    earlier classes behind (the workspace is unchanged after a refused command)."""
    loader = DataLoader(_Decode(paths), batch_size=64, num_workers=workers, collate_fn=len)
    for _ in tqdm(loader, desc="checking images", unit="batch", leave=False, mininterval=1.0):
        pass


# ----------------------------------------------------------------------------- scoring, selection, stitching

def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad NCHW crops to ``size`` x ``size``, centred (extra pixel bottom/right, as RDED)."""
    dh, dw = size - x.shape[-2], size - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def crop_losses(ranker: Ranker, crops: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Observer cross-entropy of each [0, 1] crop [N,3,s,s], padded to the input size in normalised space."""
    out = []
    for start in range(0, len(crops), batch_size):
        x = normalize(crops[start:start + batch_size], ranker.mean, ranker.std)
        logits = forward_logits(ranker, pad_to(x, ranker.input_size))
        out.append(F.cross_entropy(logits, labels[start:start + batch_size].to(logits.device),
                                   reduction="none").cpu())
    return torch.cat(out) if out else torch.zeros(0)


def best_crop_per_image(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``losses [n_images, num_crop]`` -> (index of the lowest-loss crop, its loss) per image (first on ties)."""
    loss, idx = losses.min(dim=1)
    return idx, loss


def select_patches(losses: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` lowest losses, ascending (stable)."""
    return torch.sort(losses, stable=True).indices[:count]


def cell_sizes(out_size: int, factor: int) -> list[int]:
    """Side of each grid row/column: ``out_size // factor``, the first ``out_size % factor`` one pixel wider."""
    s, rem = divmod(out_size, factor)
    return [s + 1 if i < rem else s for i in range(factor)]


def stitch(patches: torch.Tensor, ipc: int, factor: int, out_size: int) -> torch.Tensor:
    """``ipc * factor^2`` sorted patches -> ``ipc`` images; image j, cell k (row-major) = patch ``k * ipc + j``.

    Patches whose size differs from their cell are resized (nearest, as the released
    ``mix_images``); with ``out_size`` divisible by ``factor`` they fit exactly.
    """
    if len(patches) != ipc * factor ** 2:
        raise ValueError(f"stitch needs {ipc * factor ** 2} patches, got {len(patches)}")
    out = patches.new_zeros((ipc, patches.shape[1], out_size, out_size))
    sizes = cell_sizes(out_size, factor)
    k, top = 0, 0
    for h in sizes:
        left = 0
        for w in sizes:
            part = patches[k * ipc:(k + 1) * ipc]
            if part.shape[-2:] != (h, w):
                part = F.interpolate(part, size=(h, w))
            out[:, :, top:top + h, left:left + w] = part
            left += w
            k += 1
        top += h
    return out


def to_uint8_image(x: torch.Tensor) -> Image.Image:
    """A CHW [0, 1] tensor -> 8-bit RGB (rounded)."""
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")


# ----------------------------------------------------------------------------- per-class synthesis

class ClassPool:
    """Best crop of each pool image of one class, filled batch by batch."""

    def __init__(self, label: int, n: int):
        self.label, self.n = label, n
        self.crops: list[torch.Tensor | None] = [None] * n
        self.boxes: list[list[int] | None] = [None] * n
        self.losses = torch.full((n,), float("inf"))
        self.filled = 0

    def add(self, pos: int, crop: torch.Tensor, box: torch.Tensor, loss: float) -> None:
        self.crops[pos], self.boxes[pos], self.losses[pos] = crop, box.tolist(), loss
        self.filled += 1

    @property
    def complete(self) -> bool:
        return self.filled == self.n


def synthesize_class(pool: ClassPool, pool_paths: Sequence[str], ipc: int, factor: int, out_size: int
                     ) -> tuple[torch.Tensor, list[list[dict]]]:
    """Select and stitch one class: (images [ipc,3,S,S] in [0, 1], per-image cell records)."""
    order = select_patches(pool.losses, ipc * factor ** 2)
    patches = torch.stack([pool.crops[i] for i in order.tolist()])
    images = stitch(patches, ipc, factor, out_size)
    cells = [[] for _ in range(ipc)]
    for rank, i in enumerate(order.tolist()):
        k, j = divmod(rank, ipc)
        cells[j].append({"cell": k, "row": k // factor, "col": k % factor, "source": pool_paths[i],
                         "box_tlhw": pool.boxes[i], "loss": float(pool.losses[i])})
    return images, cells


def pool_for_class(data_root: Path, cls: str, label: int, mipc: int, seed: int) -> list[str]:
    """The seeded pool: ``mipc`` files drawn by a seeded shuffle of the class (all when it has fewer)."""
    _, samples = make_samples(data_root, [cls], per_class=mipc, shuffle_seed=seed + label)
    return [Path(p).relative_to(data_root).as_posix() for p, _ in samples]


# ----------------------------------------------------------------------------- resumable output

@dataclass(frozen=True)
class ClassOutput:
    """How one class's stitched images are written."""
    ipc: int
    factor: int
    out_size: int
    width: int  # digits of the rank prefix
    ext: str    # png | jpg


def class_batches(counts: Sequence[int], per_batch: int) -> list[list[int]]:
    """Batches of ``per_batch`` consecutive items that never span two classes (``counts`` items per class,
    in order): a class's scores then do not depend on which other classes share its process or run."""
    out, start = [], 0
    for n in counts:
        out += [list(range(i, min(start + n, i + per_batch))) for i in range(start, start + n, per_batch)]
        start += n
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    t_start = time.perf_counter()
    for flag in ("ipc", "mipc", "num_crop", "factor", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    ctx = init_distributed(device_spec(args))  # torchrun: one device per process, a gloo/NCCL group
    try:
        return run(args, ctx, t_start)
    finally:
        cleanup()


def run(args, ctx, t_start: float) -> dict:
    """Synthesize this process's share of the classes; rank 0 completes the output (see the module doc)."""
    seed_everything(args.seed)
    spec = get_dataset(args.dataset)
    data_root, out = Path(args.data_path), Path(args.output_path)
    check_output_dir(out, "--output-path")
    classes = find_classes(data_root)
    check_class_count(spec, len(classes), data_root)
    check_not_inside(out, data_root, "--output-path", "the data path")
    check_output(out, STAGE, args.force, flag="--output-path")
    device = ctx.device
    workers = workers_from_args(args, device.type)
    observer_path = model_path_from_args(args, "observer")
    ranker = load_ranker(observer_path, args.observer_arch, classes, spec, args.input_size, device, "observer")
    crop_size = ranker.input_size // args.factor
    if crop_size < 1:
        raise UserError(f"--factor {args.factor} is larger than the input size {ranker.input_size}")
    need = args.ipc * args.factor ** 2

    pools = [pool_for_class(data_root, c, y, args.mipc, args.seed) for y, c in enumerate(classes)]
    for cls, pool in zip(classes, pools):
        if len(pool) < need and not args.allow_fewer:
            raise UserError(f"class {cls} has only {len(pool)} images but --ipc {args.ipc} x --factor^2 "
                            f"{args.factor ** 2} needs {need}; lower --ipc or pass --allow-fewer")
    # every pool image decodes (each process checks its share), before the state or the output is touched
    check_images([str(data_root / p) for pool in pools[ctx.rank::ctx.world_size] for p in pool], workers)
    barrier()
    run = RunState(out, STAGE, fingerprint(args, NOT_RESULT, observer_sha256=sha256_file(observer_path),
                                           classes=classes, input_size=ranker.input_size,
                                           mean=list(ranker.mean), std=list(ranker.std)), restart=args.restart,
                   check=ctx.is_main)  # under torchrun: rank 0 checks (and may reset) the state, the others wait
    stage = run.path("work")  # the output folder being built; swapped in when every class is done
    done = {rec["class"]: rec for rec in (run.done(u) for u in run.done_units()) if rec}
    todo = [y for y, c in enumerate(classes) if c not in done]
    if len(todo) < len(classes):
        print(f"resuming: {len(classes) - len(todo)} of {len(classes)} classes already done in {run.dir}",
              file=sys.stderr)

    mine = todo[ctx.rank::ctx.world_size]  # this process's classes
    if ctx.distributed:
        print(f"{len(todo)} classes dealt to {ctx.world_size} processes ({ctx.backend})", file=sys.stderr)
        print(f"rank {ctx.rank} of {ctx.world_size}: {len(mine)} of the {len(todo)} classes", file=sys.stderr,
              force=True)
    samples, positions = [], []
    for y in mine:
        samples += [(str(data_root / p), y) for p in pools[y]]
        positions += list(range(len(pools[y])))
    per_batch = max(1, args.batch_size // args.num_crop)  # images whose crops share one forward pass
    loader = DataLoader(CropDataset(samples, positions, args.num_crop, crop_size, args.seed),
                        batch_sampler=class_batches([len(pools[y]) for y in mine], per_batch), num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers > 0 else None)
    spec_out = ClassOutput(args.ipc, args.factor, ranker.input_size, rank_width(args.ipc), args.save_format)
    open_pools: dict[int, ClassPool] = {}
    t0 = time.perf_counter()
    n_crops = 0
    with run.running(), tqdm(total=len(samples) * args.num_crop, desc="scoring crops", unit="crop",
                             dynamic_ncols=True) as bar, bar_vanishes_on_error(bar):
        for crops, boxes, labels, index in loader:
            m = crops.shape[1]
            flat = crops.flatten(0, 1)
            losses = crop_losses(ranker, flat, labels.repeat_interleave(m), len(flat)).view(-1, m)
            best, best_loss = best_crop_per_image(losses)
            for b in range(len(labels)):
                y = int(labels[b])
                pool = open_pools.setdefault(y, ClassPool(y, len(pools[y])))
                pool.add(positions[int(index[b])], crops[b, best[b]].clone(), boxes[b, best[b]], float(best_loss[b]))
                if pool.complete:
                    done[classes[y]] = write_class(run, stage, y, classes[y], pool, pools[y], spec_out)
                    del open_pools[y]
            n_crops += len(flat)
            bar.update(len(flat))
        barrier()  # every process's classes are done (and recorded in the state) before rank 0 completes
    elapsed = time.perf_counter() - t0
    n_crops = int(sum_over_ranks(n_crops)[0])
    rate = n_crops / max(elapsed, 1e-9)
    print(f"scored {n_crops} crops in {elapsed:.1f}s ({rate:.0f} patches/s)", file=sys.stderr)
    if not ctx.is_main:
        return {"output": str(out), "rank": ctx.rank, "classes": len(mine)}
    if ctx.distributed:  # the other processes' classes, from their records
        done = {rec["class"]: rec for rec in (run.done(u) for u in run.done_units()) if rec}
        missing = [c for c in classes if c not in done]
        if missing:
            raise RuntimeError(f"classes {missing[:3]} have no done record in {run.dir} after every process ended")

    manifest = build_manifest(STAGE, args, inputs={"observer": observer_path}, data_root=str(data_root.resolve()),
                              observer={"arch": ranker.arch, "input_size": ranker.input_size,
                                        "mean": list(ranker.mean), "std": list(ranker.std)},
                              crop={"scale": list(CROP_SCALE), "ratio": list(CROP_RATIO), "size": crop_size,
                                    "box": "top, left, height, width in source pixels"},
                              wall_time_s=time.perf_counter() - t_start,
                              timings={"scoring_s": elapsed, "patches_per_sec": rate, "crops_scored": n_crops},
                              classes={c: {k: v for k, v in done[c].items() if k != "class"} for c in classes})
    stage.mkdir(parents=True, exist_ok=True)
    write_manifest(stage / "manifest.json", manifest)
    replace_output(stage, out)  # our own output (or --force): swapped in complete
    run.finish()
    total = sum(len(v["images"]) for v in done.values())
    print(f"wrote {total} images ({len(classes)} classes, factor {args.factor}) to {out}")
    return {"output": str(out), "images": total, "patches_per_sec": rate, "scoring_s": elapsed}


def write_class(run: RunState, stage: Path, label: int, cls: str, pool: ClassPool, pool_paths: Sequence[str],
                spec: ClassOutput) -> dict:
    """Stitch and save one class into the work folder, then record it as done."""
    ipc = min(spec.ipc, len(pool_paths) // spec.factor ** 2)
    if ipc < 1:
        raise UserError(f"class {cls}: {len(pool_paths)} pool images cannot fill one {spec.factor}x{spec.factor} "
                        f"image")
    images, cells = synthesize_class(pool, pool_paths, ipc, spec.factor, spec.out_size)
    cls_dir = stage / cls
    if cls_dir.exists():
        shutil.rmtree(cls_dir)
    cls_dir.mkdir(parents=True)
    width, ext = spec.width, spec.ext
    records = []
    for j in range(ipc):
        name = f"{j:0{width}d}_rded.{ext}"
        atomic_save_image(to_uint8_image(images[j]), cls_dir / name, **({"quality": 75} if ext == "jpg" else {}))
        records.append({"file": name, "patches": cells[j]})
    record = {"class": cls, "pool_size": len(pool_paths), "images": records}
    run.mark_done(f"class_{label:06d}", record)
    return record
