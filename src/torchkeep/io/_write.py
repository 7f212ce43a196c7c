"""Writing file format v1 (described in :mod:`._format`): one streaming pass over tensor memory.

The header goes first with fixed-width checksum placeholders, each tensor is hashed while it
streams to the file in chunks, and the final header (same length) is written over the
placeholder. :mod:`._format` re-exports :func:`write` and the constants, so callers use one module.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import torch
import xxhash

from ..errors import UnsupportedValueError
from ._dtypes import ST_DTYPES, U8_DTYPES, dtype_name
from ._external import META_EXTERNAL, ExternalTensor, external_section

__all__ = [
    "CHUNK_BYTES",
    "DATA_ALIGNMENT",
    "EXTERNAL_FORMAT_VERSION",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "META_FORMAT",
    "META_PREFIX",
    "META_TENSORS",
    "META_TREE",
    "tensor_bytes",
    "write",
]


FORMAT_VERSION = 1

#: Files with external (blob) tensors; readers of format 1 cannot load them.
EXTERNAL_FORMAT_VERSION = 2


META_PREFIX = "torchkeep."


META_FORMAT = "torchkeep.format"


META_TENSORS = "torchkeep.tensors"


META_TREE = "torchkeep.tree"


MAX_HEADER_BYTES = 100 * 1024 * 1024


DATA_ALIGNMENT = 64


CHUNK_BYTES = 16 * 1024 * 1024


_PLACEHOLDER = "0" * 16


@dataclass(frozen=True)
class _Planned:
    name: str
    tensor: torch.Tensor
    st_dtype: str
    st_shape: list[int]
    nbytes: int
    entry: dict[str, Any]  # torchkeep.tensors entry (without the checksum)


def _plan(name: str, t: torch.Tensor) -> _Planned:
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise UnsupportedValueError(
            f"invalid tensor name {name!r}: names must be non-empty strings other than '__metadata__'",
            path=repr(name),
        )
    nbytes = t.numel() * t.element_size()
    entry: dict[str, Any] = {"device": str(t.device)}
    st = ST_DTYPES.get(t.dtype)
    if st is None:
        if t.dtype not in U8_DTYPES.values():
            raise UnsupportedValueError(
                f"tensor {name!r}: dtype {t.dtype} cannot be stored (it has no byte-addressable layout); "
                "convert it to a supported dtype first",
                path=name,
                value_type=str(t.dtype),
            )
        entry["dtype"] = dtype_name(t.dtype)
        entry["shape"] = list(t.shape)
        return _Planned(name, t, "U8", [nbytes], nbytes, entry)
    return _Planned(name, t, st, list(t.shape), nbytes, entry)


def _layout(plans: Iterable[_Planned]) -> list[_Planned]:
    """File order: every tensor whose size is a multiple of 64 bytes first, then the rest.

    The data section starts 64-byte aligned, so each tensor of the first group (in practice every
    weight matrix and optimizer moment) is 64-byte aligned in the file and in the mapping: loads
    need no copy, and vectorized kernels see the same alignment as in the process that saved
    it (their reduction order depends on it, so this matters for bit-exact resume). The rest are
    ordered by element size, largest first, so each is still naturally aligned. No padding
    entries are needed, so other safetensors tools see exactly the saved tensors.
    """
    ordered = list(plans)
    whole = [p for p in ordered if p.nbytes % DATA_ALIGNMENT == 0]
    rest = sorted((p for p in ordered if p.nbytes % DATA_ALIGNMENT), key=lambda p: -p.tensor.element_size())
    return whole + rest


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes in C order, on the CPU. Copies only if it is not already that."""
    if t.device.type != "cpu":
        t = t.detach().to("cpu")
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    flat = t.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")  # type: ignore[arg-type]


