"""Remote directories through fsspec, against a real S3 server on loopback (moto_server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import torchkeep as tk

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_s3_round_trip_with_retention(s3_url: str, s3_options: dict[str, Any]) -> None:
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters())
    weights = {}
    with tk.CheckpointManager(
        s3_url, keep_last=2, keep_best=1, monitor="loss", storage_options=s3_options, model=model, optimizer=opt
    ) as mgr:
        for step, loss in [(1, 0.2), (2, 0.9), (3, 0.8), (4, 0.7)]:
            with torch.no_grad():
                model.weight.add_(1.0)
            weights[step] = model.weight.detach().clone()
            mgr.save(step=step, metrics={"loss": loss})
        # best (1) and last two (3, 4) survive; 2 was deleted from the bucket
        assert [c.step for c in mgr.checkpoints] == [1, 3, 4]
        assert mgr.best is not None and mgr.best.step == 1
        assert all(c.path is not None and c.path.startswith("s3://") for c in mgr.checkpoints)

    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(s3_url))
    assert len(names) == 3 and all(n.startswith("ckpt-") for n in names)

    fresh = torch.nn.Linear(8, 4)
    mgr2 = tk.CheckpointManager(s3_url, storage_options=s3_options, model=fresh, monitor="loss")
    info = mgr2.restore()
    assert info is not None and info.step == 4
    assert torch.equal(fresh.weight, weights[4])
    info = mgr2.restore("best")
    assert info is not None and info.step == 1
    assert torch.equal(fresh.weight, weights[1])
    mgr2.close()

    listed = tk.list_checkpoints(s3_url, storage_options=s3_options, verify=True)
    assert [(e.step, e.status) for e in listed] == [(1, "ok"), (3, "ok"), (4, "ok")]


def test_s3_corrupt_object_is_skipped(s3_url: str, s3_options: dict[str, Any]) -> None:
    import s3fs

    model = torch.nn.Linear(4, 4)
    with tk.CheckpointManager(s3_url, storage_options=s3_options, model=model) as mgr:
        mgr.save(step=1)
        mgr.save(step=2)
        newest = mgr.checkpoints[-1].path
    assert newest is not None
    fs = s3fs.S3FileSystem(**s3_options)
    data = bytearray(fs.cat_file(newest))
    data[-1] ^= 0xFF
    fs.pipe_file(newest, bytes(data))
    with tk.CheckpointManager(s3_url, storage_options=s3_options, model=model) as mgr:
        with pytest.warns(UserWarning, match="skipping checkpoint .*ckpt-000000002"):
            info = mgr.restore()
        assert info is not None and info.step == 1


def test_s3_async_save(s3_url: str, s3_options: dict[str, Any]) -> None:
    model = torch.nn.Linear(16, 16)
    before = model.weight.detach().clone()
    with tk.CheckpointManager(s3_url, storage_options=s3_options, async_save=True, model=model) as mgr:
        mgr.save(step=7)
        with torch.no_grad():
            model.weight.zero_()
    fresh = torch.nn.Linear(16, 16)
    with tk.CheckpointManager(s3_url, storage_options=s3_options, model=fresh) as mgr:
        assert mgr.restore() is not None
    assert torch.equal(fresh.weight, before)


def test_failed_upload_leaves_bucket_unchanged(s3_url: str, s3_options: dict[str, Any]) -> None:
    model = torch.nn.Linear(4, 4)
    with tk.CheckpointManager(s3_url, storage_options=s3_options, model=model) as mgr:
        mgr.save(step=1)
        storage: Any = mgr._storage

        def broken_put(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("connection reset by peer")

        storage.fs.put_file = broken_put
        with pytest.raises(tk.CheckpointWriteError, match="could not upload"):
            mgr.save(step=2)
        assert [c.step for c in mgr.checkpoints] == [1]


def test_upload_in_progress_is_never_listed(s3_url: str, s3_options: dict[str, Any]) -> None:
    model = torch.nn.Linear(64, 64)
    seen_during_upload: list[list[int]] = []
    with tk.CheckpointManager(s3_url, storage_options=s3_options, model=model) as mgr:
        mgr.save(step=1)
        storage: Any = mgr._storage
        real_put = storage.fs.put_file

        def watched_put(local: str, remote: str, **kwargs: Any) -> None:
            # the whole file is staged locally and verified before the first byte goes out
            assert tk.read_info(local).step == 2
            seen_during_upload.append([e.step for e in tk.list_checkpoints(s3_url, storage_options=s3_options)])
            real_put(local, remote, **kwargs)

        storage.fs.put_file = watched_put
        mgr.save(step=2)
    assert seen_during_upload == [[1]]
    assert [e.step for e in tk.list_checkpoints(s3_url, storage_options=s3_options)] == [1, 2]


def test_staging_files_of_dead_uploaders_are_swept(tmp_path: Path) -> None:
    from torchkeep.io._fsspec import sweep_staging_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".torchkeep-upload-{int(dead.stdout)}-abc.tmp"
    mine = tmp_path / f".torchkeep-upload-{os.getpid()}-def.tmp"
    left.write_bytes(b"x")
    mine.write_bytes(b"y")
    assert sweep_staging_files(str(tmp_path)) == [left.name]
    assert not left.exists() and mine.exists()
