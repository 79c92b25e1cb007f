"""The output folder of a recovery run: finished classes, resume state and manifest.json.

Layout (the resume state lives beside the output, ``common.run.state``)::

    OUT/<class>/<file>                one folder per class, swapped in complete (common.run.atomic.atomic_dir)
    OUT/manifest.json                 arguments, teacher sha256, per-class iterations and wall time
    OUT.state/run.json                the fingerprint of the run's result-changing arguments
    OUT.state/done/<class>.json       per-class record, written after its folder: the class is done

A class counts as finished when its record exists and its folder holds exactly the
files the record names; anything else is recomputed on restart. Class folders are
built under a hidden temporary name, so a SIGKILL never leaves a partial folder or
image under a class name. Shards own disjoint classes, so they never write the same
folder; they share only the manifest, updated under a lock on OUT itself (flock); the shard whose
update completes the output removes the state under that lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

from common.data.imagefolder import is_image_file
from common.run.atomic import atomic_write_json
from common.run.manifest import read_manifest, write_manifest
from common.run.state import RunState


class OutputDir:
    def __init__(self, root: str | os.PathLike, run: RunState):
        self.root = Path(root)
        self.run = run
        self.state = run.dir
        # a complete output keeps its per-class records in manifest.json only (the state is removed)
        m = read_manifest(self.root) if self.root.is_dir() else None
        complete = bool(m) and m.get("status") == "complete" and not self.state.exists()
        self.finished = self._done_in_manifest() if complete else {}

    # -- classes -------------------------------------------------------------------------------
    def record_path(self, cls: str) -> Path:
        return self.state / "done" / f"{cls}.json"

    def read_record(self, cls: str) -> dict[str, Any] | None:
        path = self.record_path(cls)
        if not path.is_file():
            rec = self.finished.get(cls)
            return {k: v for k, v in rec.items() if k != "status"} if rec else None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self, cls: str) -> bool:
        rec = self.read_record(cls)
        folder = self.root / cls
        if rec is None or not folder.is_dir():
            return False
        found = sorted(e.name for e in os.scandir(folder) if is_image_file(e.name))
        return found == sorted(rec.get("files", []))

    def write_record(self, cls: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.record_path(cls), record)

    def clean_stale(self, classes: Sequence[str]) -> None:
        """Remove temporary folders a killed run left for these classes (this shard's own)."""
        if not self.root.is_dir():
            return
        for cls in classes:
            for p in self.root.glob(f".{cls}.partial-*"):
                shutil.rmtree(p, ignore_errors=True)

    # -- manifest ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Shards (processes, nodes on a shared file system) take turns on the output folder itself."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _done_in_manifest(self) -> dict[str, dict[str, Any]]:
        """The done records in the manifest on disk, when it is this run's (another shard may have
        completed the output and removed the state meanwhile)."""
        m = read_manifest(self.root) if self.root.is_dir() else None
        if not m or m.get("stage") != self.run.stage or m.get("settings") != self.run.fingerprint:
            return {}
        return {c: r for c, r in m.get("per_class", {}).items() if r.get("status") == "done"}

    def update_manifest(self, base: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
        """Rewrite manifest.json from every class record present (all shards' work); the shard that
        completes the output removes the state, under the same lock."""
        with self.lock():
            for cls, rec in self._done_in_manifest().items():
                self.finished.setdefault(cls, rec)
            per_class: dict[str, Any] = {}
            for cls in classes:
                rec = self.read_record(cls) if self.is_done(cls) else None
                per_class[cls] = {"status": "done", **rec} if rec else {"status": "pending"}
            done = [r for r in per_class.values() if r["status"] == "done"]
            manifest = dict(base)
            manifest.update({
                "status": "complete" if len(done) == len(classes) else "partial",
                "classes_done": len(done),
                "num_classes": len(classes),
                "image_iterations": sum(sum(r["iterations"]) for r in done),
                "wall_time_s": round(sum(r["wall_time_s"] for r in done), 3),
                "clipped_fraction": round(sum(r.get("clipped_fraction", 0.0) for r in done) / len(done), 6)
                if done else None,
                "saturated_classes": [c for c, r in per_class.items() if r.get("saturated")],
                "per_class": per_class,
            })
            write_manifest(self.root, manifest)
            if manifest["status"] == "complete":
                self.run.finish()  # every record is in manifest.json now
        return manifest
