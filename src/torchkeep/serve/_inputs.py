"""Turn request bodies into validated numpy batches, and outputs back into JSON.

Every request body is hostile: it may be invalid JSON, deeply nested, ragged, hold strings,
booleans, nulls, NaN/Infinity, or shapes the model cannot take. Each problem becomes a
:class:`Reject` (an HTTP 4xx with a JSON error naming what was expected) before anything
reaches the model, so a client mistake can never turn into a 500 or a stuck batch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..runtime._base import TensorSpec

__all__ = [
    "NUMPY_DTYPES",
    "Reject",
    "check_array",
    "describe_inputs",
    "dumps",
    "outputs_to_json",
    "parse_json",
    "parse_npy",
    "predict_request",
    "v1_request",
]

# torch dtype name -> numpy dtype used on the wire. bfloat16 has no numpy type: clients send
# float32 numbers and the predictor casts.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.float32),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "bytes": np.dtype(object),  # text or encoded files, taken by a request handler
}
_FLOAT_KINDS = "fiu"
_INT_KINDS = "iu"
_NPY_MAX_HEADER = 4096

_orjson: Any
try:  # the serve extra installs orjson; the stdlib json is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


def dumps(obj: Any) -> bytes:
    """Serialize a JSON answer (orjson when installed: several times faster than :mod:`json`)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(obj)  # type: ignore[no-any-return]
        except TypeError:
            pass  # e.g. an integer beyond 64 bits: the stdlib handles it
    return json.dumps(obj).encode()


def _loads(body: bytes) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass  # NaN/Infinity literals and other forms only the stdlib accepts (--allow-non-finite)
    return json.loads(body)


class Reject(Exception):
    """A request the server refuses: HTTP status, error type, message.

    The core raises it; each front end turns it into its protocol's error (``/v1`` JSON error,
    v2 ``{"error": ...}``, a gRPC status code). It never reaches the client as a 500.

    Example:
        >>> rej = Reject(404, "not_found", "unknown model 'x'")
        >>> rej.status, rej.type
        (404, 'not_found')
    """

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}


def _spec_text(spec: TensorSpec) -> str:
    dims = ", ".join(
        "batch" if i == 0 and d is None else ("any" if d is None else str(d)) for i, d in enumerate(spec.shape)
    )
    return f"'{spec.name}': {spec.dtype}[{dims}]"


def describe_inputs(specs: Sequence[TensorSpec]) -> str:
    """One line naming every input, its dtype and shape, for error messages."""
    return "; ".join(_spec_text(s) for s in specs)


def parse_json(body: bytes) -> Any:
    """Parse a JSON body or raise 400 ``invalid_json``."""
    try:
        return _loads(body)
    except (ValueError, RecursionError) as exc:
        raise Reject(400, "invalid_json", f"the request body is not valid JSON ({exc}); send a JSON object") from None


def _to_bytes_array(value: Any, spec: TensorSpec, *, batched: bool, where: str) -> np.ndarray[Any, Any]:
    items = value.reshape(-1).tolist() if isinstance(value, np.ndarray) else value
    if not batched:
        items = [items]
    if not isinstance(items, list) or not items:
        raise Reject(422, "invalid_input", f"{where}: expected a non-empty list of strings, {_spec_text(spec)}")
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, bytes):
            raise Reject(422, "invalid_input", f"{where}[{i}]: found {type(item).__name__}, expected a string")
        out[i] = item
    return out


