"""scripts/: every script is valid bash, matches the settings table, and passes only flags
that the stage's own argument parser defines (checked by a DRY_RUN=1 run of each script)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in (ROOT / "scripts").rglob("*.sh") if p.name != "lib.sh")
BENCH = sorted((ROOT / "bench").glob("*.sh"))


def parser_for(command: list[str]):
    """The argparse parser behind a printed command, and the arguments to give it."""
    if command[0] == "torchrun":
        i = command.index("-m")
        command = ["python", *command[i:]]
    assert command[0] in ("python", "python3"), command
    if command[1] == "-m":
        module, args = command[2], command[3:]
        pkg_main = ROOT / module.replace(".", "/") / "__main__.py"
        if pkg_main.is_file():  # a stage package: its __main__ names the parser module (or the module with main())
            text = pkg_main.read_text()
            m = re.search(r"run_stage\(\s*\"([\w.]+)\"", text) or re.search(r"from (\S+) import main", text)
            module = m.group(1)
        return importlib.import_module(module).get_args_parser(), args
    path = ROOT / command[1]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_args_parser(), command[2:]


def dry_run(script: Path, **env) -> list[list[str]]:
    e = {**os.environ, "DRY_RUN": "1", **env}
    res = subprocess.run(["bash", str(script)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{script}: {res.stderr[-2000:]}"
    cmds = [shlex.split(line[2:]) for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert cmds, f"{script} printed no command"
    return cmds


@pytest.mark.parametrize("script", SCRIPTS + BENCH + [ROOT / "scripts" / "lib.sh"], ids=lambda p: p.name)
def test_bash_syntax(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_scripts_match_settings_table():
    res = subprocess.run(["python", "scripts/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = (ROOT / "scripts" / "settings.csv").read_text().strip().splitlines()[1:]
    assert len([s for s in SCRIPTS if s.parent.name != "scripts"]) == len(rows)


def script_method(script: Path) -> str:
    """The method of a generated script, from its file-name prefix (DELT's have none)."""
    prefix = script.name.split("_", 1)[0]
    return prefix if prefix in ("rded", "pad", "scdd", "sre2l", "cda") else "delt"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.parent.name != "scripts"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_printed_command_parses(script):
    cmds = dry_run(script, GPU="cpu")
    modules = [c[2] if c[1] == "-m" else c[1] for c in cmds]
    kind = script_method(script)
    rded, pad = kind == "rded", kind == "pad"
    needed = {"squeeze.evaluate", "relabel_eval"}
    if pad:
        needed = {"rank_select.difficulty", "squeeze.trajectories", "recover.trajectory_matching", "relabel_eval"}
    elif rded:
        needed.add("rank_select.patches")
    else:
        needed.add("recover")
        if kind == "delt":  # SRe2L, CDA and SC-DD recover from noise: no selection
            needed.add("rank_select")
    assert needed <= set(modules)
    evals, recovers = [], []
    for cmd in cmds:
        parser, args = parser_for(cmd)
        parsed = parser.parse_args(args)  # SystemExit (test failure) on any flag the parser does not define
        if cmd[:3] == ["python", "-m", "relabel_eval"]:
            evals.append(parsed)
        if cmd[:3] == ["python", "-m", "recover"]:
            recovers.append(parsed)
    text = script.read_text()
    own = {"rded": ("FACTOR",), "delt": ("INIT_PATH", "ITR", "ROUND_ITR", "EXP_NAME")}.get(kind, ("ITR", "EXP_NAME"))
    for var in ("DATA_ROOT", "TEACHER", "SYN_PATH", "EVAL_PATH", "IPC", "GPU", "SEED_PARALLEL", "SEEDS", *own):
        assert re.search(rf"^{var}=", text, re.M), f"{script}: {var} not at the top"
    assert [a.seed for a in evals] == [3407, 4663, 2897]
    # each method is evaluated under its own released protocol
    assert {a.protocol or "delt" for a in evals} == {"rded" if rded else "pad" if pad else "delt"}
    # results beside the set, never inside it
    for a in evals:
        set_, out = Path(a.syn_data_path).resolve(), Path(a.output).resolve()
        assert set_ not in out.parents and out.parent == Path(f"{set_}_eval"), (a.syn_data_path, a.output)
    if pad:  # the experts' ZCA is applied to the set and val/ alike; no teacher
        assert all(a.zca and a.zca.endswith("experts/zca.pt") and a.teacher_path is None for a in evals)
    if rded:
        assert all(a.factor is not None and not a.use_rand_augment for a in evals)
    if kind in ("sre2l", "cda", "scdd"):
        assert all(r.init == "noise" and not r.use_early_late for r in recovers)
        assert all(r.milestone == (1 if kind == "cda" else 0) for r in recovers) or kind == "scdd"


def test_multi_gpu_uses_torchrun_and_ipc1_has_no_rounds():
    cmds = dry_run(ROOT / "scripts" / "imagenet-1k" / "resnet18_ipc50.sh", GPU="0,1,2,3")
    rec = [c for c in cmds if "recover" in c]
    assert rec and rec[0][:3] == ["torchrun", "--nproc_per_node=4", "-m"]
    ipc1 = dry_run(ROOT / "scripts" / "tinyimagenet" / "conv4_ipc1.sh", GPU="cpu")
    rec1 = [c for c in ipc1 if "recover" in c][0]
    assert "--use-early-late" not in rec1 and "--round-iterations" not in rec1


def test_reproduce_dispatches_and_rejects_unknown():
    res = subprocess.run(["bash", "scripts/reproduce.sh", "tinyimagenet", "conv4", "10"], cwd=ROOT,
                         env={**os.environ, "DRY_RUN": "1", "GPU": "cpu"}, capture_output=True, text=True)
    assert res.returncode == 0 and "--ipc 10" in res.stdout
    bad = subprocess.run(["bash", "scripts/reproduce.sh", "tinyimagenet", "conv4", "7"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no published setting" in bad.stderr
    res = subprocess.run(["bash", "scripts/reproduce.sh", "tinyimagenet", "conv4", "10", "rded"], cwd=ROOT,
                         env={**os.environ, "DRY_RUN": "1", "GPU": "cpu"}, capture_output=True, text=True)
    assert res.returncode == 0 and "rank_select.patches" in res.stdout and "--protocol rded" in res.stdout


@pytest.mark.parametrize("script", [ROOT / "scripts" / "quickstart.sh", ROOT / "bench" / "cpu_table.sh",
                                    ROOT / "bench" / "scdd_tin10.sh"],
                         ids=lambda p: p.name)
def test_pipeline_dry_runs_parse(script, tmp_path):
    cmds = dry_run(script, OUT=str(tmp_path / "out"), TABLE=str(tmp_path / "table.md"))
    for cmd in cmds:
        parser, args = parser_for(cmd)
        parser.parse_args(args)


def test_scdd_scripts_relabel_with_a_supervised_teacher():
    cmds = dry_run(ROOT / "scripts" / "cifar100" / "scdd_resnet18_modified_ipc50.sh", GPU="cpu")
    modules = [c[2] for c in cmds if c[1] == "-m"]
    assert modules[:3] == ["squeeze.ssl", "squeeze.linear_probe", "squeeze"] and "rank_select" not in modules
    rec = next(c for c in cmds if c[2] == "recover")
    rel = [c for c in cmds if c[2] == "relabel_eval"]
    recovery_teacher = rec[rec.index("--arch-path") + 1]
    assert recovery_teacher.endswith("_scdd.pth") and rec[rec.index("--init") + 1] == "noise"
    assert rec[rec.index("--lr") + 1] == "0.4" and rec[rec.index("--r-bn") + 1] == "0.005"
    assert rec[rec.index("--easy2hard-mode") + 1] == "step" and rec[rec.index("--milestone") + 1] == "1"  # no crop
    assert all(c[c.index("--teacher-path") + 1] != recovery_teacher for c in rel) and len(rel) == 3
    im = dry_run(ROOT / "scripts" / "imagenet-1k" / "scdd_resnet50_ipc50.sh", GPU="cpu")
    rec = next(c for c in im if c[2] == "recover")
    assert [rec[rec.index(f) + 1] for f in ("--arch-name", "--lr", "--r-bn", "--iteration", "--batch-size")] == \
        ["resnet50", "0.1", "0.01", "1000", "50"]
    rel = next(c for c in im if c[2] == "relabel_eval")
    assert rel[rel.index("--arch-name") + 1] == "resnet18" and "--use-rand-augment" not in rel
