"""Request bodies as hostile input: whatever is posted, the server answers 4xx (or 200), never 5xx."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import running, seed_predictor


def _npy_claiming(shape: tuple[int, ...], dtype: str = "<f4", body: bytes = b"\x00" * 40) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def test_npy_header_claiming_more_elements_than_the_body_holds_is_a_400() -> None:
    async def go() -> None:
        async with running(seed_predictor()) as c:
            for shape in [(10**11,), (10**10, 10), (2**40, 10), (3, 10)]:
                r = await c.post(
                    "/v1/predict", content=_npy_claiming(shape), headers={"content-type": "application/x-npy"}
                )
                assert r.status_code == 400, (shape, r.status_code, r.text)
                assert r.json()["error"]["type"] == "invalid_npy", r.text
                assert "bytes" in r.json()["error"]["message"]

    asyncio.run(go())


def test_a_well_formed_npy_body_still_predicts() -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 10), dtype=np.float32))

    async def go() -> None:
        async with running(seed_predictor()) as c:
            r = await c.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
            assert r.status_code == 200, r.text
            assert np.asarray(r.json()["outputs"]["output"]).shape == (3, 1)

    asyncio.run(go())


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=40,
)
_shaped = st.fixed_dictionaries(
    {"inputs": _json | st.fixed_dictionaries({"x": _json}) | st.lists(st.lists(st.floats(), max_size=11), max_size=4)}
) | st.fixed_dictionaries({"values": _json | st.lists(st.floats(), max_size=11)})


def _npy_bodies() -> st.SearchStrategy[bytes]:
    shapes = st.lists(st.integers(0, 2**40), max_size=4).map(tuple)
    dtypes = st.sampled_from(["<f4", "<f8", "|b1", "<i8", "|O", "<U3", "V8", "<f4,<f4", "garbage", ">f4"])
    return st.builds(_npy_claiming, shapes, dtypes, st.binary(max_size=200)) | st.binary(max_size=200).map(
        lambda b: b"\x93NUMPY" + b
    )


_bodies = st.one_of(
    st.binary(max_size=300).map(lambda b: ("application/json", b)),
    _json.map(lambda v: ("application/json", json.dumps(v).encode())),
    _shaped.map(lambda v: ("application/json", json.dumps(v).encode())),
    _npy_bodies().map(lambda b: ("application/x-npy", b)),
    st.tuples(
        st.sampled_from(["text/plain", "", "application/x-npy; x=1", "multipart/form-data"]), st.binary(max_size=50)
    ),
)


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("TK_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(requests=st.lists(st.tuples(st.sampled_from(["/predict", "/v1/predict"]), _bodies), min_size=1, max_size=5))
def test_no_body_gets_a_server_error(requests: list[tuple[str, tuple[str, bytes]]]) -> None:
    async def go() -> None:
        async with running(seed_predictor()) as c:
            for route, (ctype, body) in requests:
                r = await c.post(route, content=body, headers={"content-type": ctype} if ctype else {})
                assert r.status_code < 500, (route, ctype, body[:200], r.status_code, r.text[:300])
                if r.status_code != 200:
                    assert "error" in r.json()

    asyncio.run(go())
