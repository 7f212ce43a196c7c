"""Tensors stored outside a file: content-addressed blobs beside it (deduplicated checkpoints).

A file written with external tensors holds, in its ``torchkeep.external`` section, one entry per
tensor whose bytes live in a blob file instead of the data section::

    "model/encoder.weight": {"blob": "<32 hex digits>", "dtype": "float32", "shape": [768, 768],
                             "device": "cpu"}

The blob is ``blobs/<32 hex digits>`` in the file's own directory: the tensor's bytes, in C
order, nothing else. Its name is the xxh3-128 digest of those bytes, so equal tensors share one
blob, a blob never changes once written, and the name is its checksum. Everything in the section
is hostile input: blob names must be 32 lower-case hex digits (no path can be smuggled in), dtypes
come from a fixed table, and a blob whose size is not what the entry says is refused.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import xxhash

from ._dtypes import dtype_name, logical_dtype

__all__ = [
    "BLOB_DIR",
    "META_EXTERNAL",
    "ExternalTensor",
    "content_hash",
    "is_blob_name",
    "map_blob",
    "parse_external",
]

#: The directory, beside the file, that holds its blobs.
BLOB_DIR = "blobs"
#: The metadata key of the section naming external tensors.
META_EXTERNAL = "torchkeep.external"

_BLOB_RE = re.compile(r"^[0-9a-f]{32}$")


def is_blob_name(name: str) -> bool:
    """True for a blob's file name (32 lower-case hex digits).

    Example:
        >>> is_blob_name("0" * 32), is_blob_name("../etc/passwd")
        (True, False)
    """
    return bool(_BLOB_RE.match(name))


def content_hash(data: Any) -> str:
    """The xxh3-128 digest of a buffer as 32 hex digits: a blob's name and checksum.

    Example:
        >>> content_hash(b"")
        '99aa06d3014798d86001c324468d497f'
    """
    return xxhash.xxh3_128_hexdigest(data)


@dataclass(frozen=True)
class ExternalTensor:
    """One tensor stored in a blob: the blob's name and how to view its bytes.

    Example:
        >>> import torch
        >>> e = ExternalTensor("0" * 32, torch.float32, (2, 3), "cpu")
        >>> e.nbytes, e.to_json()["dtype"]
        (24, 'float32')
    """

    blob: str
    dtype: Any  # torch.dtype
    shape: tuple[int, ...]
    device: str

    @property
    def nbytes(self) -> int:
        """Bytes the tensor (and so its blob) holds."""
        n = 1
        for d in self.shape:
            n *= d
        return n * int(self.dtype.itemsize)

    def to_json(self) -> dict[str, Any]:
        """The entry as stored in the ``torchkeep.external`` section."""
        return {"blob": self.blob, "dtype": dtype_name(self.dtype), "shape": list(self.shape), "device": self.device}


def parse_external(section: Any, valid_shape: Any) -> dict[str, ExternalTensor] | str:
    """Validate a ``torchkeep.external`` section; the entries, or a message saying what is wrong.

    ``valid_shape`` is the format's own shape check, so limits stay in one place.
    """
    if not isinstance(section, dict):
        return f"{META_EXTERNAL} is not a JSON object"
    out: dict[str, ExternalTensor] = {}
    for name, spec in section.items():
        if not isinstance(spec, dict) or set(spec) != {"blob", "dtype", "shape", "device"}:
            return f"{META_EXTERNAL} entry {name!r} must have exactly blob, dtype, shape and device"
        blob, dtype, shape, device = spec["blob"], spec["dtype"], spec["shape"], spec["device"]
        if not isinstance(blob, str) or not is_blob_name(blob):
            return f"{META_EXTERNAL} entry {name!r}: blob {blob!r} is not 32 lower-case hex digits"
        try:
            dt = logical_dtype(dtype) if isinstance(dtype, str) else None
        except ValueError:
            dt = None
        if dt is None:
            return f"{META_EXTERNAL} entry {name!r}: unknown dtype {dtype!r}"
        if not valid_shape(shape):
            return f"{META_EXTERNAL} entry {name!r}: shape {shape!r} is not a list of at most 64 non-negative ints"
        if not isinstance(device, str):
            return f"{META_EXTERNAL} entry {name!r}: device must be a string"
        out[name] = ExternalTensor(blob, dt, tuple(shape), device)
    return out


def external_section(entries: Mapping[str, ExternalTensor]) -> dict[str, Any]:
    """The JSON section for ``entries`` (the inverse of :func:`parse_external`)."""
    return {name: e.to_json() for name, e in entries.items()}


def map_blob(file: str, nbytes: int) -> tuple[str | None, Any]:
    """Map a blob file read-only after checking it is a regular file of ``nbytes`` bytes.

    Returns ``(None, buffer)``, or ``(what is wrong, None)`` for the reader to raise with the
    name of the file and tensor that need it.

    Example:
        >>> map_blob("/nonexistent/blobs/" + "0" * 32, 4)[0].endswith("never copied)")
        True
    """
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return f"its data file {file} is missing (the blob was deleted or never copied)", None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != nbytes:
            return f"its data file {file} holds {st.st_size} bytes, expected {nbytes}; the blob is corrupt", None
        return None, (mmap.mmap(fd, nbytes, access=mmap.ACCESS_COPY) if nbytes else bytearray())
    finally:
        os.close(fd)
