"""The model registry: ``register``, ``migration``, and the recipe each registered model carries.

``@register`` wraps a class's ``__init__`` (or a factory function) so that every instance
remembers how it was built: the registry name and version, the importable location
(``package.module:qualname``) and the bound arguments with defaults filled in. ``save_model``
writes the plain state dict as safetensors tensors and that recipe as the ``torchkeep.model``
header section; ``load_model`` looks the name up in this process's registry, runs the recorded
version's migrations up to the code's version, calls the class or factory with the recorded
arguments and loads the state (both live in :mod:`torchkeep.models._modelfile`).

Nothing named by a file is imported unless the caller passes ``import_module=True``: the
registry is filled by the user's own imports, so loading runs no code the user did not import.

The ``model`` section::

    {"name": "tiny-mlp", "version": 2, "target": "my_pkg.models:TinyMLP", "kind": "class",
     "arguments": <codec tree of {argument name: value}>, "tied": [["a.weight", "b.weight"]]}

Decisions (documented in docs/guide/registry.md):

* The default name is the class's or function's ``__qualname__``. Registering a second object
  under a taken name raises :class:`RegistryError`; registering the *same* location again (a
  module reloaded, a notebook cell re-run) replaces the entry quietly.
* A subclass of a registered class is not registered by inheritance: rebuilding the parent
  with the parent's arguments would silently drop what the subclass adds. Register the
  subclass too (``save_model`` says so).
* Tied weights are stored once per state-dict key (so ``safetensors.torch.load_file`` returns
  the complete state dict) and the groups are listed in ``tied``; the constructor re-ties them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import torch

from ..errors import (
    MigrationError,
    ModelNotRegisteredError,
    RegistryError,
    TorchkeepError,
    UnsupportedValueError,
    UsageError,
)
from ..io import _codec

__all__ = [
    "RegisteredModel",
    "lookup",
    "migrate",
    "migration",
    "model_entry",
    "not_registered",
    "rebuild",
    "register",
    "registered",
    "require_module",
]

logger = logging.getLogger(__name__)

SECTION = "model"
_RECORD_ATTR = "_torchkeep_record"
_WRAPPED_MARK = "__torchkeep_registered__"
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

T = TypeVar("T")
Migration = Callable[[dict[str, Any], dict[str, torch.Tensor]], tuple[Mapping[str, Any], Mapping[str, torch.Tensor]]]


@dataclasses.dataclass(frozen=True)
class RegisteredModel:
    """One registry entry: how to build a model by name.

    Example:
        >>> import torchkeep as tk
        >>> from torchkeep.models._registry import lookup
        >>> @tk.register(name="doc-linear")
        ... def doc_linear(n: int = 2) -> torch.nn.Module:
        ...     return torch.nn.Linear(n, n)
        >>> lookup("doc-linear").kind
        'factory'
    """

    name: str
    version: int
    target: str  # "package.module:qualname"
    kind: str  # "class" or "factory"
    builder: Callable[..., torch.nn.Module]

    @property
    def module(self) -> str:
        """The module that defines (and registers) the class or factory."""
        return self.target.split(":", 1)[0]


@dataclasses.dataclass(frozen=True)
class _Record:
    entry: RegisteredModel
    arguments: dict[str, Any]


_REGISTRY: dict[str, RegisteredModel] = {}
_MIGRATIONS: dict[tuple[str, int], tuple[str, Migration]] = {}


def _target_of(obj: Any) -> str:
    module = obj.__module__
    if module == "__main__":
        # `python -m pkg.train` runs pkg/train.py as __main__; its importable name is in __spec__
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = getattr(spec, "name", None) or module
    return f"{module}:{obj.__qualname__}"


def _check_version(version: Any, what: str) -> int:
    if type(version) is not int or version < 1:
        raise RegistryError(f"{what} must be an int >= 1, got {version!r}")
    return version


# ------------------------------------------------------------------------------------------
# registration


@overload
def register(name: type[T], version: int = 1) -> type[T]: ...
@overload
def register(name: Callable[..., T], version: int = 1) -> Callable[..., T]: ...
@overload
def register(name: str | None = None, version: int = 1) -> Callable[[T], T]: ...


def register(name: Any = None, version: int = 1) -> Any:
    """Register an ``nn.Module`` subclass, or a factory returning one, so files can rebuild it.

    Use as ``@tk.register`` or ``@tk.register(name="tiny-mlp", version=2)``. Every instance
    built afterwards remembers its name, version, location and bound arguments (defaults
    filled in); :func:`save_model` stores them and :func:`load_model` calls the class or factory
    again with them. Arguments are checked when the model is saved: one that the codec cannot
    store (a function, a module, a tensor...) raises :class:`UnsupportedValueError` naming it.

    Third-party models (Hugging Face and others) are registered through a factory that takes
    plain values, e.g. ``def tiny_bert(config: dict) -> BertModel: return BertModel(BertConfig(**config))``.

    Raises:
        RegistryError: the name is taken by another class/factory, the version is not an int
            >= 1, or the decorated object is neither an ``nn.Module`` subclass nor a function.

    Example:
        >>> import torch, torchkeep as tk
        >>> @tk.register(name="doc-mlp", version=1)
        ... class DocMLP(torch.nn.Module):
        ...     def __init__(self, width: int = 4):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(width, width)
        >>> tk.model_entry(DocMLP(width=8))["arguments"]
        {'t': 'dict', 'items': {'width': 8}}
    """
    if name is not None and not isinstance(name, str):
        return register(None, version)(name)  # bare @register
    _check_version(version, "register(version=...)")
    if name is not None and not name.strip():
        raise RegistryError("register(name=...) must be a non-empty string")

    def decorate(obj: Any) -> Any:
        if isinstance(obj, type):
            if not issubclass(obj, torch.nn.Module):
                raise RegistryError(
                    f"@register applies to nn.Module subclasses and factory functions; {obj.__qualname__} "
                    "is a class that is not an nn.Module"
                )
            kind = "class"
        elif inspect.isfunction(obj):
            kind = "factory"
        else:
            raise RegistryError(
                f"@register applies to nn.Module subclasses and factory functions, got {type(obj).__qualname__}"
            )
        entry_name = name if name is not None else obj.__qualname__
        original = getattr(obj, "__wrapped__", obj) if getattr(obj, _WRAPPED_MARK, False) else obj
        target = _target_of(original)
        existing = _REGISTRY.get(entry_name)
        if existing is not None and existing.target != target:
            raise RegistryError(
                f"the model name {entry_name!r} is already registered by {existing.target}; "
                f"{target} cannot take it. Pass a distinct name: @tk.register(name='...')"
            )
        if kind == "class":
            _wrap_init(obj)
            builder: Callable[..., torch.nn.Module] = obj
            result = obj
        else:
            result = builder = _wrap_factory(original)
        entry = RegisteredModel(entry_name, version, target, kind, builder)
        result._torchkeep_entry = entry
        _REGISTRY[entry_name] = entry
        logger.debug("registered %s v%d (%s)", entry_name, version, target)
        return result

    return decorate


def _bind(sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _wrap_init(cls: type[torch.nn.Module]) -> None:
    init = cls.__dict__.get("__init__")
    if init is not None and getattr(init, _WRAPPED_MARK, False):
        return  # registered again (e.g. a second name check): already records
    original = cls.__init__
    sig = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        # Only the class actually being built records: a parent's __init__ reached through
        # super() must not describe a subclass with the parent's arguments.
        if type(self) is cls:
            arguments = _bind(sig, (self, *args), kwargs)
            arguments.pop(next(iter(sig.parameters)))  # self
            self.__dict__[_RECORD_ATTR] = _Record(cls._torchkeep_entry, arguments)  # type: ignore[attr-defined]

    setattr(__init__, _WRAPPED_MARK, True)
    cls.__init__ = __init__  # type: ignore[method-assign]


def _wrap_factory(fn: Callable[..., Any]) -> Any:
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def factory(*args: Any, **kwargs: Any) -> Any:
        model = fn(*args, **kwargs)
        if not isinstance(model, torch.nn.Module):
            raise RegistryError(
                f"the registered factory {_target_of(fn)} returned a {type(model).__qualname__}; "
                "a registered factory must return an nn.Module"
            )
        model.__dict__[_RECORD_ATTR] = _Record(factory._torchkeep_entry, _bind(sig, args, kwargs))  # type: ignore[attr-defined]
        return model

    setattr(factory, _WRAPPED_MARK, True)
    return factory


def migration(name: str | Any, from_version: int) -> Callable[[Migration], Migration]:
    """Register ``fn(config, state_dict) -> (config, state_dict)`` upgrading ``from_version`` by one.

    ``config`` is the dict of recorded constructor/factory arguments. Loading a version-1 file
    into version-3 code runs the 1→2 and 2→3 migrations in order. ``name`` is the registry name
    (or the registered class/factory itself).

    Raises:
        RegistryError: another function already migrates this name from this version.

    Example:
        >>> import torchkeep as tk
        >>> @tk.migration("doc-mlp", from_version=1)
        ... def rename_fc(config, state):
        ...     state = {k.replace("dense.", "fc."): v for k, v in state.items()}
        ...     return config, state
    """
    key_name = _name_of(name)
    _check_version(from_version, "migration(from_version=...)")

    def decorate(fn: Migration) -> Migration:
        target = _target_of(fn)
        existing = _MIGRATIONS.get((key_name, from_version))
        if existing is not None and existing[0] != target:
            raise RegistryError(
                f"{key_name!r} already has a migration from version {from_version} ({existing[0]}); "
                f"{target} cannot be a second one. Merge them into one function."
            )
        _MIGRATIONS[(key_name, from_version)] = (target, fn)
        return fn

    return decorate


def _name_of(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    entry = obj.__dict__.get("_torchkeep_entry") if isinstance(obj, type) else getattr(obj, "_torchkeep_entry", None)
    if isinstance(entry, RegisteredModel):
        return entry.name
    raise RegistryError(f"expected a registry name or a registered class/factory, got {obj!r}")


def lookup(name: str) -> RegisteredModel:
    """The registry entry for ``name``.

    Raises:
        ModelNotRegisteredError: nothing is registered under ``name`` in this process.

    Example:
        >>> import torchkeep as tk
        >>> @tk.register(name="doc-lookup", version=2)
        ... def doc_lookup() -> torch.nn.Module:
        ...     return torch.nn.Identity()
        >>> lookup("doc-lookup").version
        2
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotRegisteredError(
            f"no model named {name!r} is registered in this process; registered: {sorted(_REGISTRY)}",
            name=name,
        ) from None


