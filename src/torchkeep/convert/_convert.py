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
import json
import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import _api, _checkpoint
from ..errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    UnsupportedValueError,
    UsageError,
)
from ..io import _codec, _decode, _format
from ..io._storage import atomic_write

__all__ = [
    "CHECKPOINT_OBJECT_KEYS",
    "SAFE_GLOBALS",
    "ConvertOptions",
    "ConvertReport",
    "Source",
    "SourceKind",
    "checkpoint_tree",
    "convert",
    "detect_kind",
    "source_kind",
    "source_kinds",
]

logger = logging.getLogger(__name__)

_MAX_JSON_BYTES = 64 * 1024 * 1024


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


def _is_safetensors_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < path.stat().st_size and head[8:9] == b"{"


def _read_json(path: Path) -> Any:
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise CorruptCheckpointError(f"{path}: larger than {_MAX_JSON_BYTES} bytes, not a config", path=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({exc})", path=str(path)) from None


def _shards(directory: Path) -> list[Path]:
    index_path = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptCheckpointError(f"{index_path}: no weight_map of tensor name -> shard file", path=str(index_path))
    shards = []
    root = directory.resolve()
    for name in sorted(set(weight_map.values())):
        candidate = (directory / name).resolve()
        if (
            os.path.isabs(name)
            or ".." in Path(name).parts
            or not name.endswith(".safetensors")
            or candidate.parent != root
        ):
            raise CorruptCheckpointError(
                f"{index_path}: shard {name!r} is not a .safetensors file inside {directory}; refusing to read it",
                path=str(index_path),
                reason="unsafe shard name",
            )
        if not candidate.is_file():
            raise CheckpointNotFoundError(f"{index_path} names shard {name!r}, which is missing", path=str(candidate))
        shards.append(candidate)
    return shards


def _detect_safetensors_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    )


@source_kind("safetensors-dir", detect=_detect_safetensors_dir)
def _read_safetensors_dir(path: Path, options: ConvertOptions) -> Source:
    state: dict[str, torch.Tensor] = {}
    for shard in _shards(path):
        reader = _format.open_file(shard)
        reader.verify()
        for name in reader.names:
            if name in state:
                raise CorruptCheckpointError(f"{shard}: tensor {name!r} also appears in another shard", path=str(shard))
            state[name] = reader.tensor(name)
    source = Source(tree=state)
    config = path / "config.json"
    if config.is_file():
        source.metadata["config.json"] = json.dumps(_read_json(config), sort_keys=True)
        source.notes.append("config.json kept as the 'config.json' metadata entry")
    else:
        source.notes.append("no config.json in the directory")
    return source


@source_kind("safetensors", detect=_is_safetensors_file)
def _read_safetensors(path: Path, options: ConvertOptions) -> Source:
    return Source(tree=_api.load(path))


# ------------------------------------------------------------------------------------------
# torch.save sources


def _torch_file(path: Path) -> Path | None:
    if path.is_dir():
        candidate = path / "pytorch_model.bin"
        return candidate if candidate.is_file() else None
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(2)
    # a torch.save zip archive, or a legacy (pre-1.6) pickle stream
    return path if zipfile.is_zipfile(path) or head[:1] == b"\x80" else None


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


#: Globals the safe loader may build beyond PyTorch's own list: each is a plain value type with
#: no side effects. ``TorchVersion`` is what ``torch.__version__`` is, and tutorials save it.
SAFE_GLOBALS: tuple[Any, ...] = (torch.torch_version.TorchVersion,)


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=weights_only)  # legacy (non-zip) format


def _sharded_dir(path: Path) -> bool:
    from .. import distributed

    return distributed.is_sharded_checkpoint(path)


@source_kind("torchkeep-sharded", detect=_sharded_dir)
def _read_sharded(path: Path, options: ConvertOptions) -> Source:
    """A ``torchkeep.distributed`` checkpoint (one shard per rank + index.json), gathered whole."""
    from .. import distributed

    index = distributed.read_index(path)
    return Source(
        tree=distributed.load_full(path),
        notes=[f"a sharded checkpoint of {index.world_size} rank(s), gathered into one unsharded state"],
    )


