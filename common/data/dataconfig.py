"""One data configuration for every stage: input size, mean/std, class list, interpolation.

Modelled on timm's ``resolve_data_config``: each value comes from the first source that
has it, in this order:

1. an explicit flag (``--input-size``);
2. the checkpoint's meta (``meta["input_size"]``, ``meta["mean"]``, ``meta["classes"]``, ...);
3. the dataset registry (``common.data.datasets``: the size for the architecture, the
   dataset's mean/std);
4. the images themselves (the shorter side of the first image, for custom data).

There is no silent default: when no source gives an input size the stage stops with one
line asking for ``--input-size``. ``DataConfig.source`` says where each value came from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from common.cli.errors import UserError
from common.data.datasets import DatasetSpec

DEFAULT_INTERPOLATION = "bilinear"  # torchvision's Resize / RandomResizedCrop default


@dataclass(frozen=True)
class DataConfig:
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None
    interpolation: str = DEFAULT_INTERPOLATION
    source: dict[str, str] = field(default_factory=dict, compare=False)


def resolve_data_config(spec: DatasetSpec, arch: str | None = None, input_size: int | None = None,
                        meta: dict[str, Any] | None = None, image_root: str | os.PathLike | None = None,
                        classes: Sequence[str] | None = None, flag: str = "--input-size",
                        skip_corrupt: bool = False) -> DataConfig:
    """The data configuration from (flag, checkpoint meta, dataset registry, images), first source wins.

    ``classes`` are the data's class folders, used when the checkpoint records none.
    ``image_root`` (an ImageFolder) is read only when no other source gives the size (``skip_corrupt``:
    past unreadable images, as ``squeeze --skip-corrupt``).
    """
    meta = meta or {}
    source: dict[str, str] = {}
    if input_size:
        size, source["input_size"] = int(input_size), flag
    elif meta.get("input_size"):
        size, source["input_size"] = int(meta["input_size"]), "checkpoint"
    elif spec.default_input_size(arch):
        size, source["input_size"] = int(spec.default_input_size(arch)), f"dataset {spec.name}"
    elif image_root is not None:
        from common.data.imagefolder import infer_input_size  # reads one image

        size, source["input_size"] = infer_input_size(image_root, skip_corrupt=skip_corrupt), "images"
    else:
        raise UserError(f"{flag} is required: neither the checkpoint nor --dataset {spec.name} gives an input size")
    stats = {}
    for key in ("mean", "std"):
        if meta.get(key) is not None:
            stats[key], source[key] = tuple(float(v) for v in meta[key]), "checkpoint"
        else:
            stats[key], source[key] = tuple(float(v) for v in getattr(spec, key)), f"dataset {spec.name}"
    if meta.get("classes"):
        names, source["classes"] = tuple(meta["classes"]), "checkpoint"
    elif classes is not None:
        names, source["classes"] = tuple(classes), "data"
    else:
        names = None
    interpolation = meta.get("interpolation") or DEFAULT_INTERPOLATION
    return DataConfig(size, stats["mean"], stats["std"], names, interpolation, source)
