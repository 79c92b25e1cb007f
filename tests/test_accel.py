"""common.compute.accel: --amp resolved by the hardware (both CPU branches, both GPU branches), the
--compile fallback, DataLoader sizing, and the stages honouring the CPU decision."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import common.compute.accel as accel
from common.compute.accel import Precision, compile_model, default_workers, loader_kwargs, resolve_precision
from tests.conftest import make_teacher, make_tree

NATIVE_BF16 = accel.cpu_has_native_bf16  # the cached detector (tests below patch the name)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(accel, "_WARNED", set())
    NATIVE_BF16.cache_clear()
    yield
    NATIVE_BF16.cache_clear()


@pytest.mark.parametrize("flags, native", [({"avx2", "fma"}, False), ({"avx512f", "avx512bw"}, False),
                                           ({"avx512f", "avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True),
                                           ({"fp", "asimd", "bf16"}, True)])
def test_native_bf16_from_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset(flags))
    assert accel.cpu_has_native_bf16() is native


def test_cpu_without_bf16_warns_once_and_runs_fp32(monkeypatch, capsys):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    p = resolve_precision(torch.device("cpu"), True)
    assert p == Precision("cpu") and not p.enabled and p.name == "fp32" and not p.scaler
    err = capsys.readouterr().err
    assert err.count("warning: --amp") == 1 and "fp32" in err and "AVX512-BF16" in err
    assert resolve_precision(torch.device("cpu"), True).name == "fp32"
    assert capsys.readouterr().err == ""  # once per process
    with p.autocast():  # a no-op context
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_cpu_with_bf16_runs_bf16(monkeypatch, capsys):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    p = resolve_precision(torch.device("cpu"), True)
    assert p.dtype == torch.bfloat16 and p.name == "bf16" and not p.scaler
    assert capsys.readouterr().err == ""
    with p.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert not p.grad_scaler().is_enabled()


def test_amp_default_and_off(monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision(torch.device("cpu"), None).name == "fp32"  # default off on CPU
    assert resolve_precision(torch.device("cpu"), False).name == "fp32"
    monkeypatch.setattr(accel, "cuda_has_bf16", lambda device=None: True)
    assert resolve_precision(torch.device("cuda"), None).name == "bf16"  # default on for CUDA
    assert resolve_precision(torch.device("cuda"), False).name == "fp32"


@pytest.mark.parametrize("has_bf16, name, scaler", [(True, "bf16", False), (False, "fp16", True)])
def test_cuda_bf16_else_fp16_with_scaler(monkeypatch, has_bf16, name, scaler):
    monkeypatch.setattr(accel, "cuda_has_bf16", lambda device=None: has_bf16)
    p = resolve_precision(torch.device("cuda:0"), True)
    assert (p.name, p.scaler, p.device_type) == (name, scaler, "cuda")
    assert p.dtype == (torch.bfloat16 if has_bf16 else torch.float16)


def test_compile_falls_back_to_eager(monkeypatch, capsys):
    model = torch.nn.Linear(3, 2)
    assert compile_model(model, False) is model

    def broken(*a, **k):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    assert compile_model(model, True, "student") is model
    assert compile_model(model, True, "student") is model
    err = capsys.readouterr().err
    assert err.count("warning: --compile") == 1 and "no compiler here" in err and "second line" not in err


def test_workers_sized_by_device(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(accel, "usable_cpus", lambda: 2)
    assert (default_workers("cpu"), default_workers("cuda")) == (1, 2)
    monkeypatch.setattr(accel, "usable_cpus", lambda: 32)
    assert (default_workers("cpu"), default_workers("cuda")) == (4, 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 torchrun processes share 32 cores
    assert default_workers("cuda") == 7
    assert loader_kwargs("cuda", 7) == {"num_workers": 7, "pin_memory": True, "prefetch_factor": 4,
                                        "persistent_workers": True}
    assert loader_kwargs("cpu", 0) == {"num_workers": 0, "pin_memory": False}


def test_recover_amp_on_cpu_without_bf16_equals_fp32(monkeypatch, tmp_path, capsys):
    """--amp on a CPU without native bf16: one warning, fp32 recorded, the very images of a plain run."""
    import recover.synthesize as synth

    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    make_tree(tmp_path / "train", 2, 2)
    teacher = make_teacher(tmp_path / "t.pth", ["00_circle", "01_square"], input_size=16,
                           data_root=tmp_path / "train")
    base = ["--init-data-path", str(tmp_path / "train"), "--arch-path", str(teacher), "--ipc", "2",
            "--iteration", "2", "--batch-size", "4", "--jitter", "2", "--device", "cpu"]
    synth.main([*base, "--syn-data-path", str(tmp_path / "amp"), "--amp"])
    assert capsys.readouterr().err.count("warning: --amp") == 1
    synth.main([*base, "--syn-data-path", str(tmp_path / "fp32")])
    manifest = json.loads((tmp_path / "amp" / "manifest.json").read_text())
    assert manifest["settings"]["amp"] is False
    files = sorted(p.relative_to(tmp_path / "amp") for p in (tmp_path / "amp").glob("*/*.png"))
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "amp" / f).read_bytes() == (tmp_path / "fp32" / Path(f)).read_bytes()
