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


# ------------------------------------------------- every script on 4 GPUs (DRY_RUN=1 GPU=0,1,2,3)

# the stages that split their work over processes: on several GPUs they must run under torchrun
LONG = {"squeeze", "squeeze.ssl", "squeeze.linear_probe", "squeeze.trajectories", "rank_select", "rank_select.patches",
        "recover", "relabel_eval"}
# (module, flag) -> what the flag names: a path the stage writes, or one it reads
WRITES = {("squeeze", "--output"), ("squeeze.ssl", "--output"), ("squeeze.linear_probe", "--output"),
          ("rank_select", "--output-path"), ("rank_select", "--ranking-file"), ("rank_select.patches", "--output-path"),
          ("rank_select.difficulty", "--output"), ("squeeze.trajectories", "--output-dir"),
          ("recover.trajectory_matching", "--output-path"), ("relabel_eval", "--output"),
          ("squeeze.class_stats", "--output")}
READS = {("squeeze.evaluate", "--arch-path"), ("rank_select", "--ranker-path"), ("recover", "--init-data-path"),
         ("recover", "--arch-path"), ("rank_select.patches", "--observer-path"), ("squeeze.linear_probe", "--backbone"),
         ("squeeze.trajectories", "--difficulty"), ("recover.trajectory_matching", "--experts"),
         ("relabel_eval", "--syn-data-path"), ("relabel_eval", "--teacher-path"), ("relabel_eval", "--zca"),
         ("recover", "--class-stats"), ("squeeze.class_stats", "--arch-path")}
STAGE_SCRIPTS = [s for s in SCRIPTS if s.parent.name != "scripts"]


