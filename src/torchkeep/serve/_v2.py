"""Open Inference Protocol v2 over REST: health, metadata, infer (JSON + binary extension), repository.

Routes::

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    POST /v2/repository/index
    POST /v2/repository/models/{name}/load | /unload

The binary tensor data extension (as ``tritonclient.http`` speaks it): a request whose header
``Inference-Header-Content-Length`` is N carries N bytes of JSON, then the inputs with a
``binary_data_size`` parameter back to back, in input order. Outputs are returned binary when
the request says ``"binary_data_output": true`` or ``"binary_data": true`` per output; the
answer then carries the same header. Errors are ``{"error": "..."}`` with 400/404 (413 for an
oversized body, 503/504 for overload).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import numpy as np

from ._core import LoadedModel, ServingCore
from ._inputs import Reject, dumps, parse_json
from ._oip import decode_tensor, encode_bytes, model_metadata, server_metadata, to_model_inputs, v2_datatype

__all__ = ["HEADER_LENGTH", "V2Answer", "handle_v2"]

logger = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
V2Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
_JSON = (b"content-type", b"application/json")
_MAX_INPUTS = 256


def _ok(payload: Any) -> V2Answer:
    return 200, [_JSON], dumps(payload)


def _error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> V2Answer:
    return status, [_JSON, *(headers or [])], json.dumps({"error": message}).encode()


def _v2_status(status: int) -> int:
    # The protocol answers client mistakes 400; keep 404 / 413 and the overload codes as they are.
    return status if status in (404, 408, 413, 503, 504) else 400


async def handle_v2(core: ServingCore, method: str, path: str, header_length: str | None, body: bytes) -> V2Answer:
    """Answer one ``/v2`` request: ``(status, headers, body)``. Never raises.

    Example:
        >>> status, headers, body = await handle_v2(core, "GET", "/v2/health/ready", None, b"")  # doctest: +SKIP
    """
    try:
        return await _route(core, method, path, header_length, body)
    except Reject as rej:
        extra = [(k.lower().encode(), v.encode()) for k, v in rej.headers.items()]
        return _error(_v2_status(rej.status), rej.message, extra)
    except Exception as exc:
        request_id = uuid.uuid4().hex[:16]
        logger.error("request %s: %s failed: %s: %s", request_id, path, type(exc).__name__, exc, exc_info=exc)
        return _error(
            500,
            f"the model failed on this request ({type(exc).__name__}); quote request id {request_id} to the operator",
            [(b"x-request-id", request_id.encode())],
        )


async def _route(core: ServingCore, method: str, path: str, header_length: str | None, body: bytes) -> V2Answer:
    parts = [p for p in path.split("/") if p][1:]  # drop "v2"
    if not parts:
        return _need("GET", method, path) or _ok(server_metadata())
    head = parts[0]
    if head == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
        bad = _need("GET", method, path)
        if bad:
            return bad
        if parts[1] == "live":
            return 200, [_JSON], b'{"live":true}'
        return (200, [_JSON], b'{"ready":true}') if core.ready else (400, [_JSON], b'{"ready":false}')
    if head == "models" and len(parts) >= 2:
        return await _model_route(core, method, path, parts[1:], header_length, body)
    if head == "repository":
        return await _repository_route(core, method, path, parts[1:], body)
    raise Reject(404, "not_found", f"no such endpoint {path}; see GET /v2 and the Open Inference Protocol")


def _need(want: str, method: str, path: str) -> V2Answer | None:
    if method != want:
        return _error(405, f"{path} takes {want}, not {method}")
    return None


async def _model_route(
    core: ServingCore, method: str, path: str, parts: list[str], header_length: str | None, body: bytes
) -> V2Answer:
    name, rest = parts[0], parts[1:]
    version: str | None = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    action = rest[0] if rest else ""
    if len(rest) > 1 or action not in ("", "ready", "infer", "config"):
        raise Reject(404, "not_found", f"no such endpoint {path}")
    if action == "infer":
        bad = _need("POST", method, path)
        return bad or await _infer(core.get(name, version), header_length, body)
    bad = _need("GET", method, path)
    if bad:
        return bad
    if action == "ready":
        try:
            entry = core.get(name, version)
        except Reject:
            return 400, [_JSON], b'{"ready":false}'
        return (200, [_JSON], b'{"ready":true}') if entry.ready else (400, [_JSON], b'{"ready":false}')
    entry = core.get(name, version)
    if action == "config":
        return _ok(_config(entry))
    versions = list(core.models.get(name, {})) if version is None else [entry.version]
    return _ok(model_metadata(name, versions, entry.slot.predictor.backend, entry.inputs, entry.outputs))


def _config(entry: LoadedModel) -> dict[str, Any]:
    o = entry.options
    return {
        "name": entry.name,
        "platform": f"torchkeep_{entry.slot.predictor.backend}",
        "max_batch_size": o.max_batch_size,
        "dynamic_batching": {"max_queue_delay_microseconds": int(o.max_wait_ms * 1000)},
        "input": [{"name": s.name, "data_type": "TYPE_" + v2_datatype(s.dtype)} for s in entry.inputs],
        "output": [{"name": s.name, "data_type": "TYPE_" + v2_datatype(s.dtype)} for s in entry.outputs],
    }


def _parse_json(raw: bytes) -> Any:
    return parse_json(raw)


async def _repository_route(core: ServingCore, method: str, path: str, parts: list[str], body: bytes) -> V2Answer:
    bad = _need("POST", method, path)
    if bad:
        return bad
    if parts == ["index"]:
        ready = False
        if body.strip():
            data = _parse_json(body)
            if not isinstance(data, dict) or not isinstance(data.get("ready", False), bool):
                raise Reject(400, "invalid_request", 'expected {"ready": true|false} or an empty body')
            ready = bool(data.get("ready", False))
        return _ok(core.index(ready_only=ready))
    if len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload"):
        if parts[2] == "load":
            await core.load(parts[1])
        else:
            await core.unload(parts[1])
        return 200, [_JSON], b"{}"
    raise Reject(404, "not_found", f"no such endpoint {path}")


def _header_split(header_length: str | None, body: bytes) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if n < 2 or n > len(body):
        raise Reject(
            400,
            "invalid_request",
            f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes",
        )
    return body[:n], memoryview(body)[n:]


async def _infer(entry: LoadedModel, header_length: str | None, body: bytes) -> V2Answer:
    header, binary = _header_split(header_length, body)
    req = _parse_json(header)
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise Reject(400, "invalid_request", 'expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    if len(req["inputs"]) > _MAX_INPUTS:
        raise Reject(400, "invalid_request", f"{len(req['inputs'])} inputs; at most {_MAX_INPUTS}")
    tensors: dict[str, tuple[str, np.ndarray[Any, Any]]] = {}
    pos = 0
    for item in req["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise Reject(400, "invalid_request", "every input needs a 'name', 'shape' and 'datatype'")
        name = item["name"]
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise Reject(400, "invalid_request", f"input '{name}': 'parameters' must be an object")
        size = params.get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or pos + size > len(binary):
                raise Reject(
                    400,
                    "invalid_request",
                    f"input '{name}': binary_data_size {size!r} runs past the {len(binary)} binary bytes sent",
                )
            raw, pos = binary[pos : pos + size], pos + size
        if name in tensors:
            raise Reject(400, "invalid_request", f"input '{name}' is given twice")
        arr = decode_tensor(name, item.get("datatype"), item.get("shape"), data=item.get("data"), raw=raw)
        tensors[name] = (item["datatype"], arr)
    if pos != len(binary):
        raise Reject(400, "invalid_request", f"{len(binary) - pos} binary bytes after the inputs that claim them")
    values = to_model_inputs(tensors, entry.inputs, entry.name)
    arrays = entry.check(values)
    outputs = await entry.infer(arrays)
    return _answer(entry, req, outputs)


def _wanted(req: dict[str, Any], names: list[str]) -> list[tuple[int, bool]]:
    params = req.get("parameters") or {}
    default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    asked = req.get("outputs")
    if asked is None:
        return [(i, default) for i in range(len(names))]
    if not isinstance(asked, list):
        raise Reject(400, "invalid_request", "'outputs' must be a list of {\"name\": ...}")
    out = []
    for o in asked:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in names:
            raise Reject(400, "invalid_request", f"unknown output {name!r}; the model returns {names}")
        p = o.get("parameters") or {}
        if isinstance(p, dict) and p.get("classification"):
            raise Reject(400, "invalid_request", "the classification extension is not supported; ask for the tensor")
        binary = p.get("binary_data", default) if isinstance(p, dict) else default
        out.append((names.index(name), bool(binary)))
    return out


def _json_data(arr: np.ndarray[Any, Any]) -> list[Any]:
    flat = arr.reshape(-1)
    if flat.dtype.kind == "O":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat.tolist()]
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [None if not np.isfinite(x) else x for x in flat.tolist()]
    return flat.tolist()  # type: ignore[no-any-return]


def _answer(entry: LoadedModel, req: dict[str, Any], outputs: list[np.ndarray[Any, Any]]) -> V2Answer:
    names = [s.name for s in entry.outputs]
    chunks: list[bytes] = []
    described = []
    for i, binary in _wanted(req, names):
        arr = outputs[i]
        out: dict[str, Any] = {"name": names[i], "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = encode_bytes(arr) if arr.dtype.kind == "O" else np.ascontiguousarray(arr).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = _json_data(arr)
        described.append(out)
    payload: dict[str, Any] = {"model_name": entry.name, "model_version": entry.version, "outputs": described}
    if isinstance(req.get("id"), str):
        payload["id"] = req["id"]
    head = dumps(payload)
    if not chunks:
        return 200, [_JSON], head
    headers = [(b"content-type", b"application/octet-stream"), (HEADER_LENGTH.encode(), str(len(head)).encode())]
    return 200, headers, b"".join([head, *chunks])
