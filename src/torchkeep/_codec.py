"""Python values ⇄ (typed JSON tree, named tensors). Knows nothing about files.

The tree is plain JSON. Values JSON has natively (None, bool, finite float, str, list, and ints
that fit in 64 bits) are written as themselves; everything else is an object with a ``"t"`` tag:

=========  ==========================================================================
tag        fields
=========  ==========================================================================
dict       ``items``: object (all keys str) — or ``keys``/``values``: lists of nodes
odict      as ``dict``, decodes to ``collections.OrderedDict``
tuple      ``items``: list of nodes
int        ``v``: decimal string (ints outside int64)
float      ``v``: ``"nan"``, ``"inf"`` or ``"-inf"``
bytes      ``v``: base64
dtype      ``v``: torch dtype name, e.g. ``"bfloat16"``
device     ``v``: device string, e.g. ``"cuda:0"``
size       ``v``: list of ints (``torch.Size``)
tensor     ``ref``: tensor name; optional ``param`` (nn.Parameter), ``grad`` (requires_grad),
           ``view``: ``[storage_offset, shape, stride]`` into the tensor named by ``ref``
ndarray    ``ref``: tensor name holding the array's data
npscalar   ``dtype``: numpy dtype string, ``v``: base64 of its bytes
dataclass  ``cls``: ``module:qualname``, ``fields``: object of nodes
enum       ``cls``: ``module:qualname``, ``v``: node
=========  ==========================================================================

Tensors are named by their path in the tree (``model/net.0.weight``), so a file's tensor list reads
like the state dict it came from. A tensor that shares storage with another one (tied weights, a
transposed view) is stored once and comes back as a view of the same tensor.

Decoding never imports anything: ``dataclass`` and ``enum`` nodes resolve only classes whose
module is already imported, and only if they are dataclasses / Enum subclasses.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .errors import CorruptCheckpointError, UnsupportedValueError

__all__ = ["DTYPES_BY_NAME", "MAX_DEPTH", "Encoded", "decode", "encode", "format_path", "tensor_names"]

#: Deepest nesting the codec accepts. Deep enough for any real state tree, shallow enough that
#: hostile files cannot exhaust the interpreter's stack.
MAX_DEPTH = 200

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Largest dimension or stride accepted from a file (torch's own sizes are int64).
MAX_DIM = 2**62
#: Every torch dtype by name, built from torch's namespace once, so that decoding a name never
#: goes through ``torch.__getattr__`` (which imports submodules on demand).
DTYPES_BY_NAME: dict[str, torch.dtype] = {
    name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)
}
_NAN_INF = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclasses.dataclass
class Encoded:
    """The result of :func:`encode`: a JSON-able tree and the tensors it refers to, by name."""

    tree: Any
    tensors: dict[str, torch.Tensor]


def format_path(parts: tuple[Any, ...]) -> str:
    """Render a tree path as Python subscripts: ``['optimizer']['param_groups'][0]``."""
    return "".join(f"[{p!r}]" for p in parts) or "<root>"


def _tensor_name(parts: tuple[Any, ...]) -> str:
    name = "/".join(_name_part(p) for p in parts)
    return name or "tensor"


def _name_part(p: Any) -> str:
    if isinstance(p, str):
        # Names go into the UTF-8 header: lone surrogates (legal in str keys) become "?".
        return p.replace("/", "_").encode("utf-8", "replace").decode("utf-8") or "_"
    if isinstance(p, tuple):
        return ",".join(_name_part(x) for x in p)
    return str(p)


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._active: set[int] = set()
        # storage key -> list of (node, tensor) waiting for the shared-storage pass
        self._by_storage: dict[tuple[Any, ...], list[tuple[dict[str, Any], torch.Tensor, tuple[Any, ...]]]] = {}

    def run(self, obj: Any) -> Encoded:
        tree = self.value(obj, ())
        self._assign_storage()
        return Encoded(tree, self.tensors)

    # -- values -----------------------------------------------------------------------------
    def value(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if len(path) > MAX_DEPTH:
            raise UnsupportedValueError(
                f"{format_path(path[:5])}...: nesting deeper than {MAX_DEPTH} levels; "
                "flatten the structure before saving",
                path=format_path(path),
            )
        if isinstance(obj, enum.Enum):  # before str/int: StrEnum and IntEnum members are str/int too
            return {"t": "enum", "cls": _qualified(type(obj)), "v": self.value(obj.value, (*path, "value"))}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, path)
        if isinstance(obj, np.ndarray):
            return self.ndarray(obj, path)
        if isinstance(obj, np.generic):
            return self.npscalar(obj, path)
        if isinstance(obj, int) and type(obj) is int:
            return obj if _INT64_MIN <= obj <= _INT64_MAX else {"t": "int", "v": str(obj)}
        if type(obj) is float:
            if math.isfinite(obj):
                return obj
            return {"t": "float", "v": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if isinstance(obj, torch.dtype):
            return {"t": "dtype", "v": str(obj).removeprefix("torch.")}
        if isinstance(obj, torch.device):
            return {"t": "device", "v": str(obj)}
        if isinstance(obj, torch.Size):
            return {"t": "size", "v": [int(d) for d in obj]}
        if isinstance(obj, (bytes, bytearray)) and type(obj) in (bytes, bytearray):
            if type(obj) is bytearray:
                raise self._unsupported(obj, path, "bytearray is not supported; convert it with bytes(...)")
            return {"t": "bytes", "v": base64.b64encode(obj).decode("ascii")}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return self.dataclass(obj, path)
        if type(obj) in (dict, OrderedDict):
            return self.mapping(obj, path)
        if type(obj) is list:
            return self.container(obj, path, lambda items: items)
        if type(obj) is tuple:
            return self.container(obj, path, lambda items: {"t": "tuple", "items": items})
        raise self._unsupported(obj, path, _why_unsupported(obj))

    def _unsupported(self, obj: Any, path: tuple[Any, ...], why: str) -> UnsupportedValueError:
        where = format_path(path)
        return UnsupportedValueError(f"{where}: {why}", path=where, value_type=type(obj).__qualname__)

    def container(
        self, obj: list[Any] | tuple[Any, ...], path: tuple[Any, ...], wrap: Callable[[list[Any]], Any]
    ) -> Any:
        with self._guard(obj, path):
            return wrap([self.value(v, (*path, i)) for i, v in enumerate(obj)])

    def mapping(self, obj: Mapping[Any, Any], path: tuple[Any, ...]) -> Any:
        tag = "odict" if type(obj) is OrderedDict else "dict"
        with self._guard(obj, path):
            if all(type(k) is str for k in obj):
                return {"t": tag, "items": {k: self.value(v, (*path, k)) for k, v in obj.items()}}
            keys = []
            for k in obj:
                if not _is_key(k):
                    raise self._unsupported(
                        k,
                        (*path, k),
                        f"dict key of type {type(k).__qualname__} is not supported "
                        "(keys may be str, int, float, bool, None or tuples of those)",
                    )
                keys.append(self.value(k, (*path, "<key>")))
            values = [self.value(v, (*path, k)) for k, v in obj.items()]
            return {"t": tag, "keys": keys, "values": values}

    def dataclass(self, obj: Any, path: tuple[Any, ...]) -> Any:
        with self._guard(obj, path):
            # Every field, init=False ones too: decoding sets fields directly and never runs __init__.
            fields = {f.name: self.value(getattr(obj, f.name), (*path, f.name)) for f in dataclasses.fields(obj)}
        return {"t": "dataclass", "cls": _qualified(type(obj)), "fields": fields}

    def _guard(self, obj: Any, path: tuple[Any, ...]) -> _CycleGuard:
        return _CycleGuard(self, obj, path)

    # -- tensors ----------------------------------------------------------------------------
    def tensor(self, t: torch.Tensor, path: tuple[Any, ...]) -> Any:
        if type(t) not in (torch.Tensor, torch.nn.Parameter) and not _is_plain_subclass(t):
            raise self._unsupported(
                t,
                path,
                f"tensor subclass {type(t).__qualname__} cannot be stored; "
                "convert it to a plain tensor (e.g. .full_tensor() for a DTensor) first",
            )
        if t.layout != torch.strided:
            raise self._unsupported(t, path, f"{t.layout} tensors cannot be stored; make it dense with .to_dense()")
        if t.is_quantized:
            raise self._unsupported(t, path, "quantized tensors cannot be stored; store .dequantize() or int_repr()")
        if t.device.type == "meta":
            raise self._unsupported(t, path, "meta tensors have no data; materialize the module before saving")
        node: dict[str, Any] = {"t": "tensor"}
        if isinstance(t, torch.nn.Parameter):
            node["param"] = True
        if t.requires_grad:
            node["grad"] = True
        name = self._unique(_tensor_name(path))
        node["ref"] = name
        self.tensors[name] = t  # placeholder; _assign_storage decides what is really stored
        # A conjugate or negative view shares memory with its source but not its values, so the
        # lazy bits are part of the key: such views are stored resolved, never re-tied to the source.
        key: tuple[Any, ...] = (
            (str(t.device), t.untyped_storage().data_ptr(), t.is_conj(), t.is_neg())
            if t.numel()
            else ("empty", id(t))  # the same empty tensor twice is still one tensor
        )
        self._by_storage.setdefault(key, []).append((node, t, path))
        return node

    def ndarray(self, a: np.ndarray[Any, Any], path: tuple[Any, ...]) -> Any:
        if a.dtype.kind not in "biufc" or a.dtype.byteorder == ">":
            raise self._unsupported(
                a,
                path,
                f"numpy arrays of dtype {a.dtype} cannot be stored; only numeric, native-endian arrays are supported",
            )
        try:
            # np.ascontiguousarray turns 0-d arrays into 1-d ones; reshape keeps the shape exact.
            t = torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape))
        except TypeError as exc:
            raise self._unsupported(a, path, f"numpy dtype {a.dtype} has no torch equivalent") from exc
        name = self._unique(_tensor_name(path))
        self.tensors[name] = t
        return {"t": "ndarray", "ref": name}

    def npscalar(self, s: np.generic, path: tuple[Any, ...]) -> Any:
        if s.dtype.kind not in "biufc":
            raise self._unsupported(s, path, f"numpy scalars of dtype {s.dtype} cannot be stored")
        return {"t": "npscalar", "dtype": s.dtype.str, "v": base64.b64encode(s.tobytes()).decode("ascii")}

    def _unique(self, name: str) -> str:
        if name not in self.tensors and name != "__metadata__":  # safetensors reserves that key
            return name
        i = 1
        while f"{name}~{i}" in self.tensors:
            i += 1
        return f"{name}~{i}"

    def _assign_storage(self) -> None:
        """Store each storage once: the tensor whose bytes cover the others becomes the base."""
        for group in self._by_storage.values():
            if len(group) == 1:
                node, t, _ = group[0]
                self.tensors[node["ref"]] = t.detach()
                continue
            base = _covering_tensor([t for _, t, _ in group])
            if base is None:
                # Views with no single contiguous cover: store each distinct view once (the same
                # view saved twice still comes back as one tensor).
                stored: list[tuple[dict[str, Any], torch.Tensor]] = []
                for node, t, _ in group:
                    twin = next((n for n, s in stored if _same_view(t, s)), None)
                    if twin is None:
                        stored.append((node, t))
                        self.tensors[node["ref"]] = t.detach()
                    else:
                        del self.tensors[node["ref"]]
                        node["ref"] = twin["ref"]
                continue
            base_node, base_t, _ = next(g for g in group if g[1] is base)
            self.tensors[base_node["ref"]] = base_t.detach()
            for node, t, _ in group:
                if node is base_node:
                    continue
                del self.tensors[node["ref"]]
                node["ref"] = base_node["ref"]
                if not _same_view(t, base_t):
                    node["view"] = [t.storage_offset() - base_t.storage_offset(), list(t.shape), list(t.stride())]


class _CycleGuard:
    def __init__(self, enc: _Encoder, obj: Any, path: tuple[Any, ...]) -> None:
        self.enc, self.key, self.path = enc, id(obj), path

    def __enter__(self) -> None:
        if self.key in self.enc._active:
            raise UnsupportedValueError(
                f"{format_path(self.path)}: the structure contains itself (a reference cycle); cycles cannot be stored",
                path=format_path(self.path),
            )
        self.enc._active.add(self.key)

    def __exit__(self, *exc: object) -> None:
        self.enc._active.discard(self.key)


def _is_plain_subclass(t: torch.Tensor) -> bool:
    # Buffers registered by some libraries are thin Tensor subclasses with no extra state.
    return type(t).__torch_function__ is torch.Tensor.__torch_function__ and not hasattr(t, "__tensor_flatten__")


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def _covering_tensor(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """A contiguous tensor of the group's dtype whose element range covers every other tensor."""
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        return None
    spans = [_element_span(t) for t in tensors]
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    for t, (a, b) in zip(tensors, spans, strict=True):
        if t.is_contiguous() and a <= lo and b >= hi:
            return t
    return None