def registered() -> dict[str, RegisteredModel]:
    """A snapshot of the registry, by name.

    Example:
        >>> isinstance(registered(), dict)
        True
    """
    return dict(_REGISTRY)


def _unregister(name: str) -> None:
    """Forget a name and its migrations (tests only)."""
    _REGISTRY.pop(name, None)
    for key in [k for k in _MIGRATIONS if k[0] == name]:
        del _MIGRATIONS[key]


# ------------------------------------------------------------------------------------------
# the recipe


def _record_of(model: torch.nn.Module) -> _Record | None:
    record = model.__dict__.get(_RECORD_ATTR)
    return record if isinstance(record, _Record) else None


def _encode_arguments(record: _Record) -> Any:
    items: dict[str, Any] = {}
    for arg, value in record.arguments.items():
        try:
            enc = _codec.encode(value)
        except UnsupportedValueError as exc:
            raise UnsupportedValueError(
                f"argument {arg!r} of {record.entry.name} ({record.entry.target}): {exc}. Pass plain values "
                "(numbers, strings, lists, dicts, dataclasses, enums) and build the object inside __init__, "
                "or register a factory that takes plain values",
                path=arg + (exc.path if exc.path != "<root>" else ""),
                value_type=exc.value_type,
            ) from exc
        if enc.tensors:
            raise UnsupportedValueError(
                f"argument {arg!r} of {record.entry.name} ({record.entry.target}) holds a tensor; model files "
                "keep tensors in the state dict only. Register it as a buffer/parameter and pass its shape instead",
                path=arg,
                value_type="Tensor",
            )
        items[arg] = enc.tree
    return {"t": "dict", "items": items}


