"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` on ``grpc.aio``.

Built on the generated stubs ``tritonclient[grpc]`` ships (``tritonclient.grpc.service_pb2``
and ``service_pb2_grpc``), so the wire format is exactly what Triton and KServe clients speak.
It runs on the same event loop and the same :class:`ServingCore` as the REST front end: the
same batcher merges gRPC and HTTP requests. Tensors travel as ``raw_input_contents`` /
``raw_output_contents`` (what ``tritonclient.grpc`` sends) or in the typed ``contents`` fields.
Errors are gRPC status codes: ``INVALID_ARGUMENT`` for a bad request, ``NOT_FOUND`` for an
unknown model or version, ``UNAVAILABLE`` / ``DEADLINE_EXCEEDED`` for overload.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np

from ..errors import ServeError, missing_dependency
from ._core import LoadedModel, ServingCore
from ._inputs import Reject
from ._oip import decode_tensor, encode_bytes, model_metadata, server_metadata, to_model_inputs, v2_datatype

__all__ = ["start_grpc"]

logger = logging.getLogger(__name__)

# InferTensorContents field per datatype, for clients that send typed contents, not raw bytes.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_MAX_MESSAGE = 64 * 1024 * 1024


def _stubs() -> tuple[Any, Any, Any]:
    try:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError:
        raise missing_dependency("tritonclient[grpc]", "grpc", "torchkeep serve --grpc-port") from None
    return grpc, service_pb2, service_pb2_grpc


def _code(grpc: Any, status: int) -> Any:
    if status == 404:
        return grpc.StatusCode.NOT_FOUND
    if status == 503:
        return grpc.StatusCode.UNAVAILABLE
    if status == 504:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if status == 413:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INVALID_ARGUMENT


def _servicer(core: ServingCore, grpc: Any, pb: Any, pb_grpc: Any) -> Any:
    class Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc,name-defined]
        async def ServerLive(self, request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=core.ready)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            try:
                entry = core.get(request.name, request.version or None)
            except Reject:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=entry.ready)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:
            return pb.ServerMetadataResponse(**server_metadata())

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            entry = await self._entry(request.name, request.version, context)
            versions = list(core.models.get(request.name, {})) if not request.version else [entry.version]
            meta = model_metadata(entry.name, versions, entry.slot.predictor.backend, entry.inputs, entry.outputs)
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            entry = await self._entry(request.model_name, request.model_version, context)
            try:
                values = to_model_inputs(_decode(request), entry.inputs, entry.name)
                outputs = await entry.infer(entry.check(values))
                return _encode(pb, entry, request, outputs)
            except Reject as rej:
                await context.abort(_code(grpc, _v2(rej.status)), rej.message)
            except Exception as exc:
                request_id = uuid.uuid4().hex[:16]
                logger.error("grpc request %s failed: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"the model failed on this request ({type(exc).__name__}); quote request id {request_id}",
                )
            raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

        async def RepositoryIndex(self, request: Any, context: Any) -> Any:
            rows = core.index(ready_only=request.ready)
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

        async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
            try:
                await core.load(request.model_name)
            except Reject as rej:
                await context.abort(_code(grpc, _v2(rej.status)), rej.message)
            return pb.RepositoryModelLoadResponse()

        async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
            try:
                await core.unload(request.model_name)
            except Reject as rej:
                await context.abort(_code(grpc, _v2(rej.status)), rej.message)
            return pb.RepositoryModelUnloadResponse()

        async def _entry(self, name: str, version: str, context: Any) -> LoadedModel:
            try:
                return core.get(name, version or None)
            except Reject as rej:
                await context.abort(_code(grpc, rej.status), rej.message)
                raise  # pragma: no cover - abort raises

    return Servicer()


def _v2(status: int) -> int:
    return status if status in (404, 413, 503, 504) else 400


def _decode(request: Any) -> dict[str, tuple[str, np.ndarray[Any, Any]]]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise Reject(400, "invalid_request", f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors: dict[str, tuple[str, np.ndarray[Any, Any]]] = {}
    for i, t in enumerate(request.inputs):
        if t.name in tensors:
            raise Reject(400, "invalid_request", f"input '{t.name}' is given twice")
        shape = list(t.shape)
        if raw:
            arr = decode_tensor(t.name, t.datatype, shape, raw=raw[i])
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise Reject(400, "invalid_request", f"input '{t.name}': {t.datatype!r} needs raw_input_contents")
            data = list(getattr(t.contents, field))
            if t.datatype == "BYTES":
                data = [d.decode("utf-8", "replace") for d in data]
            arr = decode_tensor(t.name, t.datatype, shape, data=data)
        tensors[t.name] = (t.datatype, arr)
    return tensors


def _encode(pb: Any, entry: LoadedModel, request: Any, outputs: list[np.ndarray[Any, Any]]) -> Any:
    names = [s.name for s in entry.outputs]
    wanted = [o.name for o in request.outputs] or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise Reject(400, "invalid_request", f"unknown outputs {unknown}; the model returns {names}")
    response = pb.ModelInferResponse(model_name=entry.name, model_version=entry.version, id=request.id)
    for name in wanted:
        arr = outputs[names.index(name)]
        response.outputs.add(name=name, datatype=v2_datatype(arr.dtype), shape=list(arr.shape))
        response.raw_output_contents.append(
            encode_bytes(arr) if arr.dtype.kind == "O" else np.ascontiguousarray(arr).tobytes()
        )
    return response


async def start_grpc(core: ServingCore, port: int, host: str = "127.0.0.1") -> Any:
    """Start the gRPC server on ``host:port`` (on the running event loop); returns the ``grpc.aio`` server.

    Messages are limited to ``--max-body-bytes``, like HTTP bodies.

    Raises:
        ServeError: the port cannot be bound.

    Example:
        >>> server = await start_grpc(core, 8001)  # doctest: +SKIP
        >>> await server.stop(grace=2.0)  # doctest: +SKIP
    """
    grpc, pb, pb_grpc = _stubs()
    limit = core.options.max_body_bytes
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", _MAX_MESSAGE)]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_servicer(core, grpc, pb, pb_grpc), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise ServeError(f"--grpc-port {port}: cannot bind it ({exc})", option="grpc_port") from exc
    if bound == 0:
        raise ServeError(f"--grpc-port {port}: cannot bind it (in use?)", option="grpc_port")
    await server.start()
    logger.info("gRPC inference service on %s:%d", host, bound)
    return server
