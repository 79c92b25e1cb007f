"""Released distilled datasets: registry, download, safe extraction, class-folder mapping, pack.

``python -m hub list | fetch | pack`` (see ``hub/cli.py``). The modules:

- ``hub.registry``: the known releases (``hub/registry.json``, extendable by a user file)
- ``hub.download``: HTTP(S) download with resume, size limit and retries
- ``hub.extract``: archive listing, refusal of unsafe members, limited extraction
- ``hub.mapping``: index-named class folders -> the data's class folder names
- ``hub.fetch``: all of the above into one atomic ImageFolder with a manifest
- ``hub.pack``: a deterministic ``.tar.gz`` of a distilled set
"""
from hub.cli import get_args_parser, main
from hub.download import CHUNK, DEFAULT_MAX_SIZE, USER_AGENT, http_download, is_url, normalize_url
from hub.extract import (
    CORRUPT,
    JUNK,
    Member,
    _copy_limited,
    extract_members,
    list_archive,
    resolve_links,
    strip_wrappers,
    summarize_tree,
)
from hub.fetch import fetch
from hub.mapping import NAMINGS, folder_naming, plan_class_mapping, resolve_class_order
from hub.pack import pack
from hub.registry import REGISTRY_ENV, REGISTRY_FILE, format_registry, load_registry
from hub.text import human, log, parse_size

__all__ = ["CHUNK", "CORRUPT", "DEFAULT_MAX_SIZE", "JUNK", "Member", "NAMINGS", "REGISTRY_ENV", "REGISTRY_FILE",
           "USER_AGENT", "_copy_limited", "extract_members", "fetch", "folder_naming", "format_registry",
           "get_args_parser", "http_download", "human", "is_url", "list_archive", "load_registry", "log", "main",
           "normalize_url", "pack", "parse_size", "plan_class_mapping", "resolve_class_order", "resolve_links",
           "strip_wrappers", "summarize_tree"]
