"""Sharded checkpoints on one process: layout, full loads, consolidation, bad input, no pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import torchkeep as tk
from torchkeep import distributed
from torchkeep.errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    FormatVersionError,
    MissingObjectError,
    StateMismatchError,
)
from torchkeep.io import _format


def make() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return model, opt, sched


def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model, opt, sched = make()
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model, opt, sched = trained()
    path = tmp_path / "step-2"
    distributed.save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, step=2, extra={"k": (1, None)})
    return path, model, opt, sched


def test_layout_is_shards_plus_json_index(saved: tuple[Path, ...]) -> None:
    path = saved[0]
    assert sorted(os.listdir(path)) == ["index.json", "shard-00000-of-00001.safetensors"]
    index = json.loads((path / "index.json").read_text())
    assert index["format"] == "torchkeep.sharded"
    assert index["checkpoint"]["step"] == 2
    assert index["dcp"]["state_dict"]["model.0.weight"]["size"] == [8, 4]
    # the shard is a plain safetensors file any tool can open
    from safetensors import safe_open

    with safe_open(str(path / "shard-00000-of-00001.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.0.weight"), saved[1][0].weight.detach())


def test_load_checkpoint_restores_everything_without_pickle(saved: tuple[Path, ...], no_pickle: None) -> None:
    path, model, opt, sched = saved
    m2, o2, s2 = make()
    info = tk.load_checkpoint(path, model=m2, optimizer=o2, scheduler=s2)
    assert info.step == 2 and info.extra == {"k": (1, None)}
    for a, b in zip(model.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert str(o2.state_dict()) == str(opt.state_dict())
    assert s2.state_dict() == sched.state_dict()


def test_tk_load_dir_gives_full_state_and_consolidate_writes_one_file(
    saved: tuple[Path, ...], tmp_path: Path, no_pickle: None
) -> None:
    path, model, opt, _ = saved
    full = tk.load(path)
    assert set(full) == {"model", "optimizer", "scheduler", "__extra__", "__rng__"}
    assert all(torch.equal(full["model"][k], v) for k, v in model.state_dict().items())
    assert str(full["optimizer"]) == str(opt.state_dict())  # integer-keyed, like Optimizer.state_dict()
    out = tmp_path / "full.safetensors"
    info = distributed.consolidate(path, out)
    assert info.step == 2
    m3, o3, s3 = make()
    tk.load_checkpoint(out, model=m3, optimizer=o3, scheduler=s3)
    assert str(o3.state_dict()) == str(opt.state_dict())
    assert torch.equal(m3[2].bias, model[2].bias)


def test_overwrite_replaces_committed_checkpoint_and_leaves_no_temporaries(saved: tuple[Path, ...]) -> None:
    path, model, *_ = saved
    with torch.no_grad():
        model[0].weight.fill_(7.0)
    distributed.save_checkpoint(path, model=model, step=3)
    assert tk.load(path)["model"]["0.weight"].eq(7.0).all()
    assert sorted(os.listdir(path.parent)) == ["step-2"]


def test_uncommitted_directory_is_never_restored_and_is_swept(saved: tuple[Path, ...], tmp_path: Path) -> None:
    path = saved[0]
    (path / "index.json").unlink()  # what a save that died before its commit looks like
    with pytest.raises(CheckpointNotFoundError, match="never committed"):
        tk.load_checkpoint(path, model=make()[0])
    with pytest.raises(CheckpointNotFoundError):
        tk.load(path)
    leftover = tmp_path / ".step-9.tmp-0123456789ab"
    leftover.mkdir()
    (leftover / "shard-00000-of-00001.safetensors").write_bytes(b"partial")
    assert distributed.sweep(tmp_path) == [leftover.name]
    assert path.exists()


def test_async_save_snapshots_state_before_returning(tmp_path: Path) -> None:
    model, opt, _ = trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fut = distributed.async_save_checkpoint(tmp_path / "a", model=model, optimizer=opt, step=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(100.0)  # training goes on while the shards are written
    info = fut.result(timeout=60)
    assert info.step == 5 and info.size_bytes
    got = tk.load(tmp_path / "a")["model"]
    assert all(torch.equal(got[k], v) for k, v in before.items())


def test_missing_object_and_wrong_kind_are_clear(saved: tuple[Path, ...]) -> None:
    path = saved[0]
    with pytest.raises(MissingObjectError, match="holds no 'ema'"):
        tk.load_checkpoint(path, ema=make()[0])
    model, opt, _ = make()
    with pytest.raises(StateMismatchError, match="state of a scheduler"):
        tk.load_checkpoint(path, model=model, optimizer=opt, scheduler=torch.optim.AdamW(model.parameters()))


def test_strict_mismatch_then_non_strict(saved: tuple[Path, ...]) -> None:
    path = saved[0]
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2))
    with pytest.raises(StateMismatchError, match=r"model\.3\.weight"):
        tk.load_checkpoint(path, model=bigger)
    info = tk.load_checkpoint(path, model=bigger, strict=False)
    assert info.step == 2
    assert torch.equal(bigger[0].weight, saved[1][0].weight)


def test_save_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(CheckpointWriteError, match="does not exist"):
        distributed.save_checkpoint(tmp_path / "nope" / "step-1", model=make()[0])
    assert os.listdir(tmp_path) == []


def _edit_index(path: Path, edit: object) -> None:
    doc = json.loads((path / "index.json").read_text())
    edit(doc)  # type: ignore[operator]
    (path / "index.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(files=["../../etc/passwd"]), "files must be exactly"),
        (lambda d: d.update(world_size=0), "world_size"),
        (lambda d: d.update(format="other"), "not a torchkeep sharded-checkpoint index"),
        (lambda d: d["dcp"]["state_dict"]["model.0.weight"].update(dtype="os.system"), "unknown dtype"),
        (lambda d: d["dcp"]["state_dict"]["model.0.weight"].update(chunks=[[[0, 0], [9, 4]]]), "fall outside"),
        (lambda d: d["dcp"]["storage"].append(["nope", None, None, 0, "x"]), "malformed or names an unknown key"),
        (lambda d: d["dcp"]["storage"].append(["model.0.weight", None, None, 5, "x"]), "malformed"),
        (lambda d: d["dcp"]["planner_data"].update({"model.0.weight": [{"a": 1}]}), "path parts"),
        (lambda d: d["dcp"]["planner_data"].update({"model.0.weight": ["model", 10**12]}), "path parts"),
        (lambda d: d["dcp"]["storage"][0].__setitem__(1, [5, 0]), "match none of its chunks"),
    ],
)
def test_hostile_index_is_rejected(saved: tuple[Path, ...], edit: object, match: str) -> None:
    path = saved[0]
    _edit_index(path, edit)
    with pytest.raises(CorruptCheckpointError, match=match):
        tk.load_checkpoint(path, model=make()[0])


def test_index_not_json_and_newer_version(saved: tuple[Path, ...]) -> None:
    path = saved[0]
    text = (path / "index.json").read_text()
    (path / "index.json").write_text(text[:50])
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        tk.load(path)
    (path / "index.json").write_text(text)
    _edit_index(path, lambda d: d.update(version=99))
    with pytest.raises(FormatVersionError, match="upgrade"):
        tk.load(path)


def test_corrupt_shard_names_file_and_tensor(saved: tuple[Path, ...]) -> None:
    path = saved[0]
    shard = path / "shard-00000-of-00001.safetensors"
    reader = _format.open_file(shard)
    info = reader.info("model.2.weight")
    del reader
    data = bytearray(shard.read_bytes())
    data[info.begin] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"model\.2\.weight") as exc:
        tk.load_checkpoint(path, model=make()[0])
    assert exc.value.path == str(shard)


def test_shard_from_another_save_is_rejected(saved: tuple[Path, ...], tmp_path: Path) -> None:
    path = saved[0]
    other = tmp_path / "other"
    distributed.save_checkpoint(other, model=make()[0])
    # same name, but a shard of a 1-rank save is not shard 0 of 2
    _edit_index(path, lambda d: d.update(world_size=2, files=[f"shard-0000{r}-of-00002.safetensors" for r in (0, 1)]))
    os.replace(path / "shard-00000-of-00001.safetensors", path / "shard-00000-of-00002.safetensors")
    os.replace(other / "shard-00000-of-00001.safetensors", path / "shard-00001-of-00002.safetensors")
    with pytest.raises(CorruptCheckpointError, match="not shard"):
        tk.load_checkpoint(path, model=make()[0])


def test_scheduler_state_with_int_keys_comes_back_exact(tmp_path: Path) -> None:
    model, opt, _ = make()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 6], gamma=0.5)  # a Counter {3: 1, 6: 1}
    for _ in range(4):
        opt.step()
        sched.step()
    distributed.save_checkpoint(tmp_path / "s", model=model, optimizer=opt, scheduler=sched)
    m2, o2, _ = make()
    s2 = torch.optim.lr_scheduler.MultiStepLR(o2, milestones=[1], gamma=0.1)
    tk.load_checkpoint(tmp_path / "s", model=m2, optimizer=o2, scheduler=s2)
    assert s2.milestones == sched.milestones and type(s2.milestones) is type(sched.milestones)
    assert s2.state_dict() == sched.state_dict()
    for _ in range(3):
        o2.step()
        s2.step()
        opt.step()
        sched.step()
    assert s2.get_last_lr() == sched.get_last_lr()


def test_cli_convert_writes_one_file(saved: tuple[Path, ...], tmp_path: Path) -> None:
    import subprocess
    import sys

    path, model, *_ = saved
    out = tmp_path / "out.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "torchkeep", "convert", str(path), str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    full = tk.load(out)
    assert all(torch.equal(full["model"][k], v) for k, v in model.state_dict().items())
    from torchkeep.convert import detect_kind

    assert detect_kind(path).name == "torchkeep-sharded"


def test_a_plain_directory_is_not_called_an_interrupted_save(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointNotFoundError, match="not a torchkeep sharded checkpoint"):
        tk.load(tmp_path)


def test_sharded_save_replaces_a_single_file_checkpoint_at_the_same_path(tmp_path: Path) -> None:
    model = make()[0]
    path = tmp_path / "ckpt"
    tk.save_checkpoint(path, model=model, step=1)  # one process: a file
    assert path.is_file()
    distributed.save_checkpoint(path, model=model, step=2)
    assert path.is_dir() and sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert tk.load_checkpoint(path, model=make()[0]).step == 2


def test_manager_lists_verifies_and_deletes_sharded_steps(tmp_path: Path) -> None:
    model, opt, _ = make()
    for step in (1, 2, 3):
        name = f"ckpt-{step:09d}-20261123T00000{step}Z.sharded"
        distributed.save_checkpoint(tmp_path / name, model=model, optimizer=opt, step=step, metrics={"loss": step})
    (tmp_path / ".ckpt-000000004-20261123T000004Z.sharded.tmp-0123456789ab").mkdir()  # a save that died
    with tk.CheckpointManager(tmp_path, keep_last=2, model=model, optimizer=opt) as mgr:
        assert [(c.step, c.metrics["loss"]) for c in mgr.checkpoints] == [(1, 1), (2, 2), (3, 3)]
        assert mgr.restore().step == 3  # type: ignore[union-attr]
        mgr._apply_retention()
        assert [c.step for c in mgr.checkpoints] == [2, 3]
    assert sorted(os.listdir(tmp_path)) == [
        "ckpt-000000002-20261123T000002Z.sharded",
        "ckpt-000000003-20261123T000003Z.sharded",
    ]
    shard = tmp_path / "ckpt-000000003-20261123T000003Z.sharded" / "shard-00000-of-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    entries = tk.list_checkpoints(tmp_path, verify=True)
    assert [(e.kind, e.status) for e in entries] == [("sharded", "ok"), ("sharded", "corrupt")]


def test_index_claiming_a_huge_tensor_is_refused_before_allocating(saved: tuple[Path, ...]) -> None:
    path = saved[0]

    def grow(d: dict[str, Any]) -> None:
        e = d["dcp"]["state_dict"]["model.0.weight"]
        e["size"] = [8, 4 * 10**9]  # 128 GB if it were allocated
        e["chunks"] = [[[0, 0], [8, 4]]]

    _edit_index(path, grow)
    with pytest.raises(CorruptCheckpointError, match="shards hold 32 elements"):
        tk.load(path)
