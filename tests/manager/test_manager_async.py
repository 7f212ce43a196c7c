"""async_save=True: snapshot at save() time, background write, errors surface, exit flushes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from _manager_helpers import fill_disk_after, temporaries

import torchkeep as tk

SRC = str(Path(tk.__file__).resolve().parent.parent)


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(32, 16)
        self.body = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 32, bias=False)
        self.head.weight = self.emb.weight  # tied: must stay one tensor in the snapshot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.emb(x))))


def test_written_state_is_the_state_at_save_time(tmp_path: Path) -> None:
    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.arange(4)).sum().backward()
    opt.step()
    expected_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expected_buf = opt.state_dict()["state"][0]["momentum_buffer"].clone()
    with tk.CheckpointManager(tmp_path, async_save=True, model=model, optimizer=opt) as mgr:
        info = mgr.save(step=1, metrics={"loss": 1.5})
        assert info.step == 1 and info.size_bytes is None  # not written yet
        # training goes on at once, in place, while the writer works
        for _ in range(3):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(-3.0).add_(7.0)
            for state in opt.state.values():
                state["momentum_buffer"].fill_(42.0)
        mgr.wait()
        assert mgr.latest is not None and mgr.latest.size_bytes is not None
    loaded = tk.load(mgr.latest.path)  # type: ignore[arg-type]
    for k, v in expected_model.items():
        assert torch.equal(loaded["model"][k], v), k
    assert loaded["model"]["head.weight"].data_ptr() == loaded["model"]["emb.weight"].data_ptr()
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], expected_buf)


def test_buffers_reused_between_saves_do_not_leak_state(tmp_path: Path) -> None:
    model = torch.nn.Linear(64, 64)
    with tk.CheckpointManager(tmp_path, async_save=True, model=model) as mgr:
        for step in range(1, 5):
            with torch.no_grad():
                model.weight.fill_(float(step))
            mgr.save(step=step)
            with torch.no_grad():
                model.weight.fill_(-1.0)
    for c in tk.list_checkpoints(tmp_path):
        assert c.info is not None
        assert torch.all(tk.load(c.info.path)["model"]["weight"] == float(c.step))  # type: ignore[arg-type]


def test_writer_error_surfaces_in_wait_then_next_save_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(32, 32)
    with tk.CheckpointManager(tmp_path, keep_last=1, async_save=True, model=model) as mgr:
        mgr.save(step=1)
        mgr.wait()
        fill_disk_after(monkeypatch, limit=1000)
        mgr.save(step=2)  # returns: the failure happens in the background
        with pytest.raises(tk.CheckpointWriteError, match="No space left on device"):
            mgr.wait()
        mgr.wait()  # raised once, then cleared
        assert [c.step for c in mgr.checkpoints] == [1]
        assert temporaries(tmp_path) == []
        monkeypatch.undo()
        mgr.save(step=3)
    assert [e.step for e in tk.list_checkpoints(tmp_path)] == [3]


def test_writer_error_surfaces_on_next_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(8, 8)
    mgr = tk.CheckpointManager(tmp_path, async_save=True, model=model)
    fill_disk_after(monkeypatch, limit=100)
    mgr.save(step=1)
    with pytest.raises(tk.CheckpointWriteError, match="No space left"):
        mgr.save(step=2)
    monkeypatch.undo()
    mgr.save(step=2)
    mgr.close()
    assert [e.step for e in tk.list_checkpoints(tmp_path)] == [2]


class SlowState:
    """A stateful object whose state reads a module's weight (to watch the writer's order)."""

    def __init__(self) -> None:
        self.calls = 0

    def state_dict(self) -> dict[str, Any]:
        self.calls += 1
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def test_at_most_one_save_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchkeep.checkpoint.layouts import SingleFileLayout

    gate = threading.Event()
    in_flight = []
    real = SingleFileLayout.write

    def gated(*args: Any, **kwargs: Any) -> int:
        in_flight.append(1)
        assert len(in_flight) == 1, "two saves were writing at once"
        gate.wait(timeout=30)
        try:
            return real(*args, **kwargs)
        finally:
            in_flight.pop()

    monkeypatch.setattr(SingleFileLayout, "write", gated)
    with tk.CheckpointManager(tmp_path, async_save=True, model=torch.nn.Linear(4, 4), counter=SlowState()) as mgr:
        mgr.save(step=1)
        done = threading.Event()

        def second() -> None:
            mgr.save(step=2)
            done.set()

        t = threading.Thread(target=second)
        t.start()
        assert not done.wait(timeout=0.5)  # the second save waits for the first
        gate.set()
        t.join(timeout=60)
        assert done.is_set()
    assert [e.step for e in tk.list_checkpoints(tmp_path)] == [1, 2]


@pytest.mark.slow
def test_interpreter_exit_flushes_pending_save(tmp_path: Path) -> None:
    script = f"""
import sys; sys.path.insert(0, {SRC!r})
import torch, torchkeep as tk
model = torch.nn.Linear(256, 256)
torch.nn.init.constant_(model.weight, 3.0)
mgr = tk.CheckpointManager({str(tmp_path)!r}, async_save=True, model=model)
mgr.save(step=9)
# no wait(), no close(): atexit must flush
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    entries = tk.list_checkpoints(tmp_path, verify=True)
    assert [(e.step, e.status) for e in entries] == [(9, "ok")]
    assert torch.all(tk.load(entries[0].path)["model"]["weight"] == 3.0)
    assert temporaries(tmp_path) == []


def test_restore_waits_for_the_pending_save(tmp_path: Path) -> None:
    model = torch.nn.Linear(8, 8)
    with tk.CheckpointManager(tmp_path, async_save=True, model=model) as mgr:
        mgr.save(step=4)
        info = mgr.restore()
        assert info is not None and info.step == 4


@pytest.mark.gpu
def test_cuda_snapshot_uses_pinned_memory(tmp_path: Path) -> None:
    from torchkeep.manager._async import snapshot

    w = torch.randn(1024, 1024, device="cuda")
    expected = w.cpu()
    copy, ready = snapshot({"w": w})
    w.mul_(0)  # queued after the copy on the same stream
    ready()
    assert copy["w"].is_pinned() and torch.equal(copy["w"], expected)
    model = torch.nn.Linear(64, 64).cuda()
    before = model.weight.detach().cpu()
    with tk.CheckpointManager(tmp_path, async_save=True, model=model) as mgr:
        mgr.save(step=1)
        with torch.no_grad():
            model.weight.zero_()
    assert torch.equal(tk.load(mgr.latest.path)["model"]["weight"], before)  # type: ignore[union-attr,arg-type]