def _element_span(t: torch.Tensor) -> tuple[int, int]:
    start = int(t.storage_offset())
    if t.numel() == 0:
        return start, start
    last = start + sum((int(n) - 1) * int(s) for n, s in zip(t.shape, t.stride(), strict=True))
    return start, last + 1


def _is_key(k: Any) -> bool:
    if k is None or type(k) in (str, int, float, bool):
        return True
    return type(k) is tuple and all(_is_key(x) for x in k)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _why_unsupported(obj: Any) -> str:
    if callable(obj) and (hasattr(obj, "__code__") or isinstance(obj, type(len))):
        return (
            "cannot store a function (functions are code, not state; store what they compute, or recreate them on load)"
        )
    if isinstance(obj, type):
        return f"cannot store a class ({obj.__qualname__}); store its name and look it up on load"
    if isinstance(obj, torch.nn.Module):
        return (
            f"cannot store a whole module ({type(obj).__qualname__}); store module.state_dict(), "
            "or use tk.save_model() with a registered class"
        )
    if isinstance(obj, (set, frozenset)):
        return f"cannot store a {type(obj).__name__}; convert it to a sorted list or tuple"
    kind = type(obj)
    return (
        f"cannot store a value of type {kind.__module__}.{kind.__qualname__}; "
        "supported are dict, list, tuple, OrderedDict, None, bool, int, float, str, bytes, "
        "tensors, numpy arrays/scalars, torch.dtype/device/Size, dataclasses and enums"
    )


