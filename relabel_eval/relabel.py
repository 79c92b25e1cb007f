"""FKD-style soft labels: store each epoch's augmentation and the teacher's logits, replay them later.

``python -m relabel_eval.relabel --syn-data-path DIR --teacher-path CKPT --epochs E --output-dir OUT [--topk K]``
writes ``OUT/epoch_0000.pt ...``, one file per epoch: the epoch plan (image order,
RandomResizedCrop boxes, flips, per-image RandAugment/erasing seeds, per-batch mix
permutation, lambda and CutMix box) and the teacher's logits on the mixed batches in
fp16, row k belonging to image ``order[k]`` (optionally only the top-k logits and
their class indices). ``python -m relabel_eval --label-mode fkd --soft-label-dir OUT``
then trains students without the teacher. The plan is the one an online run with the
same ``--seed`` draws, so replay and online training see identical batches.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from common.argtypes import nonneg_int, positive_int
from common.atomic import atomic_torch_save
from common.errors import UserError
from common.imagefolder import check_same_classes
from common.manifest import build_manifest, read_manifest, write_manifest
from common.paths import check_output_dir, first_missing
from common.runstate import check_output
from models import check_arch
from relabel_eval.data import DistilledSet
from relabel_eval.mix import topk_to_logits
from relabel_eval.plan import EpochPlan, make_epoch_plan
from relabel_eval.setup import BatchMaker, add_common_args, batch_size_for, resolve_common, teacher_logits, warn_ignored

STAGE = "relabel_eval.relabel"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m relabel_eval.relabel", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--epochs", "--re-epochs", dest="epochs", type=positive_int, required=True,
                   help="number of epochs of soft labels to store")
    p.add_argument("--output-dir", required=True, help="folder for the epoch files and manifest.json")
    p.add_argument("--topk", type=nonneg_int, default=0, help="store only the K largest logits per image (0: all)")
    p.add_argument("--stud-name", default=None, help="student the labels are for (only picks the batch size)")
    p.add_argument("--force", action="store_true", help="replace an existing --output-dir this command did not write")
    p.add_argument("--no-resume", action="store_true", help="discard an interrupted run's epoch files")
    return p


def epoch_file(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:04d}.pt"


def fingerprint(args: argparse.Namespace, common, batch_size: int) -> dict:
    return {"syn_data_path": str(Path(args.syn_data_path).resolve()), "files": len(common.data),
            "teacher": str(Path(args.teacher_path).resolve()), "seed": args.seed, "batch_size": batch_size,
            "aug": common.aug.to_dict(), "topk": args.topk, "epochs": args.epochs}


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    warn_ignored(args)
    out = check_output_dir(args.output_dir, "--output-dir")
    check_output(out, STAGE, args.force, flag="--output-dir")
    partial = check_output_dir(out.with_name(out.name + ".partial"), "--output-dir")
    created = first_missing(partial)  # what a failed first call would leave behind
    try:
        return _run(args, out)
    except BaseException:
        if created is not None and not list(partial.glob("epoch_*.pt")):  # nothing finished: leave nothing
            shutil.rmtree(created, ignore_errors=True)
        raise


def _run(args: argparse.Namespace, out: Path) -> dict:
    if args.stud_name:
        args.stud_name = check_arch(args.stud_name, "--stud-name")
    common = resolve_common(args, need_teacher=True)
    C = common.num_classes
    if args.topk < 0 or args.topk > C:
        raise UserError(f"--topk {args.topk}: must be between 0 and the class count {C}")
    batch_size, bs_source = batch_size_for(args, common, args.stud_name or common.teacher_meta["arch"])
    partial = out.with_name(out.name + ".partial")
    fp = fingerprint(args, common, batch_size)
    done = read_manifest(out) if out.is_dir() else None
    if done and done.get("complete") and done.get("fingerprint") == fp:
        print(f"{out}: soft labels already complete ({done['storage_bytes']} bytes); nothing to do")
        return done
    if partial.exists():
        old = read_manifest(partial)
        if args.no_resume or not old or old.get("fingerprint") != fp:
            if not args.no_resume and old:
                raise UserError(f"{partial}: an interrupted relabel run with other arguments is there; "
                                f"pass --no-resume to discard it")
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(
        STAGE, args, inputs={"teacher": args.teacher_path}, fingerprint=fp, complete=False,
        classes=common.data.classes, files=common.data.files, num_images=len(common.data), num_classes=C,
        ipc=common.data.ipc, epochs=args.epochs, batch_size=batch_size, batch_size_source=bs_source,
        seed=args.seed, protocol=args.protocol, aug=common.aug.to_dict(), input_size=common.input_size,
        mean=list(common.mean), std=list(common.std), teacher_arch=common.teacher_meta["arch"], topk=args.topk,
        logits_dtype="float16")
    write_manifest(partial, manifest)

    maker = BatchMaker(common)
    N = len(common.data)
    todo = [e for e in range(args.epochs) if not epoch_file(partial, e).exists()]
    if len(todo) < args.epochs:
        print(f"resuming: {args.epochs - len(todo)} of {args.epochs} epoch files already in {partial}")
    for epoch in tqdm(todo, desc="relabel epochs"):
        plan = make_epoch_plan(args.seed, epoch, common.data.sizes, batch_size, common.aug)
        logits = torch.empty(N, C, dtype=torch.float32)
        for b, xm, _, _ in maker.batches(plan):
            logits[plan.batch_slice(b)] = teacher_logits(common.teacher, xm, common.device, common.amp).cpu()
        state = {"epoch": epoch, "plan": plan.to_state()}
        if args.topk:
            values, indices = logits.topk(args.topk, dim=1)
            state["topk_values"] = values.half()
            state["topk_indices"] = indices.to(torch.int16 if C <= 32767 else torch.int32)
        else:
            state["logits"] = logits.half()
        atomic_torch_save(state, epoch_file(partial, epoch))

    storage = sum(epoch_file(partial, e).stat().st_size for e in range(args.epochs))
    manifest.update(complete=True, storage_bytes=storage,
                    storage_bytes_per_epoch=storage / args.epochs)
    write_manifest(partial, manifest)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    print(f"soft labels: {args.epochs} epochs x {N} images -> {out} ({storage} bytes, "
          f"{storage / args.epochs / N:.1f} bytes per image-epoch)")
    return manifest


class SoftLabelStore:
    """Reads a folder written by :func:`main`."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        m = read_manifest(self.root) if self.root.is_dir() else None
        if m is None:
            partial = self.root.with_name(self.root.name + ".partial")
            hint = f" (an unfinished run is in {partial}; run relabel again to finish it)" if partial.exists() else ""
            raise UserError(f"--soft-label-dir {self.root}: no soft labels found{hint}")
        if m.get("stage") != STAGE or not m.get("complete"):
            raise UserError(f"--soft-label-dir {self.root}: not a complete relabel_eval.relabel output")
        self.manifest = m
        self.epochs = int(m["epochs"])
        self.num_classes = int(m["num_classes"])

    def check(self, data: DistilledSet) -> None:
        """The soft labels must belong to exactly these images, in this order."""
        check_same_classes(self.manifest["classes"], data.classes, f"soft labels {self.root}", "the distilled set")
        if list(self.manifest["files"]) != list(data.files):
            stored = self.manifest["files"]
            if len(stored) != len(data.files):
                raise UserError(f"--soft-label-dir {self.root} was made for {len(stored)} images but the distilled "
                                f"set has {len(data.files)} (check --ipc)")
            i = next(i for i, (a, b) in enumerate(zip(stored, data.files)) if a != b)
            raise UserError(f"--soft-label-dir {self.root} was made for other images: {stored[i]} vs {data.files[i]}")

    def load(self, epoch: int) -> tuple[EpochPlan, torch.Tensor]:
        """Epoch plan and full fp32 logit rows (top-k stores: -inf outside the top k)."""
        path = epoch_file(self.root, epoch)
        if not path.is_file():
            raise UserError(f"{path}: soft-label file missing")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "logits" in state:
            logits = state["logits"].float()
        else:
            logits = topk_to_logits(state["topk_values"], state["topk_indices"], self.num_classes)
        return EpochPlan.from_state(state["plan"]), logits


if __name__ == "__main__":
    from common.errors import run_cli

    sys.exit(run_cli(main))
