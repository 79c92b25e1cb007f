"""Launching 2-process (gloo, 1 thread each) runs from tests: free port, timeouts, no hangs.

``launch`` starts one plain ``python`` per rank with torchrun's variables set (the same
environment torchrun gives its workers); ``torchrun`` runs the real launcher. Every
process gets a timeout and is killed (with its process group) when it runs over, so a
hung collective fails the test instead of the suite.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
               GLOO_SOCKET_IFNAME="lo", TORCH_CPP_LOG_LEVEL="ERROR")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Result:
    returncodes: list[int]
    stdout: list[str]
    stderr: list[str]

    def check(self) -> Result:
        for r, (rc, err) in enumerate(zip(self.returncodes, self.stderr)):
            assert rc == 0, f"rank/process {r} exited {rc}:\n{err[-3000:]}"
        return self


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> Result:
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            outs.append((out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            p.communicate()
        raise AssertionError(f"multi-process run did not finish within {timeout:.0f} s (killed)") from None
    return Result([p.returncode for p in procs], [o for o, _ in outs], [e for _, e in outs])


def launch(argv: list[str], nproc: int = 2, timeout: float = 60, cwd: Path = ROOT, env_extra=None,
           port: int | None = None) -> Result:
    """``python argv...`` once per rank, as torchrun would start them on 127.0.0.1."""
    port = port or free_port()
    procs = []
    for r in range(nproc):
        env = base_env(RANK=r, WORLD_SIZE=nproc, LOCAL_RANK=r, LOCAL_WORLD_SIZE=nproc, MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port, **(env_extra or {}))
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    return _wait_all(procs, timeout)


def torchrun(argv: list[str], nproc: int = 2, nnodes: int = 1, timeout: float = 60, cwd: Path = ROOT,
             env_extra=None) -> Result:
    """The real launcher: ``torchrun`` once per node (``--nnodes``, ``--node_rank``) on 127.0.0.1."""
    port = free_port()
    procs = []
    for node in range(nnodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
               f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", *argv]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=base_env(**(env_extra or {})), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    return _wait_all(procs, timeout)
