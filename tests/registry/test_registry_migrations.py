"""@tk.migration: chains, missing steps, files newer than the code, bad migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchkeep as tk
from torchkeep.models import _registry


def _save_v1(path: Path) -> nn.Module:
    @tk.register(name="evolving", version=1)
    class V1(nn.Module):
        def __init__(self, hidden: int = 3) -> None:
            super().__init__()
            self.dense = nn.Linear(2, hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dense(x)

    model = V1(hidden=4)
    tk.save_model(model, path)
    _registry._unregister("evolving")
    return model


def _register_v3() -> type[nn.Module]:
    @tk.register(name="evolving", version=3)
    class V3(nn.Module):
        # v2 renamed dense -> proj; v3 renamed the argument hidden -> width and added a bias buffer
        def __init__(self, width: int = 3, shift: float = 0.0) -> None:
            super().__init__()
            self.proj = nn.Linear(2, width)
            self.register_buffer("shift", torch.full((width,), shift))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x) + self.shift

    return V3


def test_v1_file_into_v3_code_runs_each_step_in_order(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    old = _save_v1(path)
    V3 = _register_v3()
    calls: list[int] = []

    @tk.migration("evolving", from_version=1)
    def v1_to_v2(config, state):  # type: ignore[no-untyped-def]
        calls.append(1)
        return config, {k.replace("dense.", "proj."): v for k, v in state.items()}

    @tk.migration(V3, from_version=2)  # the registered class works as the name too
    def v2_to_v3(config, state):  # type: ignore[no-untyped-def]
        calls.append(2)
        width = config.pop("hidden")
        state["shift"] = torch.zeros(width)
        return {**config, "width": width}, state

    loaded = tk.load_model(path)
    assert calls == [1, 2]
    assert type(loaded) is V3 and loaded.proj.out_features == 4
    x = torch.randn(5, 2)
    assert torch.equal(loaded(x), old(x))
    # the rebuilt model records the current version and arguments
    assert tk.model_entry(loaded)["version"] == 3  # type: ignore[index]
    assert tk.model_entry(loaded)["arguments"]["items"] == {"width": 4, "shift": 0.0}  # type: ignore[index]


def test_missing_step_names_it(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _save_v1(path)
    _register_v3()

    @tk.migration("evolving", from_version=1)
    def v1_to_v2(config, state):  # type: ignore[no-untyped-def]
        return config, state

    with pytest.raises(tk.MigrationError, match=r"no migration from version 2 to 3.*from_version=2"):
        tk.load_model(path)


def test_file_newer_than_code_says_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"

    @tk.register(name="evolving", version=5)
    class V5(nn.Module):
        def __init__(self, hidden: int = 3) -> None:
            super().__init__()

    tk.save_model(V5(), path)
    _registry._unregister("evolving")
    _register_v3()
    with pytest.raises(tk.MigrationError, match=r"holds 'evolving' version 5.*defines version 3.*upgrade"):
        tk.load_model(path)


def test_migration_errors_are_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _save_v1(path)

    @tk.register(name="evolving", version=2)
    class V2(nn.Module):
        def __init__(self, hidden: int = 3) -> None:
            super().__init__()

    @tk.migration("evolving", from_version=1)
    def broken(config, state):  # type: ignore[no-untyped-def]
        return state

    with pytest.raises(tk.MigrationError, match="must return \\(config: dict, state_dict: dict\\)"):
        tk.load_model(path)
    _registry._MIGRATIONS.clear()

    @tk.migration("evolving", from_version=1)
    def raises(config, state):  # type: ignore[no-untyped-def]
        raise KeyError("dense.weight")

    with pytest.raises(tk.MigrationError, match="v1→v2\\) failed") as info:
        tk.load_model(path)
    assert isinstance(info.value.__cause__, KeyError)
    assert path.exists()


def test_duplicate_migration_and_bad_arguments() -> None:
    @tk.migration("dup", from_version=1)
    def first(config, state):  # type: ignore[no-untyped-def]
        return config, state

    tk.migration("dup", from_version=1)(first)  # same function again: fine
    with pytest.raises(tk.RegistryError, match="already has a migration from version 1"):

        @tk.migration("dup", from_version=1)
        def second(config, state):  # type: ignore[no-untyped-def]
            return config, state

    with pytest.raises(tk.RegistryError, match="int >= 1"):
        tk.migration("dup", from_version=0)
    with pytest.raises(tk.RegistryError, match="registry name or a registered"):
        tk.migration(nn.Linear, from_version=1)
