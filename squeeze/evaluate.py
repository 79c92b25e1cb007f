"""Measure a checkpoint's val top-1 with the val transform.

    python -m squeeze.evaluate --arch-path teacher.pth --data-path DATA

The check a researcher runs on a downloaded teacher before distilling with it. The
input size, normalisation and class list are resolved once, by
``common.data.dataconfig.resolve_data_config``: ``--input-size``, then the checkpoint's
meta, then the ``--dataset`` registry, then the images; the checkpoint is read once, and
one whose classes do not match the data stops with one line.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("squeeze.args:evaluate_parser", "squeeze.evaluate"))

import json
import time
from pathlib import Path

import torch

from common.cli.paths import check_output_file
from common.compute.device import device_from_args
from common.data.dataconfig import resolve_data_config
from common.data.datasets import get_dataset
from common.data.imagefolder import ImageFolder, find_classes
from common.data.transforms import val_transform
from common.run.atomic import atomic_write_json
from common.run.state import check_output
from common.train.metrics import evaluate
from models import checkpoint_meta, load_model, read_checkpoint
from squeeze.args import evaluate_parser

STAGE = "squeeze.evaluate"


def val_root(data_path: str | Path) -> Path:
    """``DATA/val`` when it exists, else ``DATA`` itself (a bare val folder)."""
    p = Path(data_path)
    return p / "val" if (p / "val").is_dir() else p


get_args_parser = evaluate_parser  # torch-free, in squeeze.args (python -m answers before torch is imported)


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.output:
        check_output_file(args.output, "--output")
        check_output(args.output, STAGE, args.force, kind="file", flag="--output")
    spec = get_dataset(args.dataset)
    device = device_from_args(args)
    root = val_root(args.data_path)
    classes = find_classes(root, "val folder")
    ckpt = read_checkpoint(args.arch_path)  # read once: the data configuration and the model both come from it
    cfg = resolve_data_config(spec, args.arch_name or ckpt["meta"].get("arch"), args.input_size,
                              checkpoint_meta(args.arch_path, args.arch_name, ckpt=ckpt), image_root=root,
                              classes=classes)
    model, meta = load_model(args.arch_path, args.arch_name, classes=classes, input_size=cfg.input_size,
                             device=device, ckpt=ckpt)
    size = cfg.input_size
    ds = ImageFolder(root, val_transform(size, cfg.mean, cfg.std), classes=classes)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    t0 = time.perf_counter()
    res = evaluate(model, loader, device, progress=True)
    res.update({"stage": STAGE, "checkpoint": str(args.arch_path), "arch": meta["arch"], "input_size": size,
                "data": str(root), "mean": list(cfg.mean), "std": list(cfg.std), "data_config_source": cfg.source,
                "seconds": time.perf_counter() - t0,
                "recorded_val_top1": meta.get("val_top1")})
    print(f"{args.arch_path}: {meta['arch']} on {root}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"({res['images']} images)" + (f"  [checkpoint records {meta['val_top1']:.2f}%]"
                                         if meta.get("val_top1") is not None else ""))
    if args.output:
        atomic_write_json(args.output, res)
    else:
        print(json.dumps(res))
    return res
