"""The registry as a new user meets it (issue 18): items 10, 11, 12, 14."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchkeep as tk


@tk.register(name="ux-gen")
class Generator(nn.Module):
    def __init__(self, z: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(z, 6)


@tk.register(name="ux-disc")
class Discriminator(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 1)


# ------------------------------------------------------------------------------------------
# item 14: two registered models in one checkpoint


def test_two_registered_models_need_a_choice(tmp_path: Path) -> None:
    g, d = Generator(z=3), Discriminator(width=5)
    path = tmp_path / "gan.safetensors"
    tk.save_checkpoint(path, generator=g, discriminator=d, epoch=1)
    with pytest.raises(tk.UsageError, match=r"2 registered models \(generator, discriminator\).*object='generator'"):
        tk.load_model(path)
    rebuilt_d = tk.load_model(path, object="discriminator")
    assert isinstance(rebuilt_d, Discriminator) and rebuilt_d.fc.in_features == 5
    assert torch.equal(rebuilt_d.fc.weight, d.fc.weight)
    rebuilt_g = tk.load_model(path, object="generator")
    assert isinstance(rebuilt_g, Generator) and torch.equal(rebuilt_g.fc.weight, g.fc.weight)
    with pytest.raises(tk.MissingObjectError, match="no model saved as critic="):
        tk.load_model(path, object="critic")
    assert tk.read_info(path).model["object"] == "generator"  # the first, and which object it is


def test_one_registered_model_among_plain_modules(tmp_path: Path) -> None:
    ema, d = nn.Linear(6, 1), Discriminator()
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, ema=ema, disc=d)
    rebuilt = tk.load_model(path)  # one registered model: no choice to make
    assert isinstance(rebuilt, Discriminator) and torch.equal(rebuilt.fc.weight, d.fc.weight)
    with pytest.raises(tk.ModelNotRegisteredError, match="ema= was saved as a plain module"):
        tk.load_model(path, object="ema")


def test_object_on_a_model_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    tk.save_model(Generator(), path)
    with pytest.raises(tk.UsageError, match="drop object="):
        tk.load_model(path, object="generator")
    assert isinstance(tk.load_model(path), Generator)


# ------------------------------------------------------------------------------------------
# item 11: the register_buffer trap is caught when saving, not only by tk.audit


@tk.register(name="ux-trap")
class Trap(nn.Module):
    # The tutorials' DynamicModel: a tensor attribute instead of register_buffer.
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.my_embed = torch.randn(2)


def test_save_model_warns_about_the_register_buffer_trap(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"model\.my_embed: .*register_buffer"):
        tk.save_model(Trap(), tmp_path / "trap.safetensors")
    assert (tmp_path / "trap.safetensors").exists()
    with pytest.raises(tk.UnsupportedValueError, match=r"my_embed.*nothing was written"):
        tk.save_model(Trap(), tmp_path / "strict.safetensors", strict=True)
    assert not (tmp_path / "strict.safetensors").exists()


def test_save_checkpoint_and_manager_warn_too(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    with pytest.warns(UserWarning, match=r"net\.my_embed"):
        tk.save_checkpoint(tmp_path / "c.safetensors", net=Trap())
    with pytest.raises(tk.UnsupportedValueError, match="my_embed"):
        tk.save_checkpoint(tmp_path / "s.safetensors", net=Trap(), strict=True)
    assert not (tmp_path / "s.safetensors").exists()
    with (
        pytest.warns(UserWarning, match=r"model\.my_embed"),
        tk.CheckpointManager(tmp_path / "run", model=Trap()) as mgr,
    ):
        mgr.save(step=1)


def test_clean_models_save_without_warnings(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tk.save_model(Generator(), tmp_path / "g.safetensors")
        tk.save_checkpoint(tmp_path / "c.safetensors", model=nn.LSTM(2, 3), strict=True)


# ------------------------------------------------------------------------------------------
# item 12: a class registered in a script's __main__ warns at save, with what to do


def test_class_in_main_warns_at_save(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(
        "import torch, torchkeep as tk\n"
        "@tk.register(name='ux-script-mlp')\n"
        "class MLP(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(2, 2)\n"
        "tk.save_model(MLP(), 'mlp.safetensors')\n"
        "tk.save_checkpoint('ckpt.safetensors', model=MLP())\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True
    )
    warned = [line for line in proc.stderr.splitlines() if "registered from __main__" in line]
    assert len(warned) == 2, proc.stderr
    assert all(line.startswith(str(script)) for line in warned)  # points at the user's line
    assert "Move MLP into a module (e.g. models.py)" in warned[0] and "--import models" in warned[0]
    proc = subprocess.run(
        [sys.executable, "-m", "torchkeep", "inspect", "mlp.safetensors"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "torchkeep", "audit", "mlp.safetensors"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1 and "move the class into a module" in proc.stderr.lower()