@source_kind("torch", detect=lambda p: _torch_file(p) is not None)
def _read_torch(path: Path, options: ConvertOptions) -> Source:
    file = _torch_file(path)
    assert file is not None
    try:
        return Source(tree=_torch_load(file, weights_only=True))
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_RE.search(str(exc))
        needs = f"it refers to {found.group(1)}" if found else "it holds objects beyond tensors and plain containers"
        if not options.trust_pickle and found is None:
            detail = str(exc).rsplit("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
            raise CorruptCheckpointError(
                f"{file}: torch.load could not read it with the safe loader ({detail}); the file is damaged, or "
                "it needs full unpickling (--trust-pickle, only for files you trust)",
                path=str(file),
            ) from None
        if not options.trust_pickle:
            raise UnsupportedValueError(
                f"{file}: PyTorch's safe loader (weights_only=True) refused it: {needs}. Loading it needs full "
                "unpickling, which runs code named by the file. If you trust where it came from, re-run with "
                "--trust-pickle (Python: convert(..., trust_pickle=True))",
                path=str(file),
                value_type=found.group(1) if found else "",
            ) from None
        logger.warning("%s: unpickling with weights_only=False because trust_pickle=True (%s)", file, needs)
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptCheckpointError(f"{file}: torch.load could not read it ({exc})", path=str(file)) from exc
    try:
        tree = _torch_load(file, weights_only=False)
    except Exception as exc:  # any failure of arbitrary unpickling: say which file and why
        raise CorruptCheckpointError(
            f"{file}: full unpickling failed ({type(exc).__name__}: {exc}); if it names a module, install or "
            "import the code that defines it",
            path=str(file),
        ) from exc
    return Source(tree=tree, notes=[f"unpickled with trust_pickle=True ({needs})"], trusted_pickle=True)


# ------------------------------------------------------------------------------------------
# making a tree storable


class _Sanitizer:
    def __init__(self, options: ConvertOptions) -> None:
        self.options = options
        self.dropped: list[str] = []
        self.notes: list[str] = []

    _DROP = object()

    def value(self, obj: Any, path: tuple[Any, ...]) -> Any:
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


#: ``--as-checkpoint``: the tutorials' key for each object, in order of preference, and its kind.
CHECKPOINT_OBJECT_KEYS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("model", "module", ("model_state_dict", "state_dict", "model")),
    ("optimizer", "optimizer", ("optimizer_state_dict", "optimizer")),
    ("scheduler", "scheduler", ("scheduler_state_dict", "lr_scheduler_state_dict", "scheduler", "lr_scheduler")),
    ("scaler", "scaler", ("scaler_state_dict", "scaler")),
)
_EPOCH_KEYS = ("epoch",)
_STEP_KEYS = ("step", "global_step", "iteration")
_METRIC_WORDS = ("loss", "acc", "metric", "score", "f1", "auc", "ppl", "perplexity", "error")


def _number(v: Any) -> float | int | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype.is_complex:
        v = v.item()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    return None


def checkpoint_tree(tree: Any, src: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A tutorial-style checkpoint dict as ``(tree, checkpoint section, notes)`` for ``load_checkpoint``.

    ``model_state_dict`` (or ``state_dict``/``model``) becomes ``model=``; likewise
    ``optimizer_state_dict`` → ``optimizer=``, ``scheduler_state_dict`` → ``scheduler=``,
    ``scaler_state_dict`` → ``scaler=`` (see :data:`CHECKPOINT_OBJECT_KEYS`). ``epoch`` and
    ``step``/``global_step``/``iteration`` (ints) become the checkpoint's epoch and step. Numbers
    whose key names a metric (``loss``, ``acc``, ``score``, ``f1``, ``auc``, ``ppl``, ``error``,
    ``metric``: ``train_loss``, ``best_acc1``) become metrics. Every other key (``extra_info``,
    ``hyperparams``, ``model_name``, ``pytorch_version``, ...) is kept under its own name in the
    ``extra`` dict, so nothing is lost.

    Raises:
        UsageError: the tree is not a dict, or holds no model state.

    Example:
        >>> import torch
        >>> tree, section, _ = checkpoint_tree({"model_state_dict": {"w": torch.ones(1)}, "epoch": 3,
        ...                                   "extra_info": {"steps": 7}}, "old.pth")
        >>> sorted(tree), section["epoch"], tree["__extra__"]
        (['__extra__', 'model'], 3, {'extra_info': {'steps': 7}})
    """
    if not isinstance(tree, Mapping):
        raise UsageError(
            f"{src}: --as-checkpoint needs a dict such as {{'model_state_dict': ..., 'optimizer_state_dict': ..., "
            f"'epoch': ...}}; this file holds a {type(tree).__name__}. Convert it without --as-checkpoint"
        )
    rest = dict(tree)
    out: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    notes: list[str] = []
    for name, kind, keys in CHECKPOINT_OBJECT_KEYS:
        key = next((k for k in keys if k in rest and isinstance(rest[k], Mapping)), None)
        if key is not None:
            out[name], kinds[name] = rest.pop(key), kind
            notes.append(f"{key!r} -> {name}=")
    if "model" not in out:
        raise UsageError(
            f"{src}: --as-checkpoint found no model state: expected one of the keys "
            f"{', '.join(CHECKPOINT_OBJECT_KEYS[0][2])} holding a state dict; the file has keys {sorted(map(str, rest))}"
        )
    counters: dict[str, int | None] = {"epoch": None, "step": None}
    for field_name, keys in (("epoch", _EPOCH_KEYS), ("step", _STEP_KEYS)):
        for k in keys:
            v = _number(rest.get(k))
            if isinstance(v, int):
                counters[field_name] = v
                rest.pop(k)
                break
    metrics: dict[str, Any] = {}
    for k in list(rest):
        v = _number(rest[k])
        if isinstance(k, str) and v is not None and any(w in k.lower() for w in _METRIC_WORDS):
            metrics[k] = v
            rest.pop(k)
    if metrics:
        notes.append(f"metrics: {', '.join(metrics)}")
    if rest:
        out[_checkpoint.EXTRA_KEY] = rest
        notes.append(f"kept in extra: {', '.join(map(str, rest))}")
    section = _checkpoint.checkpoint_section(
        kinds, epoch=counters["epoch"], step=counters["step"], metrics=metrics, extra=bool(rest), rng=False
    )
    return out, section, notes


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
    tree = sanitizer.value(source.tree, ())
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
