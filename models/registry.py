"""Build any supported architecture by name.

- ``conv3``..``conv6`` (BatchNorm ConvNet), ``conv3_in``..``conv6_in`` (instance norm);
- ``resnet18_modified``, ``resnet50_modified``, ``resnet101_modified``: torchvision
  ResNets with a 3x3 stride-1 stem and no max-pool (CIFAR / Tiny-ImageNet);
- any torchvision classification model by name (``resnet18``, ``mobilenet_v2``,
  ``efficientnet_b0``, ``vgg11_bn``, ...), built without downloading weights.
"""
from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from common.cli.errors import UserError
from models.convnet import ConvNet

_CONV = re.compile(r"^conv(?:net)?(?:_?d)?([3-6])(?:_(in|bn|instance|batch))?$")
ALIASES = {
    "resnet18_mod": "resnet18_modified", "resnet18m": "resnet18_modified",
    "resnet50_mod": "resnet50_modified", "resnet101_mod": "resnet101_modified",
}


def canonical_arch(name: str) -> str:
    n = (name or "").strip().lower().replace("-", "_")
    n = ALIASES.get(n, n)
    m = _CONV.match(n)
    if m:
        norm = m.group(2)
        return f"conv{m.group(1)}" + ("_in" if norm in ("in", "instance") else "")
    return n


def torchvision_classifiers() -> list[str]:
    import torchvision  # the model zoo only when a torchvision name is asked for (it imports in seconds)

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_archs() -> list[str]:
    own = [f"conv{d}{s}" for s in ("", "_in") for d in range(3, 7)]
    own += ["resnet18_modified", "resnet50_modified", "resnet101_modified"]
    return own + torchvision_classifiers()


def _modify_resnet_stem(model: nn.Module) -> nn.Module:
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def check_arch(arch: str, flag: str = "--arch-name") -> str:
    """The canonical name of a buildable architecture, or a one-line error naming ``flag``."""
    name = canonical_arch(arch)
    if _CONV.match(name):
        return name
    if name.endswith("_modified"):
        if name[: -len("_modified")] in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
            return name
        raise UserError(f"{flag} {arch}: only ResNets have a _modified variant")
    if name in torchvision_classifiers():
        return name
    raise UserError(f"{flag} {arch}: unknown architecture; use conv3..conv6, conv3_in..conv6_in, "
                    f"resnet18_modified/resnet50_modified/resnet101_modified or a torchvision model name "
                    f"(e.g. resnet18, mobilenet_v2)")


def build_model(arch: str, num_classes: int, input_size: int = 32, flag: str = "--arch-name") -> nn.Module:
    """A fresh (randomly initialised) model; unknown names give a one-line error naming ``flag``."""
    name = check_arch(arch, flag)
    m = _CONV.match(name)
    if m:
        return ConvNet(num_classes, depth=int(m.group(1)), norm="instance" if name.endswith("_in") else "batch",
                       input_size=input_size)
    if name.endswith("_modified"):
        base = name[: -len("_modified")]
        import torchvision

        return _modify_resnet_stem(torchvision.models.get_model(base, weights=None, num_classes=num_classes))
    kwargs = {}
    if name.startswith("vit_") and input_size != 224:
        kwargs["image_size"] = input_size  # ViTs fix their patch grid at construction
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer (its input is the penultimate feature)."""
    for attr in ("classifier", "fc", "head", "heads"):
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Linear):
            return mod
        if isinstance(mod, nn.Sequential):
            linears = [m for m in mod.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__}: no linear classifier found")
    return linears[-1]


def classifier_name(model: nn.Module) -> str:
    layer = classifier_layer(model)
    return next(n for n, m in model.named_modules() if m is layer)


@contextlib.contextmanager
def capture_penultimate(model: nn.Module):
    """Within the block, every forward of ``model`` leaves its penultimate features (the input of the final
    linear layer, flattened to [N, D]) in the yielded dict under ``"f"``: features and logits of one pass."""
    captured: dict = {}
    handle = classifier_layer(model).register_forward_hook(
        lambda m, inp, out: captured.__setitem__("f", torch.flatten(inp[0], 1)))
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input of the final linear layer (global-average-pooled features for ResNets)."""
    with capture_penultimate(model) as captured:
        model(x)
    return captured["f"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def strip_classifier(model: nn.Module) -> tuple[nn.Module, int, str]:
    """The backbone of a classifier: the same module with its final linear layer replaced by identity.

    Returns ``(model, feature_dim, classifier_name)``. The backbone's state-dict keys are the
    full model's minus ``<classifier_name>.weight/.bias``, so a backbone trained on its own
    (self-supervised) loads into ``build_model(arch, n)`` with only the classifier missing.
    """
    name = classifier_name(model)
    layer = classifier_layer(model)
    parent = model
    *path, last = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    if isinstance(parent, nn.Sequential) and last.isdigit():
        parent[int(last)] = nn.Identity()
    else:
        setattr(parent, last, nn.Identity())
    return model, int(layer.in_features), name


def build_backbone(arch: str, input_size: int = 32) -> tuple[nn.Module, int, str]:
    """``build_model(arch)`` minus its classifier: ``(backbone, feature_dim, classifier_name)``."""
    return strip_classifier(build_model(arch, 1, input_size))
