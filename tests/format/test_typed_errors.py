"""Failures the docs promise as typed errors, not raw RuntimeError/AssertionError/OSError."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.io._storage import atomic_write

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only build")


@needs_no_cuda
@pytest.mark.parametrize("where", ["cuda", "cuda:0", {"cpu": "cuda:1"}, torch.device("cuda")])
def test_map_location_cuda_without_cuda_is_a_usage_error(tmp_path: Path, where: object) -> None:
    path = tmp_path / "a.safetensors"
    tk.save({"w": torch.ones(2)}, path)
    with pytest.raises(tk.UsageError, match="CUDA") as info:
        tk.load(path, map_location=where)  # type: ignore[arg-type]
    assert "map_location" in str(info.value)


@needs_no_cuda
def test_load_checkpoint_map_location_cuda_leaves_the_model_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=torch.nn.Linear(2, 2))
    model = torch.nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(tk.UsageError):
        tk.load_checkpoint(path, model=model, map_location="cuda")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_legal_240_character_name_can_be_saved(tmp_path: Path) -> None:
    name = "n" * 228 + ".safetensors"
    assert len(name) == 240
    tk.save({"w": torch.ones(1)}, tmp_path / name)
    assert tk.load(tmp_path / name)["w"].tolist() == [1.0]
    assert os.listdir(tmp_path) == [name]  # no temporary left behind


def test_a_name_too_long_for_the_filesystem_says_so(tmp_path: Path) -> None:
    with pytest.raises(tk.CheckpointWriteError, match="too long"):
        tk.save({"w": 1}, tmp_path / ("n" * 300))


def test_atomic_write_reports_why_the_temporary_could_not_be_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_space(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if ".tmp-" in os.fspath(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_space)
    with pytest.raises(tk.CheckpointWriteError, match="No space left") as info, atomic_write(tmp_path / "x.bin") as f:
        f.write(b"data")
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert not (tmp_path / "x.bin").exists()


def test_atomic_write_never_follows_a_planted_temporary_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchkeep.io import _storage as storage_module

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(storage_module, "temporary_name", lambda name: ".x.tmp-000000000000")
    (tmp_path / ".x.tmp-000000000000").symlink_to(victim)
    with pytest.raises(tk.CheckpointWriteError), atomic_write(tmp_path / "x") as f:
        f.write(b"evil")
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("url", ["s3://", "s3:///", "gs://"])
def test_an_empty_object_store_url_is_a_usage_error(url: str) -> None:
    pytest.importorskip("s3fs")
    with pytest.raises(tk.UsageError, match="bucket"):
        tk.CheckpointManager(url, model=torch.nn.Linear(1, 1))
