"""Whole-model files: ``save_model`` and ``load_model``.

A model file is a safetensors file whose tensors are the plain ``state_dict()`` keys and whose
``torchkeep.model`` header section is the registry entry (see :mod:`torchkeep.models._registry`). Tied
weights are written once per key, so ``safetensors.torch.load_file`` returns the complete state
dict; the groups are listed under ``tied`` and the rebuilt model's constructor re-ties them (a
warning says so when it does not).

``load_model`` also reads training checkpoints that hold a registered model: the model's subtree
of the checkpoint tree is decoded (and verified) alone, so optimizer state is never touched.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch

from ..checkpoint._restore import compare_state
from ..errors import (
    MissingObjectError,
    ModelNotRegisteredError,
    StateMismatchError,
    UnsupportedValueError,
)
from ..io import _codec, _format
from ..io._format import MapLocation
from ..io._storage import atomic_write
from ._adopt import adopt_state
from ._audit import check_before_save
from ._entry import choose_entry, decode_arguments, state_from, validated_entry
from ._examples import EXAMPLES_SECTION, describe_examples
from ._families import family_entry, family_of
from ._rebuild import migrate, rebuild
from ._registry import (
    MODULE_RE,
    SECTION,
    RegisteredModel,
    model_entry,
    not_registered,
    registered,
    require_module,
)

__all__ = ["load_model", "save_model"]

logger = logging.getLogger(__name__)
_LAZY = (torch.nn.parameter.UninitializedParameter, torch.nn.parameter.UninitializedBuffer)


def _tied_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key, t in state.items():
        if t.numel() == 0:
            continue
        ident = (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        groups.setdefault(ident, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    strict: bool = False,
    example_inputs: Any = None,
) -> None:
    """Save a registered model as a safetensors file that can rebuild it with :func:`load_model`.

    The tensors are the plain ``state_dict()`` keys (``safetensors.torch.load_file`` returns the
    state dict; tied weights are written once per key), and the header holds the registry name,
    version, location and arguments. Wrapped models (DataParallel, DDP, ``torch.compile``) are
    saved unwrapped. The write is atomic.

    The model is audited first (:func:`torchkeep.audit`'s attribute checks): a tensor kept
    outside the state dict (the ``register_buffer`` trap) would be lost, so it is a
    ``UserWarning`` naming it, or with ``strict=True`` an :class:`UnsupportedValueError` and
    nothing is written.

    ``example_inputs`` (a tensor, a tuple/list of tensors or a dict name → tensor, as
    ``tk.export`` takes them) is recorded as shapes, dtypes and value ranges — not the values —
    so ``torchkeep export``/``serve``/``bench`` need no ``--input-shape`` for this file (see
    :func:`torchkeep.models._examples.example_inputs_of`).

    Raises:
        ModelNotRegisteredError: the model's class (or factory) is not registered.
        UsageError: ``model`` is not an ``nn.Module``.
        UnsupportedValueError: a constructor argument (named) or a state-dict value cannot be stored.
        CheckpointWriteError: the write failed; an earlier file at ``path`` is unchanged.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> @tk.register(name="doc-head")
        ... class DocHead(torch.nn.Module):
        ...     def __init__(self, n: int):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(n, 1)
        >>> path = os.path.join(tempfile.mkdtemp(), "head.safetensors")
        >>> tk.save_model(DocHead(3), path)
        >>> tk.load_model(path).fc.in_features
        3
    """
    from ..checkpoint._state import unwrap_model

    require_module(model, "save_model")
    model = unwrap_model(model)
    entry = model_entry(model)
    if entry is None:
        entry = family_entry(model)  # e.g. a transformers PreTrainedModel: rebuilt from its config
    if entry is None:
        raise not_registered(model)
    state = model.state_dict()
    for key, value in state.items():
        if isinstance(value, _LAZY):
            raise UnsupportedValueError(
                f"state_dict()[{key!r}] is an uninitialized lazy parameter; run one forward pass with a real "
                "input (to fix the lazy modules' shapes) before saving",
                path=key,
                value_type=type(value).__qualname__,
            )
        if not isinstance(value, torch.Tensor):
            raise UnsupportedValueError(
                f"state_dict()[{key!r}] is a {type(value).__qualname__} (extra state), which a model file cannot "
                "hold; keep extra state in a buffer, or save a checkpoint with tk.save_checkpoint",
                path=key,
                value_type=type(value).__qualname__,
            )
    _codec.encode(dict(state))  # the codec's checks: dense, non-meta, plain tensors (names the key)
    check_before_save(model, "model", strict)  # after the checks above: they are errors always
    tied = _tied_groups(state)
    if tied:
        entry["tied"] = tied
    sections: dict[str, Any] = {SECTION: entry}
    if example_inputs is not None:
        sections[EXAMPLES_SECTION] = describe_examples(example_inputs)
    with atomic_write(path) as f:
        _format.write(f, state, sections=sections, metadata=metadata)


# ------------------------------------------------------------------------------------------
# loading


def _import_for(entry: Mapping[str, Any], path: str) -> None:
    module = str(entry.get("target", "")).split(":", 1)[0]
    if module == "__main__" or not MODULE_RE.match(module):
        where = f"{path}: the model {entry.get('name')!r} was registered in {module!r}, which cannot be imported"
        raise ModelNotRegisteredError(
            f"{where}; define and register it in an importable module, or register it in this process before loading",
            name=str(entry.get("name")),
            module=module,
            cli_message=f"{where}; move the class into a module (e.g. models.py) and pass --import models",
        )
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ModelNotRegisteredError(
            f"{path}: import_module=True could not import {module!r} ({exc}); install or add it to "
            "sys.path, or import the module that registers the model yourself",
            name=str(entry.get("name")),
            module=module,
            cli_message=f"{path}: could not import {module!r} ({exc}); run from the directory that holds it, "
            f"or pass --import MODULE naming the module that registers {entry.get('name')!r}",
        ) from exc


def _resolve(entry: Mapping[str, Any], path: str, import_module: bool) -> RegisteredModel:
    name = entry["name"]
    found = registered().get(name)
    if found is None and import_module:
        _import_for(entry, path)
        found = registered().get(name)
    if found is not None:
        return found
    module = str(entry.get("target", "")).split(":", 1)[0]
    if import_module:
        raise ModelNotRegisteredError(
            f"{path}: imported {module!r}, but it registers no model named {name!r}; registered: {sorted(registered())}",
            name=name,
            module=module,
        )
    facts = (
        f"{path}: the file holds model {name!r} (version {entry.get('version')}, built by {entry.get('target')}), "
        "which is not registered in this process."
    )
    if module == "__main__":
        cli_advice = (
            " It was registered in a script (__main__), which no other process can import: move the class "
            "into a module (e.g. models.py), save again, and pass --import models"
        )
    else:
        cli_advice = f" Pass --import {module} (the module that registers it; run from the directory that holds it)"
    raise ModelNotRegisteredError(
        f"{facts} `import {module}` before loading, or pass "
        "import_module=True to let torchkeep import it (that runs the module's code)",
        name=name,
        module=module,
        cli_message=facts + cli_advice,
    )


def _import_argument_classes(tree: Any) -> None:
    # Only with import_module=True: dataclass/enum arguments (e.g. a config class) are resolved by
    # the codec from modules already imported; opting in imports those modules as well.
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("t") in ("dataclass", "enum") and isinstance(node.get("cls"), str):
                module = node["cls"].split(":", 1)[0]
                if MODULE_RE.match(module) and module not in sys.modules:
                    try:
                        importlib.import_module(module)
                    except ImportError:
                        logger.debug("could not import %s for an argument class", module)
            stack.extend(node.values())


def _load_state(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], reg: RegisteredModel, strict: bool, path: str
) -> None:
    diff = compare_state(model.state_dict(), state, any_shape=_LAZY)  # lazy modules take their shape from the file
    if strict and diff:
        raise diff.error(
            f"{path}: the rebuilt {reg.name!r} (version {reg.version}) does not match the file's state",
            source="file",
            hint="If the class changed after the file was written, bump its version and add a @tk.migration; "
            "or pass strict=False to load what fits",
        )
    skip = {k for k, _, _ in diff.mismatched} | {k for k, _ in diff.invalid}
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)


def _target_device(state: Mapping[str, torch.Tensor]) -> torch.device:
    devices = {t.device for t in state.values()}
    if len(devices) > 1:
        logger.warning(
            "map_location spreads the state over %s; the model goes to the first one", sorted(map(str, devices))
        )
    return next(iter(state.values())).device if state else torch.device("cpu")


def load_model(
    path: str | os.PathLike[str],
    *,
    map_location: MapLocation = None,
    strict: bool = True,
    import_module: bool = False,
    verify: bool = True,
    object: str | None = None,
) -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_model` (or held in a training checkpoint), in eval mode.

    A training checkpoint may hold several registered models (``save_checkpoint(generator=g,
    discriminator=d)``): ``object="generator"`` picks one by the keyword it was saved under; with
    more than one and no ``object``, it is an error (rebuilding "the first" silently could hand
    back the wrong network).

    The class or factory is found by its registry name in this process; nothing named by the
    file is imported unless ``import_module=True`` (which imports the recorded module, and the
    modules of dataclass/enum constructor arguments not yet imported — that runs their code, so
    only for files you trust). Older versions are upgraded through the registered
    migrations. The model ends up on the device ``map_location`` sends the weights to (CPU by
    default; same forms as :func:`torchkeep.load`).

    Raises:
        ModelNotRegisteredError: the name is not registered; the message names the module to import.
        MigrationError: the file is newer than the code, or a migration step is missing.
        StateMismatchError: with ``strict=True``, keys or shapes differ (listed).
        MissingObjectError: the file holds no model entry (a plain state dict), or no ``object``.
        UsageError: the checkpoint holds several registered models and ``object`` is not given.
        CorruptCheckpointError: the file or its model section is damaged.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> @tk.register(name="doc-tiny")
        ... def doc_tiny(width: int = 2) -> torch.nn.Module:
        ...     return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU())
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.safetensors")
        >>> tk.save_model(doc_tiny(width=3), path)
        >>> model = tk.load_model(path, map_location="cpu")
        >>> model.training, model[0].in_features
        (False, 3)
    """
    src = os.fspath(path)
    reader = _format.open_file(src)
    raw = reader.section(SECTION)
    if raw is None:
        raise MissingObjectError(
            f"{src}: the file holds no model entry (it was not written by tk.save_model or from a registered "
            "model); build the model yourself and call model.load_state_dict(tk.load(path))",
            name=SECTION,
        )
    chosen, object_name = choose_entry(reader, raw, src, object)
    entry = validated_entry(chosen, src)
    if isinstance(entry.get("family"), str):
        family = family_of(entry["family"], src)
        state = state_from(reader, src, map_location, verify, object_name)
        return family.build(entry, state, src, strict).eval()
    reg = _resolve(entry, src, import_module)
    if import_module:
        _import_argument_classes(entry["arguments"])
    config = decode_arguments(entry, src)
    state = state_from(reader, src, map_location, verify, object_name)
    config, state = migrate(reg, entry["version"], config, state, src)
    model = _build_on_meta(reg, config, state, src, strict=strict)
    if model is not None:
        model = adopt_state(model, state, src)
    if model is None:
        model = rebuild(reg, config, source=src)
        model.to(_target_device(state))
        _load_state(model, state, reg, strict, src)
    _check_ties(model, entry, src)
    return model.eval()


#: How many bytes of parameters and buffers a rebuilt model may hold beyond the tensor bytes its
#: file supplies (what ``strict=False`` initializes itself, non-persistent buffers). Constructor
#: arguments come from the file: without a bound, a few bytes of JSON could ask for terabytes.
MAX_UNSUPPLIED_BYTES = 1 << 30


def _nbytes(tensors: Any) -> int:
    # Lazy parameters have no size yet: the file gives them theirs.
    return sum(
        t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor) and not isinstance(t, _LAZY)
    )


