"""ImageNet-1K (ILSVRC 2012) as the stages read it: ``OUT/train/<wnid>/`` and ``OUT/val/<wnid>/``.

The official downloads hold the training images in 1000 class folders (or a tar of 1000
per-class tars) but the 50,000 validation images in one flat folder; the devkit's
``data/meta.mat`` (ILSVRC2012_ID -> wnid of the 1000 leaf synsets) and
``data/ILSVRC2012_validation_ground_truth.txt`` (the ID of each val image, in file-name
order) regroup them, as ``torchvision.datasets.ImageNet`` does. Class index = sorted wnid,
the order every ImageNet checkpoint uses.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from tqdm import tqdm

from common.cli.errors import UserError
from common.data.datasets import get_dataset
from common.data.imagefolder import is_image_file
from common.run.atomic import atomic_dir
from common.run.manifest import build_manifest, write_manifest

DEVKIT_META = "data/meta.mat"
DEVKIT_VAL_GT = "data/ILSVRC2012_validation_ground_truth.txt"


def imagenet1k_wnids() -> list[str]:
    """The 1000 wnids shipped with the registry (``common/data/class_lists/imagenet1k_wnids.txt``)."""
    return get_dataset("imagenet-1k").wnids()


def _devkit_root(devkit: Path, tmp: Path) -> Path:
    """The folder holding ``data/meta.mat``: the devkit folder itself, or the archive extracted to ``tmp``."""
    if devkit.is_dir():
        roots = [devkit] + sorted(p for p in devkit.iterdir() if p.is_dir())
    else:
        try:
            with tarfile.open(devkit) as tar:
                tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name.endswith(
                    (DEVKIT_META, DEVKIT_VAL_GT))], filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise UserError(f"--devkit {devkit}: not a readable tar archive ({exc})") from None
        roots = [tmp] + sorted(p for p in tmp.iterdir() if p.is_dir())
    for r in roots:
        if (r / DEVKIT_META).is_file() and (r / DEVKIT_VAL_GT).is_file():
            return r
    raise UserError(f"--devkit {devkit}: no {DEVKIT_META} and {DEVKIT_VAL_GT}; give ILSVRC2012_devkit_t12.tar.gz "
                    f"or its extracted folder")


def parse_devkit(devkit: str | os.PathLike) -> tuple[dict[int, str], list[int]]:
    """``({ILSVRC2012_ID: wnid} of the 1000 leaf classes, [ID of each val image in file-name order])``."""
    import scipy.io

    with tempfile.TemporaryDirectory() as tmp:
        root = _devkit_root(Path(devkit), Path(tmp))
        try:
            synsets = scipy.io.loadmat(str(root / DEVKIT_META), squeeze_me=True)["synsets"]
            leaves = [s for s in synsets if int(s["num_children"]) == 0]
            id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise UserError(f"--devkit {devkit}: {DEVKIT_META} is not the ILSVRC 2012 synset table ({exc})") from None
        try:
            val_ids = [int(line) for line in (root / DEVKIT_VAL_GT).read_text().split()]
        except ValueError:
            raise UserError(f"--devkit {devkit}: {DEVKIT_VAL_GT} holds a line that is not a class ID") from None
    unknown = sorted(set(val_ids) - set(id_to_wnid))
    if unknown:
        raise UserError(f"--devkit {devkit}: the val ground truth names class ID {unknown[0]}, not in {DEVKIT_META}")
    return id_to_wnid, val_ids


def _val_images(val_src: Path) -> list[str]:
    if not val_src.is_dir():
        raise UserError(f"--val-src {val_src}: expected the folder of the 50,000 extracted ILSVRC2012_val_*.JPEG "
                        f"files (tar -xf ILSVRC2012_img_val.tar -C DIR)")
    return sorted(f.name for f in val_src.iterdir() if f.is_file() and is_image_file(f.name))


def place_file(src: Path, dest: Path, copy: bool) -> None:
    """``dest`` becomes a copy of ``src`` (``copy``) or a symlink to it (resolved)."""
    if copy:
        shutil.copy2(src, dest)
    else:
        os.symlink(src.resolve(), dest)


def _train_from_tar(train_tar: Path, out: Path, wnids: set[str]) -> None:
    """``ILSVRC2012_img_train.tar``: one ``<wnid>.tar`` per class, each of flat JPEGs."""
    try:
        with tarfile.open(train_tar) as outer:
            for m in tqdm(outer, desc="imagenet-1k train", unit="class", total=len(wnids)):
                wnid = Path(m.name).name.removesuffix(".tar")
                if not m.isfile() or wnid not in wnids:
                    continue
                dest = out / wnid
                dest.mkdir(exist_ok=True)
                with tarfile.open(fileobj=outer.extractfile(m)) as inner:
                    for im in inner:
                        name = Path(im.name).name  # flat: no member chooses its own folder
                        if im.isfile() and is_image_file(name):
                            (dest / name).write_bytes(inner.extractfile(im).read())
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"--train-src {train_tar}: not a readable ILSVRC2012_img_train.tar ({exc})") from None


def prepare_imagenet1k(train_src: Path, val_src: Path, devkit: Path, out: Path, copy: bool) -> Path:
    """Check every input, then write ``out/train/<wnid>`` and ``out/val/<wnid>`` (symlinks unless ``copy``)."""
    id_to_wnid, val_ids = parse_devkit(devkit)
    wnids = sorted(id_to_wnid.values())
    if wnids != sorted(imagenet1k_wnids()):
        raise UserError(f"--devkit {devkit}: its {len(wnids)} leaf classes are not ImageNet-1K's 1000 wnids")
    val_files = _val_images(val_src)
    if len(val_files) != len(val_ids):
        raise UserError(f"--val-src {val_src}: {len(val_files)} images, but the devkit's ground truth lists "
                        f"{len(val_ids)}; extract the whole ILSVRC2012_img_val.tar there")
    train_is_tar = train_src.is_file()
    if not train_is_tar:
        missing = [w for w in wnids if not (train_src / w).is_dir()]
        if missing:
            raise UserError(f"--train-src {train_src}: no folder for {len(missing)} class(es), e.g. {missing[0]}; "
                            f"give the folder of the 1000 <wnid>/ class folders or ILSVRC2012_img_train.tar")
    with atomic_dir(out) as tmp:
        for split in ("train", "val"):
            for w in wnids:
                (tmp / split / w).mkdir(parents=True)
        if train_is_tar:
            _train_from_tar(train_src, tmp / "train", set(wnids))
        else:
            for w in tqdm(wnids, desc="imagenet-1k train", unit="class"):
                for f in sorted((train_src / w).iterdir()):
                    if f.is_file() and is_image_file(f.name):
                        place_file(f, tmp / "train" / w / f.name, copy)
        for name, cid in tqdm(list(zip(val_files, val_ids)), desc="imagenet-1k val", unit="img", mininterval=1.0):
            place_file(val_src / name, tmp / "val" / id_to_wnid[cid] / name, copy)
        empty = [w for w in wnids if not any((tmp / "train" / w).iterdir())]
        if empty:
            raise UserError(f"--train-src {train_src}: no training images for {len(empty)} class(es), e.g. {empty[0]}")
        write_manifest(tmp, build_manifest("prepare", {"dataset": "imagenet-1k", "train_src": str(train_src),
                                                       "val_src": str(val_src), "devkit": str(devkit), "copy": copy},
                                           classes=wnids))
    return out
