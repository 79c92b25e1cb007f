"""HTTP(S) download with resume (Range requests), size limit and retries."""
from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.cli.errors import UserError
from common.run.atomic import atomic_write_json
from hub.text import human, log

DEFAULT_MAX_SIZE = 20 << 30          # unpacked bytes; a distilled ImageNet-1K IPC 200 set is ~3 GB
CHUNK = 1 << 20
USER_AGENT = "delt-toolkit-hub/1 (python urllib)"


def is_url(text: str) -> bool:
    return urllib.parse.urlparse(str(text)).scheme in ("http", "https", "file")


def normalize_url(url: str) -> str:
    """Share-page links -> direct download links (Google Drive file pages, Hugging Face ``blob``)."""
    m = re.match(r"https?://drive\.google\.com/file/d/([\w-]+)", url)
    if m:
        return f"https://drive.google.com/uc?export=download&id={m[1]}"
    m = re.match(r"(https?://huggingface\.co/.+?)/blob/(.+)$", url)
    if m:
        return f"{m[1]}/resolve/{m[2]}"
    return url


class _Interrupted(Exception):
    """The connection broke mid-transfer; the ``.part`` file holds what arrived."""


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", header or "")
    if not m:
        return None, None
    return int(m[1]), (None if m[2] == "*" else int(m[2]))


def _download_once(url: str, part: Path, state: dict[str, Any], state_path: Path, max_bytes: int,
                   timeout: float, progress: bool) -> bool:
    """One HTTP request; True when the file is complete, False to start over at once."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
        validator = state.get("etag") if not str(state.get("etag") or "").startswith("W/") else None
        validator = validator or state.get("last_modified")
        if validator:
            req.add_header("If-Range", validator)      # the server sends the whole new file if it changed
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            if state.get("length") == offset:
                return True
            log("server refused to resume this partial download; starting over")
            part.unlink()
            return False
        raise UserError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"cannot connect: {getattr(exc, 'reason', exc)}") from None
    with resp:
        if "text/html" in resp.headers.get("Content-Type", ""):
            raise UserError(f"{url}: the server sent an HTML page, not an archive (a login or a Google Drive "
                            f"confirmation page?); download it in a browser and pass the local file to fetch")
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                log(f"server resumed at byte {start}, not {offset}; starting over")
                part.unlink()
                return False
            total = total or (offset + length if length is not None else None)
            mode = "ab"
        else:
            if offset:
                log("server ignored the resume request (HTTP 200); starting over")
            offset, total, mode = 0, length, "wb"
        if total is not None and total > max_bytes:
            raise UserError(f"{url}: {human(total)} is over --max-size {human(max_bytes)}")
        state.update(url=url, etag=resp.headers.get("ETag"), last_modified=resp.headers.get("Last-Modified"),
                     length=total)
        atomic_write_json(state_path, state)
        name = Path(urllib.parse.urlparse(url).path).name or "download"
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=name[:30], disable=not progress) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as exc:
                    raise UserError(f"{part}: cannot write the download ({exc})") from None
                offset += len(chunk)
                bar.update(len(chunk))
                if offset > max_bytes:
                    raise UserError(f"{url}: download passed --max-size {human(max_bytes)}; stopped")
    if total is not None and offset < total:
        raise _Interrupted(f"connection closed at byte {offset} of {total}")
    return True


def http_download(url: str, dest: Path, max_bytes: int = DEFAULT_MAX_SIZE, retries: int = 3,
                  timeout: float = 60.0, retry_wait: float = 2.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what an earlier run left there."""
    part = dest.with_name(dest.name + ".part")
    state_path = dest.with_name(dest.name + ".json")
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
    if state.get("url") != url:                    # a partial file of another URL is useless
        state = {"url": url}
        part.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
    if dest.is_file():                             # complete from an earlier run (unpacking failed or was stopped)
        return dest
    if part.exists() and part.stat().st_size:
        log(f"resuming {part.name} from byte {part.stat().st_size}")
    failures = restarts = 0
    while True:
        try:
            if _download_once(url, part, state, state_path, max_bytes, timeout, progress):
                break
            restarts += 1
            if restarts > 3:
                raise UserError(f"{url}: the server keeps refusing to resume; remove {part} and retry")
        except _Interrupted as exc:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries and not have:
                raise UserError(f"{url}: download failed ({exc})") from None
            if failures > retries:
                raise UserError(f"{url}: download interrupted ({exc}) with {human(have)} received; "
                                f"run the same command again to resume from {part}") from None
            log(f"download interrupted ({exc}); retry {failures}/{retries} resumes at byte {have}")
            time.sleep(retry_wait * failures)
    os.replace(part, dest)
    return dest