def model_entry(model: torch.nn.Module) -> dict[str, Any] | None:
    """The JSON-able registry entry of a registered model, or None if it was not built registered.

    Raises:
        UnsupportedValueError: a recorded argument cannot be stored; the message names it.

    Example:
        >>> model_entry(torch.nn.Linear(2, 2)) is None
        True
    """
    record = _record_of(model)
    if record is None:
        return None
    entry = record.entry
    return {
        "name": entry.name,
        "version": entry.version,
        "target": entry.target,
        "kind": entry.kind,
        "arguments": _encode_arguments(record),
    }


def require_module(model: Any, what: str) -> None:
    """Raise :class:`UsageError` unless ``model`` is an ``nn.Module`` (``what`` names the caller).

    Example:
        >>> require_module(torch.nn.Linear(1, 1), "save_model")
    """
    if not isinstance(model, torch.nn.Module):
        raise UsageError(
            f"{what}() takes a torch.nn.Module (the model object), got {type(model).__qualname__}; "
            "for a file, load it first with tk.load_model(path)",
            argument="model",
        )


def not_registered(model: torch.nn.Module) -> ModelNotRegisteredError:
    """The error for saving a model that no registered class or factory built (says what to do)."""
    cls = type(model)
    parents = [c for c in cls.__mro__[1:] if isinstance(c.__dict__.get("_torchkeep_entry"), RegisteredModel)]
    if parents:
        return ModelNotRegisteredError(
            f"{cls.__name__} is a subclass of the registered {parents[0].__name__} but is not "
            "registered itself (rebuilding the parent would lose what the subclass adds); "
            f"decorate {cls.__name__} with @tk.register too",
            name=cls.__qualname__,
            module=cls.__module__,
        )
    return ModelNotRegisteredError(
        f"{cls.__module__}.{cls.__qualname__} is not registered, so a file could not rebuild it; decorate the "
        "class (or a factory that builds it) with @tk.register, or save only its weights with "
        "tk.save(model.state_dict(), path)",
        name=cls.__qualname__,
        module=cls.__module__,
    )


