"""FKD-style soft labels: store each epoch's augmentation and the teacher's logits, replay them later.

``python -m relabel_eval.relabel --syn-data-path DIR --teacher-path CKPT --epochs E --output-dir OUT [--topk K]``
writes ``OUT/epoch_0000.pt ...``, one file per epoch: the epoch plan (image order,
RandomResizedCrop boxes, flips, per-image RandAugment/erasing seeds, per-batch mix
permutation, lambda and CutMix box) and the teacher's logits on the mixed batches in
fp16, row k belonging to image ``order[k]`` (optionally only the top-k logits and
their class indices). ``python -m relabel_eval --label-mode fkd --soft-label-dir OUT``
then trains students without the teacher. The plan is the one an online run with the
same ``--seed`` draws, so replay and online training see identical batches.

``--label-keep F`` (LPLD's label pruning) keeps ``floor(F x epochs x batches)`` of the (epoch, batch)
records, drawn with the ``--seed`` generator, and stores only them, in a compact record layout
(per image: index int32, crop box 4 x int16, flip bool, augmentation seed int32, mixing partner int16;
per record: lambda float64, CutMix box 4 x int16, batch index int32; then the labels: C fp16 logits,
or K fp16 values + K int16 indices with ``--topk K``); the teacher runs on the kept batches only.
``python -m relabel_eval --label-mode fkd`` then draws each epoch's batches with replacement from the
kept records (as LPLD's ``EpochBatchSampler``). The manifest records the label bytes, the records
and the projection of the same settings to ImageNet-1K.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("relabel_eval.args:relabel_parser", "relabel_eval.relabel"))

import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
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
    teacher_inputs,
    teacher_logits,
    teacher_summary,
    warn_ignored,
)
from relabel_eval.data import DistilledSet
from relabel_eval.mix import topk_to_logits
from relabel_eval.plan import EpochPlan, make_epoch_plan
from relabel_eval.protocol import auto_batch_size

STAGE = "relabel_eval.relabel"
# Arguments that do not change the stored labels (besides common.run.state.NOT_RESULT): the student
# only picks the batch size, which is part of the fingerprint itself.
NOT_RESULT = {"output_dir", "stud_name", "wandb_api_key", "wandb_project"}


get_args_parser = relabel_parser  # torch-free, in relabel_eval.args (python -m answers before torch is imported)


def epoch_file(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:04d}.pt"


# ----------------------------------------------------------------------------- label pruning (LPLD) and storage

RECORD_META_BYTES = 8 + 4 * 2 + 4     # per record: lambda (float64), CutMix box (4 x int16), batch index (int32)
IMAGE_META_BYTES = 4 + 4 * 2 + 1 + 4 + 2  # per image: index, crop box, flip, augmentation seed, mixing partner
_KEEP_TAG = 0x4C504C44   # "LPLD": the stream that picks the kept records (relabel)
_DRAW_TAG = 0x44524157   # "DRAW": the stream that draws an epoch's batches from them (training)


def label_bytes_per_image(num_classes: int, topk: int) -> int:
    """Bytes of one image's label: C fp16 logits, or K fp16 values + K int16 class indices."""
    return topk * (2 + 2) if topk else num_classes * 2


def storage_formula(records: int, images: int, num_classes: int, topk: int) -> int:
    """Bytes of the compact record layout: per record its mixing, per image its crop/flip/seed/partner + label."""
    return records * RECORD_META_BYTES + images * (IMAGE_META_BYTES + label_bytes_per_image(num_classes, topk))


def kept_count(total: int, keep: float) -> int:
    """LPLD's ``int(E x B x (1 - r))`` with ``keep = 1 - r``, at least one record."""
    return max(1, min(total, math.floor(total * keep + 1e-9)))


