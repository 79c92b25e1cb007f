"""Checkpoint IO, one format for the whole project.

A checkpoint is one dict saved with ``torch.save``: ``"model"`` holds the state dict
(the key RDED and SRe2L use, so theirs load too) and ``"meta"`` holds arch,
num_classes, input_size, mean, std, classes (ordered class folder names), dataset
and val_top1. Training checkpoints add ``optimizer``, ``lr_scheduler``, ``epoch``.

Loading always uses ``weights_only=True`` and accepts, from a local path:
ours, RDED-style ``{"model": sd}``, SRe2L-style ``{"state_dict": sd}`` and bare
torchvision weight files; ``module.`` (DataParallel) and ``_orig_mod.``
(torch.compile) prefixes are stripped, and torchvision's legacy DenseNet key names renamed.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from common.cli.errors import UserError
from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from common.run.atomic import atomic_torch_save
from common.run.safe_load import is_raw_pickle
from models.registry import build_model, canonical_arch

_PREFIXES = ("module.", "_orig_mod.")
# torchvision's DenseNet weight files (densenet121-a639ec97.pth, ...) keep the old layer names
# ``denselayerN.norm.1``; torchvision renames them to ``norm1`` when it loads them (densenet._load_state_dict)
_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with ``module.``/``_orig_mod.`` prefixes stripped and torchvision's legacy DenseNet
    key names (``denselayer1.norm.1.weight``) renamed as torchvision renames them (``denselayer1.norm1.weight``)."""
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        m = _LEGACY_DENSENET.match(k)
        if m:
            k = m.group(1) + m.group(2)
        out[k] = v
    return out


