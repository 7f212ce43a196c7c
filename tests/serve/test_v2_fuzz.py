"""Hostile Open Inference Protocol bodies: whatever the client sends, the answer is never a 5xx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchkeep.serve import ServeOptions, ServingCore
from torchkeep.serve._v2 import handle_v2

from .conftest import seed_predictor

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=4)
)
_data = st.one_of(_values, st.lists(_values, max_size=24), st.lists(st.lists(_values, max_size=12), max_size=3))
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "y", "", 1]),
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "FP99", 3]),
        "shape": st.one_of(st.lists(st.integers(-2, 12), max_size=4), st.text(max_size=3)),
        "data": _data,
        "parameters": st.one_of(
            st.none(), st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-5, 80), st.text(max_size=2))})
        ),
    },
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.one_of(st.lists(_tensor, max_size=3), _values),
        "outputs": st.one_of(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["output", "z"])}), max_size=2)),
        "parameters": st.fixed_dictionaries({"binary_data_output": st.booleans()}),
        "id": st.text(max_size=4),
    },
)


def _core() -> ServingCore:
    return ServingCore.from_target(seed_predictor(), ServeOptions(max_batch_size=8, warmup=False))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_request, tail=st.binary(max_size=64), header=st.one_of(st.none(), st.integers(-3, 400)))
def test_hostile_v2_infer_bodies_never_get_a_5xx(request: dict[str, Any], tail: bytes, header: int | None) -> None:
    body = json.dumps(request).encode() + (tail if header is not None else b"")
    hl = None if header is None else str(header if header != 0 else len(body) - len(tail))

    async def go() -> int:
        core = _core()
        await core.start()
        try:
            status, _, payload = await handle_v2(core, "POST", "/v2/models/model/infer", hl, body)
            if status != 200:
                assert isinstance(json.loads(payload)["error"], str)  # the protocol's error form
            return status
        finally:
            await core.stop()

    status = asyncio.run(go())
    assert status < 500, (request, tail, header)
