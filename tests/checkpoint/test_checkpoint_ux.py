"""What a new user trying the checkpoint API found (issue 18, items 9, 11, 18)."""

from __future__ import annotations

import torch

import torchkeep as tk


def test_read_info_returns_extra(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=torch.nn.Linear(2, 2), epoch=1, extra={"hparams": {"lr": 0.1}, "w": torch.ones(2)})
    info = tk.read_info(path)
    assert info.extra["hparams"] == {"lr": 0.1}
    assert torch.equal(info.extra["w"], torch.ones(2))
    assert tk.read_info(path, extra=False).extra is None  # the header alone, on request


def test_read_info_without_extra_is_none(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, model=torch.nn.Linear(2, 2), epoch=1)
    assert tk.read_info(path).extra is None
