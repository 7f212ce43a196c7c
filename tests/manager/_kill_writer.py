"""Fork server for the kill test: import torch once, then fork one checkpoint writer per request.

Usage: python _kill_writer.py SRC_DIR CKPT_DIR NUMEL [dedup]. Reads commands on stdin:
``run`` forks a writer (prints ``pid N``), waits for it to die (prints ``exit STATUS``);
``quit`` ends. A writer resumes from the manager's latest checkpoint and saves steps forever, each
holding ``w = arange(NUMEL) + step`` so a reader can tell whether a file's contents match its step.
With ``dedup`` the manager deduplicates, and the state also holds a ``frozen`` tensor that never
changes (one blob shared by every step) while each step's ``w`` is a new blob.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, sys.argv[1])

import torch

import torchkeep as tk

torch.set_num_threads(1)
DIRECTORY, NUMEL = sys.argv[2], int(sys.argv[3])
DEDUP = sys.argv[4:] == ["dedup"]


class Progress:
    """The writer's whole state: a step counter and a big tensor derived from it."""

    def __init__(self) -> None:
        self.step = 0
        self.w = torch.zeros(0)
        self.frozen = torch.ones(NUMEL)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step, "w": self.w}
        if DEDUP:
            state["frozen"] = self.frozen
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.w = int(state["step"]), state["w"].clone()


def expected(step: int) -> torch.Tensor:
    return torch.arange(NUMEL, dtype=torch.float32).add_(float(step))


def writer() -> None:
    progress = Progress()
    mgr = tk.CheckpointManager(DIRECTORY, keep_last=3, dedup=DEDUP, progress=progress)
    info = mgr.restore()
    step = info.step if info is not None and info.step is not None else 0
    while True:
        step += 1
        progress.step, progress.w = step, expected(step)
        mgr.save(step=step)


def main() -> None:
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            return
        if cmd != "run":
            continue
        pid = os.fork()
        if pid == 0:
            try:
                writer()
            finally:
                os._exit(3)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


if __name__ == "__main__":
    main()
