"""Find the tensors a state dict loses (:mod:`._roundtrip` proves a model survives save + load).

``state_dict()`` holds parameters, persistent buffers and the state of registered submodules.
Everything else a module holds is silently dropped on save and comes back from ``__init__``
(often as fresh random values) on load. :func:`audit` walks every registered submodule's
attributes and reports:

``tensor-attribute``       ``self.my_embed = torch.randn(...)`` instead of ``register_buffer``
``tensor-in-container``    tensors (or parameters) in plain lists / dicts / tuples / sets
``module-in-container``    modules in plain lists / dicts instead of ModuleList / ModuleDict
``non-persistent-buffer``  ``register_buffer(..., persistent=False)`` buffers that forward()
                           reads and whose value a fresh build would not reproduce

Aliases are not findings: a tensor that shares storage with something in the state dict (the
``_flat_weights`` of an LSTM, a cached view of a weight) and a module also registered
elsewhere are restored by ``load_state_dict`` itself.

For non-persistent buffers the check is cheap and honest about its limits: a registered model is
built twice more (under a forked RNG) and a buffer is reported only if the fresh builds disagree
with each other (random init) or with the model's current value (changed since construction). An
unregistered model cannot be rebuilt, so its non-persistent buffers are reported when the class's
methods (other than ``__init__``) read ``self.<name>``, with severity ``"warning"``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoint._state import add_save_check
from ..errors import UnsupportedValueError

__all__ = [
    "MAIN_WARNING",
    "SAVE_WARNING",
    "Finding",
    "audit",
    "check_before_save",
    "eval_mode",
    "holds_unsaved_tensors",
]

logger = logging.getLogger(__name__)

_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"_torchkeep_record"}
_MAX_DEPTH = 6
_LAZY = (torch.nn.parameter.UninitializedParameter, torch.nn.parameter.UninitializedBuffer)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing that ``state_dict()`` will not keep.

    Attributes:
        kind: ``tensor-attribute``, ``tensor-in-container``, ``module-in-container`` or
            ``non-persistent-buffer``.
        path: where it lives, from the root model (``encoder.my_embed``, ``blocks[0]``).
        detail: what was found and what happens to it on save/load.
        fix: the change that keeps it.
        severity: ``"error"`` (it is lost) or ``"warning"`` (it may be lost).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> m.scale = torch.ones(2)
        >>> [f.kind for f in audit(m)]
        ['tensor-attribute']
    """

    kind: str
    path: str
    detail: str
    fix: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.detail} Fix: {self.fix}"


def _describe(t: torch.Tensor) -> str:
    kind = "parameter" if isinstance(t, nn.Parameter) else "tensor"
    return f"{kind} {str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def _storage_key(t: Any) -> tuple[str, int] | None:
    if not isinstance(t, torch.Tensor) or isinstance(t, _LAZY):
        return None
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (str(t.device), t.untyped_storage().data_ptr())


def _numel(module: nn.Module) -> int:
    return sum(
        t.numel() for t in module.state_dict().values() if isinstance(t, torch.Tensor) and not isinstance(t, _LAZY)
    )