def encode(obj: Any) -> Encoded:
    """Split ``obj`` into a JSON-able tree and named tensors.

    Raises:
        UnsupportedValueError: naming the path of the first value that cannot be stored.

    Example:
        >>> enc = encode({"w": torch.zeros(2), "step": 3})
        >>> enc.tree["items"]["step"], list(enc.tensors)
        (3, ['w'])
    """
    return _Encoder().run(obj)


# ------------------------------------------------------------------------------------------
# decoding: the tree is hostile input


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


def _d_dict(d: _Decoder, node: dict[str, Any], depth: int, where: str) -> Any:
    cls: type[dict[Any, Any]] = OrderedDict if node["t"] == "odict" else dict
    if "items" in node:
        items = node["items"]
        if not isinstance(items, dict):
            raise TypeError("items must be an object")
        return cls((k, d.value(v, depth + 1, f"{where}[{k!r}]")) for k, v in items.items())
    keys, values = node["keys"], node["values"]
    if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
        raise ValueError("keys and values must be lists of equal length")
    out = cls()
    for k, v in zip(keys, values, strict=True):
        key = d.value(k, depth + 1, f"{where}.<key>")
        if not _is_key(key):
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


def _dims(x: Any) -> bool:
    return isinstance(x, list) and len(x) <= 64 and all(type(v) is int and 0 <= v <= MAX_DIM for v in x)


