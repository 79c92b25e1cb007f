"""squeeze.bn_stats: how informative are a teacher's BatchNorm statistics? (SC-DD's "flattening" diagnostic)

    python -m squeeze.bn_stats runs/teacher.pth runs/scdd_teacher.pth --names supervised ssl \\
        --output imgs/bn_stats_tin10

For every BatchNorm layer (in network order) and every checkpoint: the spread -- the
variance across channels -- of the running means and of the running variances.
Recovery matches the distilled images' per-channel statistics to these running
statistics; SC-DD observes that a supervised teacher's become flat (small spread) as
models grow, so matching them says little, while a self-supervised backbone keeps them
spread out. Reads any checkpoint this project reads (own, RDED/SRe2L, bare torchvision
weights) and the released MoCo/SwAV/DINO files (``models/external_ssl.py``); no
architecture is built. Writes ``<output>.csv``, ``<output>.json`` and ``<output>.png`` (two
panels, log scale, one line per checkpoint); the table also goes to stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli.errors import UserError, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m squeeze.bn_stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="one or more checkpoints to compare")
    p.add_argument("--names", nargs="+", default=None, help="a label per checkpoint (default: file stems)")
    p.add_argument("--output", default=None,
                   help="write <output>.csv, .json and .png (default: print the table only)")
    p.add_argument("--title", default="BatchNorm running statistics: spread across channels per layer")
    return p


def bn_layers(sd: dict) -> list[str]:
    """Names of the BatchNorm layers of a state dict, in order (those with running mean and variance)."""
    return [k[: -len(".running_mean")] for k in sd if k.endswith(".running_mean")
            and k[: -len(".running_mean")] + ".running_var" in sd]


def spread(sd: dict) -> list[dict]:
    """Per BN layer: channels, variance across channels of running_mean and running_var, and their means."""
    rows = []
    for i, name in enumerate(bn_layers(sd)):
        mu, var = sd[name + ".running_mean"].double(), sd[name + ".running_var"].double()
        rows.append({"index": i, "layer": name, "channels": int(mu.numel()),
                     "mean_spread": float(mu.var(unbiased=False)), "var_spread": float(var.var(unbiased=False)),
                     "mean_avg": float(mu.mean()), "var_avg": float(var.mean())})
    return rows


def load_state(path: str) -> dict:
    """A checkpoint's state dict; released SSL layouts (encoder_q., base_encoder., ...) mapped to the backbone."""
    from models import read_checkpoint
    from models.external_ssl import map_ssl_state_dict

    sd = read_checkpoint(path)["model"]
    if any(k.startswith(("encoder_q.", "base_encoder.", "backbone.")) for k in sd):
        sd = map_ssl_state_dict(sd, path)[0]
    return sd


def plot(results: dict[str, list[dict]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.run.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in results.items():
        x = [r["index"] for r in rows]
        axes[0].plot(x, [r["mean_spread"] for r in rows], marker="o", ms=3, label=name)
        axes[1].plot(x, [r["var_spread"] for r in rows], marker="o", ms=3, label=name)
    longest = max(results.values(), key=len)
    for ax, what in zip(axes, ("running mean", "running variance")):
        ax.set_yscale("log")
        ax.set_xlabel("BatchNorm layer (network order)")
        ax.set_ylabel(f"spread of the {what}")
        ax.set_title(f"variance across channels of the {what}", fontsize=10)
        if len(longest) <= 24:  # few layers: name them
            ax.set_xticks([r["index"] for r in longest], [r["layer"] for r in longest], rotation=60, fontsize=7,
                          ha="right")
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    names = args.names or [Path(c).stem for c in args.checkpoints]
    if len(names) != len(args.checkpoints):
        raise UserError(f"--names: {len(names)} name(s) for {len(args.checkpoints)} checkpoint(s); give one each")
    if len(set(names)) != len(names):
        raise UserError("--names: names must be distinct (pass --names when files share a stem)")
    for c in args.checkpoints:
        if not Path(c).is_file():
            raise UserError(f"{c}: checkpoint file not found")
    results = {}
    for name, path in zip(names, args.checkpoints):
        rows = spread(load_state(path))
        if not rows:
            raise UserError(f"{path}: no BatchNorm running statistics in this checkpoint")
        results[name] = rows
    table = []
    for name, rows in results.items():
        for r in rows:
            table.append({"checkpoint": name, **r})
    header = ["checkpoint", "index", "layer", "channels", "mean_spread", "var_spread", "mean_avg", "var_avg"]
    lines = ["\t".join(header)] + ["\t".join(f"{r[h]:.6g}" if isinstance(r[h], float) else str(r[h])
                                             for h in header) for r in table]
    summary = {n: {"layers": len(rows), "mean_spread_avg": sum(r["mean_spread"] for r in rows) / len(rows),
                   "var_spread_avg": sum(r["var_spread"] for r in rows) / len(rows)} for n, rows in results.items()}
    for n, s in summary.items():
        lines.append(f"# {n}: {s['layers']} BN layers, mean over layers of the spread: running mean "
                     f"{s['mean_spread_avg']:.6g}, running var {s['var_spread_avg']:.6g}")
    print("\n".join(lines))
    out = {"checkpoints": dict(zip(names, args.checkpoints)), "summary": summary, "layers": results}
    if args.output:
        from common.run.atomic import atomic_write_json, atomic_write_text

        base = Path(args.output)
        atomic_write_text(base.with_name(base.name + ".csv"), "\n".join(
            ",".join(str(r[h]) for h in header) for r in [dict(zip(header, header))] + table) + "\n")
        atomic_write_json(base.with_name(base.name + ".json"), out)
        plot(results, base.with_name(base.name + ".png"), args.title)
        print(f"written: {base}.csv, {base}.json, {base}.png", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
