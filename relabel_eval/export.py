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

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("relabel_eval.args:export_parser", "relabel_eval.export"))

import shutil
import sys
from pathlib import Path
from typing import Sequence

from common.cli.errors import UserError
from relabel_eval.args import check_export, export_parser

STAGE = "relabel_eval.export"
get_args_parser = export_parser  # torch-free, in relabel_eval.args (python -m answers before torch is imported)


def check_output(out: Path) -> None:
    """The folder to write: writable, and absent or an earlier export (before any work)."""
    from common.cli.paths import check_output_dir
    from common.run.manifest import read_manifest

    check_output_dir(out, "--output-dir")
    if out.exists():
        old = read_manifest(out)
        if not old or old.get("stage") != STAGE:
            raise UserError(f"--output-dir {out}: exists and is not an earlier export; choose a new folder")


def check_soft_labels(args, syn: Path, ipc: int) -> None:
    """The FKD store belongs to these images and to this teacher."""
    from common.run.manifest import sha256_file
    from relabel_eval.data import load_distilled
    from relabel_eval.relabel import SoftLabelStore

    if not args.teacher_path:
        raise UserError("--soft-label-dir needs --teacher-path (the teacher that made the soft labels)")
    store = SoftLabelStore(args.soft_label_dir)
    store.check(load_distilled(syn, ipc))
    made = store.manifest.get("teacher") or {}
    if len(made.get("paths") or []) > 1 or made.get("mode", "eval") != "eval":
        raise UserError(f"--soft-label-dir {args.soft_label_dir} was made by {len(made.get('paths') or [])} "
                        f"teacher(s) in {made.get('mode', 'eval')} mode; the export's labels come from one "
                        "teacher in eval mode, so they would not be those soft labels")
    made_with = store.manifest.get("inputs", {}).get("teacher", {}).get("sha256")
    if made_with and made_with != sha256_file(args.teacher_path):
        raise UserError(f"--soft-label-dir {args.soft_label_dir} was made with another teacher than "
                        f"--teacher-path {args.teacher_path}")


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    check_export(args)
    syn, out = Path(args.syn_data_path), Path(args.output_dir)
    check_output(out)
    from relabel_eval.pad_protocol import require_ipc

    counts = require_ipc(syn, args.ipc)
    if not args.ipc and len(set(counts.values())) != 1:
        raise UserError(f"--syn-data-path {syn}: classes hold different numbers of images "
                        f"({min(counts.values())}..{max(counts.values())}); DD-Ranking needs the same IPC for "
                        f"every class: pass --ipc")
    ipc = args.ipc or next(iter(counts.values()))

    import numpy as np
    import torch

    from common.compute.device import device_from_args
    from common.data.dataconfig import resolve_data_config
    from common.data.datasets import get_dataset
    from common.data.imagefolder import ImageFolder
    from common.data.transforms import val_transform
    from common.run.atomic import atomic_dir, atomic_torch_save
    from common.run.manifest import build_manifest, write_manifest
    from models import load_model

    device = device_from_args(args)
    spec = get_dataset(args.dataset)
    ds = ImageFolder(syn, per_class=ipc, what="--syn-data-path")
    teacher, meta = None, {}
    if args.teacher_path:  # the checkpoint is read once: its weights and meta
        teacher, meta = load_model(args.teacher_path, classes=ds.classes, device=device)
    cfg = resolve_data_config(spec, meta.get("arch"), args.input_size, meta=meta, image_root=syn,
                              classes=ds.classes)
    size, mean, std = cfg.input_size, cfg.mean, cfg.std
    files = [str(Path(p).relative_to(syn)) for p, _ in ds.samples]
    if args.soft_label_dir:
        check_soft_labels(args, syn, ipc)
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
            data_config_source=cfg.source,
            images_pt={"shape": list(images.shape), "normalised": True, "order": "class-major, files order"},
            labels_pt=None if labels is None else {"shape": list(labels.shape), "kind": "teacher logits",
                                                   "ddranking_soft_label_mode": "S"},
            soft_label_dir=args.soft_label_dir)
        write_manifest(tmp, manifest)
    print(f"exported {len(files)} images ({len(ds.classes)} classes x IPC {ipc}, {size}px) for DD-Ranking -> {out}"
          f"{' with teacher soft labels' if labels is not None else ''}")
    return manifest