def _derived_attributes(module: nn.Module) -> set[str]:
    """Attributes that a forward pre-hook recomputes from saved parameters (old-style
    ``spectral_norm`` / ``weight_norm`` keep ``weight`` as a plain tensor derived from
    ``weight_orig`` / ``weight_g`` + ``weight_v``)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return {
        hook.name
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, (SpectralNorm, WeightNorm)) and isinstance(hook.name, str)
    }


class _Walker:
    def __init__(self, model: nn.Module) -> None:
        self.findings: list[Finding] = []
        self.module_ids = {id(m) for m in model.modules()}
        self.saved = {k for t in model.state_dict(keep_vars=True).values() if (k := _storage_key(t)) is not None}
        self._seen: set[int] = set()

    def attribute(self, path: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if _storage_key(value) not in self.saved:
                self.findings.append(
                    Finding(
                        "tensor-attribute",
                        path,
                        f"{_describe(value)} held as a plain attribute; state_dict() does not include it, so a "
                        "saved file loses it and a rebuilt model gets whatever __init__ makes (new random values, "
                        "or nothing). It also stays behind on model.to(device).",
                        f"self.register_buffer({path.rsplit('.', 1)[-1]!r}, tensor) in __init__ "
                        "(or wrap it in nn.Parameter if it should train)",
                    )
                )
            return
        if isinstance(value, nn.Module):
            if id(value) not in self.module_ids:
                self._module(path, value, container="an attribute outside _modules")
            return
        self.container(path, value, 0)

    def container(self, path: str, value: Any, depth: int) -> None:
        if depth >= _MAX_DEPTH or id(value) in self._seen:
            return
        items: Iterator[tuple[str, Any]]
        if isinstance(value, (list, tuple, collections.deque)):
            items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
            name = "list" if isinstance(value, (list, collections.deque)) else "tuple"
        elif isinstance(value, Mapping):
            items = ((f"{path}[{k!r}]", v) for k, v in value.items())
            name = "dict"
        elif isinstance(value, (set, frozenset)):
            items = ((f"{path}{{...}}", v) for v in value)
            name = "set"
        else:
            return
        self._seen.add(id(value))
        for sub_path, v in items:
            if isinstance(v, torch.Tensor):
                if _storage_key(v) not in self.saved:
                    holder = "nn.ParameterList / nn.ParameterDict" if isinstance(v, nn.Parameter) else "buffers"
                    self.findings.append(
                        Finding(
                            "tensor-in-container",
                            sub_path,
                            f"{_describe(v)} inside a plain {name}; state_dict() does not look inside plain "
                            "containers, so it is lost on save.",
                            f"hold it in {holder} (register_buffer for each tensor, or stack them into one buffer)",
                        )
                    )
            elif isinstance(v, nn.Module):
                if id(v) not in self.module_ids:
                    self._module(sub_path, v, container=f"a plain {name}")
            else:
                self.container(sub_path, v, depth + 1)

    def _module(self, path: str, module: nn.Module, *, container: str) -> None:
        n = _numel(module)
        fix = "use nn.ModuleDict({...})" if "dict" in container else "use nn.ModuleList([...])"
        if "attribute" in container:
            fix = "assign it normally (self.name = module) so nn.Module registers it"
        self.findings.append(
            Finding(
                "module-in-container",
                path,
                f"{type(module).__name__} with {n} state values held in {container}; nn.Module does not register "
                "it, so its weights are missing from state_dict(), parameters() and model.to(device).",
                fix,
            )
        )


def _reads_attribute(cls: type, name: str) -> bool:
    """Whether a method of ``cls`` (other than ``__init__``) mentions ``self.<name>``."""
    pattern = re.compile(rf"\bself\.{re.escape(name)}\b")
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        for attr, fn in vars(klass).items():
            if attr == "__init__" or not inspect.isfunction(fn):
                continue
            try:
                source = inspect.getsource(fn)
            except (OSError, TypeError):
                return True  # no source: cannot rule it out
            if pattern.search(source):
                return True
    return False


def _fresh_builds(model: nn.Module) -> list[nn.Module] | None:
    from ._rebuild import rebuild
    from ._registry import record_of

    record = record_of(model)
    if record is None:
        return None
    builds = []
    try:
        with torch.random.fork_rng(devices=[]):
            for seed in (1234567, 7654321):
                torch.manual_seed(seed)
                builds.append(rebuild(record.entry, record.arguments))
    except Exception as exc:  # a model that cannot be rebuilt here falls back to the static check
        logger.debug("audit: could not rebuild %s: %s", record.entry.name, exc)
        return None
    return builds


def _non_persistent(model: nn.Module, findings: list[Finding]) -> None:
    buffers = [
        (prefix, module, name)
        for prefix, module in model.named_modules()
        for name in sorted(module._non_persistent_buffers_set)
        if module._buffers.get(name) is not None
    ]
    if not buffers:
        return
    fresh = _fresh_builds(model)
    for prefix, module, name in buffers:
        path = f"{prefix}.{name}" if prefix else name
        value = module._buffers[name]
        assert value is not None
        fix = f"register_buffer({name!r}, tensor) without persistent=False, so files keep its value"
        if fresh is not None:
            copies = [dict(f.named_buffers(remove_duplicate=False)).get(path) for f in fresh]
            if all(c is not None for c in copies):
                a, b = (c.detach().cpu() for c in copies)  # type: ignore[union-attr]
                cur = value.detach().cpu()
                if torch.equal(a, b) and a.shape == cur.shape and torch.equal(a, cur):
                    continue  # deterministic and unchanged: __init__ rebuilds it exactly
                why = "differs between fresh builds (random)" if not torch.equal(a, b) else "changed since __init__"
                findings.append(
                    Finding(
                        "non-persistent-buffer",
                        path,
                        f"non-persistent buffer ({_describe(value)}) whose value {why}; files do not keep "
                        "it, so a loaded model computes with a different value.",
                        fix,
                    )
                )
                continue
        if _reads_attribute(type(module), name):
            findings.append(
                Finding(
                    "non-persistent-buffer",
                    path,
                    f"non-persistent buffer ({_describe(value)}) that {type(module).__name__} reads; files do not "
                    "keep it, which is only safe if __init__ always recomputes the same value (register the "
                    "model with @tk.register and audit checks that).",
                    fix,
                    severity="warning",
                )
            )


def holds_unsaved_tensors(model: nn.Module) -> bool:
    """Whether ``model`` holds any tensor or module outside its state dict (including
    non-persistent buffers and aliases: a conservative check used before skipping weight init).
    """
    if any(m._non_persistent_buffers_set for m in model.modules()):
        return True
    walker = _Walker(model)
    for prefix, module in model.named_modules():
        derived = _derived_attributes(module)
        for attr, value in vars(module).items():
            if attr not in _MODULE_INTERNALS and attr not in derived:
                walker.attribute(f"{prefix}.{attr}" if prefix else attr, value)
    return bool(walker.findings)


def _attribute_findings(model: nn.Module) -> list[Finding]:
    walker = _Walker(model)
    for prefix, module in model.named_modules():
        derived = _derived_attributes(module)
        for attr, value in vars(module).items():
            if attr in _MODULE_INTERNALS or attr in derived:
                continue
            walker.attribute(f"{prefix}.{attr}" if prefix else attr, value)
    return walker.findings


#: What the save-time audit warning says (a filter can match it: ``-W "ignore:holds state"``).
SAVE_WARNING = "holds state that its state_dict, and so the saved file, does not"


#: What the save-time warning about classes defined in a script says.
MAIN_WARNING = "is registered from __main__"


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside torchkeep: saves reach the audit at different depths."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _warn_if_main(model: nn.Module) -> None:
    from ._registry import model_entry

    entry = model_entry(model)
    if entry is None or not str(entry.get("target", "")).startswith("__main__:"):
        return
    target = str(entry["target"])
    cls = target.split(":", 1)[1]
    warnings.warn(
        f"{cls} ({entry.get('name')!r}) {MAIN_WARNING} (the script being run): the file records where the "
        f"class lives, and no other process can import a script's __main__, so tk.load_model works only "
        f"in this process. Move {cls} into a module (e.g. models.py), use `from models import {cls}`, "
        "and load elsewhere after `import models` (CLI: --import models)",
        UserWarning,
        stacklevel=_caller_stacklevel(),
    )


def check_before_save(model: nn.Module, name: str, strict: bool) -> None:
    """Warn (``strict=True``: raise) when a model about to be saved holds state its file would lose.

    Only the attribute checks of :func:`audit` run here (cheap: no rebuild); ``tk.audit`` also
    checks non-persistent buffers. Called by ``save_model``, ``save_checkpoint`` and the manager.
    A class registered from ``__main__`` (a script) is a warning too: no other process can import
    it, so the file would load only where it was written. Warnings point at the first line outside
    torchkeep (the user's save call).

    Raises:
        UnsupportedValueError: with ``strict=True``, the model holds such state (each is listed).

    Example:
        >>> import torch, warnings
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed = torch.randn(2)  # should be register_buffer("embed", ...)
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     check_before_save(Net(), "model", strict=False)
        >>> "model.embed" in str(w[0].message)
        True
    """
    _warn_if_main(model)
    try:
        findings = _attribute_findings(model)
    except Exception as exc:  # a tensor kind the walk cannot inspect (sparse...): never block the save
        logger.debug("save-time audit of %s skipped: %s", type(model).__qualname__, exc)
        return
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return
    listed = "; ".join(f"{name}.{f.path}: {f.detail} Fix: {f.fix}" for f in errors)
    message = f"{name}= ({type(model).__qualname__}) {SAVE_WARNING}: {listed}"
    if strict:
        raise UnsupportedValueError(message + " (strict=True: nothing was written)", path=name)
    warnings.warn(message + " (pass strict=True to make this an error)", UserWarning, stacklevel=_caller_stacklevel())


# Checkpoints (the layer below) audit every module they save through this hook.
add_save_check(check_before_save)


def audit(model: nn.Module) -> list[Finding]:
    """List the tensors and modules that ``state_dict()`` (and so every saved file) would lose.

    Walks every registered submodule's attributes, looking inside plain lists, tuples, dicts and
    sets. Returns an empty list for models whose whole state is in parameters and buffers.

    Example:
        >>> import torch
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.blocks = [torch.nn.Linear(2, 2)]  # should be nn.ModuleList
        >>> [(f.kind, f.path) for f in audit(Net())]
        [('module-in-container', 'blocks[0]')]
        >>> audit(torch.nn.Linear(2, 2))
        []

    Raises:
        UsageError: ``model`` is not an ``nn.Module``.
    """
    from ..checkpoint._state import unwrap_model
    from ._registry import require_module

    require_module(model, "audit")
    model = unwrap_model(model)
    findings = _attribute_findings(model)
    _non_persistent(model, findings)
    return findings


# ------------------------------------------------------------------------------------------
# verify_roundtrip


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode; put every submodule's own flag back after.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout()).train()
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)
