"""PAD's long commands on the shared run state (common.run.state): killed with SIGKILL at any moment, the same
command ends with the output of an uninterrupted run, bit for bit; another setting is refused by name."""
from __future__ import annotations

import json

import pytest
import torch

from common.cli.errors import UserError
from common.run.state import state_dir
from tests.conftest import make_tree
from tests.test_runstate import kill_midway

# the killed subprocess runs with one thread; the in-process runs must too (float sums differ)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pad_runstate")
    make_tree(root / "data" / "train", 3, 6, size=16)
    make_tree(root / "data" / "val", 3, 2, size=16, split=1)
    return root / "data"


def expert_args(data) -> list[str]:
    return ["--data-path", str(data), "--num-experts", "2", "--epochs", "6", "--batch-train", "6", "--input-size",
            "16", "--device", "cpu", "--output-dir"]


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds",)}


def test_sigkill_trajectories(data, tmp_path):
    from squeeze.trajectories import main

    argv = expert_args(data)
    main(argv + [str(tmp_path / "ref")])
    out = tmp_path / "killed"
    kill_midway("squeeze.trajectories", argv + [str(out)], lambda: (state_dir(out) / "expert_000.pt").exists())
    assert not (out / "expert_000.pt").exists() and not list(out.glob(".*"))  # the state is beside, not inside
    main(argv + [str(out)])  # the same command
    for i in range(2):
        a = torch.load(tmp_path / "ref" / f"expert_{i:03d}.pt", weights_only=True)
        b = torch.load(out / f"expert_{i:03d}.pt", weights_only=True)
        assert torch.equal(a, b)
        ja, jb = (json.loads((d / f"expert_{i:03d}.json").read_text()) for d in (tmp_path / "ref", out))
        assert without_time(ja) == without_time(jb)
    assert not state_dir(out).exists()
    # another setting on an unfinished run: refused by name, with --restart; --restart starts over
    part = tmp_path / "part"
    main(argv + [str(part), "--max-epochs-this-run", "2"])
    with pytest.raises(UserError, match=r"--lr-teacher 0.01 there, 0.02 now.*--restart"):
        main(argv + [str(part), "--lr-teacher", "0.02"])
    main(argv + [str(part), "--lr-teacher", "0.02", "--restart", "--num-experts", "1"])
    assert sorted(p.name for p in part.iterdir()) == ["expert_000.json", "expert_000.pt", "manifest.json"]
    assert json.loads((part / "manifest.json").read_text())["result_args"]["lr_teacher"] == 0.02


def test_sigkill_trajectory_matching(data, tmp_path):
    from recover.trajectory_matching import main
    from squeeze.trajectories import main as trajectories

    trajectories(expert_args(data) + [str(tmp_path / "experts")])
    argv = ["--experts", str(tmp_path / "experts"), "--data-path", str(data / "train"), "--ipc", "2",
            "--iterations", "8", "--syn-steps", "2", "--batch-syn", "3", "--max-start-epoch", "3", "--lr-img", "10",
            "--checkpoint-every", "1", "--threshold", "10", "--device", "cpu", "--output-path"]
    main(argv + [str(tmp_path / "ref")])
    out = tmp_path / "killed"
    kill_midway("recover.trajectory_matching", argv + [str(out)], lambda: (state_dir(out) / "matching.pt").exists())
    assert not out.exists()
    main(argv + [str(out)])  # the same command
    ref = tmp_path / "ref"
    for name in sorted(p.relative_to(ref).as_posix() for p in ref.glob("*/*.png")):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    for suffix in (".labels.pt", ".lr.pt"):
        a = torch.load(ref.with_name("ref" + suffix), weights_only=True)
        b = torch.load(out.with_name("killed" + suffix), weights_only=True)
        assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
    ha = json.loads(ref.with_name("ref.loss.json").read_text())["history"]
    hb = json.loads(out.with_name("killed.loss.json").read_text())["history"]
    assert ha == hb and len(ha) == 8
    assert not state_dir(out).exists()
    # another setting on an unfinished run: refused by name, with --restart
    main(argv + [str(tmp_path / "part"), "--max-iterations-this-run", "1"])
    with pytest.raises(UserError, match=r"--syn-steps 2 there, 3 now.*--restart"):
        main(argv + [str(tmp_path / "part"), "--syn-steps", "3"])
