"""CheckpointManager: layout, listing, restore, retention across restarts, crash safety, locking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _manager_helpers import fill_disk_after, flip_byte, temporaries

import torchkeep as tk
from torchkeep.manager import parse_name

SRC = str(Path(tk.__file__).resolve().parent.parent)


def make(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(4, 6)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_layout_names_sort_by_step_and_listing_reads_headers(tmp_path: Path) -> None:
    model, opt = make()
    with tk.CheckpointManager(tmp_path, model=model, optimizer=opt) as mgr:
        assert mgr.restore() is None  # a fresh run
        assert mgr.latest is None and mgr.checkpoints == []
        for step in (5, 1200, 40):
            mgr.save(step=step, epoch=step // 100, metrics={"loss": 1.0 / step})
        names = sorted(n for n in os.listdir(tmp_path) if n.startswith("ckpt-"))
        assert [parse_name(n)[0] for n in names] == [5, 40, 1200]  # type: ignore[index]
        assert names[0].startswith("ckpt-000000005-") and names[0].endswith("Z.safetensors")
        assert [c.step for c in mgr.checkpoints] == [5, 40, 1200]
        assert mgr.latest is not None and mgr.latest.step == 1200 and mgr.latest.epoch == 12
        assert mgr.latest.size_bytes == os.path.getsize(mgr.latest.path)  # type: ignore[arg-type]
    # no index file: only checkpoints (and the lock while open) live there
    assert sorted(os.listdir(tmp_path)) == names


def test_restore_latest_best_and_by_step(tmp_path: Path) -> None:
    model, opt = make()
    saved = {}
    with tk.CheckpointManager(tmp_path, monitor="acc", mode="max", model=model, optimizer=opt) as mgr:
        for step, acc in [(10, 0.5), (20, 0.9), (30, 0.7)]:
            train_step(model, opt)
            saved[step] = state_of(model)
            mgr.save(step=step, metrics={"acc": acc}, extra={"note": f"s{step}"})
        assert mgr.best is not None and mgr.best.step == 20
    fresh, fresh_opt = make(seed=1)
    with tk.CheckpointManager(tmp_path, monitor="acc", mode="max", model=fresh, optimizer=fresh_opt) as mgr:
        info = mgr.restore()
        assert info is not None and info.step == 30 and info.extra == {"note": "s30"}
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved[30].items())
        info = mgr.restore("best")
        assert info is not None and info.step == 20 and info.metrics == {"acc": 0.9}
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved[20].items())
        info = mgr.restore(10, map_location="cpu")
        assert info is not None and info.step == 10
        with pytest.raises(tk.CheckpointNotFoundError, match=r"no checkpoint for step 15; it has steps \[10, 20, 30\]"):
            mgr.restore(15)
        with pytest.raises(tk.UsageError, match="'latest', 'best' or a step"):
            mgr.restore("newest")


def test_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    model, opt = make()
    with tk.CheckpointManager(tmp_path, keep_last=2, model=model, optimizer=opt) as mgr:
        for step in range(1, 4):
            train_step(model, opt)
            mgr.save(step=step)
        for _ in range(3):
            train_step(model, opt)
        expected = state_of(model)
    model2, opt2 = make(seed=123)
    with tk.CheckpointManager(tmp_path, keep_last=2, model=model2, optimizer=opt2) as mgr:
        info = mgr.restore()
        assert info is not None and info.step == 3
        for _ in range(3):  # RNG state came back too, so the batches are the same
            train_step(model2, opt2)
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in expected.items())


LOSSES = [0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 0.1, 0.95, 0.3, 0.4]


def _run(directory: Path, steps: range, **kwargs: Any) -> list[int]:
    model, _ = make()
    with tk.CheckpointManager(directory, model=model, **kwargs) as mgr:
        for step in steps:
            mgr.save(step=step, metrics={"val_loss": LOSSES[step - 1]})
        return [c.step for c in mgr.checkpoints]


@pytest.mark.parametrize("stop", [3, 5, 8])
def test_restart_mid_run_keeps_best_k_right(tmp_path: Path, stop: int) -> None:
    policy = {"keep_last": 2, "keep_best": 2, "monitor": "val_loss"}
    straight = _run(tmp_path / "straight", range(1, 11), **policy)
    _run(tmp_path / "restarted", range(1, stop + 1), **policy)
    resumed = _run(tmp_path / "restarted", range(stop + 1, 11), **policy)
    # best two by val_loss are steps 7 (0.1) and 4 (0.2); last two are 9 and 10
    assert straight == [4, 7, 9, 10]
    assert resumed == straight


def test_keep_every_and_retention_policies(tmp_path: Path) -> None:
    kept = _run(tmp_path, range(1, 11), keep_last=1, keep_every=4, retention=tk.KeepBestK(1, "val_loss"))
    assert kept == [4, 7, 8, 10]


def test_no_policy_keeps_everything(tmp_path: Path) -> None:
    assert _run(tmp_path, range(1, 6)) == [1, 2, 3, 4, 5]


def test_rolled_back_run_keeps_the_checkpoint_it_just_saved(tmp_path: Path) -> None:
    # A run restarted from an earlier step saves step numbers below the newest file: retention
    # ranks by step, but the file a save just wrote must survive that save.
    model, _ = make()
    with tk.CheckpointManager(tmp_path, keep_last=2, model=model) as mgr:
        for step in (80, 100):
            mgr.save(step=step)
        info = mgr.save(step=50)
        assert info.path is not None and os.path.exists(info.path)
        assert [c.step for c in mgr.checkpoints] == [50, 80, 100]
        mgr.save(step=60)  # the next save may drop 50: it is neither kept by a policy nor just written
        assert [c.step for c in mgr.checkpoints] == [60, 80, 100]
        assert mgr.restore(60) is not None


def test_existing_step_raises_unless_overwrite(tmp_path: Path) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        mgr.save(step=1, metrics={"v": 1})
        with pytest.raises(tk.CheckpointWriteError, match=r"step 1 already has a checkpoint.*overwrite=True"):
            mgr.save(step=1, metrics={"v": 2})
        assert [c.metrics for c in mgr.checkpoints] == [{"v": 1}]
        mgr.save(step=1, metrics={"v": 3}, overwrite=True)
        assert [c.metrics for c in mgr.checkpoints] == [{"v": 3}]
        assert len([n for n in os.listdir(tmp_path) if n.startswith("ckpt-")]) == 1


def test_corrupt_newest_falls_back_with_warning(tmp_path: Path) -> None:
    model, opt = make()
    with tk.CheckpointManager(tmp_path, model=model, optimizer=opt) as mgr:
        mgr.save(step=1)
        good = state_of(model)
        train_step(model, opt)
        mgr.save(step=2)
        newest = mgr.latest.path  # type: ignore[union-attr]
    assert newest is not None
    flip_byte(newest)
    fresh, fresh_opt = make(seed=5)
    with tk.CheckpointManager(tmp_path, model=fresh, optimizer=fresh_opt) as mgr:
        with pytest.warns(UserWarning, match=r"skipping checkpoint .*ckpt-000000002-.*checksum mismatch"):
            info = mgr.restore()
        assert info is not None and info.step == 1
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in good.items())
        with pytest.raises(tk.CorruptCheckpointError, match="checksum mismatch"):
            mgr.restore(2)


def test_truncated_header_is_listed_corrupt_and_skipped(tmp_path: Path) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        mgr.save(step=1)
        mgr.save(step=2)
        newest = mgr.latest.path  # type: ignore[union-attr]
    assert newest is not None
    with open(newest, "r+b") as f:
        f.truncate(100)
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        assert [(e.step, e.status) for e in mgr.entries] == [(1, "ok"), (2, "corrupt")]
        assert mgr.latest is not None and mgr.latest.step == 1
        with pytest.warns(UserWarning, match="ckpt-000000002"):
            assert mgr.restore().step == 1  # type: ignore[union-attr]


def test_every_checkpoint_corrupt_raises(tmp_path: Path) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        mgr.save(step=1)
        path = mgr.latest.path  # type: ignore[union-attr]
    flip_byte(path)  # type: ignore[arg-type]
    with (
        tk.CheckpointManager(tmp_path, model=model) as mgr,
        pytest.warns(UserWarning, match="skipping checkpoint"),
        pytest.raises(tk.CorruptCheckpointError, match="every checkpoint"),
    ):
        mgr.restore()


def test_disk_full_midway_keeps_earlier_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, opt = make()
    with tk.CheckpointManager(tmp_path, keep_last=1, model=model, optimizer=opt) as mgr:
        mgr.save(step=1)
        good = state_of(model)
        before = sorted(os.listdir(tmp_path))
        train_step(model, opt)
        fill_disk_after(monkeypatch, limit=2000)
        with pytest.raises(tk.CheckpointWriteError, match="No space left on device"):
            mgr.save(step=2)
        monkeypatch.undo()
        assert sorted(os.listdir(tmp_path)) == before  # nothing new, nothing deleted, no temporary
        assert [c.step for c in mgr.checkpoints] == [1]
    fresh, fresh_opt = make(seed=9)
    with tk.CheckpointManager(tmp_path, model=fresh, optimizer=fresh_opt) as mgr:
        assert mgr.restore().step == 1  # type: ignore[union-attr]
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in good.items())


@pytest.mark.slow
def test_file_size_limit_in_subprocess(tmp_path: Path) -> None:
    """A real EFBIG from the kernel (RLIMIT_FSIZE), not a simulated one."""
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        mgr.save(step=1)
    script = f"""
