"""The registry of released distilled sets: ``hub/registry.json`` plus an optional user file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.cli.errors import UserError

REGISTRY_FILE = Path(__file__).resolve().parent / "registry.json"
REGISTRY_ENV = "DD_HUB_REGISTRY"


def _read_registry_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: registry file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a registry is a JSON file, this is a folder") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a readable JSON registry (binary, not UTF-8 text)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON registry ({str(exc).splitlines()[0][:100]})") from None
    sets = data.get("sets") if isinstance(data, dict) else data
    if not isinstance(sets, list):
        raise UserError(f"{path}: a registry is a JSON list of sets or an object with a \"sets\" list")
    for i, entry in enumerate(sets):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry.get("name") or \
                not isinstance(entry.get("url"), str) or not entry.get("url"):
            raise UserError(f"{path}: set #{i} needs at least \"name\" and \"url\" (text)")
    return sets


def load_registry(extra: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Built-in sets, then ``$DD_HUB_REGISTRY``, then ``extra``; later files replace entries by name."""
    files = [REGISTRY_FILE]
    if os.environ.get(REGISTRY_ENV):
        files.append(Path(os.environ[REGISTRY_ENV]))
    if extra:
        files.append(Path(extra))
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for entry in _read_registry_file(f):
            out[entry["name"].lower()] = {**entry, "registry_file": str(f)}
    return out


def format_registry(reg: dict[str, dict[str, Any]]) -> str:
    cols = [("name", "name"), ("method", "method"), ("dataset", "dataset"), ("ipc", "ipc"),
            ("format", "image_format"), ("naming", "class_naming"), ("sha256", "sha256"), ("url", "url")]
    rows = []
    for e in reg.values():
        row = []
        for _title, key in cols:
            v = e.get(key)
            if key == "sha256":
                v = (v[:12] + "...") if v else "unknown"
            row.append("-" if v is None else str(v))
        rows.append(row)
    widths = [max(len(t), *(len(r[i]) for r in rows)) if rows else len(t) for i, (t, _) in enumerate(cols)]
    lines = ["  ".join(t.ljust(w) for (t, _), w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- download



def _find_entry(source: str, registry: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entry = registry.get(source.lower())
    if entry is None:
        names = ", ".join(sorted(registry)[:6])
        raise UserError(f"{source}: not a URL, an existing file or a registry name (known: {names} ...; "
                        f"see python -m hub list)")
    if entry.get("fetchable") is False:
        raise UserError(f"{entry['name']} cannot be fetched: {entry.get('notes') or 'marked not fetchable'}")
    return entry
