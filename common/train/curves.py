"""Training curves where researchers look for them: TensorBoard event files under ``--log-dir``
(``torch.utils.tensorboard``) and, with ``--wandb-project``, a Weights & Biases run.

One object per run, main process only (other ranks get a no-op). A resumed run passes the
first step it will log (``purge_step``): TensorBoard then drops the events a killed run wrote
from that step on, so the curve of a resumed run equals the uninterrupted one.

W&B is optional: when ``wandb`` is not installed the flag is reported in one ``warning:`` line
and the run goes on with the other logs. Without ``WANDB_API_KEY`` (and no ``WANDB_MODE``) the
run is logged offline under ``--log-dir`` (or the working folder) for a later ``wandb sync``.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


class Curves:
    """``log(step, {"train/loss": ..., "val/top1": ...})`` to every sink that was asked for."""

    def __init__(self, log_dir: str | os.PathLike | None, run_name: str, *, wandb_project: str | None = None,
                 config: Mapping[str, Any] | None = None, purge_step: int | None = None, main: bool = True):
        self.tb = None
        self.wandb_run = None
        if not main:
            return
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(log_dir) / run_name), purge_step=purge_step)
        if wandb_project:
            if not wandb_available():
                print(f"warning: --wandb-project {wandb_project}: the wandb package is not installed "
                      f"(pip install wandb); curves go to --log-dir and the CSV only", file=sys.stderr)
            else:
                import wandb

                mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
                self.wandb_run = wandb.init(project=wandb_project, name=run_name, mode=mode, resume="allow",
                                            id=_wandb_id(wandb_project, run_name),
                                            dir=str(log_dir) if log_dir is not None else None,
                                            config=dict(config or {}))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, global_step=step)
            self.tb.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> Curves:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def epoch_scalars(stats: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's (or iteration's) stats as TensorBoard tags: ``train_loss`` -> ``train/loss``, ``val_top1`` ->
    ``val/top1``; the epoch or iteration number itself is the step, not a curve."""
    out = {}
    for k, v in stats.items():
        if k in ("epoch", "iteration"):
            continue
        head, _, tail = k.partition("_")
        out[f"{head}/{tail}" if head in ("train", "val", "knn") and tail else k] = v
    return out


def write_series(log_dir: str | os.PathLike, run_name: str, tag: str, values, first_step: int = 0) -> None:
    """One finished curve (e.g. a recover batch's loss per iteration) as its own TensorBoard run;
    written again (a redone batch after a kill), it replaces the earlier events (``purge_step``)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(Path(log_dir) / run_name), purge_step=first_step) as w:
        for i, v in enumerate(values):
            if math.isfinite(float(v)):
                w.add_scalar(tag, float(v), global_step=first_step + i)


def _wandb_id(project: str, run_name: str) -> str:
    """A stable run id, so the same command resumes the same W&B run."""
    import hashlib

    return hashlib.sha1(f"{project}/{run_name}".encode()).hexdigest()[:16]


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of ``run_dir`` as ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
