"""load_checkpoint checks every section (objects, RNG, header fields) before it changes anything."""

from __future__ import annotations

import copy
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchkeep as tk


def _header(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_header(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text))) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _rewrite(src: Path, dst: Path, tree: Any = None, section: Callable[[dict[str, Any]], None] | None = None) -> None:
    """A checkpoint at ``dst`` holding ``tree`` (default: ``src``'s) and ``src``'s (edited) header section."""
    header, _ = _header(src)
    sec = json.loads(header["__metadata__"]["torchkeep.checkpoint"])
    if section is not None:
        section(sec)
    tk.save(tk.load(src) if tree is None else tree, dst)
    h2, data = _header(dst)
    h2["__metadata__"]["torchkeep.checkpoint"] = json.dumps(sec)
    _write_header(dst, h2, data)


def _objects() -> dict[str, Any]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched.step()
    return {"model": model, "optimizer": opt, "scheduler": sched}


def _snapshot(objs: dict[str, Any]) -> Any:
    return (
        {k: v.clone() for k, v in objs["model"].state_dict().items()},
        copy.deepcopy(objs["optimizer"].state_dict()),
        copy.deepcopy(objs["scheduler"].state_dict()),
        random.getstate(),
        np.random.get_state(legacy=True)[1].copy(),
        torch.get_rng_state(),
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _set(tree: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return tree


# (name, edit of the decoded tree) — each leaves a file whose tree decodes fine but whose content is wrong
TREE_EDITS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("model ints for tensors", lambda t: _set(t, ("model", "0.weight"), 3)),
    ("model wrong shape", lambda t: _set(t, ("model", "0.weight"), torch.zeros(9, 9))),
    (
        "model logical dtype",
        lambda t: _set(t, ("model", "0.bias"), torch.zeros(4, dtype=torch.uint8).view(torch.bits8)),
    ),
    (
        "model float4",
        lambda t: _set(t, ("model", "0.bias"), torch.zeros(4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)),
    ),
    ("model not a dict", lambda t: _set(t, ("model",), [1, 2])),
    ("optimizer a string", lambda t: _set(t, ("optimizer",), "garbage")),
    ("optimizer a list", lambda t: _set(t, ("optimizer",), [1, 2])),
    ("optimizer groups not a list", lambda t: _set(t, ("optimizer", "param_groups"), 3)),
    ("optimizer group count", lambda t: _set(t, ("optimizer", "param_groups"), [])),
    ("optimizer state not a dict", lambda t: _set(t, ("optimizer", "state"), [1])),
    ("optimizer params not ints", lambda t: _set(t, ("optimizer", "param_groups", 0, "params"), "xy")),
    ("scheduler a string", lambda t: _set(t, ("scheduler",), "garbage")),
    ("rng not a dict", lambda t: _set(t, ("__rng__",), 5)),
    ("rng python", lambda t: _set(t, ("__rng__", "python"), (3, (1, 2), None))),
    ("rng python type", lambda t: _set(t, ("__rng__", "python"), "x")),
    ("rng numpy", lambda t: _set(t, ("__rng__", "numpy"), ("MT19937", np.zeros(3, dtype=np.uint32), 0, 0, 0.0))),
    ("rng numpy type", lambda t: _set(t, ("__rng__", "numpy"), 7)),
    ("rng torch size", lambda t: _set(t, ("__rng__", "torch"), torch.zeros(7, dtype=torch.uint8))),
    ("rng torch type", lambda t: _set(t, ("__rng__", "torch"), "x")),
    ("rng torch dtype", lambda t: _set(t, ("__rng__", "torch"), torch.zeros(5056, dtype=torch.float64))),
    ("rng cuda", lambda t: _set(t, ("__rng__", "cuda"), "x")),
]

SECTION_EDITS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("epoch", lambda s: s.update(epoch="x")),
    ("step", lambda s: s.update(step=[1])),
    ("metrics", lambda s: s.update(metrics=[1])),
    ("metric value", lambda s: s.update(metrics={"loss": [1]})),
    ("objects", lambda s: s.update(objects=["model"])),
    ("object kind", lambda s: s.update(objects={"model": 5})),
    ("env", lambda s: s.update(env=[1])),
    ("created_at", lambda s: s.update(created_at=5)),
    ("rng flag", lambda s: s.update(rng="yes")),
    ("model entry", lambda s: s.update(model=[1])),
    ("section", lambda s: s.clear() or s.update(epoch={"a": 1})),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tx") / "good.safetensors"
    tk.save_checkpoint(path, epoch=1, step=2, metrics={"loss": 0.5}, extra={"k": 1}, **_objects())
    return path


def _check_untouched(path: Path) -> None:
    objs = _objects()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    before = _snapshot(objs)
    with pytest.raises(tk.TorchkeepError) as info:
        tk.load_checkpoint(path, **objs)
    assert str(info.value)
    assert _same(_snapshot(objs), before), "an object or a random generator changed before the error"


@pytest.mark.parametrize("name", [n for n, _ in TREE_EDITS])
def test_a_malformed_section_changes_nothing(saved: Path, tmp_path: Path, name: str) -> None:
    edit = dict(TREE_EDITS)[name]
    tree = tk.load(saved)
    edit(tree)
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, tree)
    _check_untouched(bad)


@pytest.mark.parametrize("name", [n for n, _ in SECTION_EDITS])
def test_a_malformed_header_field_is_corrupt_and_changes_nothing(saved: Path, tmp_path: Path, name: str) -> None:
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, section=dict(SECTION_EDITS)[name])
    with pytest.raises(tk.CorruptCheckpointError):
        tk.read_info(bad)
    _check_untouched(bad)


def test_the_good_file_still_loads(saved: Path) -> None:
    objs = _objects()
    for p in objs["model"].parameters():
        p.data.zero_()
    info = tk.load_checkpoint(saved, **objs)
    assert info.step == 2 and info.extra == {"k": 1}
    assert objs["scheduler"].last_epoch == 1


def test_strict_false_skips_what_does_not_fit_and_loads_the_rest(saved: Path, tmp_path: Path) -> None:
    tree = tk.load(saved)
    tree["optimizer"] = "garbage"
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, tree)
    objs = _objects()
    for p in objs["model"].parameters():
        p.data.zero_()
    info = tk.load_checkpoint(bad, strict=False, **objs)
    assert "optimizer" in info.skipped
    assert any(p.abs().sum() > 0 for p in objs["model"].parameters())


def test_metrics_that_json_cannot_hold_are_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(tk.UnsupportedValueError, match="metrics"):
        tk.save_checkpoint(tmp_path / "c.safetensors", model=torch.nn.Linear(1, 1), metrics={"m": 10**5000})
    with pytest.raises(tk.UnsupportedValueError, match="64-bit"):
        tk.save_checkpoint(tmp_path / "c.safetensors", model=torch.nn.Linear(1, 1), metrics={"m": 2**70})
    assert not (tmp_path / "c.safetensors").exists()


def test_big_int_metric_in_a_file_is_corrupt_not_an_overflow(saved: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, section=lambda s: s.update(metrics={"loss": 10**400}))
    with pytest.raises(tk.CorruptCheckpointError, match="metric"):
        tk.read_info(bad)
