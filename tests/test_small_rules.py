"""One rule for each small thing: the per-epoch seed, the DataLoader worker default, error lines."""
from __future__ import annotations

import pytest

from common.train.seed import epoch_seed, sampler_seed


def test_epoch_and_sampler_seed_hand_computed():
    assert sampler_seed(0) == 0
    assert sampler_seed(1) == 100003
    assert sampler_seed(42) == 4200126
    assert epoch_seed(1, 0) == 100003
    assert epoch_seed(1, 5) == 100008
    assert epoch_seed(1, 5, rank=2) == 100003 + 5 + 15838
    assert epoch_seed(42, 3, 1) == 4200126 + 3 + 7919
    # distinct per epoch and per rank of one run
    seeds = {epoch_seed(7, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400


def test_one_worker_rule_for_every_stage(monkeypatch):
    import argparse

    from common.cli.flags import workers_from_args
    from common.compute import accel

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(accel, "usable_cpus", lambda: 8)
    unset, given = argparse.Namespace(workers=None), argparse.Namespace(workers=3)
    # CPU: squeeze's trainers augment in the main process (0), the other stages use cores - 1 up to 4
    assert workers_from_args(unset, "cpu", cpu_in_main=True) == 0
    assert workers_from_args(unset, "cpu") == 4
    # CUDA: every stage keeps the GPU fed the same way, cores - 1 up to 16
    assert workers_from_args(unset, "cuda", cpu_in_main=True) == workers_from_args(unset, "cuda") == 7
    # --workers wins everywhere
    assert workers_from_args(given, "cpu", cpu_in_main=True) == workers_from_args(given, "cuda") == 3
    monkeypatch.setattr(accel, "usable_cpus", lambda: 2)
    assert (workers_from_args(unset, "cpu"), workers_from_args(unset, "cpu", cpu_in_main=True)) == (1, 0)


def test_no_stage_has_its_own_worker_rule():
    """Every stage's worker count comes from common.cli.flags.workers_from_args."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    own_rule = re.compile(r"args\.workers\s+if|if\s+args\.workers\s+is|default_workers\(")
    offenders = [str(p.relative_to(root)) for d in ("squeeze", "recover", "rank_select", "relabel_eval")
                 for p in (root / d).glob("*.py") if own_rule.search(p.read_text())]
    assert offenders == []


# --------------------------------------------------------------------------- error lines after a progress bar

def _fails_mid_bar(close_first: bool):
    def main(argv):
        from tqdm import tqdm

        from common.cli.errors import UserError

        bar = tqdm(range(10), desc="epoch 1/3", leave=False, mininterval=0)
        for i in bar:
            if i == 4:
                if close_first:
                    bar.close()
                raise UserError("non-finite loss at batch 4: the training diverged; lower --lr")
    return main


def test_error_starts_its_own_line_after_an_open_or_closed_bar(capsys):
    from common.cli.errors import run_cli
    from tests.test_bad_inputs import assert_one_line_error, visible_lines

    for close_first in (False, True):
        capsys.readouterr()
        code = run_cli(_fails_mid_bar(close_first), [])
        err = capsys.readouterr().err
        assert "epoch 1/3" in err  # the bar did draw
        assert "\nerror: non-finite loss at batch 4" in err and err.endswith("lower --lr\n"), repr(err)
        assert err.count("error:") == 1 and "epoch 1/3" not in err.split("\nerror:")[1]  # not redrawn after it
        assert_one_line_error(code, visible_lines(err), "diverged", late=True)


def test_error_without_a_bar_is_the_only_output(capsys):
    from common.cli.errors import UserError, run_cli

    def main(argv):
        import sys

        print("a log line", file=sys.stderr)
        raise UserError(f"{argv[0]}: no such file")

    assert run_cli(main, ["x.pth"]) == 2
    assert capsys.readouterr().err == "a log line\nerror: x.pth: no such file\n"  # no blank line added

    def bad_flag(argv):
        raise UserError("--epochs 0: must be 1 or more")

    assert run_cli(bad_flag, []) == 2
    assert capsys.readouterr().err == "error: --epochs 0: must be 1 or more\n"


def test_diverged_relabel_eval_error_on_its_own_line(tmp_path, capsys, monkeypatch):
    """A diverged relabel_eval fails while its progress bar is drawing: the raw stderr has the error at
    the start of a line (log files and pipes keep the bar's text), and nothing follows it."""
    from common.cli.errors import run_cli
    from common.data.imagefolder import find_classes
    from relabel_eval.train import main
    from tests.conftest import make_teacher, make_tree
    from tests.test_bad_inputs import assert_one_line_error, visible_lines

    make_tree(tmp_path / "data" / "train", 3, 4, size=16, split=0)
    make_tree(tmp_path / "data" / "val", 3, 2, size=16, split=1)
    classes = find_classes(tmp_path / "data" / "train")
    make_teacher(tmp_path / "teacher.pth", classes, input_size=16, data_root=tmp_path / "data" / "train")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = run_cli(main, ["--syn-data-path", "data/train", "--val-dir", "data/val", "--teacher-path", "teacher.pth",
                          "--re-epochs", "1", "--re-batch-size", "4", "--workers", "0", "--device", "cpu",
                          "--output", "out/eval.json", "--adamw-lr", "1e30"])
    err = capsys.readouterr().err
    assert "conv3 seed 42:" in err  # the bar drew
    assert "\nerror: student conv3 seed 42: non-finite training loss" in err, repr(err[-300:])
    assert_one_line_error(code, visible_lines(err), "lower --adamw-lr", late=True)
    assert not (tmp_path / "out" / "eval.json").exists()


def test_squeeze_workers_change_nothing_and_are_not_in_the_fingerprint(tiny_data, tmp_path):
    """The same teacher with 0 or 2 DataLoader workers, and a run killed with one worker count continues
    with another (--workers is not a result flag), ending with the uninterrupted teacher bit for bit."""
    import torch

    from common.run.state import state_dir
    from models import read_checkpoint
    from squeeze import train as squeeze_train

    def argv(out, *extra):
        return ["--data-path", str(tiny_data), "--arch-name", "conv3", "--input-size", "16", "--epochs", "2",
                "--batch-size", "8", "--lr", "0.05", "--warmup-epochs", "1", "--device", "cpu",
                "--output", str(out), *extra]

    squeeze_train.main(argv(tmp_path / "w0.pth", "--workers", "0"))
    part = tmp_path / "w2.pth"
    squeeze_train.main(argv(part, "--workers", "2", "--max-epochs-this-run", "1"))
    assert (state_dir(part) / "last.pth").is_file() and not part.exists()
    squeeze_train.main(argv(part, "--workers", "0"))  # not refused: the same run
    a, b = read_checkpoint(tmp_path / "w0.pth")["model"], read_checkpoint(part)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_contracts_resume_table_is_one_table_with_every_long_command():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "contracts.md").read_text()
    lines = text[text.index("## Run state"):].splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("| command"))
    rows = []
    for line in lines[first:]:
        if not line.strip().startswith("|"):
            break
        rows.append(line.strip())
    assert rows[1].startswith("|---")
    commands = [r.split("|")[1].strip() for r in rows[2:]]
    assert sorted(commands) == sorted([
        "squeeze", "squeeze.ssl", "squeeze.linear_probe", "squeeze.trajectories", "squeeze.bn_stats", "rank_select",
        "rank_select.patches", "rank_select.difficulty", "recover", "recover.trajectory_matching", "relabel_eval",
        "relabel_eval --protocol pad", "relabel_eval.relabel"])
    # the table ends there: no second table of the same columns further down
    assert sum(line.strip().startswith("| command") for line in lines) == 1


@pytest.mark.parametrize("command, argv, message", [
    ("squeeze.ssl", ["--data-path", "d", "--output", "o.pth", "--epochs", "0"], "argument --epochs"),
    ("relabel_eval.baselines", ["random", "--train-dir", "/nonexistent/dd", "--ipc", "2", "--output-dir", "o"],
     "/nonexistent/dd: --train-dir does not exist"),
    ("common.viz", ["/nonexistent/dd", "--out", "g.png"], "/nonexistent/dd: ImageFolder root does not exist"),
])
def test_commands_through_run_stage_answer_before_torch(command, argv, message, tmp_path):
    """These commands, too, go through common.cli.entry.run_stage: --help, argument errors and missing
    paths end before torch is imported, with one error line and nothing written."""
    from tests.test_cli_fast import HEAVY, run

    res, imported, _ = run(["-m", command, "--help"], tmp_path)
    assert res.returncode == 0 and "usage" in res.stdout.lower() and not imported & set(HEAVY)
    res, imported, errors = run(["-m", command, *argv], tmp_path)
    assert res.returncode == 2 and len(errors) == 1 and message in errors[0], res.stderr[-300:]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert list(tmp_path.iterdir()) == []
