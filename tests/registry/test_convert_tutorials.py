"""convert of the tutorials' checkpoints (issue 18, item 18): TorchVersion, --as-checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchkeep as tk
from torchkeep import convert as conv
from torchkeep.cli import app


def _train() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_torch_version_is_allow_listed(tmp_path: Path) -> None:
    # full-restore.zh.md saves 'pytorch_version': torch.__version__ (a TorchVersion, not a str).
    src, dst = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.safetensors"
    torch.save({"model_state_dict": nn.Linear(2, 2).state_dict(), "pytorch_version": torch.__version__}, src)
    report = conv.convert(src, dst)
    assert report.trusted_pickle is False
    back = tk.load(dst)
    assert back["pytorch_version"] == str(torch.__version__) and type(back["pytorch_version"]) is str


def _full_restore_dict(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, object]:
    # full-restore.zh.md, "保存": the exact keys of the tutorial's checkpoint.
    return {
        "model_name": "resnet50",
        "model_version": "v1",
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "epoch": 7,
        "train_loss": 0.25,
        "hyperparams": {"lr": 1e-3, "hidden": 3},
        "pytorch_version": torch.__version__,
    }


def test_as_checkpoint_full_restore_tutorial(tmp_path: Path) -> None:
    model, opt, _ = _train()
    src, dst = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.safetensors"
    torch.save(_full_restore_dict(model, opt), src)
    conv.convert(src, dst, as_checkpoint=True)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    info = tk.load_checkpoint(dst, model=fresh, optimizer=fresh_opt)
    assert info.epoch == 7 and info.metrics == {"train_loss": 0.25}
    assert info.extra["hyperparams"] == {"lr": 1e-3, "hidden": 3} and info.extra["model_name"] == "resnet50"
    assert info.extra["pytorch_version"] == str(torch.__version__)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert tk.read_info(dst).objects == {"model": "module", "optimizer": "optimizer"}


def test_as_checkpoint_save_model_template_via_cli(tmp_path: Path) -> None:
    # saving-loading-deploying.zh.md's save_model(): model, optimizer, scheduler, epoch, extra_info.
    model, opt, sched = _train()
    src, dst = tmp_path / "checkpoint.pth", tmp_path / "checkpoint.safetensors"
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(),
            "epoch": 3,
            "extra_info": {"update_steps": 12},
        },
        src,
    )
    result = CliRunner().invoke(app, ["convert", str(src), str(dst), "--as-checkpoint"])
    assert result.exit_code == 0, result.output
    assert "'scheduler_state_dict' -> scheduler=" in result.output
    fresh, fresh_opt, fresh_sched = _train()
    info = tk.load_checkpoint(dst, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert info.epoch == 3 and info.extra == {"extra_info": {"update_steps": 12}}
    assert fresh_sched.state_dict() == sched.state_dict()


def test_plain_convert_then_load_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    model, opt, _ = _train()
    src, dst = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.safetensors"
    torch.save(_full_restore_dict(model, opt), src)
    conv.convert(src, dst)
    with pytest.raises(tk.CorruptCheckpointError, match="--as-checkpoint"):
        tk.load_checkpoint(dst, model=model)


def test_as_checkpoint_refuses_what_it_cannot_map(tmp_path: Path) -> None:
    src = tmp_path / "w.pt"
    torch.save([torch.ones(1)], src)
    with pytest.raises(tk.UsageError, match="needs a dict"):
        conv.convert(src, tmp_path / "a.safetensors", as_checkpoint=True)
    torch.save({"weights": {"w": torch.ones(1)}, "epoch": 1}, src)
    with pytest.raises(tk.UsageError, match=r"no model state.*model_state_dict"):
        conv.convert(src, tmp_path / "b.safetensors", as_checkpoint=True)
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