def make_meta(arch: str, num_classes: int, input_size: int, classes: Sequence[str] | None = None,
              dataset: str | None = None, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD, val_top1: float | None = None, **extra: Any) -> dict[str, Any]:
    meta = {"arch": canonical_arch(arch), "num_classes": int(num_classes), "input_size": int(input_size),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "classes": list(classes) if classes is not None else None, "dataset": dataset,
            "val_top1": val_top1}
    meta.update(extra)
    return meta


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any], **extra: Any) -> None:
    """Write ``{"model": state_dict, "meta": meta, **extra}`` atomically."""
    state = strip_prefixes({k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_torch_save({"model": state, "meta": meta, **extra}, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load any supported checkpoint as ``{"model": state_dict, "meta": meta-or-{}, ...}``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: keep errors one line
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = [ln.strip() for ln in text.splitlines()
                  if "global" in ln.lower() or "unsupported" in ln.lower() or "WeightsUnpickler error" in ln]
        if "global" in text.lower() or is_raw_pickle(path):  # pickled objects, not plain tensors: never executed
            why = (detail or ["unsupported content"])[-1][:120]
            raise UserError(f"{path}: refused as unsafe: not a weights-only checkpoint, it holds pickled Python "
                            f"objects that could run code when loaded ({why}); nothing from it was run; load only "
                            f"checkpoints of plain tensors (torch.save of a state_dict)") from None
        raise UserError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)") from None
    except Exception as exc:  # zip errors, truncated files, random bytes
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: checkpoint is a {type(obj).__name__}, expected a dict of tensors")
    extra: dict[str, Any] = {}
    if "model" in obj and isinstance(obj["model"], dict):
        sd, meta = obj["model"], obj.get("meta") or {}
        extra = {k: v for k, v in obj.items() if k not in ("model", "meta")}
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd, meta = obj["state_dict"], obj.get("meta") or {}
        extra = {k: v for k, v in obj.items() if k not in ("state_dict", "meta")}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, meta = obj, {}
    else:
        raise UserError(f"{path}: no state dict found (expected a 'model' or 'state_dict' key, or bare weights)")
    return {"model": strip_prefixes(sd), "meta": dict(meta), **extra}


def _classifier_weight(sd: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor] | None:
    for key in ("fc.weight", "classifier.weight", "head.weight", "classifier.1.weight",
                "classifier.6.weight", "classifier.3.weight", "heads.head.weight", "head.fc.weight"):
        if key in sd and sd[key].ndim == 2:
            return key, sd[key]
    twod = [(k, v) for k, v in sd.items() if v.ndim == 2 and k.endswith("weight")]
    return twod[-1] if twod else None


def checkpoint_num_classes(sd: dict[str, torch.Tensor]) -> int | None:
    found = _classifier_weight(sd)
    return int(found[1].shape[0]) if found else None


def infer_conv_input_size(arch: str, sd: dict[str, torch.Tensor], width: int = 128) -> int | None:
    """For ConvNet-D the classifier's fan-in fixes the input size: in = width * (s / 2^D)^2."""
    name = canonical_arch(arch)
    if not name.startswith("conv") or "classifier.weight" not in sd:
        return None
    depth = int(name[4])
    side = (sd["classifier.weight"].shape[1] // width) ** 0.5
    return int(round(side)) * 2 ** depth if side else None


def checkpoint_meta(path: str | os.PathLike, arch: str | None = None,
                    ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's meta for ``common.data.dataconfig.resolve_data_config``: as stored, plus the input
    size a ConvNet's weights fix (the classifier's fan-in) when the meta does not record it.
    ``ckpt``: the checkpoint already read (:func:`read_checkpoint`), so it is read once."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    meta = dict(ckpt["meta"])
    arch = arch or meta.get("arch")
    if not meta.get("input_size") and arch:
        meta["input_size"] = infer_conv_input_size(arch, ckpt["model"])
    return meta


def load_model(path: str | os.PathLike, arch: str | None = None, classes: Sequence[str] | None = None,
               num_classes: int | None = None, input_size: int | None = None,
               device: torch.device | str = "cpu", eval_mode: bool = True,
               ckpt: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights.

    ``classes`` (the data's class folders) and ``num_classes`` are checked against
    the checkpoint: a classifier of another size, or a class list in another order,
    stops with a one-line error. Returns ``(model, meta)`` with meta completed
    (arch, num_classes, input_size, mean, std always present). ``ckpt``: the checkpoint already read
    (:func:`read_checkpoint`), so a command reads it once.
    """
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    sd, meta = ckpt["model"], dict(ckpt["meta"])
    meta_arch = meta.get("arch")
    if arch and meta_arch and canonical_arch(arch) != canonical_arch(meta_arch):
        raise UserError(f"{path}: checkpoint is a {meta_arch} but --arch-name says {arch}")
    arch = arch or meta_arch
    if not arch:
        raise UserError(f"{path}: checkpoint does not record its architecture; pass --arch-name")
    ck_classes = checkpoint_num_classes(sd)
    want = len(classes) if classes is not None else num_classes
    if want is not None and ck_classes is not None and ck_classes != want:
        raise UserError(f"{path}: checkpoint has a {ck_classes}-class classifier but the data has {want} classes")
    if classes is not None and meta.get("classes") and list(meta["classes"]) != list(classes):
        mc = list(meta["classes"])
        diff = next((i for i, (a, b) in enumerate(zip(mc, classes)) if a != b), None)
        detail = f"first difference at index {diff}: {classes[diff]} vs {mc[diff]}" if diff is not None else ""
        raise UserError(f"{path}: checkpoint's class list does not match the data's class folders ({detail}); "
                        f"class order decides the labels, so fix the data folders or use the matching teacher")
    n = ck_classes or want
    if n is None:
        raise UserError(f"{path}: cannot tell the number of classes")
    size = input_size or meta.get("input_size") or infer_conv_input_size(arch, sd)
    if not size:
        if canonical_arch(arch).startswith("conv"):  # a ConvNet's size is structural: never guessed
            raise UserError(f"{path}: the checkpoint does not record its input size; pass --input-size")
        size = 224  # torchvision models' weights fit any size; the stages resolve theirs (common.data.dataconfig)
    model = build_model(arch, n, size)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        missing, unexpected = [], []
        for line in str(exc).splitlines():
            if "Missing key" in line:
                missing.append(line.strip())
            if "Unexpected key" in line:
                unexpected.append(line.strip())
        first = (missing or unexpected or [str(exc).splitlines()[0]])[0][:200]
        raise UserError(f"{path}: weights do not fit a {arch} ({first})") from None
    meta.update({"arch": canonical_arch(arch), "num_classes": n, "input_size": int(size)})
    meta.setdefault("mean", list(IMAGENET_MEAN))
    meta.setdefault("std", list(IMAGENET_STD))
    if meta.get("mean") is None:
        meta["mean"] = list(IMAGENET_MEAN)
    if meta.get("std") is None:
        meta["std"] = list(IMAGENET_STD)
    model.to(device)
    if eval_mode:
        model.eval()
    return model, meta