def kept_records(seed: int, epochs: int, batches: int, keep: float) -> dict[int, np.ndarray]:
    """Per epoch, the sorted batch indices kept (a seeded choice without replacement over all records)."""
    total = epochs * batches
    rng = np.random.default_rng([int(seed), _KEEP_TAG])
    chosen = np.sort(rng.choice(total, kept_count(total, keep), replace=False))
    return {e: chosen[chosen // batches == e] % batches for e in range(epochs)}


def imagenet_projection(ipc: int, epochs: int, keep: float, topk: int) -> dict:
    """The same settings on ImageNet-1K (1000 classes, DELT's batch table): records and bytes."""
    n = 1000 * int(ipc)
    bs = auto_batch_size(ipc, 1000, "imagenet")
    batches = math.ceil(n / bs)
    records = kept_count(epochs * batches, keep) if keep < 1 else epochs * batches
    images = records * bs if n % bs == 0 else None
    if images is None:  # a short last batch per epoch: count it in proportion
        images = round(records * n / batches)
    total = storage_formula(records, images, 1000, topk)
    return {"ipc": int(ipc), "epochs": int(epochs), "batch_size": bs, "records": records, "images": images,
            "bytes": total, "gb": total / 1e9}


def _small_int(t, what: str) -> torch.Tensor:
    if t.numel() and int(t.abs().max()) > 32767:
        raise UserError(f"{what} above 32767 cannot be stored in the pruned layout (int16); use --label-keep 1")
    return t.to(torch.int16)


def record_state(epoch: int, plan: EpochPlan, kept: np.ndarray, logits: torch.Tensor, topk: int) -> dict:
    """The kept records of one epoch (``plan`` is the epoch's sub-plan of them, ``logits`` its rows)."""
    st = {"epoch": epoch, "format": "records", "batches": torch.from_numpy(np.asarray(kept, dtype=np.int32)),
          "index": torch.from_numpy(plan.order.astype(np.int32)),
          "crops": _small_int(torch.from_numpy(plan.crops.astype(np.int64)), "an image side"),
          "flips": torch.from_numpy(plan.flips.astype(np.bool_)),
          "seeds": torch.from_numpy(plan.seeds.astype(np.int32)),
          "perms": _small_int(torch.from_numpy(plan.perms.astype(np.int64)), "a batch size"),
          "lams": torch.from_numpy(plan.lams.astype(np.float64)),
          "boxes": _small_int(torch.from_numpy(plan.boxes.astype(np.int64)), "an input size")}
    st.update(label_tensors(logits, topk))
    return st


def label_tensors(logits: torch.Tensor, topk: int) -> dict:
    C = logits.shape[1]
    if not topk:
        return {"logits": logits.half()}
    values, indices = logits.topk(topk, dim=1)
    return {"topk_values": values.half(), "topk_indices": indices.to(torch.int16 if C <= 32767 else torch.int32)}


def tensor_bytes(state: dict) -> int:
    """Bytes of the tensors of a stored file (what the storage formula counts)."""
    return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))


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
    if args.label_keep < 1 and common.input_size > 32767:
        raise UserError(f"--label-keep: input size {common.input_size} does not fit the pruned layout (int16)")
    fp = fingerprint(args, NOT_RESULT, batch_size=batch_size, aug=common.aug.to_dict(), files=len(common.data))
    done = read_manifest(out) if out.is_dir() else None
    if done and done.get("stage") == STAGE and done.get("complete") and done.get("fingerprint") == fp \
            and not args.restart:
        print(f"{out}: soft labels already complete ({done['storage_bytes']} bytes); nothing to do", file=sys.stderr)
        return done
    run = RunState(out, STAGE, fp, restart=args.restart)
    partial = run.path("work")  # becomes the output folder when every epoch is stored
    manifest = build_manifest(
        STAGE, args, inputs=teacher_inputs(args), fingerprint=fp, complete=False,
        classes=common.data.classes, files=common.data.files, num_images=len(common.data), num_classes=C,
        ipc=common.data.ipc, epochs=args.epochs, batch_size=batch_size, batch_size_source=bs_source,
        seed=args.seed, protocol=args.protocol, aug=common.aug.to_dict(), input_size=common.input_size,
        mean=list(common.mean), std=list(common.std), teacher_arch=common.teacher_meta["arch"], topk=args.topk,
        logits_dtype="float16", teacher=teacher_summary(args),
        label_keep=args.label_keep, label_format="records" if args.label_keep < 1 else "epochs")

    maker = BatchMaker(common)
    N = len(common.data)
    batches = math.ceil(N / batch_size)
    keep = kept_records(args.seed, args.epochs, batches, args.label_keep) if args.label_keep < 1 else None
    todo = [e for e in range(args.epochs) if not epoch_file(partial, e).exists()]
    if len(todo) < args.epochs:
        print(f"resuming: {args.epochs - len(todo)} of {args.epochs} epoch files already in {partial}",
              file=sys.stderr)
    with run.running():  # a failure before the first epoch file leaves no state behind
        partial.mkdir(exist_ok=True)
        for epoch in tqdm(todo, desc="relabel epochs"):
            plan = make_epoch_plan(args.seed, epoch, common.data.sizes, batch_size, common.aug)
            if keep is not None:  # only the kept records: the teacher runs on those batches alone
                plan = plan.subset(keep[epoch])
            logits = torch.empty(len(plan), C, dtype=torch.float32)
            for b, xm, _, _ in maker.batches(plan):
                logits[plan.batch_slice(b)] = teacher_logits(common.teacher, xm, common.device, common.amp).cpu()
            if keep is not None:
                state = record_state(epoch, plan, keep[epoch], logits, args.topk)
            else:
                state = {"epoch": epoch, "plan": plan.to_state(), **label_tensors(logits, args.topk)}
            atomic_torch_save(state, epoch_file(partial, epoch))

    storage = sum(epoch_file(partial, e).stat().st_size for e in range(args.epochs))
    records = sum(len(k) for k in keep.values()) if keep is not None else args.epochs * batches
    images = (sum(min(batch_size, N - b * batch_size) for k in keep.values() for b in k.tolist())
              if keep is not None else args.epochs * N)
    label_bytes = storage_formula(records, images, C, args.topk)
    projection = {str(ipc): imagenet_projection(ipc, args.epochs, args.label_keep, args.topk)
                  for ipc in sorted({int(common.data.ipc), 10, 50})}
    manifest.update(complete=True, storage_bytes=storage, storage_bytes_per_epoch=storage / args.epochs,
                    batches_per_epoch=batches, records=records, records_total=args.epochs * batches,
                    record_images=images, label_bytes=label_bytes, label_bytes_per_record=label_bytes / records,
                    label_bytes_formula=f"records x {RECORD_META_BYTES} + images x ({IMAGE_META_BYTES} + "
                                        + (f"{args.topk} x (2 + 2))" if args.topk else f"{C} x 2)"),
                    imagenet1k_projection=projection)
    write_manifest(partial, manifest)
    replace_output(partial, out)  # our own output (or --force): swapped in complete
    run.finish()
    print(f"soft labels: {args.epochs} epochs x {N} images -> {out} ({storage} bytes on disk, "
          f"{storage / args.epochs / N:.1f} bytes per image-epoch)")
    print(f"label storage: {records} of {args.epochs * batches} records (keep {args.label_keep:g}), {images} "
          f"image labels, {label_bytes / records:.0f} bytes per record, {label_bytes} bytes in all "
          f"({manifest['label_bytes_formula']})")
    for ipc, pr in projection.items():
        print(f"  ImageNet-1K at IPC {ipc}, {args.epochs} epochs, batch {pr['batch_size']}: {pr['records']} records, "
              f"{pr['bytes'] / 1e6:.1f} MB ({pr['gb']:.3f} GB)")
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
        self.pruned = m.get("label_format") == "records"
        self._pool: tuple[EpochPlan, dict, np.ndarray] | None = None

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

    def _read(self, epoch: int) -> dict:
        path = epoch_file(self.root, epoch)
        if not path.is_file():
            raise UserError(f"{path}: soft-label file missing")
        return torch.load(path, map_location="cpu", weights_only=True)

    def _logits(self, state: dict, rows=None) -> torch.Tensor:
        if "logits" in state:
            logits = state["logits"] if rows is None else state["logits"][rows]
            return logits.float()
        values, indices = state["topk_values"], state["topk_indices"]
        if rows is not None:
            values, indices = values[rows], indices[rows]
        return topk_to_logits(values, indices, self.num_classes)

    def load(self, epoch: int) -> tuple[EpochPlan, torch.Tensor]:
        """Epoch plan and full fp32 logit rows (top-k stores: -inf outside the top k).

        A pruned store (``--label-keep``): the kept records of that epoch, as a plan of those batches."""
        state = self._read(epoch)
        if state.get("format") == "records":
            return self._record_plan(state), self._logits(state)
        return EpochPlan.from_state(state["plan"]), self._logits(state)

    def _record_plan(self, st: dict) -> EpochPlan:
        bs, n = int(self.manifest["batch_size"]), len(self.manifest["files"])
        lens = [min(bs, n - int(b) * bs) for b in st["batches"].tolist()]
        bounds = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        return EpochPlan(order=st["index"].numpy().astype(np.int64), crops=st["crops"].numpy().astype(np.int64),
                         flips=st["flips"].numpy().astype(bool), seeds=st["seeds"].numpy().astype(np.int64),
                         batch_size=bs, mix_type=str(self.manifest["aug"]["mix_type"]),
                         perms=st["perms"].numpy().astype(np.int64), lams=st["lams"].numpy().astype(np.float64),
                         boxes=st["boxes"].numpy().astype(np.int64).reshape(-1, 4), bounds=bounds)

    def pool(self) -> tuple[EpochPlan, dict, np.ndarray]:
        """Every kept record of a pruned store: ``(plan of all records, label tensors, (epoch, batch) per record)``."""
        if self._pool is None:
            plans, labels, ids = [], [], []
            for e in range(self.epochs):
                st = self._read(e)
                if len(st["batches"]):
                    plans.append(self._record_plan(st))
                    labels.append({k: st[k] for k in ("logits", "topk_values", "topk_indices") if k in st})
                    ids += [(e, int(b)) for b in st["batches"].tolist()]
            offsets = np.cumsum([0] + [len(p) for p in plans[:-1]])
            bounds = np.concatenate([[0]] + [p.bounds[1:] + o for p, o in zip(plans, offsets)]).astype(np.int64)
            cat = {f: np.concatenate([getattr(p, f) for p in plans]) for f in
                   ("order", "crops", "flips", "seeds", "perms", "lams", "boxes")}
            plan = EpochPlan(batch_size=plans[0].batch_size, mix_type=plans[0].mix_type, bounds=bounds, **cat)
            tensors = {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]}
            self._pool = (plan, tensors, np.asarray(ids, dtype=np.int64).reshape(-1, 2))
        return self._pool

    def draw(self, seed: int, epoch: int) -> np.ndarray:
        """The pool records training epoch ``epoch`` of a student seeded ``seed`` uses: as many batches as
        an epoch has, drawn uniformly with replacement (LPLD's ``EpochBatchSampler``)."""
        plan, _, _ = self.pool()
        rng = np.random.default_rng([int(seed), int(epoch), _DRAW_TAG])
        return rng.integers(0, plan.num_batches, size=int(self.manifest["batches_per_epoch"]))

    def epoch(self, epoch: int, seed: int) -> tuple[EpochPlan, torch.Tensor]:
        """What training epoch ``epoch`` replays: the stored epoch, or (pruned) the records drawn for it."""
        if not self.pruned:
            return self.load(epoch)
        pool_plan, tensors, _ = self.pool()
        drawn = self.draw(seed, epoch)
        rows = np.concatenate([np.arange(pool_plan.bounds[r], pool_plan.bounds[r + 1]) for r in drawn])
        return pool_plan.subset(drawn), self._logits(tensors, torch.from_numpy(rows))
