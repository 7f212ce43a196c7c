"""File format v1: a safetensors file with torchkeep sections in ``__metadata__``.

Layout (all safetensors)::

    [8 bytes: little-endian u64 N][N bytes: JSON header, space-padded][tensor bytes ...]

The header maps tensor names to ``{"dtype", "shape", "data_offsets"}`` and holds
``__metadata__`` (str → str). torchkeep adds, as JSON strings:

* ``torchkeep.format`` — ``"1"``.
* ``torchkeep.tensors`` — per tensor: ``xxh3`` (xxh3-64 of its bytes, 16 hex digits),
  ``device`` (where it lived when saved) and, for dtypes safetensors lacks, the logical
  ``dtype``/``shape`` (the bytes are then stored as ``U8``).
* ``torchkeep.tree`` — the object tree from :mod:`torchkeep.io._codec` (absent in files written by
  :func:`torchkeep.save_model`, whose tensors are the plain state dict).
* ``torchkeep.<section>`` — JSON sections of the layers above (checkpoint info, model entry).
* ``torchkeep.external`` — tensors whose bytes live in content-addressed blob files beside the
  file instead of in its data section (deduplicated checkpoints; see :mod:`torchkeep.io._external`).
  Files with this section say ``torchkeep.format`` ``"2"``, so an older torchkeep asks to be
  upgraded instead of calling the file corrupt.

Writing is one pass over tensor memory: the header is written first with fixed-width checksum
placeholders, each tensor is hashed while it streams to the file in chunks, and the final header
(same length) is written over the placeholder. The data section starts on a 64-byte boundary;
tensors whose size is a multiple of 64 bytes come first (so each is 64-byte aligned), the rest
ordered by element size, largest first (so each is naturally aligned). The writer is :mod:`._write`.

Reading maps the file (copy-on-write, so tensors are writable and the file is never changed) and
builds tensors over the mapping without copying. Every field of the header is treated as hostile:
sizes, offsets, names, dtypes and JSON depth are checked before any tensor is built.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap as _mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from ..errors import CorruptCheckpointError, FormatVersionError
from . import _codec
from ._dtypes import FROM_ST, MapLocation, logical_dtype, place, resolve_device
from ._external import BLOB_DIR, META_EXTERNAL, ExternalTensor, content_hash, map_blob, parse_external
from ._open import read_regular_file
from ._write import (
    DATA_ALIGNMENT,
    EXTERNAL_FORMAT_VERSION,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    META_FORMAT,
    META_PREFIX,
    META_TENSORS,
    META_TREE,
    tensor_bytes,
    write,
)

__all__ = [
    "DATA_ALIGNMENT",
    "EXTERNAL_FORMAT_VERSION",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "META_FORMAT",
    "META_PREFIX",
    "META_TENSORS",
    "META_TREE",
    "MapLocation",
    "Reader",
    "TensorInfo",
    "load_tree",
    "open_file",
    "resolve_device",
    "tensor_bytes",
    "write",
]

_READABLE = (str(FORMAT_VERSION), str(EXTERNAL_FORMAT_VERSION))

# ------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    nbytes: int
    device: str
    checksum: str | None
    #: for an external tensor: the blob file holding its bytes (``begin`` is then 0)
    file: str | None = None


def _bad(path: str | None, msg: str, tensor: str | None = None) -> CorruptCheckpointError:
    where = f"{path}: " if path else ""
    what = f"tensor {tensor!r}: " if tensor else ""
    return CorruptCheckpointError(f"{where}{what}{msg}", path=path, tensor=tensor, reason=msg)


def _loads(raw: bytes | str, path: str | None, what: str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise _bad(path, f"{what} is nested too deeply to be a torchkeep file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"{what} is not valid JSON ({exc})") from None


def _sniff(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return (
            "this is a torch.save() file (a zip archive holding a pickle), not a torchkeep or safetensors "
            "file. torchkeep never unpickles; convert it once with `torchkeep convert SRC DST` (it looks like "
            "a torch.save() zip/pickle file; add --trust-pickle only for files you trust)"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return (
            "this is a pickle file (it looks like a pickle file: legacy torch.save), not a torchkeep or "
            "safetensors file. torchkeep never unpickles; convert it with `torchkeep convert SRC DST`"
        )
    return ""


def _not_safetensors(path: str | None, head: bytes, detail: str) -> CorruptCheckpointError:
    """A header that does not parse; what the file really is comes first when it can be told."""
    what = _sniff(head)
    return _bad(path, f"{what}. (Details: {detail}.)" if what else f"{detail}.")


class Reader:
    """A parsed, validated file. Tensors are built lazily over the mapped bytes.

    Use :func:`open_file` to make one.
    """

    def __init__(self, buf: Any, size: int, path: str | None) -> None:
        self.path = path
        self._buf = buf
        self.size = size
        self._parse()

    # -- parsing --------------------------------------------------------------------------
    def _parse(self) -> None:
        path, size, buf = self.path, self.size, self._buf
        head = bytes(buf[: min(size, 8)])
        if size < 8:
            raise _not_safetensors(path, head, f"file is {size} bytes, too short for a header (8-byte length + JSON)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8 or n < 2:
            raise _not_safetensors(
                path,
                head,
                f"header length field says {n} bytes but the file has {size - 8} bytes after it "
                f"(limit {MAX_HEADER_BYTES}); the file is truncated or not a safetensors file",
            )
        try:
            text = bytes(buf[8 : 8 + n]).decode("utf-8")  # safetensors headers are UTF-8, nothing else
        except UnicodeDecodeError as exc:
            raise _not_safetensors(path, head, f"header is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        header = _loads(text, path, "header")
        if not isinstance(header, dict):
            raise _not_safetensors(path, head, "header is not a JSON object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise _bad(path, "__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        version = meta.get(META_FORMAT)
        self.is_torchkeep = version is not None
        if version is not None and version not in _READABLE:
            if version.isascii() and version.isdigit() and int(version) > EXTERNAL_FORMAT_VERSION:
                raise FormatVersionError(
                    f"{path or 'file'}: written in torchkeep format {version}, but this torchkeep reads "
                    f"formats up to {EXTERNAL_FORMAT_VERSION}; upgrade with `pip install -U torchkeep`",
                    path=path,
                    found=version,
                    supported=str(EXTERNAL_FORMAT_VERSION),
                )
            raise _bad(path, f"unknown torchkeep.format {version!r} (expected one of {list(_READABLE)})")
        extra = _loads(meta[META_TENSORS], path, META_TENSORS) if META_TENSORS in meta else {}
        if not isinstance(extra, dict):
            raise _bad(path, f"{META_TENSORS} is not a JSON object")

        self.data_start = 8 + n
        data_len = size - self.data_start
        infos: dict[str, TensorInfo] = {}
        spans: list[tuple[int, int, str]] = []
        for name, spec in header.items():
            infos[name] = info = self._tensor_info(name, spec, extra.get(name), data_len)
            spans.append((info.begin, info.begin + info.nbytes, name))
        spans.sort()
        for (b0, e0, n0), (b1, _e1, n1) in itertools.pairwise(spans):
            if b1 < e0:
                raise _bad(path, f"tensor data overlaps: {n0!r} [{b0}, {e0}) and {n1!r} starts at {b1}")
        if self.is_torchkeep:
            missing = sorted(set(infos) - set(extra))
            if missing:
                raise _bad(path, f"no checksum recorded for tensor(s) {missing[:5]}", tensor=missing[0])
        self.external: dict[str, ExternalTensor] = self._parse_external(meta, version, infos)
        self._blobs: dict[str, Any] = {}
        self._infos = infos
        self.names: list[str] = list(infos)
        self.tree: Any = _loads(meta[META_TREE], path, META_TREE) if META_TREE in meta else None
        if self.tree is not None:
            try:
                refs = _codec.tensor_names(self.tree)
            except CorruptCheckpointError as exc:
                raise _bad(path, exc.reason) from None
            dangling = sorted(refs - set(infos))
            if dangling:
                raise _bad(path, f"the object tree refers to tensor {dangling[0]!r}, which the file does not hold")

    def _parse_external(
        self, meta: dict[str, str], version: str | None, infos: dict[str, TensorInfo]
    ) -> dict[str, ExternalTensor]:
        """Add the tensors stored in blob files beside this file to ``infos``."""
        raw = meta.get(META_EXTERNAL)
        if raw is None:
            return {}
        path = self.path
        if version != str(EXTERNAL_FORMAT_VERSION):
            raise _bad(path, f"{META_EXTERNAL} needs torchkeep.format '{EXTERNAL_FORMAT_VERSION}', found {version!r}")
        parsed = parse_external(_loads(raw, path, META_EXTERNAL), _shape)
        if isinstance(parsed, str):
            raise _bad(path, parsed)
        directory = os.path.join(os.path.dirname(path), BLOB_DIR) if path else BLOB_DIR
        for name, e in parsed.items():
            if name in infos or name == "__metadata__" or not name:
                raise _bad(path, "stored both in the file and as an external blob", tensor=name)
            file = os.path.join(directory, e.blob)
            infos[name] = TensorInfo(name, e.dtype, e.shape, 0, e.nbytes, e.device, e.blob, file)
        return parsed

    @property
    def external_bytes(self) -> int:
        """Bytes of the tensors stored in blob files (counted once per tensor)."""
        return sum(e.nbytes for e in self.external.values())

    def _blob(self, info: TensorInfo) -> Any:
        """The mapped bytes of an external tensor's blob file (checked for size, mapped once)."""
        assert info.file is not None
        buf = self._blobs.get(info.file)
        if buf is not None:
            return buf
        if self.path is None:
            raise _bad(
                None,
                f"its bytes are in {BLOB_DIR}/{info.checksum} beside the file; open the file by its path",
                tensor=info.name,
            )
        problem, buf = map_blob(info.file, info.nbytes)
        if problem is not None:
            raise _bad(self.path, problem, tensor=info.name)
        self._blobs[info.file] = buf
        return buf

    def _tensor_info(self, name: str, spec: Any, extra: Any, data_len: int) -> TensorInfo:
        path = self.path
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise _bad(path, "header entry must have exactly dtype, shape and data_offsets", tensor=name)
        st_dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(st_dtype, str) or st_dtype not in FROM_ST:
            raise _bad(path, f"unknown dtype {st_dtype!r}", tensor=name)
        if not _shape(shape):
            raise _bad(
                path,
                f"shape {shape!r} is not a list of at most 64 non-negative ints whose strides fit in 64 bits",
                tensor=name,
            )
        if not _int_list(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data_len:
            raise _bad(path, f"data_offsets {offsets!r} fall outside the {data_len} data bytes", tensor=name)
        dtype = FROM_ST[st_dtype]
        nbytes = offsets[1] - offsets[0]
        if _numel(shape) * dtype.itemsize != nbytes:
            raise _bad(
                path,
                f"{st_dtype} {shape} needs {_numel(shape) * dtype.itemsize} bytes but data_offsets hold {nbytes}",
                tensor=name,
            )
        device, checksum = "cpu", None
        if extra is not None:
            if not isinstance(extra, dict):
                raise _bad(path, f"{META_TENSORS} entry is not an object", tensor=name)
            device = extra.get("device", "cpu")
            checksum = extra.get("xxh3")
            if not isinstance(device, str) or not (checksum is None or isinstance(checksum, str)):
                raise _bad(path, "device/xxh3 must be strings", tensor=name)
            if "dtype" in extra:
                try:
                    dtype = logical_dtype(extra["dtype"]) if isinstance(extra["dtype"], str) else None  # type: ignore[assignment]
                except ValueError:
                    dtype = None  # type: ignore[assignment]
                lshape: Any = extra.get("shape")
                if dtype is None or not _shape(lshape):
                    raise _bad(path, f"bad logical dtype/shape {extra.get('dtype')!r} {lshape!r}", tensor=name)
                if _numel(lshape) * dtype.itemsize != nbytes:
                    raise _bad(path, f"logical {extra['dtype']} {lshape} does not fit {nbytes} bytes", tensor=name)
                shape = lshape
        return TensorInfo(name, dtype, tuple(shape), self.data_start + offsets[0], nbytes, device, checksum)

    # -- access ---------------------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        """Header facts about one tensor (no data is read)."""
        try:
            return self._infos[name]
        except KeyError:
            raise _bad(self.path, "no such tensor in the file", tensor=name) from None

    def section(self, key: str) -> Any:
        """The parsed ``torchkeep.<key>`` JSON section, or None if absent."""
        raw = self.metadata.get(META_PREFIX + key)
        return None if raw is None else _loads(raw, self.path, META_PREFIX + key)

    def tensor(self, name: str, map_location: MapLocation = None) -> torch.Tensor:
        """The tensor ``name``, over the mapped bytes when it stays on the CPU (no copy)."""
        info = self.info(name)
        if info.nbytes == 0:
            t = torch.empty(info.shape, dtype=info.dtype)
        else:
            buf = self._buf if info.file is None else self._blob(info)
            t = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=info.begin)
            if t.data_ptr() % info.dtype.itemsize:
                # torchkeep aligns every tensor, but other writers (or a damaged file) may not;
                # misaligned data is copied rather than handed to kernels that expect alignment.
                t = t.clone()
            t = t.view(info.dtype).reshape(info.shape)
        return place(t, info.device, map_location)

    def checksum_of(self, name: str) -> str:
        """A tensor's checksum, computed now: xxh3-64 of its stored bytes (xxh3-128 for a blob)."""
        info = self.info(name)
        if info.file is not None:
            return content_hash(memoryview(self._blob(info)) if info.nbytes else b"")
        return xxhash.xxh3_64_hexdigest(memoryview(self._buf)[info.begin : info.begin + info.nbytes])

    def verify(self, names: Iterable[str] | None = None) -> None:
        """Check every (or the named) tensor's bytes against its recorded checksum.

        Raises:
            CorruptCheckpointError: naming the file and the first tensor that does not match.
        """
        if isinstance(self._buf, _mmap.mmap) and hasattr(_mmap, "MADV_WILLNEED"):
            with contextlib.suppress(OSError):  # advisory only
                self._buf.madvise(_mmap.MADV_WILLNEED)
        checked: set[str] = set()
        for name in self.names if names is None else names:
            info = self.info(name)
            expected = info.checksum
            if expected is None or (info.file is not None and info.file in checked):
                continue
            found = self.checksum_of(name)
            if found != expected:
                where = "" if info.file is None else f" in its data file {info.file}"
                raise _bad(
                    self.path,
                    f"checksum mismatch{where} (stored {expected}, computed {found}); the data is corrupt",
                    tensor=name,
                )
            if info.file is not None:
                checked.add(info.file)

    def close(self) -> None:
        """Drop this reader's reference to the mapping; tensors already built keep it alive."""
        self._buf = None
        self._blobs = {}


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(type(v) is int and v >= 0 for v in x)