def run_dry(script: Path, **env) -> tuple[list[list[str]], str]:
    e = {**os.environ, "DRY_RUN": "1", **env}
    for var in ("IPC", "ITR", "ROUND_ITR", "NNODES", "NODE_RANK", "MASTER_ADDR", "SEED_PARALLEL", "EVAL_PATH",
                "LOG_DIR", "WANDB_PROJECT"):
        if var not in env:
            e.pop(var, None)
    res = subprocess.run(["bash", str(script)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{script}: {res.stderr[-2000:]}"
    return [shlex.split(line[2:]) for line in res.stdout.splitlines() if line.startswith("+ ")], res.stderr


def module_of(cmd: list[str]) -> str:
    return cmd[cmd.index("-m") + 1] if "-m" in cmd else cmd[1]


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def written_and_read(cmds: list[list[str]]) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """(step, path) written and (step, flag, path) read by each printed command, in order."""
    writes, reads = [], []
    for i, cmd in enumerate(cmds):
        m = module_of(cmd)
        for mod, f in WRITES:
            if mod == m and flag(cmd, f):
                writes.append((i, flag(cmd, f)))
        if m == "recover":
            writes.append((i, f"{flag(cmd, '--syn-data-path')}/{flag(cmd, '--exp-name')}"))
        if m == "rank_select.difficulty":
            writes.append((i, flag(cmd, "--output").removesuffix(".csv") + ".order.json"))
        for mod, f in READS:
            if mod == m and flag(cmd, f):
                reads.append((i, f, flag(cmd, f)))
        if m == "scripts/summarize.py":
            reads += [(i, "results", p) for p in cmd[4:]]
    return writes, reads


@pytest.mark.parametrize("script", STAGE_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_four_gpus_torchrun_paths_chain_and_ipc_override(script):
    cmds, err = run_dry(script, GPU="0,1,2,3")
    for cmd in cmds:
        m = module_of(cmd)
        if m == "relabel_eval" and script_method(script) == "pad":  # PAD's loop trains in one process
            assert cmd[:3] == ["python", "-m", "relabel_eval"], cmd
        elif m in LONG:
            assert cmd[:3] == ["torchrun", "--nproc_per_node=4", "-m"], cmd
        else:
            assert cmd[0] == "python", cmd
        parser, args = parser_for(cmd)
        parser.parse_args(args)
        assert "" not in cmd, f"empty argument in {cmd}"  # e.g. --teacher-path ''
        flags = [a for a in cmd if a.startswith("--") and "=" not in a]
        assert len(flags) == len(set(flags)), f"a flag given twice: {cmd}"
    assert {module_of(c) for c in cmds} & LONG
    # every path a stage reads is one an earlier stage wrote, or a file the script says must exist
    writes, reads = written_and_read(cmds)
    must_exist = set(re.findall(r"^note: (\S+) must hold", err, re.M))
    for step, f, path in reads:
        earlier = [w for s, w in writes if s < step]
        ok = path in earlier or any(path.startswith(w.rstrip("/") + "/") for w in earlier) or path in must_exist
        assert ok, f"{script.name}: {module_of(cmds[step])} {f} {path} is written by no earlier stage ({earlier})"
    # an IPC override lands in its own folders: no path of the default IPC is left
    default_ipc = int(re.search(r"^IPC=\$\{IPC:-(\d+)\}", script.read_text(), re.M).group(1))
    other = 10 if default_ipc != 10 else 50
    ocmds, _ = run_dry(script, GPU="0,1,2,3", IPC=str(other))
    assert [module_of(c) for c in ocmds] == [module_of(c) for c in cmds]
    stale = [a for c in ocmds for a in c if re.search(rf"ipc{default_ipc}(?!\d)", a)]
    assert not stale, f"IPC={other} still uses IPC {default_ipc} paths: {stale}"
    assert {flag(c, "--ipc") for c in ocmds if "--ipc" in c} == {str(other)}
    owrites, _ = written_and_read(ocmds)
    ipc_dependent = {w for _, w in writes} - {w for _, w in owrites}
    for c in cmds:  # the set and the evaluation results depend on IPC
        if module_of(c) == "relabel_eval":
            assert flag(c, "--output") in ipc_dependent and flag(c, "--syn-data-path") in ipc_dependent | {
                f"{flag(r, '--syn-data-path')}/{flag(r, '--exp-name')}" for r in cmds if module_of(r) == "recover"}


@pytest.mark.parametrize("script", [ROOT / "scripts" / "tinyimagenet" / "resnet18_modified_ipc50.sh",
                                    ROOT / "scripts" / "cifar100" / "scdd_resnet18_modified_ipc50.sh",
                                    ROOT / "scripts" / "cifar10" / "pad_conv3_in_ipc10.sh",
                                    ROOT / "scripts" / "imagenet-1k" / "rded_resnet18_ipc10.sh"],
                         ids=lambda p: p.name)
def test_multi_node_and_seed_parallel(script):
    node = dict(GPU="0,1,2,3", NNODES="2", MASTER_ADDR="10.0.0.1", MASTER_PORT="29511")
    on1, _ = run_dry(script, NODE_RANK="1", **node)
    on0, _ = run_dry(script, NODE_RANK="0", **node)
    head = ["torchrun", "--nproc_per_node=4", "--nnodes=2", "--node_rank={}", "--master_addr=10.0.0.1",
            "--master_port=29511", "-m"]
    for rank, cmds in ((0, on0), (1, on1)):
        for c in cmds:
            if module_of(c) in LONG and not (module_of(c) == "relabel_eval" and script_method(script) == "pad"):
                assert c[:7] == [h.format(rank) for h in head], c
    # one-process steps run on node 0 only (the other nodes wait for their outputs)
    assert all(c[0] == "torchrun" for c in on1)
    assert [c for c in on0 if c[0] == "torchrun"] == [c[:3] + ["--node_rank=0"] + c[4:] for c in on1]
    assert len(on0) > len(on1)
    # SEED_PARALLEL=ranks: one evaluation, each process training whole seeds
    cmds, _ = run_dry(script, GPU="0,1,2,3", SEED_PARALLEL="ranks")
    ev = [c for c in cmds if module_of(c) == "relabel_eval"]
    assert len(ev) == 1 and flag(ev[0], "--seed-parallel") == "ranks"
    parser, args = parser_for(ev[0])
    assert parser.parse_args(args).seeds == [3407, 4663, 2897]
    bad = subprocess.run(["bash", str(script)], cwd=ROOT, env={**os.environ, "DRY_RUN": "1", "SEED_PARALLEL": "x"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: SEED_PARALLEL")


def test_run_time_overrides_land_in_their_own_folders():
    script = ROOT / "scripts" / "tinyimagenet" / "resnet18_modified_ipc50.sh"
    cmds, _ = run_dry(script, GPU="cpu", IPC="10", ITR="1000", ROUND_ITR="250")
    sel = next(c for c in cmds if module_of(c) == "rank_select")
    rec = next(c for c in cmds if module_of(c) == "recover")
    ev = next(c for c in cmds if module_of(c) == "relabel_eval")
    assert flag(sel, "--output-path").endswith("init_medium_ipc10") and flag(rec, "--init-data-path") == \
        flag(sel, "--output-path")
    assert flag(rec, "--exp-name") == "ipc10_itr1000_ri250_medium" and flag(rec, "--round-iterations") == "250"
    assert flag(ev, "--syn-data-path").endswith("/ipc10_itr1000_ri250_medium")
    assert flag(ev, "--output").startswith(flag(ev, "--syn-data-path") + "_eval/")
    cmds, _ = run_dry(script, GPU="cpu", EVAL_PATH="/elsewhere/evals")
    assert all(flag(c, "--output").startswith("/elsewhere/evals/") for c in cmds if module_of(c) == "relabel_eval")


def test_reproduce_knows_every_method_of_the_table():
    import csv

    table = {(r.get("method") or "delt") for r in csv.DictReader((ROOT / "scripts" / "settings.csv").open())}
    assert {"delt", "sre2l", "cda", "rded", "scdd", "pad"} <= table
    env = {**os.environ, "DRY_RUN": "1", "GPU": "cpu"}
    for args, module in ((["imagenet-1k", "resnet18", "50", "sre2l"], "recover"),
                         (["tinyimagenet", "resnet18_modified", "50", "cda"], "recover"),
                         (["imagenet-1k", "resnet18", "50", "rded"], "rank_select.patches"),
                         (["tinyimagenet", "resnet18_modified", "50", "scdd"], "squeeze.ssl")):
        res = subprocess.run(["bash", "scripts/reproduce.sh", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True)
        assert res.returncode == 0 and f"-m {module} " in res.stdout, res.stderr
    bad = subprocess.run(["bash", "scripts/reproduce.sh", "tinyimagenet", "conv4", "10", "nosuch"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: METHOD nosuch")
    assert all(m in bad.stderr for m in table)


@pytest.mark.parametrize("script", ["cifar10/conv3_ipc10.sh", "cifar10/pad_conv3_in_ipc10.sh",
                                    "tinyimagenet/scdd_resnet18_modified_ipc50.sh"])
def test_log_dir_and_wandb_reach_every_training_stage(script):
    """LOG_DIR/WANDB_PROJECT add --log-dir/--wandb-project to each stage that writes curves, and only there;
    every such command still parses with the stage's own parser."""
    cmds, _ = run_dry(ROOT / "scripts" / script, GPU="0,1,2,3", LOG_DIR="runs/curves", WANDB_PROJECT="dd")
    curve_modules = {"squeeze", "squeeze.ssl", "recover", "recover.trajectory_matching", "relabel_eval"}
    seen = set()
    for cmd in cmds:
        module = module_of(cmd)
        if module in curve_modules:
            assert flag(cmd, "--log-dir") == "runs/curves" and flag(cmd, "--wandb-project") == "dd", cmd
            parser, args = parser_for(cmd)
            ns = parser.parse_args(args)
            assert ns.log_dir == "runs/curves" and ns.wandb_project == "dd"
            seen.add(module)
        else:
            assert "--log-dir" not in cmd and "--wandb-project" not in cmd, cmd
    assert seen & {"recover", "recover.trajectory_matching"} and "relabel_eval" in seen
    plain, _ = run_dry(ROOT / "scripts" / script, GPU="0,1,2,3")
    assert not any("--log-dir" in c for c in plain)


@pytest.mark.parametrize("ipc", [10, 50])
def test_fadrm_plus_scripts_rotate_the_released_teachers(ipc, tmp_path):
    """FADRM+ (the released recover_fadrm+_ipc{10,50}.sh): FADRM's recover flags with ResNet-18, DenseNet-121,
    ShuffleNet-V2 (x1.0) and MobileNet-V2 in turn, one --arch-name per --arch-path; the extra teachers must exist."""
    from recover.args import check_arch_names

    plus = ROOT / "scripts" / "imagenet-1k" / f"fadrm_plus_resnet18_ipc{ipc}.sh"
    cmds, err = run_dry(plus, GPU="cpu")
    rec = next(c for c in cmds if module_of(c) == "recover")
    parser, args = parser_for(rec)
    ns = parser.parse_args(args)
    check_arch_names(ns)
    assert ns.arch_name == ["resnet18", "densenet121", "shufflenet_v2_x1_0", "mobilenet_v2"]
    assert ns.arch_path == ["runs/teachers/imagenet-1k_resnet18.pth"] + [
        f"runs/teachers/imagenet-1k_{a}.pth" for a in ns.arch_name[1:]]
    assert all(f"note: {p} must hold pretrained" in err for p in ns.arch_path)  # DRY_RUN: noted, not refused
    # the same recover flags as the FADRM row, teachers and output name aside
    fadrm, _ = run_dry(ROOT / "scripts" / "imagenet-1k" / f"fadrm_resnet18_ipc{ipc}.sh", GPU="cpu")
    ref = parser.parse_args(parser_for(next(c for c in fadrm if module_of(c) == "recover"))[1])
    differ = {k for k in vars(ns) if getattr(ns, k) != getattr(ref, k)}
    assert differ == {"arch_name", "arch_path", "exp_name"}
    assert ns.stage_sizes == (200, 224, 200, 224) and ns.residual_alpha == 0.5 and ns.iteration == 2000
    assert "FADRM+ 50.0 / 60.1" in plus.read_text()
    # the extra teachers: a missing one stops the script with one error line naming the variable, before any stage
    teacher = tmp_path / "resnet18.pth"
    teacher.write_bytes(b"x")
    there = tmp_path / "densenet121.pth"
    there.write_bytes(b"x")
    env = {**os.environ, "GPU": "cpu", "TEACHER": str(teacher),
           "EXTRA_TEACHERS": f"{there} {tmp_path / 'missing.pth'}", "EXTRA_TEACHER_ARCHS": "densenet121 mobilenet_v2"}
    env.pop("DRY_RUN", None)
    res = subprocess.run(["bash", str(plus)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert res.stderr.splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: EXTRA_TEACHERS: ")
    assert str(tmp_path / "missing.pth") in res.stderr and f"{there} " not in res.stderr
    res = subprocess.run(["bash", str(plus)], cwd=ROOT, env={**env, "EXTRA_TEACHER_ARCHS": "densenet121"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.splitlines()) == 1
    assert "EXTRA_TEACHERS has 2 path(s) but EXTRA_TEACHER_ARCHS 1" in res.stderr
    # reproduce.sh addresses the rows as method fadrm_plus
    res = subprocess.run(["bash", "scripts/reproduce.sh", "imagenet-1k", "resnet18", str(ipc), "fadrm_plus"],
                         cwd=ROOT, env={**os.environ, "DRY_RUN": "1", "GPU": "cpu"}, capture_output=True, text=True)
    assert res.returncode == 0 and "-m recover " in res.stdout and "imagenet-1k_mobilenet_v2.pth" in res.stdout


# FADRM's released relabel + training (relabel/scripts/imagenet1k/*.sh, relabel/relabel.py, validate/train_fkd.py):
# train-mode teachers with BN on each half (8) of a batch of 16, which the student forwards as two micro-batches
# of 8 (--gradient-accumulation-steps 2) with one AdamW step (lr 1e-3) per 16 images, KL at T 20, no RandAugment
FADRM_RECIPE = dict(teacher_mode="train", teacher_bn_group=8, re_batch_size=8, re_accum_steps=2, bn_double_update=False,
                    temperature=20.0, adamw_lr=0.001, adamw_weight_decay=0.01, use_rand_augment=False,
                    min_scale_crops=0.08, max_scale_crops=1.0, mix_type="cutmix", cutmix=1.0, re_epochs=300,
                    protocol="delt", teacher_weights=None, sgd=False, cos=True)


@pytest.mark.parametrize("ipc", [10, 50])
@pytest.mark.parametrize("method", ["fadrm", "fadrm_classbn", "fadrm_plus"])
def test_fadrm_scripts_evaluate_with_the_released_relabel_recipe(method, ipc):
    """The FADRM rows' relabel_eval commands (EVAL_FLAGS from the table's eval_args) parse with the stage's own
    parser and check, and carry FADRM's recipe; fadrm_plus (EVAL_TEACHERS=all) labels with the four teachers
    recover rotates, one --arch-name each; the other rows keep TEACHER alone, its name a plain string."""
    from relabel_eval.args import check_teacher_flags, teacher_path_list

    script = ROOT / "scripts" / "imagenet-1k" / f"{method}_resnet18_ipc{ipc}.sh"
    cmds, _ = run_dry(script, GPU="cpu")
    rec = next(c for c in cmds if module_of(c) == "recover")
    evals = [c for c in cmds if module_of(c) == "relabel_eval"]
    assert len(evals) == 3
    for cmd in evals:
        parser, args = parser_for(cmd)
        ns = parser.parse_args(args)
        check_teacher_flags(ns)  # --arch-name count, weights, group
        # the release's cosine: 0.5 (1 + cos(pi e / (eta E))), eta 2 at IPC 10 (our default), 1 at IPC 50
        assert {k: getattr(ns, k) for k in FADRM_RECIPE} == {**FADRM_RECIPE, "cos": True if ipc == 10 else "full"}, cmd
        if method == "fadrm_plus":
            assert ns.arch_name == ["resnet18", "densenet121", "shufflenet_v2_x1_0", "mobilenet_v2"]
            rotated = rec[rec.index("--arch-path") + 1:rec.index("--arch-path") + 5]  # recover's teachers
            assert teacher_path_list(ns) == rotated == [f"runs/teachers/imagenet-1k_{a}.pth" for a in ns.arch_name]
        else:
            assert ns.arch_name == "resnet18" and ns.teacher_paths is None
            assert ns.teacher_path == "runs/teachers/imagenet-1k_resnet18.pth"
    text = script.read_text()
    assert re.search(r'^EVAL_FLAGS="--teacher-mode train ', text, re.M) and re.search(r"^RAND_AUG=$", text, re.M)
    assert bool(re.search(r"^EVAL_TEACHERS=all ", text, re.M)) == (method == "fadrm_plus")
    # on several GPUs the seeds run whole in each process (train-mode BN needs the recipe's whole batches)
    cmds, err = run_dry(script, GPU="0,1,2,3")
    ev = [c for c in cmds if module_of(c) == "relabel_eval"]
    assert len(ev) == 1 and flag(ev[0], "--seed-parallel") == "ranks" and "SEED_PARALLEL=ranks" in err
    assert parser_for(ev[0])[0].parse_args(parser_for(ev[0])[1]).seeds == [3407, 4663, 2897]


def test_rows_without_an_eval_recipe_are_unchanged():
    """DELT's rows have no EVAL_FLAGS / EVAL_TEACHERS: eval-mode TEACHER alone, RandAugment, DDP on 4 GPUs."""
    script = ROOT / "scripts" / "imagenet-1k" / "resnet18_ipc10.sh"
    assert "EVAL_FLAGS" not in script.read_text() and "EVAL_TEACHERS" not in script.read_text()
    cmds, err = run_dry(script, GPU="0,1,2,3")
    ev = [c for c in cmds if module_of(c) == "relabel_eval"]
    assert len(ev) == 3 and "ranks" not in " ".join(ev[0]) and "SEED_PARALLEL=ranks" not in err
    ns = parser_for(ev[0])[0].parse_args(parser_for(ev[0])[1])
    assert ns.teacher_mode == "eval" and ns.teacher_paths is None and ns.arch_name == "resnet18" and ns.use_rand_augment


def test_fadrm_plus_labels_need_the_extra_teachers(tmp_path):
    """STAGES=validate with EVAL_TEACHERS=all checks EXTRA_TEACHERS before any stage; a bad EVAL_TEACHERS is one
    error line."""
    plus = ROOT / "scripts" / "imagenet-1k" / "fadrm_plus_resnet18_ipc10.sh"
    teacher = tmp_path / "resnet18.pth"
    teacher.write_bytes(b"x")
    env = {**os.environ, "GPU": "cpu", "STAGES": "validate", "TEACHER": str(teacher),
           "EXTRA_TEACHERS": str(tmp_path / "missing.pth"), "EXTRA_TEACHER_ARCHS": "densenet121"}
    env.pop("DRY_RUN", None)
    res = subprocess.run(["bash", str(plus)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("error: EXTRA_TEACHERS: ") and "missing.pth" in res.stderr
    edited = plus.read_text().replace("\nEVAL_TEACHERS=all ", "\nEVAL_TEACHERS=some ")  # the script's $0 kept
    res = subprocess.run(["bash", "-c", edited, str(plus)], cwd=ROOT, env={**env, "DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: EVAL_TEACHERS=some")
