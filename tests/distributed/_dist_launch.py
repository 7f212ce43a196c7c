"""Launch real multi-process gloo runs of _dist_worker.py (one subprocess per rank, env:// rendezvous)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("_dist_worker.py")
SRC = str(Path(__file__).resolve().parents[2] / "src")


@dataclass
class Run:
    returncodes: list[int]
    logs: list[str]

    def check(self) -> None:
        bad = [r for r, rc in enumerate(self.returncodes) if rc != 0]
        assert not bad, "\n".join(f"--- rank {r} rc={self.returncodes[r]}\n{self.logs[r][-4000:]}" for r in bad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    nprocs: int, args: Sequence[str], *, timeout: float = 90, script: Path = WORKER, cwd: Path | None = None
) -> Run:
    """Run ``script ARGS`` (default ``_dist_worker.py``) on ``nprocs`` ranks as torchrun would (env://
    rendezvous on a free port); return their exit codes and output."""
    port = free_port()
    procs = []
    for rank in range(nprocs):
        env = {
            **os.environ,
            "PYTHONPATH": SRC,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nprocs),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs, codes = [], []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.send_signal(signal.SIGKILL)
            out, _ = p.communicate()
        logs.append(out)
        codes.append(p.returncode)
    return Run(codes, logs)
