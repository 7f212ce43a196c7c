"""Deduplicated steps (``CheckpointManager(dedup=True)``): each distinct large tensor stored once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import torchkeep as tk
from torchkeep.checkpoint.layouts import INLINE_BYTES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Finetune(torch.nn.Module):
    """A frozen backbone (several large tensors) and a small trainable head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))
        self.head = torch.nn.Linear(128, 4)
        for p in self.backbone.parameters():
            p.requires_grad_(False)


def train_step(model: Finetune, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(8, 128)
    loss = model.head(model.backbone(x)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def blob_dir(d: Path) -> Path:
    return d / "blobs"


def disk_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def test_frozen_backbone_is_written_once_and_every_step_loads_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Finetune()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    saved: dict[int, dict[str, torch.Tensor]] = {}
    with tk.CheckpointManager(tmp_path, keep_last=3, dedup=True, model=model, optimizer=opt) as mgr:
        for step in range(1, 11):
            train_step(model, opt)
            mgr.save(step=step)
            saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
        assert [c.step for c in mgr.checkpoints] == [8, 9, 10]
        assert {e.kind for e in mgr.entries} == {"dedup"}
    backbone = sum(p.numel() * 4 for p in model.backbone.parameters() if p.numel() * 4 >= INLINE_BYTES)
    # the backbone's two weight matrices are blobs, once; the head is inline in every step file
    assert len(os.listdir(blob_dir(tmp_path))) == 2
    assert disk_bytes(tmp_path) < backbone + 3 * 64 * 1024
    for entry in tk.list_checkpoints(tmp_path, verify=True):
        assert entry.status == "ok"
        fresh = Finetune()
        info = tk.load_checkpoint(entry.path, model=fresh)
        assert info.step == entry.step
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, saved[entry.step][k]), (entry.step, k)
        tree = tk.load(entry.path)
        assert torch.equal(tree["model"]["backbone.0.weight"], saved[entry.step]["backbone.0.weight"])


def test_changed_large_tensors_get_new_blobs_and_old_ones_are_collected(tmp_path: Path) -> None:
    model = torch.nn.Linear(128, 128)  # weight is 64 KiB: a blob
    with tk.CheckpointManager(tmp_path, keep_last=2, dedup=True, model=model) as mgr:
        for step in range(1, 6):
            with torch.no_grad():
                model.weight.add_(1.0)
            mgr.save(step=step)
            # the two kept steps hold two different weights; older blobs are gone
            assert len(os.listdir(blob_dir(tmp_path))) == min(step, 2)
        restored = torch.nn.Linear(128, 128)
        with tk.CheckpointManager(tmp_path, read_only=True, model=restored) as reader:
            assert reader.restore().step == 5
        assert torch.equal(restored.weight, model.weight)


def test_step_is_a_torchkeep_file_that_names_its_blobs(tmp_path: Path) -> None:
    from torchkeep.io import _format

    model = torch.nn.Linear(256, 256)
    with tk.CheckpointManager(tmp_path, dedup=True, model=model) as mgr:
        info = mgr.save(step=1)
    reader = _format.open_file(info.path)
    assert reader.metadata["torchkeep.format"] == "2"
    assert set(reader.external) == {"model/weight"}
    assert reader.info("model/weight").file == str(blob_dir(tmp_path) / reader.external["model/weight"].blob)
    # any safetensors tool reads the step file itself: it holds the small tensors
    from safetensors import safe_open

    with safe_open(info.path, framework="pt") as f:
        assert "model/bias" in set(f.keys())
    assert info.size_bytes is not None and info.size_bytes > 256 * 256 * 4


def test_consolidate_makes_a_standalone_plain_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = torch.nn.Linear(256, 256)
    with tk.CheckpointManager(tmp_path / "run", dedup=True, model=model) as mgr:
        step = mgr.save(step=3, metrics={"loss": 0.5})
    out = tmp_path / "full.safetensors"
    info = tk.consolidate(step.path, out)
    assert info is not None and info.step == 3 and info.metrics == {"loss": 0.5}
    tensors = load_file(str(out))
    assert torch.equal(tensors["model/weight"], model.weight.detach())
    fresh = torch.nn.Linear(256, 256)
    tk.load_checkpoint(out, model=fresh)
    assert torch.equal(fresh.weight, model.weight)
    # the consolidated file does not need the blobs any more
    for blob in blob_dir(tmp_path / "run").iterdir():
        blob.unlink()
    assert torch.equal(tk.load(out)["model"]["weight"], model.weight.detach())


def _shared_blob(d: Path) -> Path:
    blobs = sorted(blob_dir(d).iterdir())
    assert len(blobs) == 1
    return blobs[0]


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_damaged_shared_blob_is_named_and_restore_falls_back(tmp_path: Path, damage: str) -> None:
    backbone = torch.nn.Linear(256, 256)  # frozen: one blob shared by steps 1 and 2
    with tk.CheckpointManager(tmp_path, dedup=True, model=backbone) as mgr:
        mgr.save(step=1)
        mgr.save(step=2)
    blob = _shared_blob(tmp_path)
    if damage == "delete":
        blob.unlink()
    else:
        data = bytearray(blob.read_bytes())
        data[100] ^= 0xFF
        blob.write_bytes(bytes(data))
    # a third step written after the damage, with a changed weight: a different blob
    with torch.no_grad():
        backbone.weight.add_(1.0)
    with tk.CheckpointManager(tmp_path, dedup=True, model=backbone) as mgr:
        mgr.save(step=0)  # an older step number: newest by step stays step 2
    latest = max(tk.list_checkpoints(tmp_path), key=lambda e: e.step)
    with pytest.raises(tk.CorruptCheckpointError, match=blob.name) as err:
        tk.load_checkpoint(latest.path, model=torch.nn.Linear(256, 256))
    assert "model/weight" in str(err.value)
    listed = {e.step: e.status for e in tk.list_checkpoints(tmp_path, verify=True)}
    assert listed == {0: "ok", 1: "corrupt", 2: "corrupt"}
    fresh = torch.nn.Linear(256, 256)
    with (
        tk.CheckpointManager(tmp_path, read_only=True, model=fresh) as mgr,
        pytest.warns(UserWarning, match="skipping"),
    ):
        assert mgr.restore().step == 0
    assert torch.equal(fresh.weight, backbone.weight)


def test_gc_keeps_every_referenced_blob_and_removes_the_rest(tmp_path: Path) -> None:
    model = torch.nn.Linear(128, 128)
    with tk.CheckpointManager(tmp_path, dedup=True, model=model) as mgr:
        mgr.save(step=1)
        keep = set(os.listdir(blob_dir(tmp_path)))
        (blob_dir(tmp_path) / ("ab" * 16)).write_bytes(b"left by a killed save")
        (blob_dir(tmp_path) / ".0123.tmp-0123456789ab").write_bytes(b"temporary")
        removed = mgr.collect_garbage()
    assert sorted(removed) == ["blobs/.0123.tmp-0123456789ab", "blobs/" + "ab" * 16]
    assert set(os.listdir(blob_dir(tmp_path))) == keep
    assert tk.load_checkpoint(tk.list_checkpoints(tmp_path)[0].path, model=torch.nn.Linear(128, 128)).step == 1


def test_a_copied_step_file_protects_its_blobs(tmp_path: Path) -> None:
    import shutil

    model = torch.nn.Linear(128, 128)
    with tk.CheckpointManager(tmp_path, keep_last=1, dedup=True, model=model) as mgr:
        first = mgr.save(step=1)
        shutil.copyfile(first.path, tmp_path / "best.safetensors")
        with torch.no_grad():
            model.weight.add_(1.0)
        mgr.save(step=2)  # retention deletes step 1; its blob is still referenced by best.safetensors
    assert len(os.listdir(blob_dir(tmp_path))) == 2
    assert tk.load(tmp_path / "best.safetensors")["model"]["weight"].shape == (128, 128)


def test_a_torchkeep_file_of_any_name_protects_its_blobs_and_other_files_are_ignored(tmp_path: Path) -> None:
    import shutil

    model = torch.nn.Linear(128, 128)
    with tk.CheckpointManager(tmp_path, keep_last=1, dedup=True, model=model) as mgr:
        first = mgr.save(step=1)
        shutil.copyfile(first.path, tmp_path / "epoch=0-step=1.ckpt")  # a plugin's name, not a step's
        (tmp_path / "notes.txt").write_text("not a checkpoint")
        (tmp_path / "old.pt").write_bytes(b"PK\x03\x04" + bytes(64))  # a torch.save zip
        saved = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        mgr.save(step=2)  # retention deletes step 1; the .ckpt copy still needs its weight blob
        assert mgr.collect_garbage() == []
    assert len(os.listdir(blob_dir(tmp_path))) == 2
    assert torch.equal(tk.load(tmp_path / "epoch=0-step=1.ckpt")["model"]["weight"], saved)
    os.remove(tmp_path / "epoch=0-step=1.ckpt")
    assert [n.split("/")[0] for n in tk.manager.collect_garbage(tmp_path)] == ["blobs"]
    assert len(os.listdir(blob_dir(tmp_path))) == 1


def test_async_dedup_saves(tmp_path: Path) -> None:
    model = torch.nn.Linear(256, 256)
    with tk.CheckpointManager(tmp_path, keep_last=2, dedup=True, async_save=True, model=model) as mgr:
        for step in range(1, 4):
            mgr.save(step=step)
            saved = model.bias.detach().clone()
            with torch.no_grad():
                model.bias.add_(1.0)  # changed right after save(): the snapshot must not see it
        mgr.wait()
        fresh = torch.nn.Linear(256, 256)
        mgr2 = tk.CheckpointManager(tmp_path, read_only=True, model=fresh)
        assert mgr2.restore().step == 3
    assert torch.equal(fresh.bias, saved)
    assert len(os.listdir(blob_dir(tmp_path))) == 1


def test_cli_inspect_verify_diff_ls_on_dedup_steps(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from torchkeep.cli import app

    model = torch.nn.Linear(256, 256)
    with tk.CheckpointManager(tmp_path, dedup=True, model=model) as mgr:
        a = mgr.save(step=1)
        with torch.no_grad():
            model.weight.mul_(2.0)
        b = mgr.save(step=2)
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(a.path), str(b.path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", "--json", str(b.path)])
    assert result.exit_code == 0 and '"model/weight"' in result.output and "blobs" in result.output
    result = runner.invoke(app, ["diff", str(a.path), str(b.path)])
    assert result.exit_code != 2 and "model/weight" in result.output
    result = runner.invoke(app, ["ls", "--json", str(tmp_path)])
    assert result.exit_code == 0 and '"kind": "dedup"' in result.output
    blob = Path(str(a.path)).parent / "blobs"
    first = sorted(blob.iterdir())[0]
    first.unlink()
    result = runner.invoke(app, ["verify", str(a.path), str(b.path)])
    assert result.exit_code == 1 and first.name in result.output


def test_dedup_refused_for_sharded_saves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torchkeep.checkpoint import sharded

    monkeypatch.setattr(sharded, "is_sharded_context", lambda objects=None: True)
    with pytest.raises(tk.UsageError, match="dedup=True is not supported for sharded"):
        tk.CheckpointManager(tmp_path, dedup=True, model=torch.nn.Linear(2, 2))


def test_s3_dedup_steps(s3_url: str, s3_options: dict[str, Any]) -> None:
    import s3fs

    model = torch.nn.Linear(256, 256)
    with tk.CheckpointManager(s3_url, keep_last=2, dedup=True, storage_options=s3_options, model=model) as mgr:
        for step in range(1, 5):
            with torch.no_grad():
                model.bias.add_(1.0)
                if step == 3:
                    model.weight.add_(1.0)
            mgr.save(step=step)
        assert [c.step for c in mgr.checkpoints] == [3, 4]
    fs = s3fs.S3FileSystem(**s3_options)
    assert len(fs.ls(f"{s3_url}/blobs")) == 1  # the step-1/2 weight was collected
    fresh = torch.nn.Linear(256, 256)
    with tk.CheckpointManager(s3_url, storage_options=s3_options, read_only=True, model=fresh) as reader:
        assert reader.restore().step == 4
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    listed = tk.list_checkpoints(s3_url, storage_options=s3_options, verify=True)
    assert [(e.step, e.kind, e.status) for e in listed] == [(3, "dedup", "ok"), (4, "dedup", "ok")]


def test_cli_consolidate_and_gc(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from torchkeep.cli import app

    run = tmp_path / "run"
    model = torch.nn.Linear(256, 256)
    with tk.CheckpointManager(run, dedup=True, model=model) as mgr:
        step = mgr.save(step=4)
        runner = CliRunner()
        locked = runner.invoke(app, ["gc", str(run)])
        assert locked.exit_code == 1 and "being written by another CheckpointManager" in str(locked.exception or "")
    (run / "blobs" / ("cd" * 16)).write_bytes(b"orphan")
    result = runner.invoke(app, ["gc", str(run)])
    assert result.exit_code == 0 and "removed 1 item(s): blobs/" + "cd" * 16 in result.output
    out = tmp_path / "step4.safetensors"
    result = runner.invoke(app, ["consolidate", str(step.path), str(out)])
    assert result.exit_code == 0 and "step 4" in result.output, result.output
    assert torch.equal(load_file(str(out))["model/weight"], model.weight.detach())
    again = runner.invoke(app, ["consolidate", str(step.path), str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
