"""SIGKILL a writer at random moments, again and again: the directory always restores cleanly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from _manager_helpers import temporaries

import torchkeep as tk

SRC = str(Path(tk.__file__).resolve().parent.parent)
HERE = Path(__file__).resolve().parent
KILLS = 30
NUMEL = 12_500_000  # float32: 50 MB per checkpoint


class Progress:
    def __init__(self) -> None:
        self.step = -1
        self.w = torch.zeros(0)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "w": self.w}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.w = int(state["step"]), state["w"]


@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_the_directory(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    ckpt_dir = tmp_path / "run"
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_kill_writer.py"), SRC, str(ckpt_dir), str(NUMEL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    arange = torch.arange(NUMEL, dtype=torch.float32)
    steps_seen: list[int] = []
    mid_write = 0
    try:
        for kill in range(KILLS):
            server.stdin.write("run\n")
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
            time.sleep(rng.uniform(0.05, 1.0))
            os.kill(pid, signal.SIGKILL)
            status = server.stdout.readline().split()
            assert status[0] == "exit" and os.WIFSIGNALED(int(status[1])), (
                f"writer ended by itself: {status} (seed {seed})"
            )
            if ckpt_dir.exists() and temporaries(ckpt_dir):
                mid_write += 1
            progress = Progress()
            with tk.CheckpointManager(ckpt_dir, keep_last=3, progress=progress) as mgr:
                assert temporaries(ckpt_dir) == [], f"kill {kill}: temporary survived the open (seed {seed})"
                info = mgr.restore()
                if info is None:
                    assert not steps_seen, f"kill {kill}: checkpoints vanished (seed {seed})"
                    continue
                assert info.step == progress.step, f"kill {kill}: header step {info.step} vs content {progress.step}"
                assert torch.equal(progress.w, arange + float(info.step)), f"kill {kill}: contents of step {info.step}"
                assert not steps_seen or info.step >= steps_seen[-1], f"kill {kill}: went back (seed {seed})"
                assert len(mgr.checkpoints) <= 4  # keep_last=3, plus at most one saved before retention ran
                steps_seen.append(info.step)
    finally:
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(timeout=30)
        server.stdin.close()
        server.stdout.close()
    # The run made progress across kills (each writer resumed where the last good file left off).
    # (How far it gets depends on machine load; that it moves on at all is the point.)
    assert len(steps_seen) >= KILLS // 2 and steps_seen[-1] > steps_seen[0], f"{steps_seen} (seed {seed})"
    # Kills landed while a file was being written, not only between saves.
    assert mid_write >= 1, f"no kill hit a save in progress (seed {seed})"
    print(f"{KILLS} kills, {mid_write} during a write, last step {steps_seen[-1]} (seed {seed})")
