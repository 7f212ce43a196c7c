"""Convert legacy files into torchkeep files: ``torchkeep convert SRC DST [--trust-pickle]``.

Conversion is a dispatch over *source kinds*. Each kind is one small function pair, ``detect``
(cheap: looks at names and magic bytes, never unpickles) and ``read`` (returns the tree to save),
registered with :func:`source_kind`. The first kind whose ``detect`` accepts the source reads it.
Built in, in order:

``safetensors-dir``   a Hugging Face-style directory: ``model.safetensors`` (or the shards named
                      by ``model.safetensors.index.json``, treated as hostile: no ``..``, no
                      absolute paths, only ``.safetensors`` files inside the directory), with
                      ``config.json`` kept as the ``config.json`` metadata string
``safetensors``       one ``.safetensors`` file (torchkeep or any other tool's)
``torch``             anything ``torch.save`` wrote (``.pt/.pth/.bin/.ckpt/.tar``), including a
                      directory holding only ``pytorch_model.bin``

``torch`` sources load with ``torch.load(weights_only=True)``, PyTorch's restricted unpickler,
which builds tensors and plain containers and refuses every other global. A file that needs
more (a whole pickled model, most Lightning ``.ckpt`` files, custom classes) is refused unless
``trust_pickle=True`` — full unpickling runs whatever code the file names. With it, modules and
other objects with ``state_dict()`` become their state dicts, ``argparse.Namespace`` and dict
subclasses become dicts; values the codec still cannot store are an error naming their path
(or, with ``drop_unsupported=True``, dropped and listed in the report).

The tree is kept as the source has it: a state dict converts to the same state dict (tensor
names are its keys, so ``safetensors.torch.load_file(DST)`` returns it), and a checkpoint dict
keeps its optimizer state, epoch, step and the rest.

Adding a kind (a sharded ``torch.distributed.checkpoint`` directory, say) is one function::

    @source_kind("dcp", detect=lambda p: (p / ".metadata").is_file())
    def read_dcp(path: Path, options: ConvertOptions) -> Source:
        return Source(tree=..., notes=["resharded to one file"])
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import _checkpoint
from ..errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    UnsupportedValueError,
)
from ..io import _codec, _decode, _format
from ..io._storage import atomic_write
from ._as_checkpoint import checkpoint_tree

__all__ = [
    "ConvertOptions",
    "ConvertReport",
    "Source",
    "SourceKind",
    "convert",
    "detect_kind",
    "source_kind",
    "source_kinds",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """How :func:`convert` treats a source.

    Attributes:
        trust_pickle: allow full unpickling for files the restricted loader refuses (runs code
            named by the file: only for files you trust).
        drop_unsupported: drop values torchkeep cannot store (listed in the report) instead of
            failing.
        overwrite: replace an existing ``dst``.

    Example:
        >>> ConvertOptions(trust_pickle=True).drop_unsupported
        False
    """

    trust_pickle: bool = False
    drop_unsupported: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if type(getattr(self, f.name)) is not bool:
                raise TypeError(f"ConvertOptions.{f.name} must be True or False, got {getattr(self, f.name)!r}")


@dataclasses.dataclass
class Source:
    """What a source kind's reader returns: the tree to save, metadata, and notes for the report.

    Example:
        >>> Source(tree={"w": torch.ones(1)}).notes
        []
    """

    tree: Any
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: True when reading it ran full unpickling (``trust_pickle=True`` was needed and given).
    trusted_pickle: bool = False


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """One kind of legacy source: a cheap ``detect(path)`` and a ``read(path, options)``.

    Example:
        >>> [k.name for k in source_kinds()][:2]
        ['safetensors-dir', 'safetensors']
    """

    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, ConvertOptions], Source]


@dataclasses.dataclass
class ConvertReport:
    """What :func:`convert` did.

    Example:
        >>> r = ConvertReport(src="a.pt", dst="a.safetensors", kind="torch", tensors=2, tensor_bytes=32)
        >>> r.kind, r.dropped
        ('torch', [])
    """

    src: str
    dst: str
    kind: str
    tensors: int
    tensor_bytes: int
    notes: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)
    trusted_pickle: bool = False


_KINDS: list[SourceKind] = []


def source_kind(
    name: str, *, detect: Callable[[Path], bool], before: str | None = None
) -> Callable[[Callable[[Path, ConvertOptions], Source]], Callable[[Path, ConvertOptions], Source]]:
    """Register a reader for one kind of source. ``before`` puts it ahead of an existing kind.

    ``detect`` must be cheap and must never unpickle or import anything named by the source.
    Registering a name again replaces that kind.

    Example:
        >>> @source_kind("npz-doc", detect=lambda p: p.suffix == ".npzdoc")
        ... def read_npz(path, options):
        ...     return Source(tree={})
        >>> "npz-doc" in [k.name for k in source_kinds()]
        True
    """

    def decorate(read: Callable[[Path, ConvertOptions], Source]) -> Callable[[Path, ConvertOptions], Source]:
        kind = SourceKind(name, detect, read)
        names = [k.name for k in _KINDS]
        if name in names:
            _KINDS[names.index(name)] = kind
        elif before is not None and before in names:
            _KINDS.insert(names.index(before), kind)
        else:
            # generic readers (torch pickles) stay last so specific kinds are tried first
            tail = names.index("torch") if "torch" in names else len(_KINDS)
            _KINDS.insert(tail, kind)
        return read

    return decorate


def source_kinds() -> list[SourceKind]:
    """The registered source kinds, in the order they are tried.

    Example:
        >>> source_kinds()[-1].name
        'torch'
    """
    return list(_KINDS)


def detect_kind(src: str | os.PathLike[str]) -> SourceKind:
    """The first source kind that accepts ``src``.

    Raises:
        CheckpointNotFoundError: ``src`` does not exist.
        CorruptCheckpointError: no kind recognizes it (the message lists the kinds).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"w": torch.ones(1)}, path)
        >>> detect_kind(path).name
        'torch'
    """
    path = Path(src)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such file or directory", path=str(path))
    for kind in _KINDS:
        if kind.detect(path):
            return kind
    raise CorruptCheckpointError(
        f"{path}: not a format torchkeep convert knows; it reads {', '.join(k.name for k in _KINDS)} "
        "(a torch.save file, a .safetensors file, or a directory with model.safetensors + config.json)",
        path=str(path),
        reason="unknown source kind",
    )


# ------------------------------------------------------------------------------------------
# safetensors sources


# ------------------------------------------------------------------------------------------
# torch.save sources


# ------------------------------------------------------------------------------------------
# making a tree storable


#: Most nodes a converted tree may have once shared references are written out (a pickle can
#: share one container from many places; the file stores each place). A state dict with optimizer
#: state has a few nodes per tensor, so this is far beyond any real checkpoint.
MAX_TREE_NODES = 10_000_000


def _expanded_size(root: Any) -> int:
    """Nodes of ``root`` written out as a tree, counted per distinct container (no expansion).

    Stops counting past :data:`MAX_TREE_NODES`; cycles count once (the codec refuses them).
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        obj, done = stack.pop()
        if not isinstance(obj, (Mapping, list, tuple)) or (not done and id(obj) in sizes):
            continue
        children = list(obj.values()) if isinstance(obj, Mapping) else list(obj)
        if not done:
            sizes[id(obj)] = 1  # provisional: a cycle back to it counts once
            stack.append((obj, True))
            stack.extend((c, False) for c in children)
            continue
        total = 1
        for c in children:
            total += sizes.get(id(c), 1) if isinstance(c, (Mapping, list, tuple)) else 1
        sizes[id(obj)] = min(total, MAX_TREE_NODES + 1)
    return sizes.get(id(root), 1)


