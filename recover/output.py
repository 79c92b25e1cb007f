"""The output folder of a recovery run: finished classes, resume state and manifest.json.

Layout::

    OUT/<class>/<file>            one folder per class, swapped in complete (common.atomic.atomic_dir)
    OUT/.recover/<class>.json     per-class record, written after its folder: the class is done
    OUT/.recover/lock             serialises manifest updates between shards
    OUT/manifest.json             arguments, teacher sha256, per-class iterations and wall time

A class counts as finished when its record exists and its folder holds exactly the
files the record names; anything else is recomputed on restart. Class folders are
built under a hidden temporary name, so a SIGKILL never leaves a partial folder or
image under a class name. Shards own disjoint classes, so they never write the same
folder; they share only the manifest, updated under a file lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

from common.atomic import atomic_write_json
from common.errors import UserError
from common.imagefolder import is_image_file
from common.manifest import read_manifest, write_manifest

STATE_DIR = ".recover"


class OutputDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.state = self.root / STATE_DIR

    # -- settings ------------------------------------------------------------------------------
    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to resume into a folder made with other settings, or not made by recover."""
        if not self.root.exists():
            return
        manifest = read_manifest(self.root)
        if manifest is None:
            if any(not p.name.startswith(".") for p in self.root.iterdir()):
                raise UserError(f"{self.root}: output folder exists and was not written by recover; "
                                f"choose another --syn-data-path/--exp-name or remove it")
            return
        if manifest.get("stage") != "recover":
            raise UserError(f"{self.root}: holds the output of stage {manifest.get('stage')!r}, not recover")
        old = manifest.get("settings", {})
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise UserError(f"{self.root}: was started with other settings ({k}: {old.get(k)!r} there, "
                            f"{settings.get(k)!r} now{', ...' if len(diff) > 1 else ''}); "
                            f"use another --exp-name or remove the folder to start over")

    # -- classes -------------------------------------------------------------------------------
    def record_path(self, cls: str) -> Path:
        return self.state / f"{cls}.json"

    def read_record(self, cls: str) -> dict[str, Any] | None:
        path = self.record_path(cls)
        if not path.is_file():
            return None
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
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def update_manifest(self, base: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
        """Rewrite manifest.json from every class record present (all shards' work)."""
        with self.lock():
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
        return manifest
