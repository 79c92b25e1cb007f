"""Figures written as PNG: sample grids of ImageFolder trees.

    python -m common.viz DATA/train runs/syn --names real distilled --out grid.png
"""
from __future__ import annotations

if __name__ == "__main__":  # --help, argument errors and missing paths before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("common.args:viz_parser", "common.viz"))

import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from common.args import check_viz, viz_parser
from common.cli.errors import UserError
from common.cli.paths import check_output_file
from common.data.imagefolder import find_classes, list_class_files, load_rgb
from common.run.atomic import atomic_save_image

MARK = "delt-toolkit common.viz"  # PNG text chunk "Software": a grid this command wrote and may replace


def save_grid(grid: Image.Image, out: str | os.PathLike) -> None:
    """Write the grid atomically; a PNG carries :data:`MARK` so a later run may replace it."""
    kwargs = {}
    if Path(out).suffix.lower() == ".png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", MARK)
        kwargs["pnginfo"] = info
    atomic_save_image(grid, out, **kwargs)


def written_by_viz(path: Path) -> bool:
    """Whether ``path`` is a PNG this command wrote (its "Software" text chunk)."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == MARK
    except (OSError, ValueError):
        return False


def image_grid(rows: Sequence[Sequence[Image.Image]], cell: int = 64, pad: int = 2,
               labels: Sequence[str] | None = None, label_width: int = 0) -> Image.Image:
    """Rows of images -> one grid image (each image resized to ``cell`` x ``cell``)."""
    ncol = max((len(r) for r in rows), default=0)
    W = label_width + ncol * (cell + pad) + pad
    H = len(rows) * (cell + pad) + pad
    grid = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = pad + i * (cell + pad)
        if labels and label_width:
            draw.text((2, y + cell // 2 - 5), str(labels[i])[: max(1, label_width // 6)], fill=(0, 0, 0))
        for j, img in enumerate(row):
            grid.paste(img.resize((cell, cell), Image.NEAREST if img.width < cell else Image.BILINEAR),
                       (label_width + pad + j * (cell + pad), y))
    return grid


def folder_grid(root: str | os.PathLike, out_png: str | os.PathLike, per_class: int = 10,
                max_classes: int = 10, cell: int = 64, label: bool = True) -> Path:
    """A PNG grid of the first ``per_class`` images of the first ``max_classes`` classes."""
    root = Path(root)
    classes = find_classes(root)[:max_classes]
    rows = [[load_rgb(root / c / f) for f in list_class_files(root / c)[:per_class]] for c in classes]
    grid = image_grid(rows, cell=cell, labels=classes if label else None, label_width=90 if label else 0)
    save_grid(grid, out_png)
    return Path(out_png)


def sets_grid(roots: list[str | os.PathLike], out_png: str | os.PathLike, names: list[str] | None = None,
              per_class: int = 10, max_classes: int = 10, cell: int = 32) -> Path:
    """One PNG comparing several ImageFolder sets: for each set, one row per class (titled by set name)."""
    rows, labels = [], []
    for k, root in enumerate(roots):
        root = Path(root)
        name = names[k] if names and k < len(names) else root.name
        for c in find_classes(root)[:max_classes]:
            rows.append([load_rgb(root / c / f) for f in list_class_files(root / c)[:per_class]])
            labels.append(f"{name}: {c}")
    grid = image_grid(rows, cell=cell, labels=labels, label_width=150)
    save_grid(grid, out_png)
    return Path(out_png)


get_args_parser = viz_parser  # torch-free, in common.args


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    check_viz(args)
    out = check_output_file(args.out, "--out")
    if (out.exists() or out.is_symlink()) and not args.force and not written_by_viz(out):
        raise UserError(f"--out {out} exists and was not written by common.viz; choose another path, or pass "
                        f"--force to replace it")
    if args.names and len(args.names) != len(args.roots):
        raise UserError(f"--names: {len(args.names)} name(s) for {len(args.roots)} root(s); give one each")
    for root in args.roots:  # every image decodes before anything is written
        find_classes(Path(root))
    return sets_grid(args.roots, out, args.names, args.per_class, args.max_classes, args.cell)
