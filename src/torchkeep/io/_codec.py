"""Python values ⇄ (typed JSON tree, named tensors). Knows nothing about files.

The tree is plain JSON. Values JSON has natively (None, bool, finite float, str, list, and ints
that fit in 64 bits) are written as themselves; everything else is an object with a ``"t"`` tag:

=========  ==========================================================================
tag        fields
=========  ==========================================================================
dict       ``items``: object (all keys str) — or ``keys``/``values``: lists of nodes
odict      as ``dict``, decodes to ``collections.OrderedDict``
counter    as ``dict``, decodes to ``collections.Counter`` (e.g. MultiStepLR's milestones)
tuple      ``items``: list of nodes
int        ``v``: decimal string (ints outside int64)
float      ``v``: ``"nan"``, ``"inf"`` or ``"-inf"``
bytes      ``v``: base64
dtype      ``v``: torch dtype name, e.g. ``"bfloat16"``
qtensor    ``qdtype`` (qint8, quint8, qint32), ``scheme`` (per_tensor: ``scale``, ``zero_point``;
           per_channel: ``axis`` and tensor nodes ``scales``, ``zero_points``), ``values``: the
           tensor node of ``int_repr()``
device     ``v``: device string, e.g. ``"cuda:0"``
size       ``v``: list of ints (``torch.Size``)
tensor     ``ref``: tensor name; optional ``param`` (nn.Parameter), ``grad`` (requires_grad),
           ``view``: ``[storage_offset, shape, stride]`` into the tensor named by ``ref``
ndarray    ``ref``: tensor name holding the array's data
npscalar   ``dtype``: numpy dtype string, ``v``: base64 of its bytes
dataclass  ``cls``: ``module:qualname``, ``fields``: object of nodes
enum       ``cls``: ``module:qualname``, ``v``: node
hfconfig   a ``transformers`` config (``PretrainedConfig``): ``cls``: ``transformers:ClassName``
           (or ``module:qualname`` for a config class of your own), ``config``: its ``to_dict()``
=========  ==========================================================================

Tensors are named by their path in the tree (``model/net.0.weight``), so a file's tensor list reads
like the state dict it came from. A tensor that shares storage with another one (tied weights, a
transposed view) is stored once and comes back as a view of the same tensor.

Decoding never imports a module named by a file: ``dataclass`` and ``enum`` nodes resolve only
classes whose module is already imported, and only if they are dataclasses / Enum subclasses. An
``hfconfig`` node resolves its class name only among ``transformers``' own exports (which may load
that transformers submodule), when ``transformers`` is already imported, and only if it is a
``PretrainedConfig``; it is rebuilt with ``from_dict``, like ``from_pretrained`` does.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedValueError
from ._decode import DTYPES_BY_NAME, MAX_DEPTH, MAX_DIM, decode, is_key, tensor_names

# decode and the limits live in _decode; they are re-exported here, the codec's one seam.
__all__ = ["DTYPES_BY_NAME", "MAX_DEPTH", "MAX_DIM", "Encoded", "decode", "encode", "format_path", "tensor_names"]

_is_key = is_key  # the name torchkeep.convert (and older callers) use


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


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


#: Mapping types stored with their exact type, and their tags.
_MAPPING_TAGS: dict[type, str] = {dict: "dict", OrderedDict: "odict", Counter: "counter"}


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
        if is_hf_config(obj):
            return self.hf_config(obj, path)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return self.dataclass(obj, path)
        if type(obj) in _MAPPING_TAGS:
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
        tag = _MAPPING_TAGS[type(obj)]
        with self._guard(obj, path):
            if all(type(k) is str for k in obj):
                return {"t": tag, "items": {k: self.value(v, (*path, k)) for k, v in obj.items()}}
            keys = []
            for k in obj:
                if not is_key(k):
                    raise self._unsupported(
                        k,
                        (*path, k),
                        f"dict key of type {type(k).__qualname__} is not supported "
                        "(keys may be str, int, float, bool, None or tuples of those)",
                    )
                keys.append(self.value(k, (*path, "<key>")))
            values = [self.value(v, (*path, k)) for k, v in obj.items()]
            return {"t": tag, "keys": keys, "values": values}

    def hf_config(self, obj: Any, path: tuple[Any, ...]) -> Any:
        cls = type(obj)
        transformers = sys.modules.get("transformers")
        exported = transformers is not None and vars(transformers).get(cls.__name__, None) is cls
        if not exported and transformers is not None and cls.__module__.startswith("transformers."):
            exported = cls.__name__ in dir(transformers)  # exported lazily: not yet in vars()
        ref = f"transformers:{cls.__name__}" if exported else _qualified(cls)
        with self._guard(obj, path):
            config = self.value(obj.to_dict(), (*path, "to_dict()"))
        return {"t": "hfconfig", "cls": ref, "config": config}

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
            return self.qtensor(t, path)
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

    def qtensor(self, t: torch.Tensor, path: tuple[Any, ...]) -> Any:
        """A quantized tensor as its integer values plus scale and zero point (per tensor or per channel).

        ``quantize_dynamic``'s packed linear weights arrive here too: their state is a tuple
        ``(qint8 weight, bias)``.
        """
        scheme = t.qscheme()
        node: dict[str, Any] = {"t": "qtensor", "qdtype": str(t.dtype).removeprefix("torch.")}
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            node.update(scheme="per_tensor", scale=float(t.q_scale()), zero_point=int(t.q_zero_point()))
        elif scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
            node.update(
                scheme="per_channel",
                axis=int(t.q_per_channel_axis()),
                scales=self.tensor(t.q_per_channel_scales().detach().clone(), (*path, "scales")),
                zero_points=self.tensor(t.q_per_channel_zero_points().detach().clone(), (*path, "zero_points")),
            )
        else:
            raise self._unsupported(t, path, f"quantized tensors with qscheme {scheme} cannot be stored")
        node["values"] = self.tensor(t.int_repr(), (*path, "int_repr"))
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
                if t.numel() > base_t.numel():
                    # A view that repeats elements (expand, stride 0) is stored as data of its own:
                    # readers refuse views larger than what they view (see _decode._apply_view).
                    self.tensors[node["ref"]] = t.detach()
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


def is_hf_config(obj: Any) -> bool:
    """Whether ``obj`` is a ``transformers`` config (without importing transformers).

    Example:
        >>> is_hf_config({"hidden_size": 8})
        False
    """
    return not isinstance(obj, type) and any(
        c.__name__ in ("PretrainedConfig", "PreTrainedConfig") and c.__module__ == "transformers.configuration_utils"
        for c in type(obj).__mro__
    )


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
        "supported are dict, list, tuple, OrderedDict, Counter, None, bool, int, float, str, bytes, "
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
    try:
        return _Encoder().run(obj)
    except RecursionError:  # MAX_DEPTH bounds the tree; only a caller already deep in its stack gets here
        raise UnsupportedValueError(
            "the value is nested too deeply to encode from this call stack; flatten the structure before saving"
        ) from None
