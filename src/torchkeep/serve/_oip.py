"""Open Inference Protocol (KServe v2 / Triton) tensors: datatypes, JSON and binary codecs, metadata.

Shared by the REST and gRPC front ends. Decoding checks only what the protocol itself says
(known datatype, non-negative shape, element count equal to the shape's, binary sizes adding
up); the model's specs are checked by the core (:meth:`LoadedModel.check`), once, whichever
front end a request came through. Every problem is a :class:`Reject` with status 400 (404 for
unknown models), so a malformed request never becomes a 500.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _version
from ..runtime._base import TensorSpec
from ._inputs import Reject

__all__ = [
    "SPEC_TO_V2",
    "V2_TO_NUMPY",
    "decode_bytes",
    "decode_tensor",
    "encode_bytes",
    "model_metadata",
    "server_metadata",
    "to_model_inputs",
    "v2_datatype",
]

V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
SPEC_TO_V2 = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "FP32",  # numpy has no bfloat16: clients send FP32 and the predictor casts
    "bytes": "BYTES",
}
_NUMPY_TO_V2 = {np.dtype(v): k for k, v in V2_TO_NUMPY.items() if k != "BYTES"}
_MAX_RANK = 16


def v2_datatype(dtype: str | np.dtype[Any]) -> str:
    """The v2 datatype of a spec dtype name (``"float32"``) or of a numpy dtype.

    Example:
        >>> v2_datatype("float32"), v2_datatype(np.dtype(np.int64))
        ('FP32', 'INT64')
    """
    if isinstance(dtype, str):
        return SPEC_TO_V2.get(dtype, "FP32")
    if dtype.kind in "OSU":
        return "BYTES"
    return _NUMPY_TO_V2.get(dtype, "FP32")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > _MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in value)
    ):
        raise Reject(
            400, "invalid_request", f"{where}: 'shape' must be a list of non-negative integers, found {value!r}"
        )
    return tuple(value)


def encode_bytes(arr: np.ndarray[Any, Any]) -> bytes:
    """BYTES tensor wire form: each element as a 4-byte little-endian length, then its bytes."""
    parts = []
    for item in arr.reshape(-1).tolist():
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_bytes(raw: bytes | memoryview, count: int, where: str) -> np.ndarray[Any, Any]:
    """Inverse of :func:`encode_bytes`, for exactly ``count`` elements, or a 400 :class:`Reject`."""
    out = np.empty(count, dtype=object)
    mv = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(mv):
            raise Reject(400, "invalid_request", f"{where}: BYTES data ends inside element {i} of {count}")
        (size,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if pos + size > len(mv):
            raise Reject(400, "invalid_request", f"{where}: BYTES element {i} claims {size} bytes past the end")
        out[i] = bytes(mv[pos : pos + size])
        pos += size
    if pos != len(mv):
        raise Reject(400, "invalid_request", f"{where}: {len(mv) - pos} bytes left after {count} BYTES elements")
    return out


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    for d in data:
        out.extend(_flat(d))
    return out


def decode_tensor(
    name: str, datatype: Any, shape: Any, *, data: Any = None, raw: bytes | memoryview | None = None
) -> np.ndarray[Any, Any]:
    """One input tensor of a request: from JSON ``data`` or from raw (binary extension / gRPC) bytes.

    Raises:
        Reject: 400 for an unknown datatype, a bad shape, or data that does not fill the shape.

    Example:
        >>> decode_tensor("x", "FP32", [1, 2], data=[1.5, 2.0]).tolist()
        [[1.5, 2.0]]
    """
    where = f"input '{name}'"
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise Reject(
            400, "invalid_request", f"{where}: unknown datatype {datatype!r}; expected one of {sorted(V2_TO_NUMPY)}"
        )
    dims = _shape(shape, where)
    count = math.prod(dims)
    dtype = V2_TO_NUMPY[datatype]
    if raw is not None:
        if datatype == "BYTES":
            return decode_bytes(raw, count, where).reshape(dims)
        if len(raw) != count * dtype.itemsize:
            raise Reject(
                400,
                "invalid_request",
                f"{where}: {len(raw)} bytes of data for shape {list(dims)} of {datatype} "
                f"(expected {count * dtype.itemsize})",
            )
        return np.frombuffer(raw, dtype=dtype).reshape(dims)
    if data is None:
        raise Reject(400, "invalid_request", f"{where}: no 'data' and no binary_data_size parameter")
    flat = _flat(data)
    if len(flat) != count:
        raise Reject(
            400, "invalid_request", f"{where}: {len(flat)} values for shape {list(dims)} (expected {count} values)"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise Reject(
                    400, "invalid_request", f"{where}: BYTES data must be strings, found {type(item).__name__}"
                )
            out[i] = item.encode("utf-8")
        return out.reshape(dims)
    try:
        arr = np.array(flat)
    except (ValueError, TypeError, OverflowError) as exc:
        raise Reject(400, "invalid_request", f"{where}: data is not a list of numbers ({exc})") from None
    kind = arr.dtype.kind if count else dtype.kind
    ok = {"b": kind == "b", "i": kind in "iu", "u": kind in "iu", "f": kind in "iuf"}[dtype.kind]
    if not ok:
        what = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise Reject(400, "invalid_request", f"{where}: {datatype} data must be {what}, found {arr.dtype} values")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise Reject(400, "invalid_request", f"{where}: a value is outside the {datatype} range")
    return arr.astype(dtype).reshape(dims)


def to_model_inputs(
    tensors: dict[str, tuple[str, np.ndarray[Any, Any]]], specs: Sequence[TensorSpec], model: str
) -> list[np.ndarray[Any, Any]]:
    """Named request tensors ``{name: (datatype, array)}`` in the model's input order; datatypes must match.

    Raises:
        Reject: 400 naming missing or unexpected inputs, or a datatype other than the model's.
    """
    names = [s.name for s in specs]
    missing = [n for n in names if n not in tensors]
    extra = sorted(n for n in tensors if n not in names)
    usage = ", ".join(f"{s.name}: {v2_datatype(s.dtype)}{_dims(s)}" for s in specs)
    if missing or extra:
        raise Reject(
            400,
            "invalid_request",
            f"model {model!r}: missing inputs {missing}, unexpected inputs {extra}; it takes {usage}",
        )
    out = []
    for spec in specs:
        datatype, arr = tensors[spec.name]
        want = v2_datatype(spec.dtype)
        if datatype != want:
            raise Reject(
                400, "invalid_request", f"model {model!r}: input '{spec.name}' has datatype {datatype}, expected {want}"
            )
        out.append(arr)
    return out


def _dims(spec: TensorSpec) -> list[int]:
    return [-1 if d is None else d for d in spec.shape]


def server_metadata() -> dict[str, Any]:
    """``GET /v2`` / ``ServerMetadata``: name, version, extensions."""
    return {
        "name": "torchkeep",
        "version": _version.__version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }


def model_metadata(
    name: str, versions: Sequence[str], backend: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> dict[str, Any]:
    """``GET /v2/models/{name}`` / ``ModelMetadata``: versions, platform, tensor metadata (-1: dynamic)."""

    def meta(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": _dims(s)} for s in specs]

    return {
        "name": name,
        "versions": list(versions),
        "platform": f"torchkeep_{backend}",
        "inputs": meta(inputs),
        "outputs": meta(outputs),
    }
