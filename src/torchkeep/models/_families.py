"""Model families: whole-model files for models that rebuild from their own config, unregistered.

``tk.save_model`` needs to know how to rebuild a model. Registered classes record their
constructor arguments (:mod:`torchkeep.models._registry`); a *family* is the other way in: a framework
whose models already carry a complete, JSON-able description of themselves (a Hugging Face
``PreTrainedModel`` and its ``config``). A family is a small adapter with two methods, registered
by the integration that implements it:

- ``entry(model)`` returns the JSON-able description (``{"class": ..., "config": ...}``) of a
  model of this family, or None for any other model;
- ``build(entry, state, source, strict)`` rebuilds the model from that description and loads
  ``state`` into it. It must resolve classes by name inside its framework only, never by
  importing a module the file names.

The families torchkeep ships are known here by name, with the framework module a model of that
family needs and torchkeep's own adapter module: when such a framework is imported (saving) or
a file names the family (loading), the adapter is imported — always a fixed torchkeep module,
never one read from the file. ``import torchkeep`` imports no framework.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from ..errors import ModelNotRegisteredError

__all__ = ["ModelFamily", "family_entry", "family_of", "register_family"]

#: family name -> (framework module a member needs, torchkeep adapter module that registers it)
KNOWN = {"transformers": ("transformers", "torchkeep.integrations.transformers")}

_FAMILIES: dict[str, ModelFamily] = {}


class ModelFamily(Protocol):
    """What a family adapter implements (see the module docstring)."""

    name: str

    def entry(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """The JSON-able description of ``model``, or None when it is not of this family."""

    def build(
        self, entry: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str, strict: bool
    ) -> torch.nn.Module:
        """Rebuild the model described by ``entry`` and load ``state`` into it."""


def register_family(family: ModelFamily) -> None:
    """Make ``family`` known to ``tk.save_model`` / ``tk.load_model`` (adapters call this on import).

    Example:
        >>> class Nothing:
        ...     name = "doc-nothing"
        ...     def entry(self, model): return None
        ...     def build(self, entry, state, source, strict): raise NotImplementedError
        >>> register_family(Nothing())
        >>> family_of("doc-nothing", "f").name
        'doc-nothing'
    """
    _FAMILIES[family.name] = family


def family_entry(model: torch.nn.Module) -> dict[str, Any] | None:
    """The model-section entry of an unregistered model that a family recognises, else None.

    Example:
        >>> family_entry(torch.nn.Linear(2, 2)) is None
        True
    """
    for name, (framework, adapter) in KNOWN.items():
        if name not in _FAMILIES and framework in sys.modules:  # only then can a model be a member
            importlib.import_module(adapter)
    for family in list(_FAMILIES.values()):
        described = family.entry(model)
        if described is not None:
            cls = str(described.get("class", type(model).__name__))
            return {
                "name": f"{family.name}:{cls}",
                "version": 1,
                "target": f"{family.name}:{cls}",
                "kind": "family",
                "family": family.name,
                "arguments": {"t": "dict", "items": {}},
                **described,
            }
    return None


def family_of(name: str, source: str) -> ModelFamily:
    """The family a file names, importing torchkeep's own adapter for a known family.

    Raises:
        ModelNotRegisteredError: no such family in this process (the message says what to install).

    Example:
        >>> family_of("no-such-family", "model.safetensors")
        Traceback (most recent call last):
        ...
        torchkeep.errors.ModelNotRegisteredError: model.safetensors: the model was saved as a member of the model family 'no-such-family', which this process does not know; known: ...
    """
    if name not in _FAMILIES and name in KNOWN:
        framework, adapter = KNOWN[name]
        try:
            importlib.import_module(adapter)
        except ImportError as exc:
            raise ModelNotRegisteredError(
                f"{source}: the model is a {name} model; loading it needs {framework} "
                f"(pip install 'torchkeep[{name}]'): {exc}",
                name=name,
                module=framework,
            ) from exc
    family = _FAMILIES.get(name)
    if family is None:
        raise ModelNotRegisteredError(
            f"{source}: the model was saved as a member of the model family {name!r}, which this process does "
            f"not know; known: {sorted(set(KNOWN) | set(_FAMILIES))}",
            name=name,
            module="",
        )
    return family
