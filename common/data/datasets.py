"""The dataset registry: one place for class counts, input sizes and normalisation.

Every stage resolves ``--dataset`` here, so the same name means the same thing
everywhere (the released scripts spell Tiny-ImageNet three ways). The class count
of a run always comes from the data folder; a count that differs from the
registry's prints a warning (a subset, or the wrong folder) and suggests ``custom``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from common.cli.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SUBSETS = ("imagenet-nette", "imagenet-woof", "imagenet-10", "imagenet-100")  # cut from ImageNet-1K
CLASS_LIST_DIR = Path(__file__).resolve().parent / "class_lists"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int | None          # None: taken from the folder (custom)
    input_size: int | None           # default for ResNets / torchvision models
    conv_input_size: int | None      # default for ConvNet-D models
    val_per_class: int | None
    family: str                      # cifar | tiny | imagenet | custom: selects recipes and tables
    class_list: str | None = None    # file in common/data/class_lists with the wnids
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""

    def default_input_size(self, arch: str | None = None) -> int | None:
        """Input size for an architecture: conv models on ImageNet-scale data use smaller inputs."""
        if arch and arch.lower().startswith("conv") and self.conv_input_size:
            if self.name in ("imagenet-nette", "imagenet-woof", "imagenet-10", "imagenet-100"):
                depth = int("".join(ch for ch in arch if ch.isdigit()) or 0)
                # 224, but 128 for conv5/conv6 on the ImageNet subsets (the released scripts' sizes)
                return 128 if depth >= 5 else self.input_size
            return self.conv_input_size
        return self.input_size

    def wnids(self) -> list[str] | None:
        if not self.class_list:
            return None
        return [line.split("\t")[0] for line in read_class_list(self.class_list)]


def read_class_list(name: str) -> list[str]:
    path = CLASS_LIST_DIR / name
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("cifar10", 10, 32, 32, 1000, "cifar", description="CIFAR-10, 32x32"),
    DatasetSpec("cifar100", 100, 32, 32, 100, "cifar", description="CIFAR-100, 32x32"),
    DatasetSpec("tinyimagenet", 200, 64, 64, 50, "tiny", description="Tiny-ImageNet, 64x64, 200 classes"),
    DatasetSpec("imagenet-nette", 10, 224, 128, 50, "imagenet", "imagenette.txt", description="ImageNette"),
    DatasetSpec("imagenet-woof", 10, 224, 128, 50, "imagenet", "imagewoof.txt", description="ImageWoof"),
    DatasetSpec("imagenet-10", 10, 224, 128, 50, "imagenet", "imagenet10.txt", description="ImageNet-10"),
    DatasetSpec("imagenet-100", 100, 224, 128, 50, "imagenet", "imagenet100.txt", description="ImageNet-100"),
    DatasetSpec("imagenet-1k", 1000, 224, 64, 50, "imagenet", "imagenet1k_wnids.txt", description="ImageNet-1K"),
    DatasetSpec("shapes", 10, 32, 32, 100, "cifar", description="built-in generated shapes, 32x32"),
    DatasetSpec("custom", None, None, None, None, "custom", description="any ImageFolder; classes from the folder"),
]}

ALIASES = {
    "cifar-10": "cifar10", "cifar_10": "cifar10",
    "cifar-100": "cifar100", "cifar_100": "cifar100",
    "tiny-imagenet": "tinyimagenet", "tiny_imagenet": "tinyimagenet", "tiny": "tinyimagenet",
    "image-nette": "imagenet-nette", "imagenette": "imagenet-nette", "imagenet_nette": "imagenet-nette",
    "image-woof": "imagenet-woof", "imagewoof": "imagenet-woof", "imagenet_woof": "imagenet-woof",
    "imagenet10": "imagenet-10", "imagenet_10": "imagenet-10",
    "imagenet100": "imagenet-100", "imagenet_100": "imagenet-100",
    "imagenet-1K": "imagenet-1k", "imagenet1k": "imagenet-1k", "imagenet": "imagenet-1k", "imagenet_1k": "imagenet-1k",
}


def dataset_names() -> list[str]:
    return sorted(REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """Resolve a dataset name or one of the released scripts' spellings."""
    key = (name or "").strip()
    key = ALIASES.get(key, ALIASES.get(key.lower(), key.lower()))
    if key not in REGISTRY:
        raise UserError(f"--dataset {name}: unknown dataset; choose one of {', '.join(dataset_names())} "
                        f"(or one of the spellings {', '.join(sorted(ALIASES))})")
    return REGISTRY[key]


def check_class_count(spec: DatasetSpec, num_classes: int, root: str | Path) -> None:
    """Warn (one line) when the folder's class count differs from the registry's."""
    if spec.num_classes is not None and num_classes != spec.num_classes:
        print(f"warning: {root} has {num_classes} classes but --dataset {spec.name} has {spec.num_classes}; "
              f"using the {num_classes} classes found (use --dataset custom to silence this)", file=sys.stderr)
