"""``python -m relabel_eval.export``: write a distilled set in the layout another evaluator reads.

``--format ddranking`` (DD-Ranking, PyPI ``ddranking`` 0.2.0)::

    python -m relabel_eval.export --format ddranking --syn-data-path SYN --output-dir OUT \\
        [--teacher-path TEACHER.pth] [--soft-label-dir SOFT] [--ipc 10] [--input-size 32]

writes ``OUT/``:

- ``images/<class>/<file>``: the images relabel_eval trains on (the first IPC files of each
  class, sorted), a plain ImageFolder, for ``compute_metrics(image_path=OUT/images)``;
- ``images.pt``: float32 ``(N, 3, S, S)``, each image resized to S (Resize + CenterCrop as
  validation) and normalised with the teacher's mean / std, class after class with IPC images
  each (DD-Ranking builds its hard labels as IPC copies of class 0, then class 1, ...), for
  ``compute_metrics(image_tensor=torch.load("images.pt"))``;
- ``labels.pt`` (with ``--teacher-path``): float32 ``(N, C)`` teacher logits on ``images.pt``,
  row k for image k: DD-Ranking's ``soft_label_mode='S'`` labels (its KL / SCE losses take
  logits and apply the temperature softmax themselves);
- ``manifest.json``: classes, file order, mean / std, size, the teacher's sha256.

DD-Ranking has one soft label per image (``S``) or a teacher run online (``M``); it has no
per-augmentation store like FKD. Given ``--soft-label-dir`` (``relabel_eval.relabel``), the
export checks that the store belongs to these images and to this teacher (sha256) and writes
the same teacher's per-image labels; evaluate it in DD-Ranking with ``soft_label_mode='M'``
and the teacher to reproduce the online labels FKD stored.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

from common.cli.argtypes import positive_int
from common.cli.flags import add_device_args

FORMATS = ("ddranking",)
STAGE = "relabel_eval.export"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m relabel_eval.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", choices=FORMATS, required=True, help="target layout")
    p.add_argument("--syn-data-path", required=True, help="distilled set (ImageFolder)")
    p.add_argument("--output-dir", required=True, help="folder to write (must not exist, or be an earlier export)")
    p.add_argument("--ipc", type=positive_int, default=None,
                   help="first IPC files per class (default: all; classes must then hold the same number)")
    p.add_argument("--teacher-path", default=None, help="teacher checkpoint: soft labels, mean / std and size")
    p.add_argument("--soft-label-dir", default=None, help="FKD soft labels of this set (checked, see above)")
    p.add_argument("--input-size", type=positive_int, default=None, help="image side S (default: the teacher's)")
    add_device_args(p, default="cpu")  # the teacher's device
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import numpy as np
    import torch

    from common.cli.errors import UserError
    from common.compute.device import device_from_args
    from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD
    from common.data.imagefolder import ImageFolder
    from common.data.transforms import val_transform
    from common.run.atomic import atomic_dir, atomic_torch_save
    from common.run.manifest import build_manifest, read_manifest, sha256_file, write_manifest
    from models import load_model

    syn, out = Path(args.syn_data_path), Path(args.output_dir)
    device = device_from_args(args)
    if args.ipc is not None and args.ipc < 1:
        raise UserError(f"--ipc {args.ipc}: must be at least 1")
    if out.exists():
        old = read_manifest(out)
        if not old or old.get("stage") != STAGE:
            raise UserError(f"--output-dir {out}: exists and is not an earlier export; choose a new folder")
    ds = ImageFolder(syn, per_class=args.ipc, what="--syn-data-path")
    counts = ds.count_per_class()
    if len(set(counts)) != 1:
        raise UserError(f"--syn-data-path {syn}: classes hold different numbers of images ({min(counts)}.."
                        f"{max(counts)}); DD-Ranking needs the same IPC for every class: pass --ipc")
    ipc = counts[0]
    teacher, meta = None, {}
    if args.teacher_path:
        teacher, meta = load_model(args.teacher_path, classes=ds.classes, device=device)
    size = args.input_size or meta.get("input_size")
    if not size:
        raise UserError("--input-size is required without --teacher-path")
    mean, std = tuple(meta.get("mean") or IMAGENET_MEAN), tuple(meta.get("std") or IMAGENET_STD)
    files = [str(Path(p).relative_to(syn)) for p, _ in ds.samples]
    if args.soft_label_dir:
        from relabel_eval.data import load_distilled
        from relabel_eval.relabel import SoftLabelStore

        if not args.teacher_path:
            raise UserError("--soft-label-dir needs --teacher-path (the teacher that made the soft labels)")
        store = SoftLabelStore(args.soft_label_dir)
        store.check(load_distilled(syn, ipc))
        made_with = store.manifest.get("inputs", {}).get("teacher", {}).get("sha256")
        if made_with and made_with != sha256_file(args.teacher_path):
            raise UserError(f"--soft-label-dir {args.soft_label_dir} was made with another teacher than "
                            f"--teacher-path {args.teacher_path}")
    ds.transform = val_transform(int(size), mean, std)
    images = torch.stack([ds[i][0] for i in range(len(ds))]).float()
    labels = None
    if teacher is not None:
        with torch.no_grad():
            labels = torch.cat([teacher(images[s:s + 256].to(device)).float().cpu()
                                for s in range(0, len(images), 256)])
    order = np.asarray(ds.targets)
    assert (order == np.repeat(np.arange(len(ds.classes)), ipc)).all()  # class-major, IPC each
    with atomic_dir(out) as tmp:
        for (path, _), rel in zip(ds.samples, files):
            (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / "images" / rel)
        atomic_torch_save(images, tmp / "images.pt")
        if labels is not None:
            atomic_torch_save(labels, tmp / "labels.pt")
        manifest = build_manifest(
            STAGE, args, inputs={"teacher": args.teacher_path}, format=args.format, classes=ds.classes,
            files=files, ipc=ipc, num_images=len(files), input_size=int(size), mean=list(mean), std=list(std),
            images_pt={"shape": list(images.shape), "normalised": True, "order": "class-major, files order"},
            labels_pt=None if labels is None else {"shape": list(labels.shape), "kind": "teacher logits",
                                                   "ddranking_soft_label_mode": "S"},
            soft_label_dir=args.soft_label_dir)
        write_manifest(tmp, manifest)
    print(f"exported {len(files)} images ({len(ds.classes)} classes x IPC {ipc}, {size}px) for DD-Ranking -> {out}"
          f"{' with teacher soft labels' if labels is not None else ''}")
    return manifest


if __name__ == "__main__":
    from common.cli.errors import run_cli

    sys.exit(run_cli(main))