def _header_bytes(plans: list[_Planned], offsets: list[tuple[int, int]], meta: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": meta}
    for p, (b, e) in zip(plans, offsets, strict=True):
        header[p.name] = {"dtype": p.st_dtype, "shape": p.st_shape, "data_offsets": [b, e]}
    try:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsupportedValueError(
            f"a tensor name or metadata string is not valid Unicode text ({exc.reason}: "
            f"{exc.object[max(0, exc.start - 20) : exc.end + 20]!r}); safetensors headers must be UTF-8"
        ) from None
    pad = (-(8 + len(raw))) % DATA_ALIGNMENT
    return raw + b" " * pad


def write(
    dest: IO[bytes],
    tensors: Mapping[str, torch.Tensor],
    *,
    tree: Any = None,
    sections: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    external: Mapping[str, ExternalTensor] | None = None,
) -> int:
    """Stream a torchkeep file to ``dest`` (a writable binary file). Returns its size.

    One pass over tensor memory when ``dest`` can seek (the header is patched in place at the
    end); otherwise (an object-store upload) the tensors are hashed in a first pass.

    ``tree`` is the codec tree (None for a plain state dict file); ``sections`` are JSON-able
    values stored as ``torchkeep.<key>``; ``metadata`` is free str → str metadata, stored as is.
    ``external`` names tensors of ``tree`` whose bytes are already in blob files beside ``dest``
    (the caller writes the blobs, durably, first).

    Example:
        >>> import io
        >>> buf = io.BytesIO()
        >>> size = write(buf, {"w": torch.ones(3)})
        >>> from torchkeep.io._format import open_file
        >>> open_file(buf.getvalue()).tensor("w").tolist()
        [1.0, 1.0, 1.0]
    """
    meta: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UnsupportedValueError(
                f"metadata must map str to str (as safetensors does); got {key!r}: {type(value).__name__}. "
                "Put structured values in the saved object instead.",
                path=f"metadata[{key!r}]",
                value_type=type(value).__qualname__,
            )
        if key.startswith(META_PREFIX):
            raise UnsupportedValueError(
                f"metadata key {key!r} is reserved: keys starting with {META_PREFIX!r} belong to torchkeep; "
                "pick another name",
                path=f"metadata[{key!r}]",
            )
        meta[key] = value
    meta[META_FORMAT] = str(EXTERNAL_FORMAT_VERSION if external else FORMAT_VERSION)
    if external:
        clash = sorted(set(external) & set(tensors))
        if clash:
            raise UnsupportedValueError(f"tensor {clash[0]!r} is given both inline and as an external blob")
        meta[META_EXTERNAL] = json.dumps(external_section(external), separators=(",", ":"))
    for key, value in (sections or {}).items():
        meta[META_PREFIX + key] = json.dumps(value, separators=(",", ":"), allow_nan=False)
    if tree is not None:
        meta[META_TREE] = json.dumps(tree, separators=(",", ":"), allow_nan=False)

    plans = _layout(_plan(n, t) for n, t in tensors.items())
    offsets: list[tuple[int, int]] = []
    pos = 0
    for p in plans:
        offsets.append((pos, pos + p.nbytes))
        pos += p.nbytes
    data_len = pos

    def header_for(digests: Mapping[str, str]) -> bytes:
        entries = {p.name: {**p.entry, "xxh3": digests.get(p.name, _PLACEHOLDER)} for p in plans}
        return _header_bytes(plans, offsets, {**meta, META_TENSORS: json.dumps(entries, separators=(",", ":"))})

    provisional = header_for({})
    if len(provisional) > MAX_HEADER_BYTES:
        raise UnsupportedValueError(
            f"the header would be {len(provisional)} bytes, over the {MAX_HEADER_BYTES}-byte limit; "
            "store large non-tensor data (long lists, big strings or bytes) as tensors"
        )
    if not _seekable(dest):
        # Object-store uploads cannot seek back to patch the header: hash first, then stream.
        digests = {p.name: _stream_tensor(None, p.tensor, p.nbytes) for p in plans}
        final = header_for(digests)
        out = _PageWriter(dest, 0)
        out.write(memoryview(struct.pack("<Q", len(final)) + final))
        for p in plans:
            _stream_tensor(out.write, p.tensor, p.nbytes)
        out.flush()
        return 8 + len(final) + data_len
    start = dest.tell()
    out = _PageWriter(dest, start)
    out.write(memoryview(struct.pack("<Q", len(provisional)) + provisional))
    digests = {}
    for p in plans:
        digests[p.name] = _stream_tensor(out.write, p.tensor, p.nbytes)
    out.flush()
    final = header_for(digests)
    assert len(final) == len(provisional)  # fixed-width digests keep the header's length
    end = dest.tell()
    dest.seek(start + 8)
    _write_all(dest, final)
    dest.seek(end)
    return 8 + len(final) + data_len


def _seekable(dest: IO[bytes]) -> bool:
    try:
        return bool(dest.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _write_all(dest: IO[bytes], data: bytes | memoryview) -> None:
    """Write every byte: raw (unbuffered) files may accept less than asked in one call."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = dest.write(view)
        if n is None:  # a non-blocking raw stream that would block; a file never does this
            raise OSError("the destination accepted no bytes (non-blocking stream)")
        view = view[n:]


class _PageWriter:
    """Writes to ``dest`` so that every write call but the last ends on a 4 KiB page boundary of the file.

    Tensors start on 64-byte boundaries, so plain chunked writes would leave a page half-written
    at the end of one call and finish it in the next. When writeback has started on that page in
    between, a filesystem that keeps pages stable during writeback makes the second write wait
    for the disk. The raw ``os.write`` baseline never shares a page between calls; neither does
    this. The few bytes that do not fill a page are carried (copied, at most 4 KiB) into the next
    call instead.
    """

    PAGE = 4096

    def __init__(self, dest: IO[bytes], offset: int) -> None:
        self._dest = dest
        self._pos = offset  # file offset of the first byte not yet handed to dest
        self._carry = bytearray()

    def write(self, data: memoryview) -> None:
        if self._carry:
            need = (-(self._pos + len(self._carry))) % self.PAGE
            self._carry += data[:need]
            data = data[need:]
            if (self._pos + len(self._carry)) % self.PAGE:
                return  # still short of a page boundary: everything given so far is carried
            self._emit(memoryview(self._carry))
            self._carry = bytearray()
        head = (-self._pos) % self.PAGE  # only before the first aligned write (the header's start)
        if head and data.nbytes > head:
            self._emit(data[:head])
            data = data[head:]
        whole = data.nbytes - data.nbytes % self.PAGE
        for i in range(0, whole, CHUNK_BYTES):
            self._emit(data[i : min(i + CHUNK_BYTES, whole)])
        if whole < data.nbytes:
            self._carry += data[whole:]

    def flush(self) -> None:
        if self._carry:
            self._emit(memoryview(self._carry))
            self._carry = bytearray()

    def _emit(self, data: memoryview) -> None:
        _write_all(self._dest, data)
        self._pos += data.nbytes


def _stream_tensor(sink: Callable[[memoryview], None] | None, t: torch.Tensor, nbytes: int) -> str:
    """Hash the tensor's bytes and (unless ``sink`` is None) write them, chunk by chunk.

    Each chunk is hashed right before it is written, while it is still in the CPU cache, so the
    checksum costs no extra pass over memory.
    """
    h = xxhash.xxh3_64()
    if nbytes:
        mv = tensor_bytes(t)
        for i in range(0, nbytes, CHUNK_BYTES):
            chunk = mv[i : i + CHUNK_BYTES]
            h.update(chunk)
            if sink is not None:
                sink(chunk)
    return h.hexdigest()