def _apply_view(base: torch.Tensor, view: Any, ref: str) -> torch.Tensor:
    if not (isinstance(view, list) and len(view) == 3):
        raise ValueError("view must be [offset, shape, stride]")
    offset, shape, stride = view
    if not (_dims([offset]) and _dims(shape) and _dims(stride) and len(shape) == len(stride)):
        raise ValueError(f"view offset/shape/stride must be ints in [0, {MAX_DIM}], shape and stride of one rank")
    span_end = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) + 1
    if 0 in shape:
        span_end = offset
    if span_end > base.numel() or not base.is_contiguous():
        raise _corrupt(f"view into {ref!r} reaches past its {base.numel()} elements")
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
    "tuple": _d_tuple,
    "int": _d_int,
    "float": _d_float,
    "bytes": _d_bytes,
    "dtype": _d_dtype,
    "device": _d_device,
    "size": _d_size,
    "tensor": _d_tensor,
    "ndarray": _d_ndarray,
    "npscalar": _d_npscalar,
    "dataclass": _d_dataclass,
    "enum": _d_enum,
}


def decode(tree: Any, lookup: Callable[[str], torch.Tensor]) -> Any:
    """Rebuild the value encoded by :func:`encode`; ``lookup(name)`` returns a stored tensor.

    Raises:
        CorruptCheckpointError: the tree is malformed (unknown tag, bad field, too deep).

    Example:
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
    """Names of every tensor the tree refers to (for checking a file's consistency)."""
    found: set[str] = set()
    stack: list[tuple[Any, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _corrupt(f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, dict):
            if node.get("t") in ("tensor", "ndarray") and isinstance(node.get("ref"), str):
                found.add(node["ref"])
            stack.extend((v, depth + 1) for v in node.values())
    return found
