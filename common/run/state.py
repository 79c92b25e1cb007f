"""One run-state mechanism for every long-running stage: resume, restart policy, output ownership.

A stage's output (a folder or a file) is what other tools read; its resume state lives
BESIDE it, in ``<output>.state/``, never inside the output tree, so a finished output is
a plain ImageFolder (or file) and nothing else::

    OUT/                 the output: class folders + manifest.json (or a file)
    OUT.state/run.json   stage and fingerprint of the run that owns this state
    OUT.state/done/      one JSON marker per finished unit (class, seed, epoch, ...)
    OUT.state/...        the stage's own resume files (checkpoints, partial scores, a work folder)

The rules, the same in every stage:

- **Fingerprint.** The arguments that change the result: all parsed arguments minus a
  per-stage declared list of those that do not (output paths, device, workers,
  progress and save intervals, the restart/force flags), plus derived facts (sha256
  of the teacher, the class list, ...).
- **Resume.** Running the same command again continues from the finished units.
- **Restart policy.** When an unfinished run's fingerprint differs, the stage stops
  with one ``error:`` line naming the differing arguments and ``--restart``, the flag
  that discards the unfinished state and starts over.
- **Ownership.** An existing output that this toolkit did not write for this stage
  (no manifest of ours, another stage's manifest, a file where a folder goes) is never
  removed, replaced or moved aside without ``--force``. Replacing our own output of the
  same stage is atomic (the new one is swapped in complete).
- **Nothing before validation.** :meth:`RunState.begin` is called only after every
  input was checked; a run that fails before finishing any unit leaves nothing behind.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from common.cli.errors import UserError
from common.run.atomic import atomic_write_json

# Arguments no stage's result depends on: where things go, how fast, and these flags themselves.
NOT_RESULT = frozenset({"device", "gpu_device", "workers", "restart", "force", "resume", "no_resume", "save_every",
                        "max_epochs_this_run", "quiet", "log_dir", "wandb_project", "wandb_api_key"})


def add_run_args(parser, force: bool = True) -> None:
    """``--restart`` (discard an unfinished run's state) and ``--force`` (replace an output not ours)."""
    parser.add_argument("--restart", action="store_true",
                        help="discard the state of an unfinished run (kept beside the output) and start over")
    if force:
        parser.add_argument("--force", action="store_true",
                            help="replace an existing output that this stage did not write")


def fingerprint(args: argparse.Namespace | dict, not_result: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """The result-changing arguments: all of ``args`` minus :data:`NOT_RESULT` and ``not_result``, plus ``extra``."""
    d = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    skip = NOT_RESULT | set(not_result)
    fp = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(d.items()) if k not in skip}
    fp.update(extra)
    return json.loads(json.dumps(fp, default=str))  # what a reload from run.json gives back


def state_dir(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".state")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


def describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = [f"{_flag(k)} {_short(old.get(k))} there, {_short(new.get(k))} now" for k in keys[:4]]
    if len(keys) > 4:
        parts.append(f"and {len(keys) - 4} more")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- ownership

def state_stage(output: str | os.PathLike) -> str | None:
    """The stage of the run of ours whose state is beside ``output`` (its ``run.json``), None when there is
    none or it cannot be read: an output without a manifest yet is still ours while such a run writes it."""
    try:
        m = json.loads((state_dir(output) / "run.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return str(m["stage"]) if isinstance(m, dict) and m.get("stage") else None


def output_owner(output: Path, kind: str, manifest_file: Path | None = None) -> str | None:
    """The stage that wrote ``output`` (its manifest; before there is one, the ``run.json`` of the run of
    ours writing it, beside it), ``""`` when unknown, None when absent or empty."""
    if not output.exists() and not output.is_symlink():
        return None
    if kind == "dir":
        if not output.is_dir():
            return ""
        if not any(output.iterdir()):
            return None
        manifest_file = manifest_file or output / "manifest.json"
    else:
        if output.is_dir():
            return ""
        manifest_file = manifest_file or output
    try:
        m = json.loads(Path(manifest_file).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        m = None
    if isinstance(m, dict) and m.get("stage"):
        return str(m["stage"])
    # no manifest (yet): a run of ours writing this output (another shard, or one that was killed)
    # keeps its run.json beside it
    return state_stage(output) or ""


def check_output(output: str | os.PathLike, stages: str | Sequence[str], force: bool = False, kind: str = "dir",
                 manifest_file: str | os.PathLike | None = None, flag: str = "the output") -> None:
    """Refuse to replace an existing output that ``stages`` did not write, unless ``force``.

    ``kind`` is ``dir`` (manifest.json inside) or ``file`` (a JSON file with a ``stage`` key,
    or ``manifest_file`` beside it).
    """
    output = Path(output)
    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    owner = output_owner(output, kind, Path(manifest_file) if manifest_file else None)
    if owner is None or owner in stages or force:
        return
    if kind == "dir" and not output.is_dir():
        what = "is a file, where a folder goes"
    elif kind == "file" and output.is_dir():
        what = "is a folder, where a file goes"
    elif owner:
        what = f"holds the output of {owner}, not {stages[0]}"
    else:
        what = f"exists and was not written by {stages[0]} (no manifest of ours)"
    raise UserError(f"{flag} {output} {what}; choose another path, or pass --force to replace it")


def check_not_inside(output: str | os.PathLike, data: str | os.PathLike, flag: str, data_flag: str) -> None:
    """The output must not overlap an input tree (it would be read while written, or replace it)."""
    out_r, data_r = Path(output).resolve(), Path(data).resolve()
    if out_r == data_r or data_r in out_r.parents or out_r in data_r.parents:
        raise UserError(f"{flag} {output} overlaps {data_flag} {data}; choose a separate folder")


def replace_output(work: Path, output: Path) -> None:
    """Swap a complete ``work`` folder or file onto ``output``; the old one is removed only after the swap."""
    old = None
    if output.exists() or output.is_symlink():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(work, output)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


# ----------------------------------------------------------------------------- run state

class RunState:
    """The resume state of one output, in ``<output>.state/`` (see the module docstring).

    Create it, then :meth:`begin` once all inputs are validated; mark units with
    :meth:`mark_done`; call :meth:`finish` when the output is complete.
    """

    def __init__(self, output: str | os.PathLike, stage: str, fp: dict[str, Any], restart: bool = False,
                 restart_flag: str = "--restart", check: bool = True):
        self.output = Path(output)
        self.stage = stage
        self.fingerprint = fp
        self.dir = state_dir(self.output)
        self.restart_flag = restart_flag
        self.resumed = False
        self.main = check
        if check:  # False: another process (torchrun's main, shard 0) checks and opens the state; this one attaches
            self._check(restart)
        # under torchrun every process waits for the main one's check (which may discard the state) before any
        # of them reads or writes in it; without a process group (recover's shards) this is a no-op
        from common.compute.distributed import barrier

        barrier()

    def _check(self, restart: bool) -> None:
        if not self.dir.exists():
            return
        if not self.dir.is_dir():
            raise UserError(f"{self.dir}: exists and is not a folder (the resume state of {self.output} goes there); "
                            f"remove it")
        run = self._read_run()
        if run is None or not self.has_progress():
            # killed or failed before any work was saved: nothing to keep. The folder stays (an attached shard
            # may be starting in it); begin() writes this run's run.json over the old one.
            return
        if run.get("stage") != self.stage:
            raise UserError(f"{self.dir}: holds the resume state of {run.get('stage')}, not {self.stage}; "
                            f"choose another output path")
        if restart:
            shutil.rmtree(self.dir)
            return
        if run.get("fingerprint") == self.fingerprint:
            self.resumed = True
            return
        raise UserError(f"{self.output}: an unfinished {self.stage} run with other arguments is in {self.dir} "
                        f"({describe_diff(run.get('fingerprint') or {}, self.fingerprint)}); run its command again to "
                        f"continue it, or pass {self.restart_flag} to start over")

    def _read_run(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / "run.json").read_text())
        except (OSError, ValueError):
            return None

    # -- lifecycle -------------------------------------------------------------------------------
    def begin(self) -> RunState:
        """Write ``run.json`` (after all inputs are validated)."""
        missing = []  # the parent folders this creates, removed again if the run does no work
        for parent in self.dir.parents:
            if parent.exists():
                break
            missing.append(parent)
        if not getattr(self, "_made_parents", None):
            self._made_parents = missing
        (self.dir / "done").mkdir(parents=True, exist_ok=True)
        if self.main or not (self.dir / "run.json").is_file():
            atomic_write_json(self.dir / "run.json", {"stage": self.stage, "fingerprint": self.fingerprint})
        return self

    @contextlib.contextmanager
    def running(self) -> Iterator[RunState]:
        """``begin()``; on failure, remove the state again if no work was saved in it."""
        self.begin()
        try:
            yield self
        except BaseException:
            if self.main and self.dir.is_dir() and not self.has_progress():
                shutil.rmtree(self.dir, ignore_errors=True)
                for parent in getattr(self, "_made_parents", []):  # deepest first
                    with contextlib.suppress(OSError):
                        parent.rmdir()  # only if empty
            raise

    def has_progress(self) -> bool:
        """Any work saved: a file besides ``run.json`` and ``lock`` (a stage's lock file)."""
        for p in self.dir.rglob("*"):
            if p.is_file() and p.parent == self.dir and p.name in ("run.json", "lock"):
                continue  # bookkeeping, not work
            if p.is_file():
                return True
        return False

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self) -> None:
        """Remove the state and the parent folders :meth:`begin` created (a diverged run leaves nothing)."""
        if not self.main:
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        for parent in getattr(self, "_made_parents", []):  # deepest first
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty

    # -- files and units ---------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """A resume file of the stage, inside the state folder."""
        return self.dir / name

    def marker(self, unit: str) -> Path:
        """The done marker of a unit (written by :meth:`mark_done`)."""
        return self.dir / "done" / f"{unit}.json"

    def done(self, unit: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.marker(unit).read_text())
        except (OSError, ValueError):
            return None

    def mark_done(self, unit: str, record: dict[str, Any] | None = None) -> None:
        atomic_write_json(self.marker(unit), record if record is not None else {})

    def done_units(self) -> list[str]:
        d = self.dir / "done"
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []
