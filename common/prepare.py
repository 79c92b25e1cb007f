"""Write ImageFolder trees (``OUT/train/<class>/...`` and ``OUT/val/<class>/...``).

    python -m common.prepare shapes --out data/shapes
    python -m common.prepare cifar10 --out data/cifar10 [--download-root ~/.cache/cifar]
    python -m common.prepare cifar100 --out data/cifar100
    python -m common.prepare tinyimagenet --src tiny-imagenet-200.zip --out data/tinyimagenet
    python -m common.prepare imagenet-1k --train-src /data/ILSVRC2012_img_train.tar --val-src /data/val_flat \
        --devkit /data/ILSVRC2012_devkit_t12.tar.gz --out data/imagenet-1k
    python -m common.prepare imagenet-nette --imagenet-root data/imagenet-1k --out data/imagenette

``shapes`` is generated offline in seconds. CIFAR uses torchvision's downloader.
Tiny-ImageNet is read from the official zip (or its extracted folder) and val is
regrouped by ``val_annotations.txt``. ImageNet-1K's flat val folder is regrouped into class
folders by the devkit (``common.data.imagenet``; symlinks unless ``--copy``). The ImageNet subsets (imagenet-nette,
imagenet-woof, imagenet-10, imagenet-100) are cut from a local ImageNet-1K tree
(``ROOT/train/<wnid>``, ``ROOT/val/<wnid>``) by the wnid lists shipped in
``common/data/class_lists`` (symlinks by default, ``--copy`` to copy). Every output is
built under a temporary name and renamed when complete.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help, argument errors and missing paths before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("common.args:prepare_parser", "common.prepare"))

import sys
import zipfile
from pathlib import Path

from tqdm import tqdm

from common.args import check_prepare, prepare_parser
from common.cli.errors import UserError
from common.cli.paths import check_output_dir
from common.data.datasets import IMAGENET_SUBSETS, get_dataset
from common.data.imagefolder import is_image_file, list_class_files
from common.data.imagenet import place_file, prepare_imagenet1k
from common.run.atomic import atomic_dir
from common.run.manifest import build_manifest, write_manifest

SUBSETS = IMAGENET_SUBSETS


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: output exists; pass --force to replace it")


def prepare_shapes(out: Path, train_per_class: int, val_per_class: int, seed: int, force: bool) -> Path:
    from common.data.shapes import generate

    _check_out(out, force)
    with atomic_dir(out) as tmp:
        generate(tmp, train_per_class, val_per_class, seed)
        write_manifest(tmp, build_manifest("prepare", {"dataset": "shapes", "train_per_class": train_per_class,
                                                       "val_per_class": val_per_class, "seed": seed}))
    return out


def prepare_cifar(name: str, out: Path, download_root: Path, force: bool) -> Path:
    import torchvision

    _check_out(out, force)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        splits = {"train": cls(str(download_root), train=True, download=True),
                  "val": cls(str(download_root), train=False, download=True)}
    except Exception as exc:  # URLError, socket errors, checksum failures
        raise UserError(f"{name}: download to {download_root} failed ({type(exc).__name__}: {exc}); "
                        f"check the network, or put cifar-*-python.tar.gz in {download_root}") from None
    with atomic_dir(out) as tmp:
        for split, ds in splits.items():
            # folder names keep torchvision's class order when sorted: '00_airplane', '01_automobile', ...
            names = [f"{i:02d}_{c.replace(' ', '_')}" if len(ds.classes) <= 100 else str(i)
                     for i, c in enumerate(ds.classes)]
            counters = [0] * len(names)
            for img, label in tqdm(zip(ds.data, ds.targets), total=len(ds.targets), desc=f"{name} {split}"):
                d = tmp / split / names[label]
                d.mkdir(parents=True, exist_ok=True)
                from PIL import Image

                Image.fromarray(img).save(d / f"{split}_{counters[label]:05d}.png")
                counters[label] += 1
        write_manifest(tmp, build_manifest("prepare", {"dataset": name, "source": str(download_root)}))
    return out


def _tiny_reader(src: Path):
    """(list of member names, open(name) -> bytes) for the official zip or its extracted folder."""
    if src.is_file() and zipfile.is_zipfile(src):
        zf = zipfile.ZipFile(src)
        names = [n for n in zf.namelist() if not n.endswith("/")]
        return names, zf.read
    if src.is_dir():
        names = [str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()]
        return names, lambda n: (src / n).read_bytes()
    raise UserError(f"{src}: --src must be tiny-imagenet-200.zip or its extracted folder")


def prepare_tinyimagenet(src: Path, out: Path, force: bool) -> Path:
    _check_out(out, force)
    names, read = _tiny_reader(src)
    # the zip holds one top folder (tiny-imagenet-200/); find it from wnids.txt
    wnid_files = [n for n in names if n.endswith("wnids.txt")]
    if not wnid_files:
        raise UserError(f"{src}: no wnids.txt found; is this the official Tiny-ImageNet layout?")
    top = wnid_files[0][: -len("wnids.txt")]
    wnids = sorted(read(wnid_files[0]).decode().split())
    ann_name = top + "val/val_annotations.txt"
    if ann_name not in names:
        raise UserError(f"{src}: {ann_name} missing; cannot regroup val images by class")
    val_label = {}
    for line in read(ann_name).decode().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            val_label[parts[0]] = parts[1]
    with atomic_dir(out) as tmp:
        for n in tqdm(names, desc="tinyimagenet", mininterval=1.0):
            rel = n[len(top):]
            parts = rel.split("/")
            base = parts[-1]
            if not is_image_file(base):
                continue  # *_boxes.txt, .DS_Store
            if parts[0] == "train" and len(parts) >= 3 and parts[1] in wnids:
                dest = tmp / "train" / parts[1] / base
            elif parts[0] == "val" and base in val_label:
                dest = tmp / "val" / val_label[base] / base
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read(n))
        for split in ("train", "val"):
            for w in wnids:
                (tmp / split / w).mkdir(parents=True, exist_ok=True)
        missing = [w for w in wnids if not list_class_files(tmp / "val" / w)]
        if missing:
            raise UserError(f"{src}: val annotations give no images for {len(missing)} class(es), e.g. {missing[0]}")
        write_manifest(tmp, build_manifest("prepare", {"dataset": "tinyimagenet", "source": str(src)},
                                           classes=wnids))
    return out


def prepare_imagenet_subset(name: str, imagenet_root: Path, out: Path, copy: bool, force: bool) -> Path:
    spec = get_dataset(name)
    wnids = spec.wnids()
    _check_out(out, force)
    for split in ("train", "val"):
        if not (imagenet_root / split).is_dir():
            raise UserError(f"{imagenet_root}: expected an ImageNet-1K tree with {split}/<wnid>/ folders")
    missing = [w for w in wnids if not (imagenet_root / "train" / w).is_dir()]
    if missing:
        raise UserError(f"{imagenet_root / 'train'}: missing {len(missing)} wnid folder(s) of {name}, "
                        f"e.g. {missing[0]}")
    with atomic_dir(out) as tmp:
        for split in ("train", "val"):
            for w in tqdm(wnids, desc=f"{name} {split}"):
                src_dir = (imagenet_root / split / w).resolve()
                dest = tmp / split / w
                dest.mkdir(parents=True)
                for f in list_class_files(src_dir):
                    place_file(src_dir / f, dest / f, copy)
        write_manifest(tmp, build_manifest("prepare", {"dataset": spec.name, "source": str(imagenet_root),
                                                       "copy": copy}, classes=sorted(wnids)))
    return out


get_args_parser = prepare_parser  # torch-free, in common.args


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    check_prepare(args)
    out = check_output_dir(args.out, "--out")
    name = "tinyimagenet" if args.dataset == "tiny-imagenet" else args.dataset
    if name == "shapes":
        prepare_shapes(out, args.train_per_class, args.val_per_class, args.seed, args.force)
    elif name in ("cifar10", "cifar100"):
        prepare_cifar(name, out, Path(args.download_root), args.force)
    elif name == "tinyimagenet":
        prepare_tinyimagenet(Path(args.src), out, args.force)
    elif name == "imagenet-1k":
        _check_out(out, args.force)
        prepare_imagenet1k(Path(args.train_src), Path(args.val_src), Path(args.devkit), out, args.copy)
    else:
        prepare_imagenet_subset(name, Path(args.imagenet_root), out, args.copy, args.force)
    print(f"{name} written to {out}", file=sys.stderr)
    return out