def _build_on_meta(
    reg: RegisteredModel, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], src: str, *, strict: bool
) -> torch.nn.Module | None:
    """Build on the meta device (no weight initialization, no memory), or None if that is unsafe.

    Skipping initialization is only correct when the file supplies *every* tensor the model
    holds, with the same shapes and dtypes. Anything else — a constructor that fails on meta
    tensors, non-persistent buffers, tensors outside the state dict, lazy parameters, keys,
    shapes or dtypes that differ from the file — returns None and the caller builds the model
    normally (running its initialization) and copies the state in.

    The meta build also sizes the model before any memory is spent on it: a model that cannot
    take the file's state (``strict=True``) or that would hold more than the file's tensors plus
    :data:`MAX_UNSUPPLIED_BYTES` raises :class:`StateMismatchError` here, never allocated.
    """
    from ._audit import holds_unsaved_tensors

    try:
        with torch.device("meta"):
            model = rebuild(reg, config, source=src)
    except Exception as exc:  # any constructor that needs real data: build normally instead
        logger.debug("%s: meta build of %s failed (%s); building normally", src, reg.name, exc)
        return None
    diff = compare_state(model.state_dict(), state, any_shape=_LAZY)
    if strict and diff:
        raise diff.error(
            f"{src}: the {reg.name!r} (version {reg.version}) built from the file's arguments does not match "
            "the file's state",
            source="file",
            hint="If the class changed after the file was written, bump its version and add a @tk.migration; "
            "or pass strict=False to load what fits",
        )
    supplied = _nbytes(state.values())
    needed = _nbytes(model.parameters()) + _nbytes(model.buffers())
    if needed > supplied + MAX_UNSUPPLIED_BYTES:
        raise StateMismatchError(
            f"{src}: the file's arguments build a {reg.name!r} of {needed:,} bytes of parameters and buffers, "
            f"but the file holds {supplied:,} bytes of tensors; torchkeep builds at most "
            f"{MAX_UNSUPPLIED_BYTES:,} bytes more than a file supplies (MAX_UNSUPPLIED_BYTES). The arguments "
            "are damaged or crafted; build the model yourself and load_state_dict(tk.load(path)) if they are not"
        )
    own = model.state_dict(keep_vars=True)
    if set(own) != set(state) or holds_unsaved_tensors(model):
        return None
    for k, t in own.items():
        if isinstance(t, _LAZY) or not isinstance(t, torch.Tensor) or t.device.type != "meta":
            return None
        if t.shape != state[k].shape or t.dtype != state[k].dtype:
            return None
    return model


def _check_ties(model: torch.nn.Module, entry: Mapping[str, Any], path: str) -> None:
    tied = entry.get("tied")
    if not isinstance(tied, list):
        return
    state = model.state_dict()
    live = {frozenset(g) for g in _tied_groups(state)}
    for group in tied:
        if not (isinstance(group, list) and all(isinstance(k, str) for k in group)):
            continue  # a damaged or hostile hint: it only ever feeds this warning
        if all(k in state for k in group) and not any(set(group) <= g for g in live):
            logger.warning(
                "%s: %s were tied when saved but the rebuilt model does not tie them; tie them in the constructor",
                path,
                ", ".join(map(str, group)),
            )