class _Sanitizer:
    def __init__(self, options: ConvertOptions) -> None:
        self.options = options
        self.dropped: list[str] = []
        self.notes: list[str] = []
        # A container shared by reference is converted once; the codec writes it at each place.
        self._done: dict[int, tuple[Any, Any]] = {}

    _DROP = object()

    def run(self, obj: Any) -> Any:
        size = _expanded_size(obj)
        if size > MAX_TREE_NODES:
            raise UnsupportedValueError(
                f"the source shares containers by reference so much that writing it out would take more than "
                f"{MAX_TREE_NODES:,} nodes (the limit); a real checkpoint has a few per tensor. It was probably "
                "crafted to exhaust memory; refusing it",
                path="<root>",
            )
        return self.value(obj, ())

    def value(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if len(path) > _codec.MAX_DEPTH:
            raise UnsupportedValueError(
                f"{_codec.format_path(path[:5])}...: nesting deeper than {_codec.MAX_DEPTH} levels, "
                "which a torchkeep file cannot hold",
                path=_codec.format_path(path[:5]),
            )
        if isinstance(obj, (Mapping, list, tuple)):
            done = self._done.get(id(obj))
            if done is None:
                # The source object is kept with its result: its id cannot be reused meanwhile.
                done = self._done[id(obj)] = (obj, self._value(obj, path))
            return done[1]
        return self._value(obj, path)

    def _value(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.detach() if type(obj) is not torch.nn.Parameter else obj
        if isinstance(obj, torch.nn.Module) or (
            callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))
        ):
            self.notes.append(f"{_codec.format_path(path)}: {type(obj).__qualname__} object stored as its state_dict()")
            return self.value(obj.state_dict(), path)
        if isinstance(obj, argparse.Namespace):
            return self.value(dict(vars(obj)), path)
        if isinstance(obj, str) and type(obj) is not str:  # TorchVersion and other str subclasses
            return str(obj)
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = OrderedDict() if type(obj) is OrderedDict else {}
            for k, v in obj.items():
                if not _decode.is_key(k):
                    self._unsupported(f"{_codec.format_path(path)} key {k!r}", "dict key of unsupported type")
                    continue
                converted = self.value(v, (*path, k))
                if converted is not self._DROP:
                    out[k] = converted
            return out
        if isinstance(obj, (list, tuple)):
            items = [self.value(v, (*path, i)) for i, v in enumerate(obj)]
            items = [v for v in items if v is not self._DROP]
            return tuple(items) if isinstance(obj, tuple) else items
        try:
            _codec.encode(obj)
        except UnsupportedValueError as exc:
            return self._unsupported(_codec.format_path(path), str(exc).split(": ", 1)[-1])
        return obj

    def _unsupported(self, where: str, why: str) -> Any:
        if not self.options.drop_unsupported:
            raise UnsupportedValueError(
                f"{where}: {why}. Pass --drop-unsupported (Python: drop_unsupported=True) to leave such values "
                "out of the converted file",
                path=where,
            )
        self.dropped.append(f"{where}: {why}")
        return self._DROP