def migrate(
    reg: RegisteredModel, found: int, config: dict[str, Any], state: dict[str, torch.Tensor], path: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run the registered migrations from version ``found`` up to ``reg.version``, one step at a time.

    Raises:
        MigrationError: the file is newer than the code, a step is missing, or a step failed.
    """
    if found > reg.version:
        raise MigrationError(
            f"{path}: the file holds {reg.name!r} version {found}, but this code defines version {reg.version} "
            f"({reg.target}); upgrade the code (or package) that defines {reg.name!r} to load it"
        )
    for v in range(found, reg.version):
        step = _MIGRATIONS.get((reg.name, v))
        if step is None:
            raise MigrationError(
                f"{path}: the file holds {reg.name!r} version {found} and the code is at version {reg.version}, "
                f"but no migration from version {v} to {v + 1} is registered; add "
                f"@tk.migration({reg.name!r}, from_version={v}) def upgrade(config, state_dict): ... "
                "returning (config, state_dict)"
            )
        target, fn = step
        try:
            out = fn(dict(config), dict(state))
        except Exception as exc:
            raise MigrationError(f"{path}: migration {target} ({reg.name!r} v{v}→v{v + 1}) failed: {exc}") from exc
        if not (
            isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping) and isinstance(out[1], Mapping)
        ):
            raise MigrationError(
                f"migration {target} ({reg.name!r} v{v}→v{v + 1}) returned {type(out).__qualname__}; "
                "a migration must return (config: dict, state_dict: dict)"
            )
        config, state = dict(out[0]), dict(out[1])
        logger.info("migrated %s from version %d to %d", reg.name, v, v + 1)
    return config, state


def rebuild(reg: RegisteredModel, config: Mapping[str, Any], *, source: str = "") -> torch.nn.Module:
    """Call a registered class or factory with recorded arguments (names → values).

    Raises:
        RegistryError: the arguments do not fit the current signature (says which ones).

    Example:
        >>> import torchkeep as tk
        >>> @tk.register(name="doc-rebuild")
        ... def doc_rebuild(width: int = 4) -> torch.nn.Module:
        ...     return torch.nn.Linear(width, 1)
        >>> rebuild(lookup("doc-rebuild"), {"width": 2}).in_features
        2
    """
    sig = inspect.signature(reg.builder)
    params = sig.parameters
    unknown = [k for k in config if k not in params]
    where = f"{source}: " if source else ""
    if unknown:
        raise RegistryError(
            f"{where}{reg.target} does not accept argument(s) {unknown} recorded in the file; if its signature "
            f"changed, bump its version and add a @tk.migration({reg.name!r}, ...) that renames or drops them"
        )
    ordered = OrderedDict((k, config[k]) for k in params if k in config)
    bound = inspect.BoundArguments(sig, ordered)
    try:
        sig.bind(*bound.args, **bound.kwargs)
    except TypeError as exc:
        raise RegistryError(
            f"{where}the recorded arguments do not fit {reg.target}{sig}: {exc}; add a @tk.migration that fills them in"
        ) from exc
    try:
        model = reg.builder(*bound.args, **bound.kwargs)
    except TorchkeepError:
        raise
    except Exception as exc:  # the constructor itself failed: say with which recorded arguments
        shown = ", ".join(f"{k}={v!r}" for k, v in ordered.items())
        if len(shown) > 300:
            shown = shown[:300] + "..."
        raise RegistryError(
            f"{where}rebuilding {reg.name!r} failed: {reg.target}({shown}) raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise RegistryError(f"{where}{reg.target} returned {type(model).__qualname__}, not an nn.Module")
    return model
