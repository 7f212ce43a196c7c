"""The built-in source kinds of ``torchkeep convert``, tried in this order: a Hugging Face-style
safetensors directory, one safetensors file, a torchkeep sharded directory, anything
``torch.save`` wrote. Each is a ``detect``/``read`` pair registered with :func:`._convert.source_kind`;
importing this module registers them (the package does).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import _api
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedValueError
from ..io import _format
from ._convert import ConvertOptions, Source, source_kind

__all__ = ["SAFE_GLOBALS"]

logger = logging.getLogger(__name__)


_MAX_JSON_BYTES = 64 * 1024 * 1024


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
    from ..checkpoint.layouts import layout_at, local_target

    index = distributed.read_index(path)
    storage, name = local_target(path)
    return Source(
        tree=layout_at(path).load_tree(storage, name),
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
    except Exception as exc:
        # The restricted unpickler only calls allow-listed constructors; whatever they raise when a
        # crafted file feeds them the wrong arguments (TypeError, AttributeError, struct.error, ...)
        # means the file is damaged, not that torchkeep failed.
        raise CorruptCheckpointError(
            f"{file}: torch.load could not read it ({type(exc).__name__}: {exc})", path=str(file)
        ) from exc
    try:
        tree = _torch_load(file, weights_only=False)
    except Exception as exc:  # any failure of arbitrary unpickling: say which file and why
        raise CorruptCheckpointError(
            f"{file}: full unpickling failed ({type(exc).__name__}: {exc}); if it names a module, install or "
            "import the code that defines it",
            path=str(file),
        ) from exc
    return Source(tree=tree, notes=[f"unpickled with trust_pickle=True ({needs})"], trusted_pickle=True)
