"""A sharded checkpoint directory as hostile input: its index.json names nothing, amplifies nothing."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchkeep as tk
from torchkeep import distributed


def _save(path: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    distributed.save_checkpoint(path, model=model, optimizer=opt, step=3, extra={"k": 1})
    return json.loads((path / "index.json").read_text())


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("sharded") / "step-3"
    return path, _save(path)


def _variant(good: tuple[Path, dict[str, Any]], tmp_path: Path, edit: Any) -> Path:
    src, index = good
    dst = tmp_path / "bad"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "index.json":
            os.link(f, dst / f.name)
    doc = copy.deepcopy(index)
    edit(doc)
    (dst / "index.json").write_text(json.dumps(doc))
    return dst


def _load_all_ways(path: Path) -> None:
    with pytest.raises(tk.TorchkeepError):
        tk.load(path)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(tk.TorchkeepError):
        tk.load_checkpoint(path, model=model, optimizer=torch.optim.Adam(model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["_inductor", "onnx", "_dynamo", "float", "Tensor", "__class__", "float32 "])
def test_index_dtype_names_come_from_a_fixed_table(
    good: tuple[Path, dict[str, Any]], tmp_path: Path, name: str
) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["dcp"]["state_dict"]["model.0.weight"]["dtype"] = name

    bad = _variant(good, tmp_path, edit)
    code = (
        "import sys, torchkeep as tk\n"
        f"try:\n    tk.load({str(bad)!r})\nexcept tk.CorruptCheckpointError as exc:\n    print('refused:', exc)\n"
        "print(sorted(m for m in ('torch._inductor', 'torch.onnx', 'torch._dynamo') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True).stdout
    assert "refused:" in out and "unknown dtype" in out
    assert out.strip().endswith("[]"), out  # loading imported nothing the file named


def test_one_shard_tensor_used_for_many_chunks_is_refused(good: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    k = 64

    def edit(doc: dict[str, Any]) -> None:
        dcp = doc["dcp"]
        entry = dcp["state_dict"]["model.0.weight"]
        entry["size"] = [4 * k, 4]
        entry["chunks"] = [[[4 * i, 0], [4, 4]] for i in range(k)]
        ref = next(s for s in dcp["storage"] if s[0] == "model.0.weight")
        dcp["storage"] = [s for s in dcp["storage"] if s[0] != "model.0.weight"]
        dcp["storage"] += [["model.0.weight", [4 * i, 0], i, ref[3], ref[4]] for i in range(k)]

    bad = _variant(good, tmp_path, edit)
    with pytest.raises(tk.CorruptCheckpointError, match="more than once"):
        distributed.read_index(bad)
    _load_all_ways(bad)


def test_two_keys_sharing_one_shard_tensor_are_refused(good: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        storage = doc["dcp"]["storage"]
        w = next(s for s in storage if s[0] == "model.0.weight")
        for s in storage:
            if s[0] == "model.1.weight":
                s[3], s[4] = w[3], w[4]

    bad = _variant(good, tmp_path, edit)
    with pytest.raises(tk.CorruptCheckpointError, match="more than once"):
        distributed.read_index(bad)


@pytest.mark.parametrize("index", [2**20 - 1, 10**4, 2**40])
def test_planner_list_indices_are_bounded_by_the_index_itself(
    good: tuple[Path, dict[str, Any]], tmp_path: Path, index: int
) -> None:
    def edit(doc: dict[str, Any]) -> None:
        planner = doc["dcp"]["planner_data"]
        key = next(k for k in planner if k.startswith("optimizer.param_groups"))
        planner[key] = ["optimizer", "param_groups", index, "lr"]

    bad = _variant(good, tmp_path, edit)
    with pytest.raises(tk.CorruptCheckpointError, match="list ind"):
        distributed.read_index(bad)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (["optimizer", "param_groups", "float32"], "both as a list and as a dict"),  # found by the fuzzer
        (["optimizer", "param_groups"], "both as a value and as a container"),
    ],
)
def test_planner_paths_that_disagree_on_a_container_are_refused(
    good: tuple[Path, dict[str, Any]], tmp_path: Path, parts: list[Any], message: str
) -> None:
    def edit(doc: dict[str, Any]) -> None:
        planner = doc["dcp"]["planner_data"]
        assert any(v[:3] == ["optimizer", "param_groups", 0] for v in planner.values())
        planner["extra.key"] = parts

    bad = _variant(good, tmp_path, edit)
    with pytest.raises(tk.CorruptCheckpointError, match=message):
        distributed.read_index(bad)
    with pytest.raises(tk.CorruptCheckpointError):
        tk.load(bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("objects", ["model"]),
        ("objects", {"model": 3}),
        ("step", "x"),
        ("metrics", [1]),
        ("env", 5),
        ("created_at", []),
    ],
)
def test_checkpoint_fields_of_the_wrong_type_are_corrupt(
    good: tuple[Path, dict[str, Any]], tmp_path: Path, field: str, value: Any
) -> None:
    bad = _variant(good, tmp_path, lambda doc: doc["checkpoint"].update({field: value}))
    with pytest.raises(tk.CorruptCheckpointError):
        distributed.read_index(bad)
    _load_all_ways(bad)


def test_the_good_directory_still_loads(good: tuple[Path, dict[str, Any]]) -> None:
    tree = tk.load(good[0])
    assert tree["__extra__"] == {"k": 1} and tree["model"]["0.weight"].shape == (4, 4)


# -- fuzzing the index ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory, good: tuple[Path, dict[str, Any]]) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "step"
    d.mkdir()
    for f in good[0].iterdir():
        if f.name != "index.json":
            os.link(f, d / f.name)
    return d


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("TK_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_only_torchkeep_errors_escape_a_mutated_index(
    good: tuple[Path, dict[str, Any]], fuzz_dir: Path, data: st.DataObject
) -> None:
    doc = copy.deepcopy(good[1])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        where = data.draw(st.sampled_from(paths))
        node = doc
        for p in where[:-1]:
            node = node[p]
        node[where[-1]] = data.draw(json_values | st.sampled_from([[], {}, 2**62, -1, "float32", "bytes"]))
    (fuzz_dir / "index.json").write_text(json.dumps(doc))
    try:
        tree = tk.load(fuzz_dir)
    except tk.TorchkeepError as exc:
        assert str(exc)
    else:
        assert isinstance(tree, dict)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    try:
        tk.load_checkpoint(fuzz_dir, model=model, optimizer=torch.optim.Adam(model.parameters()))
    except tk.TorchkeepError as exc:
        assert str(exc)
