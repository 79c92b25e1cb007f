"""Commands that answer at once: parse and check, then import the heavy modules.

Every command runs through :func:`run_stage`: a stage's ``__main__`` is
``sys.exit(run_stage("<stage>.args", "<stage>.<module>"))``, and a command run as
``python -m <stage>.<module>`` (``relabel_eval.relabel``, ``squeeze.ssl``, ...) starts its file with
``if __name__ == "__main__": sys.exit(run_stage("<args module>[:<name>_parser]", "<stage>.<module>"))``,
before its heavy imports. The args module is torch-free: its parser (``get_args_parser()``, or
``<name>_parser()``) answers ``--help`` and argument errors, and its optional ``check_paths(args)``
(``check_<name>(args)``) stops a missing input path with one line, all before ``torch`` or
``torchvision`` is imported (about 8 s on a 2-core CPU). Only then is ``<stage>.<module>`` imported
and its ``main(argv)`` run (it parses the same argv again, which costs nothing); a help text that is
the module's docstring is read without importing the module (:func:`module_doc`). Exit codes and
messages are :func:`common.cli.errors.run_cli`'s.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterable, Sequence

from common.cli.errors import UserError, run_cli


def require_paths(args, flags: Iterable[tuple[str, str]], kind: str = "exist") -> None:
    """For each ``(attribute, flag)`` whose value is set: the path must exist (``kind="exist"``),
    be a folder (``"dir"``) or a file (``"file"``); else one line naming the path and the flag."""
    for attr, flag in flags:
        value = getattr(args, attr, None)
        if value in (None, ""):
            continue
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            p = Path(v)
            if not p.exists():
                raise UserError(f"{p}: {flag} does not exist")
            if kind == "dir" and not p.is_dir():
                raise UserError(f"{p}: {flag} must be a folder")
            if kind == "file" and not p.is_file():
                raise UserError(f"{p}: {flag} must be a file")


def module_doc(name: str) -> str:
    """The docstring of module ``name``, read from its source without importing (running) it."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return ""
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""


def run_stage(args_module: str, main_module: str, argv: Sequence[str] | None = None) -> int:
    """Parse and check with ``args_module`` (torch-free), then run ``main_module.main(argv)``.

    ``args_module`` is ``"pkg.args"`` (its ``get_args_parser`` and ``check_paths``) or
    ``"pkg.args:<name>_parser"`` (that parser and ``check_<name>``, when defined).
    """

    def main(argv_: Sequence[str] | None) -> object:
        module, _, parser_name = args_module.partition(":")
        light = importlib.import_module(module)
        parser_name = parser_name or "get_args_parser"
        check_name = f"check_{parser_name.removesuffix('_parser')}" if parser_name != "get_args_parser" \
            else "check_paths"
        args = getattr(light, parser_name)().parse_args(argv_)  # --help and argument errors exit here
        check = getattr(light, check_name, None)
        if check is not None:
            check(args)
        return importlib.import_module(main_module).main(argv_)

    return run_cli(main, argv)
