"""What a model file (or a training checkpoint) says about its model, read as hostile input.

Which registered model to rebuild (:func:`choose_entry`), its validated entry and decoded
constructor arguments, and its state (only the model's subtree of a checkpoint is decoded and
verified, so optimizer state is never touched). :mod:`._modelfile` rebuilds the model from these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CorruptCheckpointError, MissingObjectError, ModelNotRegisteredError, UsageError
from ..io import _codec, _format
from ..io._format import MapLocation

__all__ = ["choose_entry", "decode_arguments", "state_from", "validated_entry"]


def validated_entry(raw: Any, path: str) -> dict[str, Any]:
    """A file's model entry, checked for the fields a rebuild needs (hostile input).

    Raises:
        CorruptCheckpointError: the entry lacks a name, a version >= 1, a target or arguments.

    Example:
        >>> entry = {"name": "mlp", "version": 1, "target": "models:MLP", "arguments": {}}
        >>> validated_entry(entry, "m.safetensors")["name"]
        'mlp'
    """
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("name"), str)
        or type(raw.get("version")) is not int
        or raw["version"] < 1
        or not isinstance(raw.get("target"), str)
        or "arguments" not in raw
    ):
        raise CorruptCheckpointError(
            f"{path}: the model section is malformed (expected name, version, target, arguments)",
            path=path,
            reason="bad model section",
        )
    return raw


def decode_arguments(entry: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Decode a model entry's constructor arguments (a dict of names; tensors are refused).

    Raises:
        CorruptCheckpointError: the arguments do not decode, refer to a tensor, or are not a dict.

    Example:
        >>> from torchkeep.io import _codec
        >>> decode_arguments({"name": "mlp", "arguments": _codec.encode({"width": 3}).tree}, "m.safetensors")
        {'width': 3}
    """

    def no_tensors(name: str) -> torch.Tensor:
        raise CorruptCheckpointError(f"{path}: model arguments refer to tensor {name!r}", path=path)

    try:
        config = _codec.decode(entry["arguments"], no_tensors)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(
            f"{path}: cannot decode the arguments of model {entry['name']!r}: {exc}",
            path=path,
            reason=exc.reason,
        ) from None
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CorruptCheckpointError(f"{path}: model arguments are not a dict of names", path=path)
    return config


def _pick_checkpoint_object(reader: _format.Reader) -> str:
    """The object a legacy model section (one without ``object``) belongs to."""
    section = reader.section("checkpoint") or {}
    objects = section.get("objects") if isinstance(section, dict) else None
    modules = [k for k, v in objects.items() if v == "module"] if isinstance(objects, dict) else []
    if "model" in modules or not modules:
        return "model"
    return str(modules[0])


def choose_entry(reader: _format.Reader, raw: Any, src: str, wanted: str | None) -> tuple[Any, str | None]:
    """``(model entry, checkpoint object name)``: which registered model of the file to rebuild.

    A model file holds one model (object name None). A checkpoint records the object each
    registered module was saved as; with several, ``wanted`` must say which.

    Raises:
        UsageError: ``wanted`` given for a model file, or not given for several models.
        ModelNotRegisteredError: ``wanted`` was saved as a plain (unregistered) module.
        MissingObjectError: the checkpoint holds no module saved as ``wanted``.

    Example:
        >>> import io, torch
        >>> from torchkeep.io import _format
        >>> buf = io.BytesIO()
        >>> _ = _format.write(buf, {"w": torch.zeros(1)})
        >>> choose_entry(_format.open_file(buf.getvalue()), {"name": "mlp"}, "m.safetensors", None)
        ({'name': 'mlp'}, None)
    """
    if reader.tree is None:  # a save_model file
        if wanted is not None:
            raise UsageError(
                f"{src}: object={wanted!r} picks a model in a training checkpoint; this is a model file "
                "(tk.save_model) holding one model: drop object="
            )
        return raw, None
    section = reader.section("checkpoint") or {}
    many = section.get("models") if isinstance(section, dict) else None
    entries: dict[str, Any] = dict(many) if isinstance(many, dict) else {}
    if not entries:
        object_name = raw.get("object") if isinstance(raw, dict) else None
        entries = {object_name if isinstance(object_name, str) else _pick_checkpoint_object(reader): raw}
    objects = section.get("objects") if isinstance(section, dict) else None
    modules = [k for k, v in objects.items() if v == "module"] if isinstance(objects, dict) else list(entries)
    if wanted is None:
        if len(entries) > 1:
            raise UsageError(
                f"{src}: the checkpoint holds {len(entries)} registered models ({', '.join(entries)}); "
                f"say which to rebuild: tk.load_model(path, object={next(iter(entries))!r})"
            )
        return next(iter(entries.items()))[::-1]
    if wanted in entries:
        return entries[wanted], wanted
    if wanted in modules:
        raise ModelNotRegisteredError(
            f"{src}: {wanted}= was saved as a plain module (its class was not registered), so the file cannot "
            f"rebuild it; registered models in the file: {sorted(entries)}. Build it yourself and load "
            f"tk.load_checkpoint(path, {wanted}=module)",
            name=wanted,
        )
    raise MissingObjectError(
        f"{src}: the checkpoint holds no model saved as {wanted}=; its models: {modules}",
        name=wanted,
        available=modules,
    )


def state_from(
    reader: _format.Reader, path: str, map_location: MapLocation, verify: bool, name: str | None
) -> dict[str, torch.Tensor]:
    """The model's state dict: all tensors of a model file, or object ``name`` of a checkpoint.

    Raises:
        MissingObjectError: the checkpoint holds no state saved under ``name``.
        CorruptCheckpointError: that state is not a dict of tensors, or a checksum fails.

    Example:
        >>> import io, torch
        >>> from torchkeep.io import _format
        >>> buf = io.BytesIO()
        >>> _ = _format.write(buf, {"w": torch.zeros(1)})
        >>> sorted(state_from(_format.open_file(buf.getvalue()), "m.safetensors", None, True, None))
        ['w']
    """
    if reader.tree is None or name is None:  # a save_model file: tensors are the state dict
        if verify:
            reader.verify()
        return {name: reader.tensor(name, map_location) for name in reader.names}
    # a training checkpoint: decode only the model's subtree
    items = reader.tree.get("items") if isinstance(reader.tree, dict) else None
    if not isinstance(items, dict) or name not in items:
        raise MissingObjectError(
            f"{path}: the checkpoint has a model entry but no {name!r} state", name=name, available=list(items or {})
        )
    node = items[name]
    if verify:
        reader.verify(sorted(_codec.tensor_names(node)))
    state = _codec.decode(node, lambda n: reader.tensor(n, map_location))
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"{path}: the {name!r} state is not a dict of tensors", path=path)
    return dict(state)
