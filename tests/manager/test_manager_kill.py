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


def _referenced_blobs(ckpt_dir: Path) -> set[str]:
    from torchkeep.io import _format

    refs: set[str] = set()
    for entry in tk.list_checkpoints(ckpt_dir):
        reader = _format.open_file(entry.path)
        refs |= {e.blob for e in reader.external.values()}
        reader.close()
    return refs


@pytest.mark.slow
def test_sigkill_during_dedup_save_retention_and_gc(tmp_path: Path) -> None:
    """Kills land in blob writes, step commits, retention and the blob sweep: every listed step stays whole."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    numel = 2_000_000  # float32: 8 MB for `w` (a new blob each step) and 8 MB for `frozen` (shared)
    ckpt_dir = tmp_path / "run"
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_kill_writer.py"), SRC, str(ckpt_dir), str(numel), "dedup"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    arange = torch.arange(numel, dtype=torch.float32)
    steps_seen: list[int] = []
    leftovers = 0
    try:
        for kill in range(24):
            server.stdin.write("run\n")
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
            time.sleep(rng.uniform(0.05, 0.8))
            os.kill(pid, signal.SIGKILL)
            status = server.stdout.readline().split()
            assert status[0] == "exit" and os.WIFSIGNALED(int(status[1])), f"{status} (seed {seed})"
            if not ckpt_dir.exists():
                continue
            # before anything sweeps: every listed step loads and verifies, leftovers or not
            listed = tk.list_checkpoints(ckpt_dir, verify=True)
            assert all(e.status == "ok" for e in listed), f"kill {kill}: {[e.error for e in listed]} (seed {seed})"
            blobs = ckpt_dir / "blobs"
            if blobs.exists() and set(os.listdir(blobs)) - _referenced_blobs(ckpt_dir):
                leftovers += 1
            for entry in listed:
                progress = Progress()
                tk.load_checkpoint(entry.path, progress=progress)
                assert torch.equal(progress.w, arange + float(entry.step)), f"kill {kill}: step {entry.step}"
            if listed:
                steps_seen.append(listed[-1].step)
    finally:
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(timeout=30)
        server.stdin.close()
        server.stdout.close()
    from torchkeep.manager import collect_garbage

    removed = collect_garbage(ckpt_dir)
    assert set(os.listdir(ckpt_dir / "blobs")) == _referenced_blobs(ckpt_dir), f"(seed {seed})"
    assert temporaries(ckpt_dir) == [] and temporaries(ckpt_dir / "blobs") == []
    assert len(steps_seen) >= 12 and steps_seen[-1] > steps_seen[0], f"{steps_seen} (seed {seed})"
    print(f"24 kills, {leftovers} left unreferenced blobs, gc removed {len(removed)} (seed {seed})")