import resource, signal, sys, torch
sys.path.insert(0, {SRC!r})
import torchkeep as tk
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
mgr = tk.CheckpointManager({str(tmp_path)!r}, model=torch.nn.Linear(512, 512))
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    mgr.save(step=2)
except tk.CheckpointWriteError as exc:
    print("WRITE-ERROR", exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert "WRITE-ERROR" in out.stdout and "File too large" in out.stdout, out.stdout + out.stderr
    assert temporaries(tmp_path) == []
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        assert [c.step for c in mgr.checkpoints] == [1]
        assert mgr.restore().step == 1  # type: ignore[union-attr]


class Exploding:
    def state_dict(self) -> dict[str, Any]:
        raise RuntimeError("boom in user code")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_exception_in_user_state_dict(tmp_path: Path) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        mgr.save(step=1)
    with tk.CheckpointManager(tmp_path, model=model, sampler=Exploding()) as mgr:
        with pytest.raises(tk.CheckpointWriteError, match=r"RuntimeError: boom in user code.*Nothing was written"):
            mgr.save(step=2)
        assert [c.step for c in mgr.checkpoints] == [1]
    assert temporaries(tmp_path) == []


def test_unsupported_value_names_its_path(tmp_path: Path) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr, pytest.raises(tk.UnsupportedValueError, match="function"):
        mgr.save(step=1, extra={"fn": lambda: 1})
    assert [n for n in os.listdir(tmp_path) if n.startswith("ckpt-")] == []


def test_temporaries_are_swept_on_open(tmp_path: Path) -> None:
    (tmp_path / ".ckpt-000000003-20260101T000000Z.safetensors.tmp-0123456789ab").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("mine")
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        assert temporaries(tmp_path) == []
        assert mgr.restore() is None
    assert (tmp_path / "notes.txt").read_text() == "mine"  # files that are not ours are left alone


@pytest.mark.slow
def test_second_writer_is_refused_and_lock_names_holder(tmp_path: Path) -> None:
    model, _ = make()
    mgr = tk.CheckpointManager(tmp_path, model=model)
    try:
        holder = json.loads((tmp_path / ".torchkeep.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        script = f"""
import sys; sys.path.insert(0, {SRC!r})
import torchkeep as tk
try:
    tk.CheckpointManager({str(tmp_path)!r})
except tk.CheckpointLockedError as exc:
    print("LOCKED", exc.holder, "read_only=True" in str(exc))
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
        assert f"LOCKED PID {os.getpid()}" in out.stdout and "True" in out.stdout, out.stdout + out.stderr
        with pytest.raises(tk.CheckpointLockedError, match="this very process"):
            tk.CheckpointManager(tmp_path, model=model)
        reader = tk.CheckpointManager(tmp_path, read_only=True, model=make()[0])
        mgr.save(step=1)
        assert reader.restore().step == 1  # type: ignore[union-attr]
        with pytest.raises(tk.CheckpointWriteError, match="read_only"):
            reader.save(step=2)
    finally:
        mgr.close()
    assert not (tmp_path / ".torchkeep.lock").exists()
    tk.CheckpointManager(tmp_path, model=model).close()  # free again after close


def test_stale_lock_of_dead_process_is_taken_over(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    (tmp_path / ".torchkeep.lock").write_text(json.dumps({"pid": dead, "host": os.uname().nodename}))
    model, _ = make()
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        mgr.save(step=1)
        assert json.loads((tmp_path / ".torchkeep.lock").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"keep_best": 2}, tk.UsageError, "keep_best needs monitor="),
        ({"mode": "lowest"}, tk.UsageError, "'min' or 'max'"),
        ({"keep_last": 0}, tk.UsageError, "positive int"),
        ({"model": object()}, TypeError, "state_dict"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        tk.CheckpointManager(tmp_path, **kwargs)
    assert not (tmp_path / ".torchkeep.lock").exists()


def test_bad_step_and_closed_manager(tmp_path: Path) -> None:
    mgr = tk.CheckpointManager(tmp_path, model=make()[0])
    for bad in (-1, True, 1.5, "3", None):
        with pytest.raises(tk.UsageError, match="non-negative int") as info:
            mgr.save(step=bad)  # type: ignore[arg-type]
        assert info.value.argument == "step"
    assert mgr.checkpoints == []
    with pytest.raises(tk.UsageError, match="monitor="):
        mgr.restore("best")
    mgr.close()
    mgr.close()
    with pytest.raises(tk.CheckpointWriteError, match="closed"):
        mgr.save(step=1)


def test_numpy_and_tensor_steps(tmp_path: Path) -> None:
    import numpy as np

    with tk.CheckpointManager(tmp_path, model=make()[0]) as mgr:
        mgr.save(step=np.int64(3))  # type: ignore[arg-type]
        mgr.save(step=torch.tensor(4))  # type: ignore[arg-type]
        assert [c.step for c in mgr.checkpoints] == [3, 4]


def test_dropped_manager_releases_the_lock(tmp_path: Path) -> None:
    import gc

    mgr = tk.CheckpointManager(tmp_path, model=make()[0])
    with pytest.raises(tk.CheckpointLockedError, match="this very process"):
        tk.CheckpointManager(tmp_path, model=make()[0])
    del mgr
    gc.collect()
    tk.CheckpointManager(tmp_path, model=make()[0]).close()


def test_async_overwrite_and_keep_newer_than(tmp_path: Path) -> None:
    import datetime as dt

    model, _ = make()
    retention = tk.KeepNewerThan(dt.timedelta(hours=1))
    with tk.CheckpointManager(tmp_path, async_save=True, retention=retention, model=model) as mgr:
        mgr.save(step=1, metrics={"v": 1})
        with pytest.raises(tk.CheckpointWriteError, match="already has a checkpoint"):
            mgr.save(step=1)
        mgr.save(step=1, metrics={"v": 2}, overwrite=True)
        mgr.wait()
        assert [(c.step, c.metrics) for c in mgr.checkpoints] == [(1, {"v": 2})]


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(tk.CheckpointWriteError, match="is a file"):
        tk.CheckpointManager(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_directory_suggests_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    with tk.CheckpointManager(ro, model=make()[0]) as mgr:
        mgr.save(step=1)
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(tk.CheckpointWriteError, match="read_only=True"):
            tk.CheckpointManager(ro, model=make()[0])
        with tk.CheckpointManager(ro, read_only=True, model=make()[0]) as mgr:
            assert mgr.restore(np_int(1)).step == 1  # type: ignore[union-attr]
    finally:
        ro.chmod(0o755)


def np_int(v: int) -> Any:
    import numpy as np

    return np.int64(v)


def test_lock_file_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchkeep.manager import _lock

    def denied(path: str, *args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(_lock.os, "open", denied)
    with pytest.raises(tk.CheckpointWriteError, match=r"Permission denied.*read_only=True"):
        tk.CheckpointManager(tmp_path, model=make()[0])


class _BrokenPolicy:
    def keep(self, records: Any) -> list[bool]:
        return [False]  # one flag, whatever the number of records


def test_broken_custom_policy_deletes_nothing(tmp_path: Path) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, retention=_BrokenPolicy(), model=model) as mgr:
        mgr.save(step=1)  # one record, one flag: fine
        with pytest.raises(tk.UsageError, match="returned 1 flags for 2 records"):
            mgr.save(step=2)
        # the mask is checked before anything is deleted: both checkpoints are there and load
        assert [(e.step, e.status) for e in mgr.entries] == [(1, "ok"), (2, "ok")]
        assert mgr.restore(1) is not None and mgr.restore(2) is not None


def test_retention_that_cannot_delete_keeps_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torchkeep.io import _storage

    def refuse(self: Any, name: str) -> None:
        raise PermissionError(13, "Permission denied", name)

    model, _ = make()
    with tk.CheckpointManager(tmp_path, keep_last=1, model=model) as mgr:
        mgr.save(step=1)
        monkeypatch.setattr(_storage.LocalStorage, "delete", refuse)
        info = mgr.save(step=2)  # the save succeeded: a file retention could not remove is only logged
        assert info.step == 2 and "retention could not delete" in caplog.text
        assert [c.step for c in mgr.checkpoints] == [1, 2]
        monkeypatch.undo()
        mgr.save(step=3)  # the next save's retention removes both
        assert [c.step for c in mgr.checkpoints] == [3]


def test_save_without_the_monitored_metric_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, keep_last=1, keep_best=1, monitor="val_loss", model=model) as mgr:
        mgr.save(step=1, metrics={"val_loss": 0.5})
        assert "cannot rank" not in caplog.text
        mgr.save(step=2, metrics={"train_loss": 0.1})
        mgr.save(step=3)
        assert caplog.text.count("no finite 'val_loss'") == 1 and "['train_loss']" in caplog.text
        assert [c.step for c in mgr.checkpoints] == [1, 3]  # best by val_loss (1) and the newest


def test_monitored_metric_as_a_tensor_counts_and_bad_metrics_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, keep_best=1, monitor="val_loss", model=model) as mgr:
        mgr.save(step=1, metrics={"val_loss": torch.tensor(0.5)})  # stored as 0.5: rankable
        assert "cannot rank" not in caplog.text
        for bad in ("val_loss=0.3", [("val_loss", 0.3)], 0.3):
            with pytest.raises(tk.UsageError, match="metrics must be a dict") as info:
                mgr.save(step=2, metrics=bad)  # type: ignore[arg-type]
            assert info.value.argument == "metrics"
        assert [c.step for c in mgr.checkpoints] == [1]


@pytest.mark.parametrize("async_save", [False, True])
def test_failed_overwrite_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool
) -> None:
    model, _ = make()
    with tk.CheckpointManager(tmp_path, keep_last=1, async_save=async_save, model=model) as mgr:
        mgr.save(step=1, metrics={"v": 1})
        mgr.wait()
        before = sorted(os.listdir(tmp_path))
        fill_disk_after(monkeypatch, limit=2000)

        def overwrite() -> None:
            mgr.save(step=1, metrics={"v": 2}, overwrite=True)
            mgr.wait()  # an async save fails in the background: its error surfaces here

        with pytest.raises(tk.CheckpointWriteError, match="No space left on device"):
            overwrite()
        monkeypatch.undo()
        assert sorted(os.listdir(tmp_path)) == before  # the old file is removed only after the new one is written
        info = mgr.restore(1)
        assert info is not None and info.metrics == {"v": 1}