def _shape(x: Any) -> bool:
    # Zero-element shapes hold no bytes, so only this bounds them: torch must be able to compute
    # their strides (the product of the other dimensions) in 64 bits.
    return (
        _int_list(x) and len(x) <= 64 and all(v <= _codec.MAX_DIM for v in x) and _numel(max(v, 1) for v in x) < 2**63
    )


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def open_file(src: str | os.PathLike[str] | bytes | bytearray | memoryview, *, mmap: bool = True) -> Reader:
    """Open and validate a torchkeep (or plain safetensors) file.

    ``src`` is a path, or the file's bytes. With ``mmap=True`` the file is mapped copy-on-write:
    nothing is read until a tensor is used, and writes to loaded tensors never reach the file.

    Raises:
        CheckpointNotFoundError: no file at ``src``.
        CorruptCheckpointError: the bytes are not a valid file (says what is wrong and where).
        FormatVersionError: written by a newer torchkeep.

    Example:
        >>> import io
        >>> buf = io.BytesIO(); _ = write(buf, {"w": torch.zeros(2)})
        >>> open_file(buf.getvalue()).names
        ['w']
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytearray(src)  # writable: tensors built over it may be modified in place
        return Reader(data, len(data), None)
    path = os.fspath(src)
    buf, size = read_regular_file(path, mmap=mmap)
    return Reader(buf, size, path)


def load_tree(reader: Reader, *, map_location: MapLocation = None) -> Any:
    """Decode an opened file's tree (or, for plain safetensors files, a flat dict of tensors).

    Raises:
        CorruptCheckpointError: the tree is damaged; the message names the file.

    Example:
        >>> import io
        >>> buf = io.BytesIO()
        >>> _ = write(buf, {"w": torch.zeros(2)})
        >>> load_tree(open_file(buf.getvalue()))["w"].tolist()
        [0.0, 0.0]
    """
    if reader.tree is None:
        return {name: reader.tensor(name, map_location) for name in reader.names}
    try:
        return _codec.decode(reader.tree, lambda name: reader.tensor(name, map_location))
    except CorruptCheckpointError as exc:
        if exc.path is None and reader.path is not None:
            raise CorruptCheckpointError(
                f"{reader.path}: {exc}", path=reader.path, tensor=exc.tensor, reason=exc.reason
            ) from None
        raise