def _tensor_stats(enc: _codec.Encoded) -> tuple[int, int]:
    return len(enc.tensors), sum(t.numel() * t.element_size() for t in enc.tensors.values())


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    drop_unsupported: bool = False,
    overwrite: bool = False,
    as_checkpoint: bool = False,
) -> ConvertReport:
    """Convert a legacy checkpoint or weights file/directory into one torchkeep file at ``dst``.

    See the module docstring for the source kinds. No pickle runs unless ``trust_pickle=True``.
    The write is atomic; ``src`` is never modified. With ``as_checkpoint=True`` a tutorial-style
    dict (``model_state_dict``, ``optimizer_state_dict``, ``epoch``, ...) becomes a training
    checkpoint that :func:`torchkeep.load_checkpoint` restores (see :func:`checkpoint_tree`).

    Raises:
        CheckpointNotFoundError: ``src`` does not exist.
        UnsupportedValueError: ``src`` needs full unpickling and ``trust_pickle`` is False, or a
            value cannot be stored (its path is named) and ``drop_unsupported`` is False.
        CorruptCheckpointError: ``src`` is damaged or of no known kind.
        CheckpointWriteError: ``dst`` exists (pass ``overwrite=True``) or is ``src``, or the write failed.

    Example:
        >>> import torch, tempfile, os, torchkeep as tk
        >>> from torchkeep.convert import convert
        >>> d = tempfile.mkdtemp()
        >>> torch.save({"model": {"w": torch.ones(2)}, "epoch": 4}, os.path.join(d, "old.pt"))
        >>> report = convert(os.path.join(d, "old.pt"), os.path.join(d, "new.safetensors"))
        >>> report.kind, tk.load(os.path.join(d, "new.safetensors"))["epoch"]
        ('torch', 4)
    """
    options = ConvertOptions(trust_pickle=trust_pickle, drop_unsupported=drop_unsupported, overwrite=overwrite)
    src_path, dst_path = Path(src), Path(dst)
    kind = detect_kind(src_path)
    if dst_path.exists() and dst_path.resolve() == src_path.resolve():
        raise CheckpointWriteError(f"{dst_path}: the destination is the source; pick another path", path=str(dst))
    if dst_path.exists() and not overwrite:
        raise CheckpointWriteError(
            f"{dst_path} already exists; pass --force (Python: overwrite=True) to replace it", path=str(dst)
        )
    source = kind.read(src_path, options)
    sanitizer = _Sanitizer(options)
    tree = sanitizer.run(source.tree)
    if tree is _Sanitizer._DROP:
        tree = None
    notes: list[str] = []
    metadata = {**source.metadata, "converted_from": kind.name}
    if as_checkpoint:
        tree, section, notes = checkpoint_tree(tree, str(src_path))
        enc = _codec.encode(tree)
        sections = {_checkpoint.SECTION: section}
    else:
        enc = _codec.encode(tree)
        sections = None
    with atomic_write(dst_path) as f:
        _format.write(f, enc.tensors, tree=enc.tree, metadata=metadata, sections=sections)
    count, nbytes = _tensor_stats(enc)
    report = ConvertReport(
        src=str(src_path),
        dst=str(dst_path),
        kind=kind.name,
        tensors=count,
        tensor_bytes=nbytes,
        notes=source.notes + sanitizer.notes + notes,
        dropped=sanitizer.dropped,
        trusted_pickle=source.trusted_pickle,
    )
    logger.info("converted %s (%s) to %s: %d tensors", src_path, kind.name, dst_path, count)
    return report
