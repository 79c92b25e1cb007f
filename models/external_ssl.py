"""Self-supervised checkpoints from the released SSL code bases, mapped onto torchvision keys.

SC-DD recovers data from ResNet-50s pre-trained with MoCo v2, MoCo v3, SwAV and DINO.
Their released files store the backbone under different prefixes next to heads that
a classifier does not use. :func:`map_ssl_state_dict` finds the layout and returns the
backbone with plain torchvision keys (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.conv1.weight``, ...; no ``fc``):

======================  ===========================================  ==========================================
layout                  where the backbone is                        dropped (not part of the backbone)
======================  ===========================================  ==========================================
``mocov2`` (v1/v2)      ``[module.]encoder_q.*``                     ``encoder_q.fc.*`` (MLP head),
                                                                     ``encoder_k.*``, ``queue``, ``queue_ptr``
``mocov3``              ``[module.]base_encoder.*``                  ``base_encoder.fc.*`` / ``head.*``
                                                                     (projector), ``momentum_encoder.*``,
                                                                     ``predictor.*``
``swav``                ``[module.]*`` (torchvision names)           ``projection_head.*``, ``prototypes.*``
``dino``                ``[module.]backbone.*`` (training            ``head.*``, the ``student`` copy
                        checkpoint: its ``teacher`` entry), or the
                        released bare backbone (torchvision names,
                        no ``fc``)
``lincls``              a full torchvision model with ``fc``         nothing: ``fc.*`` is a released linear
                        (MoCo's ``main_lincls.py`` output)           classifier, returned separately
``lightly``             ``[module.]backbone.*`` with                 ``projection_head*.*``, ``*_momentum.*``
                        ``projection_head.*`` beside it
======================  ===========================================  ==========================================

Released linear classifiers (``--linear-path``) load from MoCo's ``lincls`` output
(``[module.]fc.weight``/``fc.bias``) and from DINO's / SwAV's ``eval_linear.py``
(``[module.]linear.weight``/``linear.bias``), both as ``fc.weight``/``fc.bias``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from common.cli.errors import UserError
from common.run.safe_load import safe_torch_load

EXPECTED = ("encoder_q.* (MoCo v1/v2), base_encoder.* (MoCo v3), backbone.* (DINO/lightly), "
            "conv1.weight + layer1..4.* with projection_head.*/prototypes.* (SwAV) or without (bare backbone), "
            "optionally under module.; DINO training checkpoints: a 'teacher' entry")


def _strip_module(sd: dict[str, Any]) -> dict[str, Any]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _take(sd: dict[str, Any], prefix: str, drop: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            k = k[len(prefix):]
            if not any(k == d.rstrip(".") or k.startswith(d) for d in drop):
                out[k] = v
    return out


def map_ssl_state_dict(sd: dict[str, Any], source: str = "checkpoint") -> tuple[dict[str, Any], str,
                                                                                 dict[str, Any] | None]:
    """``(backbone_sd, layout, classifier_sd_or_None)`` for a released SSL state dict.

    The backbone has torchvision keys without ``fc``; the classifier, when the file holds one
    (a linearly classified model), has ``weight``/``bias``. An unknown layout is a one-line
    :class:`UserError` that lists the layouts expected.
    """
    sd = {k: v for k, v in _strip_module(sd).items() if isinstance(v, torch.Tensor)}
    keys = list(sd)
    if any(k.startswith("encoder_q.") for k in keys):
        return _take(sd, "encoder_q.", ("fc.",)), "mocov2", None
    if any(k.startswith("base_encoder.") for k in keys):
        return _take(sd, "base_encoder.", ("fc.", "head.")), "mocov3", None
    if any(k.startswith("backbone.") for k in keys):
        layout = "lightly" if any(k.startswith("projection_head") for k in keys) else "dino"
        return _take(sd, "backbone.", ("fc.", "head.")), layout, None
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in keys):
        if any(k.startswith(("projection_head.", "prototypes.")) for k in keys):
            return _take(sd, "", ("projection_head.", "prototypes.", "fc.")), "swav", None
        if "fc.weight" in sd and sd["fc.weight"].ndim == 2:
            head = {"weight": sd["fc.weight"], "bias": sd["fc.bias"]} if "fc.bias" in sd else None
            return _take(sd, "", ("fc.",)), "lincls", head
        return dict(sd), "dino", None
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    raise UserError(f"{source}: unknown self-supervised checkpoint layout (keys: {shown or 'none'}); "
                    f"expected {EXPECTED}")


def _load_dict(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    # MoCo/DINO training checkpoints carry their argparse.Namespace: allow that plain record, nothing else
    obj = safe_torch_load(path, what="checkpoint", safe_globals=[argparse.Namespace])
    if not isinstance(obj, dict):
        raise UserError(f"{path}: checkpoint is a {type(obj).__name__}, expected a dict of tensors")
    return obj


def read_ssl_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], str, dict[str, Any] | None, dict]:
    """Read a released SSL file: ``(backbone_sd, layout, classifier_or_None, meta)``.

    Accepts the state dict bare or under ``state_dict`` / ``model`` / ``teacher`` (DINO's
    training checkpoint; its ``student`` is ignored). This project's own ``squeeze.ssl``
    output (``meta["teacher_kind"] == "ssl-backbone"``) is returned as it is, layout ``ours``.
    """
    path = Path(path)
    obj = _load_dict(path)
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    if meta.get("teacher_kind") == "ssl-backbone" and isinstance(obj.get("model"), dict):
        return dict(obj["model"]), "ours", None, dict(meta)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    backbone, layout, head = map_ssl_state_dict(obj, str(path))
    if not backbone:
        raise UserError(f"{path}: the {layout} layout holds no backbone weights; expected {EXPECTED}")
    return backbone, layout, head, dict(meta)


def read_linear_classifier(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A released linear classifier as ``{"weight", "bias"}``: MoCo ``fc.*`` or DINO/SwAV ``linear.*``."""
    path = Path(path)
    obj = _load_dict(path)
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = _strip_module(obj)
    for prefix in ("fc.", "linear.", "head.", "classifier."):
        if f"{prefix}weight" in sd and f"{prefix}bias" in sd and sd[f"{prefix}weight"].ndim == 2:
            return {"weight": sd[f"{prefix}weight"], "bias": sd[f"{prefix}bias"]}
    raise UserError(f"{path}: no linear classifier found (expected [module.]fc.weight/bias as MoCo's lincls "
                    f"writes, or [module.]linear.weight/bias as DINO's and SwAV's eval_linear write)")
