"""Output ownership, the part of the shared run-state mechanism every stage needs now.

- **Ownership.** An existing output that this toolkit did not write for this stage
  (no manifest of ours, another stage's manifest, a file where a folder goes) is never
  removed, replaced or moved aside without ``--force``. Replacing our own output of the
  same stage is atomic (the new one is swapped in complete).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from common.errors import UserError


def output_owner(output: Path, kind: str, manifest_file: Path | None = None) -> str | None:
    """The stage that wrote ``output`` (from its manifest), ``""`` when unknown, None when absent/empty."""
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
        return ""
    return str(m.get("stage", "")) if isinstance(m, dict) else ""


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
