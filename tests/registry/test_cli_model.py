"""``torchkeep audit FILE``: rebuild a model file and report the traps (in-process CLI runs)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import torchkeep as tk
from torchkeep.cli import app
from torchkeep.models import _registry

MODELS = """
import torch, torchkeep as tk

@tk.register(name="cli-good")
class Good(torch.nn.Module):
    def __init__(self, n: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(n, n)
        self.register_buffer("my_embed", torch.randn(n))

@tk.register(name="cli-trap")
class Trap(torch.nn.Module):
    def __init__(self, n: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(n, n)
        self.my_embed = torch.randn(n)
"""


@pytest.fixture
def files(tmp_path: Path, write_module: Callable[[str, str], Path]) -> tuple[Path, Path, Path]:
    root = write_module("tk_cli_models", MODELS)
    import tk_cli_models as m  # type: ignore[import-not-found]

    good, trap = tmp_path / "good.safetensors", tmp_path / "trap.safetensors"
    tk.save_model(m.Good(), good)
    with pytest.warns(UserWarning, match="my_embed"):  # saving the trap says so (issue 18, item 11)
        tk.save_model(m.Trap(), trap)
    # a later CLI process would not have imported the module: forget it
    for name in ("cli-good", "cli-trap"):
        _registry._unregister(name)
    del sys.modules["tk_cli_models"]
    sys.path.remove(str(root))
    return root, good, trap


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_audit_without_import_names_the_module(files: tuple[Path, Path, Path]) -> None:
    _, good, _ = files
    result = CliRunner().invoke(app, ["audit", str(good)])
    assert isinstance(result.exception, tk.ModelNotRegisteredError)
    assert "`import tk_cli_models` before loading" in str(result.exception)


def test_audit_clean_and_trap(files: tuple[Path, Path, Path]) -> None:
    root, good, trap = files
    code, out = _run("audit", str(good), "--import-module", "--path", str(root))
    assert code == 0, out
    assert "ok" in out and "keeps all its state" in out
    code, out = _run("audit", str(trap), "--import-module", "--path", str(root), "--json")
    assert code == 1
    report = json.loads(out)
    assert [(f["kind"], f["path"]) for f in report["findings"]] == [("tensor-attribute", "my_embed")]
    code, out = _run("audit", str(trap), "--import-module", "--path", str(root))
    assert code == 1 and "error my_embed (tensor-attribute)" in out and "register_buffer('my_embed'" in out