def check_array(
    value: Any, spec: TensorSpec, *, batched: bool, allow_non_finite: bool, where: str
) -> np.ndarray[Any, Any]:
    """``value`` (an array or nested lists) as a batch matching ``spec``, or a 422 :class:`Reject`.

    Checks the kind of values (booleans, integers in range, numbers), rank, fixed dimensions,
    a non-empty batch and finiteness; casts to the spec's wire dtype. Every front end's inputs
    pass through here.
    """
    if spec.dtype == "bytes":
        return _to_bytes_array(value, spec, batched=batched, where=where)
    expect = f"expected {_spec_text(spec)}" + ("" if batched else " without the batch dimension")
    if isinstance(value, np.ndarray):
        raw = value
    elif not batched and len(spec.shape) == 1 and isinstance(value, (int, float)) and not isinstance(value, bool):
        raw = np.array(value)  # one example of a (batch,)-shaped input is a bare number
    else:
        if not isinstance(value, list):
            raise Reject(
                422, "invalid_input", f"{where}: found {type(value).__name__}, {expect} as a nested list of numbers"
            )
        try:
            raw = np.array(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise Reject(
                422, "invalid_input", f"{where}: not a rectangular nested list of numbers ({exc}); {expect}"
            ) from None
    kind = raw.dtype.kind
    target = NUMPY_DTYPES.get(spec.dtype)
    if target is None:
        raise Reject(422, "invalid_input", f"{where}: this server cannot take {spec.dtype} inputs from clients")
    if target.kind == "b":
        if kind != "b":
            raise Reject(422, "invalid_input", f"{where}: found {raw.dtype} values, {expect} (true/false)")
    elif target.kind in _INT_KINDS:
        if kind not in _INT_KINDS:
            raise Reject(422, "invalid_input", f"{where}: found {_kind_name(raw)} values, {expect} (integers)")
        info = np.iinfo(target)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise Reject(422, "invalid_input", f"{where}: a value is outside the {spec.dtype} range; {expect}")
    elif kind not in _FLOAT_KINDS:
        raise Reject(422, "invalid_input", f"{where}: found {_kind_name(raw)} values, {expect} (numbers)")
    arr = raw.astype(target, copy=False)
    if not batched:
        arr = arr[None, ...]
    rank = len(spec.shape)
    if arr.ndim != rank:
        found = arr.shape if batched else arr.shape[1:]
        raise Reject(422, "invalid_input", f"{where}: found shape {list(found)}, {expect}")
    if arr.shape[0] == 0:
        raise Reject(422, "invalid_input", f"{where}: the batch is empty; {expect} with at least one example")
    for i, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
        if want is not None and i > 0 and want != got:
            found = arr.shape if batched else arr.shape[1:]
            raise Reject(422, "invalid_input", f"{where}: found shape {list(found)}, {expect}")
    if arr.dtype.kind == "f" and not allow_non_finite and not np.isfinite(arr).all():
        raise Reject(
            422,
            "invalid_input",
            f"{where}: NaN or Infinity in the input; {expect} with finite numbers "
            "(start the server with --allow-non-finite if the model handles them)",
        )
    return arr


def _kind_name(raw: np.ndarray[Any, Any]) -> str:
    return {"U": "string", "S": "bytes", "O": "mixed or null", "b": "boolean", "f": "float"}.get(
        raw.dtype.kind, str(raw.dtype)
    )


def predict_request(body: bytes, specs: Sequence[TensorSpec], *, allow_non_finite: bool) -> list[np.ndarray[Any, Any]]:
    """``POST /predict``: ``{"values": [...]}`` is ONE example of the model's single input."""
    data = parse_json(body)
    if len(specs) != 1:
        raise Reject(
            422,
            "invalid_input",
            f"/predict serves single-input models; this one takes {describe_inputs(specs)}: use /v1/predict",
        )
    if not isinstance(data, dict) or "values" not in data:
        raise Reject(
            422, "invalid_input", f'expected {{"values": [...]}} holding one example: {describe_inputs(specs)}'
        )
    return [check_array(data["values"], specs[0], batched=False, allow_non_finite=allow_non_finite, where="values")]


def v1_request(body: bytes, specs: Sequence[TensorSpec], *, allow_non_finite: bool) -> list[np.ndarray[Any, Any]]:
    """``POST /v1/predict`` JSON: ``{"inputs": {name: batch}}`` or ``{"inputs": batch | [batch, ...]}``.

    A list is the batch of a single-input model, or one batch per input (in order) for a model
    with several inputs. Every input's batch dimension must agree.
    """
    data = parse_json(body)
    usage = f'expected {{"inputs": {{name: nested list}}}} with a batch for each input: {describe_inputs(specs)}'
    if not isinstance(data, dict) or "inputs" not in data:
        raise Reject(422, "invalid_input", usage)
    inputs = data["inputs"]
    if isinstance(inputs, dict):
        names = [s.name for s in specs]
        missing = [n for n in names if n not in inputs]
        extra = sorted(str(k) for k in inputs if k not in names)
        if missing or extra:
            raise Reject(422, "invalid_input", f"missing inputs {missing}, unexpected inputs {extra}; {usage}")
        values = [inputs[n] for n in names]
    elif isinstance(inputs, list):
        if len(specs) == 1:
            values = [inputs]
        elif len(inputs) != len(specs):
            raise Reject(422, "invalid_input", f"found a list of {len(inputs)} inputs, expected {len(specs)}: {usage}")
        else:
            values = inputs
    else:
        raise Reject(422, "invalid_input", f"'inputs' is {type(inputs).__name__}; {usage}")
    arrays = [
        check_array(v, s, batched=True, allow_non_finite=allow_non_finite, where=f"inputs.{s.name}")
        for v, s in zip(values, specs, strict=True)
    ]
    _same_batch(arrays, specs)
    return arrays


def parse_npy(body: bytes, specs: Sequence[TensorSpec], *, allow_non_finite: bool) -> list[np.ndarray[Any, Any]]:
    """``application/x-npy`` body: one ``.npy`` array, the batch of a single-input model.

    Read with ``allow_pickle=False``: an object array (the only kind that needs pickle) is refused.
    """
    if len(specs) != 1:
        raise Reject(
            415,
            "unsupported_media_type",
            f"a .npy body carries one array; this model takes {describe_inputs(specs)}: send JSON",
        )
    if not body.startswith(b"\x93NUMPY"):
        raise Reject(400, "invalid_npy", "the body is not a .npy file (no \\x93NUMPY magic); write it with numpy.save")
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise Reject(
            400, "invalid_npy", f"cannot read the .npy body ({exc}); write a numeric array with numpy.save"
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise Reject(
            422,
            "invalid_input",
            f"the .npy array has dtype {getattr(arr, 'dtype', '?')}; expected {describe_inputs(specs)}",
        )
    return [check_array(arr, specs[0], batched=True, allow_non_finite=allow_non_finite, where="body")]


def _same_batch(arrays: Sequence[np.ndarray[Any, Any]], specs: Sequence[TensorSpec]) -> None:
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) > 1:
        found = {s.name: a.shape[0] for a, s in zip(arrays, specs, strict=True)}
        raise Reject(
            422, "invalid_input", f"inputs have different batch sizes {found}; every input needs the same batch size"
        )


def outputs_to_json(outputs: Sequence[np.ndarray[Any, Any]], specs: Sequence[TensorSpec]) -> dict[str, Any]:
    """Name each output array and turn it into nested lists (NaN/Infinity become null)."""
    out: dict[str, Any] = {}
    for arr, spec in zip(outputs, specs, strict=True):
        if arr.dtype.kind in "OSU":  # text a handler returned (labels)
            flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()]
            out[spec.name] = np.array(flat, dtype=object).reshape(arr.shape).tolist()
        elif arr.dtype.kind == "f" and not np.isfinite(arr).all():
            out[spec.name] = np.where(np.isfinite(arr), arr, np.nan).astype(object).tolist()
            out[spec.name] = _nan_to_none(out[spec.name])
        else:
            out[spec.name] = arr.tolist()
    return out


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and x != x else x
