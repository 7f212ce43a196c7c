"""The atomic-commit protocol: a failed save never damages or deletes the previous file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.io import _storage


def _no_temporaries(directory: Path) -> bool:
    return not [n for n in os.listdir(directory) if _storage.is_temporary(n)]


def test_failure_while_writing_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.safetensors"
    tk.save({"w": torch.zeros(4)}, path)
    before = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_storage.os, "fsync", disk_full)
    with pytest.raises(tk.CheckpointWriteError, match=r"No space left on device.*previous file there is unchanged"):
        tk.save({"w": torch.ones(4)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_interrupted_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchkeep.io import _format

    path = tmp_path / "ckpt.safetensors"
    tk.save({"w": torch.zeros(4)}, path)
    before = path.read_bytes()

    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(_format, "_stream_tensor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tk.save({"w": torch.ones(4)}, path)
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(tk.CheckpointWriteError, match="does not exist; create it first"):
        tk.save({"w": torch.zeros(1)}, tmp_path / "nope" / "x.safetensors")


def test_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(tk.CheckpointWriteError):
        tk.save({"w": torch.zeros(1)}, tmp_path / "d")
    assert (tmp_path / "d").is_dir() and _no_temporaries(tmp_path)


def test_local_storage_lists_commits_and_sweeps_temporaries(tmp_path: Path) -> None:
    store = _storage.LocalStorage(tmp_path / "run")
    with store.atomic_write("a.safetensors") as f:
        f.write(b"abc")
    leftover = Path(store.path(_storage.temporary_name("b.safetensors")))
    leftover.write_bytes(b"half")  # what a killed writer leaves behind
    assert store.list() == ["a.safetensors"] and store.exists("a.safetensors")
    assert store.sweep_temporaries() == [leftover.name] and not leftover.exists()
    store.delete("a.safetensors")
    store.delete("a.safetensors")  # missing is not an error
    assert store.list() == []


def test_saving_over_a_loaded_file_keeps_the_loaded_tensors_valid(tmp_path: Path) -> None:
    # The rename gives the new file a new inode: the old mapping (lazy tensors) stays intact.
    path = tmp_path / "w.safetensors"
    tk.save({"w": torch.arange(1000.0)}, path)
    lazy = tk.load(path, verify=False)["w"]
    tk.save({"w": torch.zeros(3)}, path)
    assert float(lazy.sum()) == sum(range(1000)) and tk.load(path)["w"].tolist() == [0.0, 0.0, 0.0]
