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

The three files are one output (``common.run.state``): an existing one is replaced only when
``<output>.json`` says this command wrote it (``--force`` otherwise); every checkpoint is read
and checked before anything is written; the per-checkpoint rows are kept in
``<output>.state/`` until the three files are complete, so a killed run is finished by the
same command, and a run with other settings is refused by name (``--restart`` starts over).
"""
from __future__ import annotations

if __name__ == "__main__":  # --help, argument errors and missing paths before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("squeeze.args:bn_stats_parser", "squeeze.bn_stats"))

import math
import sys
from pathlib import Path

from common.cli.errors import UserError
from common.cli.paths import check_output_file
from common.run.state import output_owner, state_stage
from squeeze.args import bn_stats_parser, check_bn_stats

STAGE = "squeeze.bn_stats"
SUFFIXES = (".csv", ".json", ".png")
get_args_parser = bn_stats_parser  # torch-free, in squeeze.args


def bn_layers(sd: dict) -> list[str]:
    """Names of the BatchNorm layers of a state dict, in order (those with running mean and variance)."""
    return [k[: -len(".running_mean")] for k in sd if k.endswith(".running_mean")
            and k[: -len(".running_mean")] + ".running_var" in sd]


def spread(sd: dict, source: str = "checkpoint") -> list[dict]:
    """Per BN layer: channels, variance across channels of running_mean and running_var, and their means.
    Statistics that are not matching 1-D tensors of finite values stop with one line naming the layer."""
    import torch

    rows = []
    for i, name in enumerate(bn_layers(sd)):
        mu, var = sd[name + ".running_mean"], sd[name + ".running_var"]
        if not isinstance(mu, torch.Tensor) or not isinstance(var, torch.Tensor) or mu.ndim != 1 or \
                mu.shape != var.shape or mu.numel() == 0:
            raise UserError(f"{source}: BatchNorm layer {name}: running_mean and running_var are not two 1-D "
                            f"tensors of the same length")
        mu, var = mu.double(), var.double()
        if not (torch.isfinite(mu).all() and torch.isfinite(var).all()):
            raise UserError(f"{source}: BatchNorm layer {name} has non-finite running statistics (NaN or inf); "
                            f"the checkpoint is broken")
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
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def output_files(base: Path) -> dict[str, Path]:
    return {suffix[1:]: base.with_name(base.name + suffix) for suffix in SUFFIXES}


def check_outputs(base: Path, force: bool) -> dict[str, Path]:
    """The three files can be written, and those that exist are ours (or ``force``): one line otherwise."""
    files = output_files(base)
    for f in files.values():
        check_output_file(f, "--output")
    owner = output_owner(files["json"], "file")
    if owner is None:  # no report yet: a killed run of ours keeps its run.json beside the output
        owner = state_stage(base)
    existing = [f for f in files.values() if f.exists() or f.is_symlink()]
    if existing and owner != STAGE and not force:
        what = f"holds the output of {owner}" if owner else "was not written by squeeze.bn_stats"
        raise UserError(f"--output {base}: {existing[0]} exists and {what}; choose another --output, or pass "
                        f"--force to replace it")
    return files


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    check_bn_stats(args)
    names = args.names or [Path(c).stem for c in args.checkpoints]
    files = check_outputs(Path(args.output), args.force) if args.output else None
    run = None
    if files:
        from common.run.manifest import sha256_file
        from common.run.state import RunState, fingerprint

        fp = fingerprint(args, {"output", "checkpoints"}, checkpoints_sha256=[sha256_file(c) for c in args.checkpoints])
        run = RunState(Path(args.output), STAGE, fp, restart=args.restart)
    results = {}
    for k, (name, path) in enumerate(zip(names, args.checkpoints)):  # every input checked before any write
        saved = run.done(f"checkpoint_{k:03d}") if run is not None and run.resumed else None
        rows = saved["rows"] if saved else spread(load_state(path), str(path))
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
    summary = {n: {"layers": len(rows), "mean_spread_avg": math.fsum(r["mean_spread"] for r in rows) / len(rows),
                   "var_spread_avg": math.fsum(r["var_spread"] for r in rows) / len(rows)}
               for n, rows in results.items()}
    for n, s in summary.items():
        lines.append(f"# {n}: {s['layers']} BN layers, mean over layers of the spread: running mean "
                     f"{s['mean_spread_avg']:.6g}, running var {s['var_spread_avg']:.6g}")
    print("\n".join(lines))
    out = {"stage": STAGE, "checkpoints": dict(zip(names, args.checkpoints)), "summary": summary, "layers": results}
    if files:
        from common.run.atomic import atomic_write_json, atomic_write_text

        with run.running():
            for k, name in enumerate(names):
                run.mark_done(f"checkpoint_{k:03d}", {"name": name, "rows": results[name]})
            atomic_write_text(files["csv"], "\n".join(
                ",".join(str(r[h]) for h in header) for r in [dict(zip(header, header))] + table) + "\n")
            plot(results, files["png"], args.title)
            atomic_write_json(files["json"], out)  # last: it marks the three files as ours and complete
        run.finish()
        print(f"written: {files['csv']}, {files['json']}, {files['png']}", file=sys.stderr)
    return out
