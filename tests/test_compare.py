"""scripts/compare.sh and scripts/compare_table.py: every printed command parses with its stage's own parser,
the equal-budget rule, every set under every protocol; the table's numbers from hand-made result files
(hand-computed means, sample stds, DD-Ranking's LRS and ARS); a tiny end-to-end compare on generated data."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_tree
from tests.test_scripts import dry_run, parser_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "compare.sh"
ALL = "full random top medium min herding kcenter sre2l cda delt rded scdd datm pad"


def table_module():
    spec = importlib.util.spec_from_file_location("compare_table", ROOT / "scripts" / "compare_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_all(cmds):
    parsed = []
    for cmd in cmds:
        parser, args = parser_for(cmd)
        parsed.append((cmd, parser.parse_args(args)))  # SystemExit (a failure) on any flag it does not define
    return parsed


def test_dry_run_prints_commands_every_stage_parser_accepts(tmp_path):
    data = tmp_path / "data"
    make_tree(data / "train", 3, 2)  # 3 classes: the budget divides by classes x IPC
    cmds = dry_run(SCRIPT, GPU="cpu", DATA_ROOT=str(data), OUT=str(tmp_path / "out"), METHODS=ALL, IPC="10",
                   BUDGET="6000", SSL_EPOCHS="2", SEEDS="1 2 3")
    parsed = parse_all(cmds)
    modules = {c[2] if c[1] == "-m" else c[1] for c, _ in parsed}
    assert {"squeeze", "rank_select", "recover", "rank_select.patches", "squeeze.ssl", "squeeze.linear_probe",
            "rank_select.difficulty", "squeeze.trajectories", "recover.trajectory_matching", "relabel_eval",
            "relabel_eval.baselines", "relabel_eval.diversity", "common.viz", "scripts/compare_table.py"} <= modules
    # one teacher: trained once, used by every teacher-based stage
    teacher = str(tmp_path / "out" / "teacher.pth")
    assert sum(1 for c, _ in parsed if c[:3] == ["python", "-m", "squeeze"]) == 1
    recovers = {a.exp_name: a for c, a in parsed if c[:3] == ["python", "-m", "recover"]}
    assert set(recovers) == {"sre2l", "cda", "delt", "scdd"}
    # the equal-budget rule: 6000 image-iterations / (3 classes x IPC 10) = 200 iterations each
    assert {a.iteration for a in recovers.values()} == {200}
    assert recovers["delt"].use_early_late and not recovers["sre2l"].use_early_late
    assert recovers["cda"].milestone == 1 and recovers["sre2l"].milestone == 0
    assert all(a.arch_path == [teacher] for k, a in recovers.items() if k != "scdd")  # --arch-path A [B ...]
    sel = {a.selection_criteria for c, a in parsed if c[:3] == ["python", "-m", "rank_select"]}
    assert sel == {"top", "medium", "min", "herding", "kcenter"}
    # every set under every protocol; the full training set under soft and hard
    evals = [a for c, a in parsed if c[:3] == ["python", "-m", "relabel_eval"]]
    by_out = {Path(a.output).relative_to(tmp_path / "out" / "eval").as_posix(): a for a in evals}
    for m in ALL.split():
        protos = ("soft", "hard") if m == "full" else ("soft", "hard", "rded", "pad", "noaug")
        for p in protos:
            names = [f"{m}/{p}_d{i}.json" for i in range(3)] if m == "random" else [f"{m}/{p}.json"]
            for n in names:
                assert n in by_out, n
    assert not [n for n in by_out if n.startswith("full/") and not n.endswith(("soft.json", "hard.json"))]
    assert by_out["delt/hard.json"].label_mode == "hard" and by_out["delt/soft.json"].label_mode in (None, "soft")
    assert by_out["delt/rded.json"].protocol == "rded" and by_out["delt/pad.json"].zca.endswith("experts_pad/zca.pt")
    assert by_out["delt/noaug.json"].mix_type == "none" and by_out["delt/noaug.json"].no_image_aug
    assert [by_out[f"random/soft_d{i}.json"].seeds for i in range(3)] == [[1], [2], [3]]
    assert by_out["pad/pad.json"].learning_rate != 0.01 and by_out["top/pad.json"].learning_rate == 0.01
    assert all(a.teacher_path == teacher for a in by_out.values() if a.protocol != "pad")
    assert all(a.teacher_path is None for a in by_out.values() if a.protocol == "pad")
    table = [a for c, a in parsed if c[1] == "scripts/compare_table.py"]
    assert len(table) == 1 and table[0].budget == 6000 and table[0].itr == 200 and table[0].methods == ALL.split()


def test_dry_run_multi_gpu_uses_torchrun_and_scdd_needs_an_ssl_teacher(tmp_path):
    cmds = dry_run(SCRIPT, GPU="0,1", OUT=str(tmp_path / "out"), METHODS="medium delt scdd pad", PROTOCOLS="soft pad")
    parse_all(cmds)
    launched = {(c[0], c[3]) for c in cmds if c[0] == "torchrun"}
    assert {("torchrun", "rank_select"), ("torchrun", "recover"), ("torchrun", "relabel_eval")} <= launched
    # PAD's protocol trains in one process; no SSL teacher given: SC-DD is skipped, not failed
    assert all(c[0] == "python" for c in cmds if "--zca" in c and "relabel_eval" in c)
    assert not [c for c in cmds[:-1] if "squeeze.ssl" in c or "scdd" in " ".join(c)]
    assert "scdd" in cmds[-1][cmds[-1].index("--methods") + 1]  # its row is in the table (status: skipped)


def test_full_seeds_sets_only_the_full_rows_seeds(tmp_path):
    cmds = dry_run(SCRIPT, GPU="cpu", OUT=str(tmp_path / "out"), METHODS="full top", PROTOCOLS="soft hard",
                   SEEDS="1 2 3", FULL_SEEDS="1")
    seeds = {Path(a.output).relative_to(tmp_path / "out" / "eval").as_posix(): a.seeds
             for c, a in parse_all(cmds) if c[:3] == ["python", "-m", "relabel_eval"]}
    assert seeds == {"full/soft.json": [1], "full/hard.json": [1], "top/soft.json": [1, 2, 3],
                     "top/hard.json": [1, 2, 3]}


@pytest.mark.parametrize("env,flag", [({"METHODS": "delt bogus"}, "METHODS"), ({"PROTOCOLS": "soft x"}, "PROTOCOLS"),
                                      ({"BUDGET": "lots"}, "BUDGET"), ({"GPU": "zero"}, "GPU")])
def test_bad_settings_are_one_line_errors_before_any_command(tmp_path, env, flag):
    e = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), **env}
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "+ " not in res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and flag in errors[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the table on hand-made files

def results(path: Path, finals, bests=None, student="conv3"):
    bests = bests or finals
    runs = [{"seed": i, "final_top1": f, "best_top1": b} for i, (f, b) in enumerate(zip(finals, bests))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": "relabel_eval", "students": {student: {"summary": {}, "runs": runs}}}))


def image_folder(root: Path, sizes):
    for i, n in enumerate(sizes):
        (root / f"c{i}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i}" / "a.png").write_bytes(b"x" * n)
    (root / "manifest.json").write_text("{}")  # not an image: not counted


def test_table_from_hand_made_results(tmp_path):
    mod = table_module()
    out = tmp_path / "out"
    ev = out / "eval"
    # full: soft 80, 82; hard 70, 72 -> hard mean 71
    results(ev / "full" / "soft.json", [80.0, 82.0])
    results(ev / "full" / "hard.json", [70.0, 72.0])
    # random: draw i, seed i (two files per protocol): soft 40, 44 -> 42 +- 2.828; noaug 30, 34 -> 32
    for i, (s, h, n) in enumerate([(40.0, 30.0, 30.0), (44.0, 34.0, 34.0)]):
        results(ev / "random" / f"soft_d{i}.json", [s])
        results(ev / "random" / f"hard_d{i}.json", [h])
        results(ev / "random" / f"noaug_d{i}.json", [n])
        image_folder(out / "sets" / f"random_d{i}", [100, 100])
    # delt: soft 50, 52, 54 (best 55, 56, 57) -> 52 +- 2; hard 41; noaug 38; rded 45
    results(ev / "delt" / "soft.json", [50.0, 52.0, 54.0], [55.0, 56.0, 57.0])
    results(ev / "delt" / "hard.json", [40.0, 41.0, 42.0])
    results(ev / "delt" / "noaug.json", [38.0, 38.0, 38.0])
    results(ev / "delt" / "rded.json", [45.0, 45.0, 45.0])
    image_folder(out / "sets" / "delt", [300, 200])
    (out / "sets" / "delt" / "manifest.json").write_text(json.dumps(
        {"stage": "recover", "status": "complete", "image_iterations": 3000, "planned_image_iterations": 3000,
         "wall_time_s": 12.5}))
    image_folder(out / "sets" / "medium", [10, 10])
    (out / "sets" / "medium" / "manifest.json").write_text(json.dumps({"stage": "rank_select", "wall_time_s": 2.5}))
    (out / "stats").mkdir(parents=True)
    (out / "stats" / "delt.jsonl").write_text(
        json.dumps({"step": "recover", "wall_s": 20.0, "peak_rss_mb": 900.0, "rc": 0}) + "\n"
        + json.dumps({"step": "recover", "wall_s": 5.0, "peak_rss_mb": 1200.0, "rc": 1}) + "\n")  # failed try
    (out / "ranking.csv").write_text("path,class\n" + "".join(f"c/{i}.png,c\n" for i in range(100)))
    # pad: learned labels and lr beside the set; cost from its steps and the shared experts
    results(ev / "pad" / "soft.json", [45.0])
    image_folder(out / "sets" / "pad", [50, 50])
    (out / "sets" / "pad.labels.pt").write_bytes(b"l" * 40)
    (out / "sets" / "pad.lr.pt").write_bytes(b"r" * 2)
    (out / "stats" / "pad.jsonl").write_text(json.dumps({"step": "match", "wall_s": 30.0, "peak_rss_mb": 500.0,
                                                         "rc": 0}) + "\n")
    (out / "stats" / "experts_pad.jsonl").write_text(json.dumps({"step": "experts", "wall_s": 70.0,
                                                                 "peak_rss_mb": 700.0, "rc": 0}) + "\n")
    # cda failed: its row says so and the others are unaffected
    (out / "status").mkdir()
    (out / "status" / "cda.json").write_text(json.dumps({"method": "cda", "status": "failed", "rc": 2,
                                                         "note": "exit 2"}))
    (out / "diversity.json").write_text(json.dumps({"sets": {"delt": {"intra_class_mean": 0.7,
                                                                      "inter_class_centroid_cosine": 0.3}}}))
    assert mod.main(["table", "--out", str(out), "--methods", "full random delt cda pad", "--protocols",
                     "soft hard rded noaug", "--ipc", "10", "--itr", "100", "--budget", "3000",
                     "--seeds", "1 2 3", "--num-classes", "3"]) == 0
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert list(rows) == ["full", "random", "delt", "cda", "pad"]
    d, r, f = rows["delt"], rows["random"], rows["full"]
    assert d["soft_top1_mean"] == pytest.approx(52.0) and d["soft_top1_std"] == pytest.approx(2.0)
    assert d["soft_best_top1_mean"] == pytest.approx(56.0) and d["hard_top1_mean"] == pytest.approx(41.0)
    assert d["rded_top1_mean"] == pytest.approx(45.0) and d["noaug_top1_mean"] == pytest.approx(38.0)
    assert r["soft_top1_mean"] == pytest.approx(42.0) and r["soft_top1_std"] == pytest.approx(math.sqrt(8.0))
    assert f["hard_top1_mean"] == pytest.approx(71.0) and d["seeds"] == 3 and r["seeds"] == 2
    # LRS by hand: IOR = .52 - .42 = .10, HLR = .71 - .41 = .30, alpha = .5 (.10) - .5 (.30) = -.10
    e = math.e
    assert d["ior"] == pytest.approx(0.10) and d["hlr"] == pytest.approx(0.30)
    assert d["lrs"] == pytest.approx((math.exp(-0.10) - 1 / e) / (e - 1 / e))
    # ARS by hand: beta = .5 (.52 - .42) + .5 (.38 - .32) = .08
    assert d["ars"] == pytest.approx((math.exp(0.08) - 1 / e) / (e - 1 / e))
    assert r["ior"] == pytest.approx(0.0) and f["lrs"] is None
    # cost: recover's own wall time + the medium selection's; passes: image-iterations + the ranking's forwards
    assert d["synthesis_seconds"] == pytest.approx(15.0) and d["teacher_passes"] == 3100
    assert d["planned_image_iterations"] == 3000 and d["budgeted"] and d["budget"] == 3000
    assert d["peak_memory_mb"] == 900.0  # the failed try's line is not counted
    assert d["image_bytes"] == 500 and d["images"] == 2 and d["label_bytes"] == 0
    assert r["image_bytes"] == 200 and r["synthesis_seconds"] == 0 and not r["budgeted"]
    p = rows["pad"]
    assert p["synthesis_seconds"] == pytest.approx(100.0) and p["peak_memory_mb"] == 700.0
    assert p["label_bytes"] == 42 and p["teacher_passes"] is None and not p["budgeted"]
    assert d["intra_class_cosine"] == 0.7 and d["inter_class_cosine"] == 0.3
    assert rows["cda"]["status"] == "failed" and rows["cda"]["soft_top1_mean"] is None
    # csv: every column, the same numbers; md: budget and spent for the budgeted row; both figures
    with open(out / "compare.csv") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(mod.COLUMNS) and [t["method"] for t in table] == list(rows)
    assert float(table[2]["lrs"]) == pytest.approx(d["lrs"])
    md = (out / "compare.md").read_text()
    assert "delt (budget 3000, spent 3100)" in md and "52.00 +- 2.00" in md and "failed: exit 2" in md
    for png in ("compare_cost.png", "compare_protocols.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # every row (spelled as METHODS spells it) and every column, also for rows that have nothing yet
    assert mod.main(["table", "--out", str(out), "--methods", ALL, "--ipc", "10"]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ALL.split()
    assert all(list(r) == list(mod.COLUMNS) for r in doc["rows"])
    for col in ("soft_top1_mean", "soft_top1_std", "hard_top1_mean", "rded_top1_mean", "pad_top1_mean", "lrs", "ars",
                "synthesis_seconds", "teacher_passes", "peak_memory_mb", "image_bytes", "label_bytes"):
        assert col in mod.COLUMNS
    missing = {r["method"]: r for r in doc["rows"]}["herding"]
    assert missing["status"] == "missing" and missing["soft_top1_mean"] is None and missing["label_bytes"] is None


def test_measure_records_wall_time_peak_memory_and_exit_code(tmp_path):
    mod = table_module()
    stats = tmp_path / "s.jsonl"
    assert mod.main(["measure", "--stats", str(stats), "--step", "x", "--", "python", "-c", "pass"]) == 0
    assert mod.main(["measure", "--stats", str(stats), "--step", "y", "--", "python", "-c", "exit(3)"]) == 3
    lines = [json.loads(x) for x in stats.read_text().splitlines()]
    assert [(x["step"], x["rc"]) for x in lines] == [("x", 0), ("y", 3)]
    assert lines[0]["wall_s"] > 0 and lines[0]["peak_rss_mb"] > 1


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_tiny_end_to_end_compare_and_rerun_does_no_work(tmp_path):
    data = tmp_path / "data"
    make_tree(data / "train", 3, 6)
    make_tree(data / "val", 3, 2, split=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU": "cpu", "DATA_ROOT": str(data), "OUT": str(tmp_path / "out"),
           "IPC": "2", "TEACHER_EPOCHS": "1", "TEACHER_FLAGS": "--batch-size 9 --lr 0.05", "RE_EPOCHS": "1",
           "SEEDS": "0 1", "METHODS": "full random herding", "PROTOCOLS": "soft hard"}
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert list(rows) == ["full", "random", "herding"]
    for m in rows:
        assert rows[m]["status"] == "ok" and rows[m]["soft_top1_mean"] is not None
        assert rows[m]["hard_top1_mean"] is not None
    assert rows["herding"]["lrs"] is not None and rows["herding"]["teacher_passes"] == 18
    first = (out / "compare.md").read_text()
    again = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert [x for x in again.stdout.splitlines() if x.startswith("+ ")] == [
        x for x in again.stdout.splitlines() if x.startswith("+ python scripts/compare_table.py")]
    assert (out / "compare.md").read_text() == first


@pytest.mark.slow
def test_a_failed_method_is_reported_in_its_row_and_the_others_go_on(tmp_path):
    data = tmp_path / "data"
    make_tree(data / "train", 3, 2)
    make_tree(data / "val", 3, 2, split=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU": "cpu", "DATA_ROOT": str(data), "OUT": str(tmp_path / "out"),
           "IPC": "2", "TEACHER_EPOCHS": "1", "TEACHER_FLAGS": "--batch-size 3 --lr 0.05", "RE_EPOCHS": "1",
           "SEEDS": "0", "METHODS": "rded random", "PROTOCOLS": "soft", "MIPC": "1", "NUM_CROP": "1"}
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]  # the table is written; the exit code reports the failure
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]}
    assert rows["rded"]["status"] == "failed" and "error: class" in rows["rded"]["note"]
    assert rows["random"]["status"] == "ok" and rows["random"]["soft_top1_mean"] is not None
