"""`convert` inputs as hostile files: crafted pickles end in typed errors, bounded in time and memory."""

from __future__ import annotations

import collections
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchkeep as tk
from torchkeep import convert as conv


class _Reduce:
    """Pickles as ``fn(*args)``: how a crafted file calls an allow-listed global with bad arguments."""

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


CRAFTED = {
    "size-fed-a-str": _Reduce(torch.Size, ("ab",)),
    "size-fed-an-int": _Reduce(torch.Size, (5,)),
    "device-fed-a-list": _Reduce(torch.device, ([1],)),
    "tensor-rebuilt-from-a-str": _Reduce(torch._utils._rebuild_tensor_v2, ("x", 0, (1,), (1,), False, {})),
    "parameter-of-a-str": _Reduce(torch._utils._rebuild_parameter, ("x", False, collections.OrderedDict())),
    "odict-fed-a-str": _Reduce(collections.OrderedDict, ("ab",)),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_allow_listed_globals_fed_bad_arguments_are_corrupt(tmp_path: Path, name: str) -> None:
    src = tmp_path / "crafted.pt"
    torch.save({"x": CRAFTED[name]}, src)
    with pytest.raises(tk.CorruptCheckpointError) as info:
        conv.convert(src, tmp_path / "out.safetensors")
    assert str(src) in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_shared_references_do_not_expand_exponentially(tmp_path: Path) -> None:
    node: Any = [torch.ones(1)]
    for _ in range(40):  # 2**40 paths through 40 distinct lists
        node = [node, node]
    src = tmp_path / "dag.pt"
    torch.save({"x": node}, src)
    # refused from the counts: walking 2**40 paths would never end (pytest-timeout fails the test)
    with pytest.raises(tk.UnsupportedValueError, match="shares containers") as info:
        conv.convert(src, tmp_path / "out.safetensors")
    assert "limit" in str(info.value)


def test_a_few_shared_references_still_convert(tmp_path: Path) -> None:
    shared = {"lr": 0.1, "betas": (0.9, 0.99)}
    src = tmp_path / "few.pt"
    torch.save({"a": shared, "b": shared, "w": torch.ones(2)}, src)
    conv.convert(src, tmp_path / "out.safetensors")
    out = tk.load(tmp_path / "out.safetensors")
    assert out["a"] == out["b"] == shared


def test_nesting_deeper_than_the_codec_limit_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    node: Any = 1
    for _ in range(300):
        node = [node]
    src = tmp_path / "deep.pt"
    torch.save(node, src)
    with pytest.raises(tk.TorchkeepError, match="nest"):
        conv.convert(src, tmp_path / "out.safetensors")


# -- fuzzing convert's readers ----------------------------------------------------------------------


def _seed_pt(path: Path) -> bytes:
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "betas": (0.9, 0.99)}, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("convert-fuzz")
    return d, _seed_pt(d / "seed.pt")


def _mutate_pickle_inside(raw: bytes, data: st.DataObject) -> bytes:
    """Flip bytes of the archive's data.pkl (kept a valid zip, so the unpickler sees the damage)."""
    import io

    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = bytearray(src.read(info))
            if info.filename.endswith("data.pkl") and body:
                for _ in range(data.draw(st.integers(1, 4))):
                    body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
            dst.writestr(info, bytes(body))
    return out.getvalue()


@settings(
    max_examples=int(os.environ.get("TK_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_only_torchkeep_errors_escape_convert(seed: tuple[Path, bytes], data: st.DataObject) -> None:
    d, raw = seed
    kind = data.draw(st.sampled_from(["pickle", "flip", "truncate", "legacy"]))
    if kind == "pickle":
        mutated = _mutate_pickle_inside(raw, data)
    elif kind == "flip":
        b = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            b[data.draw(st.integers(0, len(b) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        mutated = bytes(b)
    elif kind == "truncate":
        mutated = raw[: data.draw(st.integers(1, len(raw) - 1))]
    else:  # a legacy (pre-zip) pickle stream header followed by junk
        mutated = b"\x80\x02" + data.draw(st.binary(max_size=200))
    src, dst = d / "mutant.pt", d / "mutant.safetensors"
    src.write_bytes(mutated)
    try:
        conv.convert(src, dst, overwrite=True)
    except tk.TorchkeepError as exc:
        assert str(exc)
    else:
        tk.load(dst)
