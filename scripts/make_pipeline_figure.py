"""Draw imgs/pipeline.png: the four stages, the files between them and which path each method takes."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

STAGES = [("squeeze", "train a teacher\n(SGD, cosine, resume)"),
          ("rank_select", "score real images,\npick medium / RDED patches"),
          ("recover", "EarlyLate BN matching\n(DELT; SRe2L, CDA)"),
          ("relabel_eval", "soft-label KD student,\nbaselines, diversity")]
FILES = ["train/ + val/\n(ImageFolder)", "teacher.pth\n(model + meta)", "ranking.csv\ninit/ (IPC per class)",
         "distilled/\n+ manifest.json", "results.json/.csv\ndiversity.json"]
METHODS = [("DELT", [1, 1, 1, 1], "#1f77b4"), ("SRe2L / CDA", [1, 0, 1, 1], "#ff7f0e"),
           ("RDED", [1, 1, 0, 1], "#2ca02c")]


def main(out: str = "imgs/pipeline.png") -> Path:
    fig, ax = plt.subplots(figsize=(13, 4.6))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 4.6)
    ax.axis("off")
    xs = [0.3 + 3.1 * i for i in range(5)]
    for i, label in enumerate(FILES):
        ax.text(xs[i] + 0.55, 3.85, label, ha="center", va="center", fontsize=8.5, family="monospace",
                bbox=dict(boxstyle="round,pad=0.3", fc="#f4f4f4", ec="#999999"))
    for i, (name, desc) in enumerate(STAGES):
        x = xs[i] + 1.25
        ax.add_patch(FancyBboxPatch((x, 2.2), 1.9, 0.95, boxstyle="round,pad=0.05", fc="#dde8f6", ec="#2b5c9e"))
        ax.text(x + 0.95, 2.88, f"python -m {name}", ha="center", fontsize=9, weight="bold", family="monospace")
        ax.text(x + 0.95, 2.47, desc, ha="center", va="center", fontsize=8)
        ax.add_patch(FancyArrowPatch((xs[i] + 0.9, 3.55), (x + 0.3, 3.15), arrowstyle="-|>", mutation_scale=12))
        ax.add_patch(FancyArrowPatch((x + 1.6, 3.15), (xs[i + 1] + 0.2, 3.55), arrowstyle="-|>",
                                     mutation_scale=12))
    for k, (method, uses, color) in enumerate(METHODS):
        y = 1.5 - 0.5 * k
        ax.text(0.3, y, method, fontsize=10, weight="bold", color=color, va="center")
        for i, used in enumerate(uses):
            x = xs[i] + 1.25
            ax.add_patch(FancyBboxPatch((x + 0.2, y - 0.15), 1.5, 0.3, boxstyle="round,pad=0.02",
                                        fc=color if used else "white", ec=color, alpha=0.85 if used else 0.5))
            ax.text(x + 0.95, y, "used" if used else "skipped", ha="center", va="center", fontsize=7.5,
                    color="white" if used else color)
    ax.text(6.5, 4.45, "DELT toolkit: four stages, plain files between them", ha="center", fontsize=12,
            weight="bold")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return Path(out)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
