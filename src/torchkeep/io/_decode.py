"""Decoding the typed JSON tree written by :mod:`torchkeep.io._codec`. The tree is hostile input.

Every node is checked before it is used: depth is bounded, numbers and shapes are range-checked,
dtypes come from a fixed table, and ``dataclass``/``enum`` nodes resolve only classes that are
already imported (looked up with ``vars()``, never ``getattr``/``import``) and are rebuilt without
running ``__init__``. Anything unexpected raises :class:`CorruptCheckpointError`.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
import re
import sys
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import CorruptCheckpointError

__all__ = ["DTYPES_BY_NAME", "MAX_DEPTH", "MAX_DIM", "MAX_JSON_DEPTH", "decode", "is_key", "tensor_names"]

#: Deepest nesting the codec accepts, in values (a dict in a list in a dict is depth 3). The
#: encoder refuses deeper values at save and the decoder counts the same way, so whatever saves
#: loads. Deep enough for any real state tree, shallow enough that hostile files cannot exhaust
#: the interpreter's stack.
MAX_DEPTH = 200
#: The same limit in raw JSON nesting: a value takes at most two JSON levels (a tagged node and
#: its ``items``/``keys``/``fields`` container), and a tensor view three more below its node.
MAX_JSON_DEPTH = 2 * MAX_DEPTH + 4
#: Largest dimension or stride accepted from a file (torch's own sizes are int64).
MAX_DIM = 2**62
#: Every torch dtype by name, built from torch's namespace once, so that decoding a name never
#: goes through ``torch.__getattr__`` (which imports submodules on demand).
DTYPES_BY_NAME: dict[str, torch.dtype] = {
    name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)
}
_NAN_INF = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def is_key(k: Any) -> bool:
    """Whether ``k`` may be a dict key in a stored tree (str, int, float, bool, None, tuples).

    Example:
        >>> is_key((1, "a")), is_key(frozenset())
        (True, False)
    """
    if k is None or type(k) in (str, int, float, bool):
        return True
    return type(k) is tuple and all(is_key(x) for x in k)


def _corrupt(msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"invalid object tree: {msg}", reason=msg)


class _Decoder:
    def __init__(self, lookup: Callable[[str], torch.Tensor]) -> None:
        self.lookup = lookup
        self._tensor_cache: dict[str, torch.Tensor] = {}
        # (ref, param, grad) -> the tensor built for a whole-tensor reference, so that the same
        # Parameter (or grad-requiring tensor) referenced twice comes back as one object.
        self._wrapped: dict[tuple[str, bool, bool], torch.Tensor] = {}

    def value(self, node: Any, depth: int, where: str) -> Any:
        if depth > MAX_DEPTH:
            raise _corrupt(f"nesting deeper than {MAX_DEPTH} levels at {where}")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.value(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node)]
        if not isinstance(node, dict):
            raise _corrupt(f"unexpected JSON value of type {type(node).__name__} at {where}")
        tag = node.get("t")
        handler = _HANDLERS.get(tag) if isinstance(tag, str) else None
        if handler is None:
            raise _corrupt(f"unknown type tag {tag!r} at {where}; the file may come from a newer torchkeep")
        try:
            return handler(self, node, depth, where)
        except _LookupFailed:
            raise
        except CorruptCheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError, RuntimeError) as exc:
            # RuntimeError: torch rejects some values itself (device strings, sizes) with it.
            raise _corrupt(f"malformed {tag!r} node at {where}: {exc}") from exc

    def base_tensor(self, name: Any) -> torch.Tensor:
        if not isinstance(name, str):
            raise _corrupt(f"tensor reference {name!r} is not a string")
        if name not in self._tensor_cache:
            try:
                self._tensor_cache[name] = self.lookup(name)
            except Exception as exc:  # the lookup's own errors (I/O, map_location) pass through as is
                raise _LookupFailed from exc
        return self._tensor_cache[name]


class _LookupFailed(Exception):
    """Carries an exception raised by the tensor lookup through the decoder untouched."""


_MAPPING_TYPES: dict[str, type[dict[Any, Any]]] = {"dict": dict, "odict": OrderedDict, "counter": Counter}


def _d_dict(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    cls: type[dict[Any, Any]] = _MAPPING_TYPES[node["t"]]
    if "items" in node:
        items = node["items"]
        if not isinstance(items, dict):
            raise TypeError("items must be an object")
        # Built key by key: Counter(iterable) would count the (key, value) pairs instead.
        out = cls()
        for k, v in items.items():
            out[k] = d.value(v, depth + 1, f"{where}[{k!r}]")
        return out
    keys, values = node["keys"], node["values"]
    if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
        raise ValueError("keys and values must be lists of equal length")
    out = cls()
    for k, v in zip(keys, values, strict=True):
        key = d.value(k, depth + 1, f"{where}.<key>")
        if not is_key(key):
            raise ValueError(f"dict key of type {type(key).__name__} is not allowed")
        out[key] = d.value(v, depth + 1, f"{where}[{key!r}]")
    return out


def _d_tuple(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    items = node["items"]
    if not isinstance(items, list):
        raise TypeError("items must be a list")
    return tuple(d.value(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(items))


def _d_int(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    v = node["v"]
    if not isinstance(v, str) or len(v) > 4300:
        raise ValueError("big int must be a decimal string of at most 4300 digits")
    return int(v)


def _d_float(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    return _NAN_INF[node["v"]]


def _d_bytes(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    return base64.b64decode(node["v"], validate=True)


def _d_dtype(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    dt = DTYPES_BY_NAME.get(node["v"]) if isinstance(node["v"], str) else None
    if dt is None:
        raise ValueError(f"unknown dtype {node['v']!r}")
    return dt


def _d_device(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    if not isinstance(node["v"], str):
        raise TypeError("device must be a string")
    return torch.device(node["v"])


def _d_size(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    dims = node["v"]
    if not _dims(dims):
        raise ValueError(f"size must be a list of at most 64 ints in [0, {MAX_DIM}]")
    return torch.Size(dims)


def _d_tensor(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    ref = node["ref"]
    t = d.base_tensor(ref)
    view = node.get("view")
    if view is not None:
        t = _apply_view(t, view, ref)
    param, grad = bool(node.get("param")), bool(node.get("grad"))
    if not (param or grad):
        return t
    key = (ref, param, grad)
    if view is None and key in d._wrapped:
        return d._wrapped[key]
    if param:
        out: torch.Tensor = torch.nn.Parameter(t, requires_grad=grad)
    elif t.is_floating_point() or t.is_complex():
        out = t.detach().requires_grad_(True)
    else:
        out = t
    if view is None:
        d._wrapped[key] = out
    return out


_QDTYPES = {"qint8": torch.qint8, "quint8": torch.quint8, "qint32": torch.qint32}
_QINT = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32}


def _d_qtensor(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    with warnings.catch_warnings():
        # torch announces the end of its quantized dtypes; the file holds them, so rebuild them
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return _qtensor(d, node, depth, where)


def _qtensor(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    qdtype = _QDTYPES.get(node["qdtype"]) if isinstance(node.get("qdtype"), str) else None
    values = d.value(node["values"], depth + 1, where)
    if qdtype is None or not isinstance(values, torch.Tensor) or values.dtype != _QINT[qdtype]:
        raise ValueError(f"quantized tensor: dtype {node.get('qdtype')!r} does not match its stored values")
    if node["scheme"] == "per_tensor":
        scale, zero_point = node["scale"], node["zero_point"]
        if not isinstance(scale, float) or not isinstance(zero_point, int) or isinstance(zero_point, bool):
            raise ValueError("quantized tensor: scale must be a float and zero_point an int")
        return torch._make_per_tensor_quantized_tensor(values, scale, zero_point)
    if node["scheme"] == "per_channel":
        scales = d.value(node["scales"], depth + 1, where)
        zero_points = d.value(node["zero_points"], depth + 1, where)
        axis = node["axis"]
        ok = isinstance(scales, torch.Tensor) and isinstance(zero_points, torch.Tensor) and isinstance(axis, int)
        n = values.shape[axis] if ok and 0 <= axis < values.dim() else -1
        if n < 0 or scales.numel() != n or zero_points.numel() != n:
            raise ValueError("quantized tensor: per-channel scales/zero points do not fit the values")
        return torch._make_per_channel_quantized_tensor(values, scales, zero_points, axis)
    raise ValueError(f"quantized tensor: unknown scheme {node['scheme']!r}")


def _dims(x: Any) -> bool:
    return isinstance(x, list) and len(x) <= 64 and all(type(v) is int and 0 <= v <= MAX_DIM for v in x)


def _apply_view(base: torch.Tensor, view: Any, ref: str) -> torch.Tensor:
    if not (isinstance(view, list) and len(view) == 3):
        raise ValueError("view must be [offset, shape, stride]")
    offset, shape, stride = view
    if not (_dims([offset]) and _dims(shape) and _dims(stride) and len(shape) == len(stride)):
        raise ValueError(f"view offset/shape/stride must be ints in [0, {MAX_DIM}], shape and stride of one rank")
    span_end = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) + 1
    numel = math.prod(shape)
    if numel == 0:
        span_end = offset
    if span_end > base.numel() or not base.is_contiguous():
        raise _corrupt(f"view into {ref!r} reaches past its {base.numel()} elements")
    if numel > base.numel():
        # Views repeat no more elements than the file stores for them (the writer stores such
        # views as data of their own), so a tiny file cannot hand out a 2**36-element tensor.
        raise _corrupt(f"a view of {numel} elements into {ref!r}, which holds {base.numel()}")
    return base.as_strided(shape, stride, base.storage_offset() + offset)


def _d_ndarray(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    t = d.base_tensor(node["ref"])
    return t.cpu().numpy()


_NP_SCALAR_DTYPE = re.compile(r"[<>|=]?[biufc][1-9][0-9]?")


def _d_npscalar(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    # Only simple numeric type strings ("<f4", "|b1"): np.dtype() accepts far richer input.
    spec = node["dtype"]
    if not (isinstance(spec, str) and _NP_SCALAR_DTYPE.fullmatch(spec)):
        raise ValueError(f"numpy scalar dtype {spec!r} is not a numeric type string like '<f4'")
    dtype = np.dtype(spec)
    raw = base64.b64decode(node["v"], validate=True)
    if len(raw) != dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes for a {dtype} scalar of {dtype.itemsize} bytes")
    return np.frombuffer(raw, dtype=dtype)[0]


def _resolve_class(ref: Any, kind: str) -> type:
    if not isinstance(ref, str) or ":" not in ref:
        raise ValueError(f"class reference {ref!r} is not 'module:qualname'")
    module_name, qualname = ref.split(":", 1)
    module = sys.modules.get(module_name)
    obj: Any = module
    for part in qualname.split(".") if module is not None else ():
        # vars(), not getattr(): a module-level __getattr__ (PEP 562) may import or run code.
        try:
            obj = vars(obj).get(part)
        except TypeError:
            obj = None
    if module is None:
        raise CorruptCheckpointError(
            f"the file holds a {kind} of class {ref}, whose module is not loaded in this process; "
            f"import {module_name} before loading (torchkeep never imports modules named by a file)",
            reason="class not loaded",
        )
    if obj is None:
        raise ValueError(f"module {module_name} has no class {qualname}; was it renamed since the file was saved?")
    if not isinstance(obj, type):
        raise ValueError(f"{ref} names a {type(obj).__name__}, not a class")
    return obj


def _d_dataclass(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    cls = _resolve_class(node["cls"], "dataclass")
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"{node['cls']} is not a dataclass")
    fields = node["fields"]
    if not isinstance(fields, dict):
        raise TypeError("fields must be an object")
    declared = {f.name: f for f in dataclasses.fields(cls)}
    if not set(fields) <= set(declared):
        raise ValueError(f"fields {sorted(set(fields) - set(declared))} are not fields of {node['cls']}")
    # Like pickle and copy: build the instance without running __init__/__post_init__, so a file
    # cannot make an already-imported class run code; fields are set exactly as they were saved.
    obj = object.__new__(cls)
    for name, f in declared.items():
        if name in fields:
            value = d.value(fields[name], depth + 1, f"{where}.{name}")
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise ValueError(f"field {name!r} of {node['cls']} is missing and has no default")
        object.__setattr__(obj, name, value)  # works for frozen and slotted dataclasses too
    return obj


_HF_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def _d_hfconfig(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    ref = node["cls"]
    if not isinstance(ref, str):
        raise TypeError("cls must be a string")
    transformers = sys.modules.get("transformers")
    if transformers is None:
        raise CorruptCheckpointError(
            f"the file holds a transformers config ({ref}), and transformers is not imported in this process; "
            "import transformers (or the module that registers your model) before loading",
            reason="class not loaded",
        )
    module_name, _, name = ref.partition(":")
    if module_name == "transformers":
        # Only transformers' own exported names (dir() lists the lazily importable ones too).
        if not _HF_NAME.fullmatch(name) or name not in dir(transformers):
            raise ValueError(f"transformers exports no config class {name!r}")
        try:
            cls = getattr(transformers, name)
        except Exception as exc:  # transformers' lazy import of that submodule failed
            raise ValueError(f"transformers.{name} cannot be loaded ({type(exc).__name__}: {exc})") from exc
    else:
        cls = _resolve_class(ref, "transformers config")
    base = getattr(transformers, "PretrainedConfig", None)
    if not isinstance(cls, type) or base is None or not issubclass(cls, base):
        raise ValueError(f"{ref} is not a transformers PretrainedConfig")
    config = d.value(node["config"], depth + 1, f"{where}.config")
    if not isinstance(config, dict):
        raise TypeError("config must be an object")
    try:
        return cls.from_dict(config)  # type: ignore[attr-defined]
    except Exception as exc:  # the config class refused the saved values
        raise ValueError(f"{ref}.from_dict refused the saved config ({type(exc).__name__}: {exc})") from exc


def _d_enum(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    cls = _resolve_class(node["cls"], "enum")
    if not issubclass(cls, enum.Enum):
        raise ValueError(f"{node['cls']} is not an Enum")
    value = d.value(node["v"], depth + 1, where)
    for member in cls.__members__.values():  # a lookup, never the class's _missing_ hook
        if type(member.value) is type(value) and member.value == value:
            return member
    if issubclass(cls, enum.Flag) and type(value) is int:  # combined flags are not members
        return cls(value)
    raise ValueError(f"{value!r} is not a value of {node['cls']}")


_HANDLERS: dict[str, Callable[[_Decoder, dict[str, Any], int, str], Any]] = {
    "dict": _d_dict,
    "odict": _d_dict,
    "counter": _d_dict,
    "tuple": _d_tuple,
    "int": _d_int,
    "float": _d_float,
    "bytes": _d_bytes,
    "dtype": _d_dtype,
    "device": _d_device,
    "size": _d_size,
    "tensor": _d_tensor,
    "qtensor": _d_qtensor,
    "ndarray": _d_ndarray,
    "npscalar": _d_npscalar,
    "dataclass": _d_dataclass,
    "enum": _d_enum,
    "hfconfig": _d_hfconfig,
}


def decode(tree: Any, lookup: Callable[[str], torch.Tensor]) -> Any:
    """Rebuild the value encoded by :func:`torchkeep.io._codec.encode`; ``lookup(name)`` returns a stored tensor.

    Raises:
        CorruptCheckpointError: the tree is malformed (unknown tag, bad field, too deep).

    Example:
        >>> from torchkeep.io._codec import encode
        >>> enc = encode({"w": torch.ones(2), "k": (1, 2)})
        >>> decode(enc.tree, enc.tensors.__getitem__)["k"]
        (1, 2)
    """
    try:
        return _Decoder(lookup).value(tree, 0, "<root>")
    except _LookupFailed as exc:
        assert exc.__cause__ is not None
        raise exc.__cause__ from None
    except RecursionError:  # MAX_DEPTH keeps files shallow; this guards callers with deep stacks
        raise _corrupt("nesting too deep to decode") from None


def tensor_names(tree: Any) -> set[str]:
    """Names of every tensor the tree refers to (for checking a file's consistency).

    Walks raw JSON, so it bounds nesting by :data:`MAX_JSON_DEPTH`, the JSON depth of the
    deepest tree the encoder writes; the decoder then enforces :data:`MAX_DEPTH` on values.
    """
    found: set[str] = set()
    stack: list[tuple[Any, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _corrupt(f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, dict):
            if node.get("t") in ("tensor", "ndarray") and isinstance(node.get("ref"), str):
                found.add(node["ref"])
            stack.extend((v, depth + 1) for v in node.values())
    return found
