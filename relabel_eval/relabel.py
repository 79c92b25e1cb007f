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

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("relabel_eval.args:relabel_parser", "relabel_eval.relabel"))

import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from common.cli.errors import UserError
from common.cli.paths import check_output_dir
from common.data.imagefolder import check_same_classes
from common.run.atomic import atomic_torch_save
from common.run.manifest import build_manifest, read_manifest, write_manifest
from common.run.state import RunState, check_output, fingerprint, replace_output, state_dir
from models import check_arch
from relabel_eval.args import relabel_parser
from relabel_eval.context import (
    BatchMaker,
    batch_size_for,
    resolve_common,
    teacher_logits,
    warn_ignored,
)
from relabel_eval.data import DistilledSet
from relabel_eval.mix import topk_to_logits
from relabel_eval.plan import EpochPlan, make_epoch_plan

STAGE = "relabel_eval.relabel"
# Arguments that do not change the stored labels (besides common.run.state.NOT_RESULT): the student
# only picks the batch size, which is part of the fingerprint itself.
NOT_RESULT = {"output_dir", "stud_name", "wandb_api_key", "wandb_project"}


get_args_parser = relabel_parser  # torch-free, in relabel_eval.args (python -m answers before torch is imported)


def epoch_file(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:04d}.pt"


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    warn_ignored(args, also=("wandb_project", "wandb_api_key"))  # stored labels have no curves
    out = check_output_dir(args.output_dir, "--output-dir")
    check_output(out, STAGE, args.force, flag="--output-dir")
    check_output_dir(state_dir(out), "--output-dir")
    if args.stud_name:
        args.stud_name = check_arch(args.stud_name, "--stud-name")
    common = resolve_common(args, need_teacher=True)
    C = common.num_classes
    if args.topk < 0 or args.topk > C:
        raise UserError(f"--topk {args.topk}: must be between 0 and the class count {C}")
    batch_size, bs_source = batch_size_for(args, common, args.stud_name or common.teacher_meta["arch"])
    fp = fingerprint(args, NOT_RESULT, batch_size=batch_size, aug=common.aug.to_dict(), files=len(common.data))
    done = read_manifest(out) if out.is_dir() else None
    if done and done.get("stage") == STAGE and done.get("complete") and done.get("fingerprint") == fp \
            and not args.restart:
        print(f"{out}: soft labels already complete ({done['storage_bytes']} bytes); nothing to do", file=sys.stderr)
        return done
    run = RunState(out, STAGE, fp, restart=args.restart)
    partial = run.path("work")  # becomes the output folder when every epoch is stored
    manifest = build_manifest(
        STAGE, args, inputs={"teacher": args.teacher_path}, fingerprint=fp, complete=False,
        classes=common.data.classes, files=common.data.files, num_images=len(common.data), num_classes=C,
        ipc=common.data.ipc, epochs=args.epochs, batch_size=batch_size, batch_size_source=bs_source,
        seed=args.seed, protocol=args.protocol, aug=common.aug.to_dict(), input_size=common.input_size,
        mean=list(common.mean), std=list(common.std), teacher_arch=common.teacher_meta["arch"], topk=args.topk,
        logits_dtype="float16")

    maker = BatchMaker(common)
    N = len(common.data)
    todo = [e for e in range(args.epochs) if not epoch_file(partial, e).exists()]
    if len(todo) < args.epochs:
        print(f"resuming: {args.epochs - len(todo)} of {args.epochs} epoch files already in {partial}",
              file=sys.stderr)
    with run.running():  # a failure before the first epoch file leaves no state behind
        partial.mkdir(exist_ok=True)
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
    replace_output(partial, out)  # our own output (or --force): swapped in complete
    run.finish()
    print(f"soft labels: {args.epochs} epochs x {N} images -> {out} ({storage} bytes, "
          f"{storage / args.epochs / N:.1f} bytes per image-epoch)")
    return manifest


class SoftLabelStore:
    """Reads a folder written by :func:`main`."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        m = read_manifest(self.root) if self.root.is_dir() else None
        if m is None:
            partial = state_dir(self.root)
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
