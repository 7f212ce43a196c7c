"""A shared checkpoint directory as hostile input: planted lock files, full disks, read-only mounts."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.manager import _lock

LOCK = ".torchkeep.lock"


def _lock_fds(directory: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory / LOCK)):
            out.append(target)
    return out


def test_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).symlink_to(victim)
    with pytest.raises(tk.CheckpointWriteError, match="symbolic link") as info:
        tk.CheckpointManager(run, model=torch.nn.Linear(1, 1))
    assert str(run / LOCK) in str(info.value) and "remove" in str(info.value)
    assert victim.read_text() == "precious"
    assert (run / LOCK).is_symlink()  # not removed behind the user's back either


def test_dangling_symlinked_lock_creates_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).symlink_to(tmp_path / "created-by-attacker")
    with pytest.raises(tk.CheckpointWriteError, match="symbolic link"):
        tk.CheckpointManager(run, model=torch.nn.Linear(1, 1))
    assert not (tmp_path / "created-by-attacker").exists()


def test_hard_linked_lock_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim, run / LOCK)
    with pytest.raises(tk.CheckpointWriteError, match="link"):
        tk.CheckpointManager(run, model=torch.nn.Linear(1, 1))
    assert victim.read_text() == "precious"


def test_lock_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / LOCK)
    with pytest.raises(tk.CheckpointWriteError, match="regular file"):
        tk.CheckpointManager(run, model=torch.nn.Linear(1, 1))


def test_huge_lock_content_is_not_read_whole(tmp_path: Path) -> None:
    """The holder text is read for messages only, with a bound: /dev/zero behind it must not hang."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "h", "pad": "x" * 100_000}))
    lock = _lock.DirectoryLock(str(run))
    assert lock._read() == {}  # over the bound: treated as unreadable, never parsed


def test_disk_full_while_writing_the_lock_is_a_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_lock.os, "pwrite", full)
    with pytest.raises(tk.CheckpointWriteError, match="No space left"):
        tk.CheckpointManager(tmp_path, model=torch.nn.Linear(1, 1))
    assert _lock_fds(tmp_path) == []  # the descriptor was closed, the lock released
    monkeypatch.undo()
    tk.CheckpointManager(tmp_path, model=torch.nn.Linear(1, 1)).close()


def test_close_on_a_directory_that_became_read_only_releases_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = tk.CheckpointManager(tmp_path, model=torch.nn.Linear(1, 1))
    mgr.save(step=1)
    real_unlink = os.unlink

    def read_only(path: str, *args: object, **kw: object) -> None:
        if os.fspath(path).endswith(LOCK):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        real_unlink(path)

    monkeypatch.setattr(_lock.os, "unlink", read_only)
    mgr.close()  # no raw OSError; the lock is released even though its file stays
    assert _lock_fds(tmp_path) == []
    assert "could not remove" in caplog.text
    monkeypatch.undo()
    with tk.CheckpointManager(tmp_path, model=torch.nn.Linear(1, 1)) as again:  # takes the stale lock over
        assert again.latest is not None


def _edit_section(path: Path, key: str, value: object) -> None:
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    section = json.loads(header["__metadata__"]["torchkeep.checkpoint"])
    section[key] = value
    header["__metadata__"]["torchkeep.checkpoint"] = json.dumps(section)
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text))) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


@pytest.mark.parametrize(
    "garbage", [["val_loss"], {"monitor": 5}, {"monitor": "val_loss", "mode": "sideways"}, {"monitor": ["x"]}, "junk"]
)
def test_ls_skips_and_reports_a_file_with_a_garbage_manager_section(tmp_path: Path, garbage: object) -> None:
    from typer.testing import CliRunner

    from torchkeep.cli import app

    with tk.CheckpointManager(tmp_path, monitor="val_loss", model=torch.nn.Linear(2, 2)) as mgr:
        for step, loss in [(1, 0.5), (2, 0.2), (3, 0.4)]:
            mgr.save(step=step, metrics={"val_loss": loss})
    bad = sorted(tmp_path.glob("ckpt-000000003-*"))[0]
    _edit_section(bad, "manager", garbage)
    entries = tk.list_checkpoints(tmp_path)
    assert [(e.step, e.status) for e in entries] == [(1, "ok"), (2, "ok"), (3, "corrupt")]
    assert "manager section" in (entries[2].error or "")
    for args in (["ls", str(tmp_path)], ["ls", str(tmp_path), "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert bad.name in result.output  # reported, not hidden
    data = json.loads(CliRunner().invoke(app, ["ls", str(tmp_path), "--json"]).output)
    assert [(r["step"], r["marks"]) for r in data["checkpoints"]] == [(1, []), (2, ["latest", "best"]), (3, [])]
