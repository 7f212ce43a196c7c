"""The model section is hostile input: any JSON there gives a torchkeep error, never a crash."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchkeep as tk
from torchkeep.io import _format
from torchkeep.models import _registry

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
_tagged = st.fixed_dictionaries(
    {"t": st.sampled_from(["dict", "tuple", "int", "float", "tensor", "dataclass", "enum", "bytes", "size", "odict"])},
    optional={"items": _json, "v": _json, "ref": _json, "cls": _json, "keys": _json, "values": _json},
)
_arguments = st.one_of(
    _json,
    _tagged,
    st.fixed_dictionaries(
        {"t": st.just("dict"), "items": st.dictionaries(st.sampled_from(["n", "bias", "x"]), _json | _tagged)}
    ),
)
_section = st.one_of(
    _json,
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["fuzz-target", "unknown"]) | _json,
            "version": st.integers(-3, 4) | _json,
            "target": st.sampled_from(["m:Fuzz", "__main__:X", "os:system", "a..b:c"]) | _json,
            "arguments": _arguments,
        },
        optional={"tied": _json, "kind": _json},
    ),
)


@tk.register(name="fuzz-target", version=2)
class Fuzz(nn.Module):
    def __init__(self, n: int = 2, bias: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(n, 2, bias=bias)


def _file(section: object) -> bytes:
    buf = io.BytesIO()
    _format.write(buf, Fuzz().state_dict(), sections={"model": section})
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=_section)
def test_any_model_section_gives_a_torchkeep_error(section: object) -> None:
    # the autouse fixture of this folder resets the registry per test, not per example: keep ours
    _registry._REGISTRY["fuzz-target"] = Fuzz._torchkeep_entry  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.safetensors"
        path.write_bytes(_file(section))
        try:
            model = tk.load_model(path)
        except tk.TorchkeepError:
            return
        assert isinstance(model, Fuzz)
        assert isinstance(model.lin.weight, torch.Tensor)
