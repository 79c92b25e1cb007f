"""Every ``python -m <stage> ...`` (or ``torchrun ... -m <stage> ...``) command line in README.md and
docs/**/*.md parses with that stage's own (torch-free) parser: the documentation cannot drift from
the flags."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.test_scripts import ROOT, parser_for

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
STAGES = ("squeeze", "rank_select", "recover", "relabel_eval", "common.prepare", "hub")
# a line that only sketches a command: "..." stands for the flags shown elsewhere
PLACEHOLDERS = ("...",)


def commands(md: Path) -> list[tuple[int, list[str]]]:
    """(line number, argv from ``python`` on) of each stage command in the file's code blocks."""
    out, block, joined, start = [], False, "", 0
    for n, line in enumerate(md.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            block = not block
            continue
        if not block:
            continue
        if not joined:
            start = n
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        text, joined = joined + line, ""
        if any(p in text for p in PLACEHOLDERS):
            continue
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            continue
        part: list[str] = []
        for w in [*words, ";"]:
            if w in ("&&", "||", ";", "|"):
                argv = _stage_argv(part)
                if argv:
                    out.append((start, argv))
                part = []
            else:
                part.append(w)
    return out


def _stage_argv(words: list[str]) -> list[str] | None:
    for i, w in enumerate(words):
        if not all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", v) for v in words[:i]):
            return None  # not at a command's start (after VAR=value assignments only)
        if w in ("python", "python3", "torchrun") and "-m" in words[i:]:
            j = words.index("-m", i)
            if j + 1 < len(words) and words[j + 1].split(".")[0] in {s.split(".")[0] for s in STAGES}:
                return ["python", "-m", *words[j + 1:]]
    return None


CASES = [(md, n, argv) for md in DOCS for n, argv in commands(md)]


def test_docs_have_commands():
    assert len(CASES) > 30 and any(md.name == "README.md" for md, _, _ in CASES)


@pytest.mark.parametrize("md,line,argv", CASES, ids=[f"{md.relative_to(ROOT)}:{n}" for md, n, _ in CASES])
def test_documented_command_parses(md, line, argv):
    if "--help" in argv or "-h" in argv:
        return
    parser, args = parser_for(argv)
    try:
        parser.parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{md.relative_to(ROOT)}:{line}: {shlex.join(argv)} is refused by its parser (exit {e.code})")


@pytest.mark.parametrize("method", ["sre2l", "cda"])
def test_method_page_gives_the_scripts_recipe(method):
    """docs/methods/<method>.md's recover and relabel_eval commands are the script's own."""
    from tests.test_scripts import dry_run

    doc = {argv[2]: argv for _, argv in commands(ROOT / "docs" / "methods" / f"{method}.md")}
    script = dry_run(ROOT / "scripts" / "tinyimagenet" / f"{method}_resnet18_modified_ipc50.sh", GPU="cpu")
    ran: dict[str, list[str]] = {}
    for c in script:  # the first command of each module (the first seed's evaluation)
        if c[1] == "-m":
            ran.setdefault(c[2], c)
    for module, flags in (("recover", ("--init", "--lr", "--r-bn", "--iteration", "--jitter", "--batch-size",
                                       "--milestone", "--exp-name", "--arch-path", "--syn-data-path")),
                          ("relabel_eval", ("--syn-data-path", "--teacher-path", "--re-epochs", "--min-scale-crops",
                                            "--output"))):
        for f in flags:
            want = ran[module][ran[module].index(f) + 1]
            got = doc[module][doc[module].index(f) + 1] if f in doc[module] else "0"  # --milestone 0: the default
            same = float(got) == float(want) if want.replace(".", "").isdigit() else got == want
            assert same, (module, f, got, want)


def test_readme_fits_and_links_resolve():
    """The front page stays short, and every relative link in README.md and docs/ leads to a file."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    broken = []
    for md in DOCS:
        for m in re.finditer(r"\]\(([^)#\s]+)(#[^)]*)?\)", md.read_text()):
            target = m.group(1)
            if not target.startswith(("http://", "https://")) and not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, broken
