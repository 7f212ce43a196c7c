"""Prove a model survives save + load: same outputs from the original and the reloaded copy.

Kept apart from :mod:`._audit` (which only reads a model) because it writes and loads model
files, so it sits above :mod:`._modelfile`, which itself asks the audit about unsaved tensors.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ModelNotRegisteredError
from ._audit import MAIN_WARNING, SAVE_WARNING, Finding, audit, eval_mode

__all__ = ["RoundtripResult", "verify_roundtrip"]


@dataclasses.dataclass
class RoundtripResult:
    """What :func:`verify_roundtrip` found. True in a boolean context when outputs match.

    Attributes:
        ok: outputs of the loaded model match the original within tolerance.
        max_abs_diff: the largest absolute difference over all output tensors (inf on a
            shape or structure mismatch).
        findings: the audit findings for the model (they explain a mismatch).
        message: a readable summary (also ``str(result)``).

    Example:
        >>> RoundtripResult(ok=True, max_abs_diff=0.0, findings=[], message="ok").ok
        True
    """

    ok: bool
    max_abs_diff: float
    findings: list[Finding]
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return self.message


def _flatten(out: Any, path: str = "output") -> Iterator[tuple[str, Any]]:
    if isinstance(out, torch.Tensor):
        yield path, out
    elif isinstance(out, Mapping):
        for k, v in out.items():
            yield from _flatten(v, f"{path}[{k!r}]")
    elif isinstance(out, (list, tuple)):
        for i, v in enumerate(out):
            yield from _flatten(v, f"{path}[{i}]")
    else:
        yield path, out


def _compare(a: Any, b: Any, rtol: float, atol: float) -> tuple[bool, float, list[str]]:
    fa, fb = list(_flatten(a)), list(_flatten(b))
    if [p for p, _ in fa] != [p for p, _ in fb]:
        return False, math.inf, ["the output structure differs"]
    ok, worst, bad = True, 0.0, []
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape:
                ok, worst = False, math.inf
                bad.append(f"{path}: shape {list(x.shape)} vs {list(y.shape)}")
                continue
            x, y = x.detach().cpu(), y.detach().cpu().to(x.dtype)
            if x.is_floating_point() or x.is_complex():
                diff = float((x - y).abs().max()) if x.numel() else 0.0
                same = torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
            else:
                diff = float((x.long() - y.long()).abs().max()) if x.numel() else 0.0
                same = torch.equal(x, y)
            worst = max(worst, diff if not math.isnan(diff) else math.inf)
            if not same:
                ok = False
                bad.append(f"{path}: max abs diff {diff:.3g}")
        elif x != y:
            ok = False
            bad.append(f"{path}: {x!r} vs {y!r}")
    return ok, worst, bad


def verify_roundtrip(
    model: nn.Module,
    *example_inputs: Any,
    build: Callable[[], nn.Module] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> RoundtripResult:
    """Save ``model``, load it into a fresh build, and compare outputs on ``example_inputs``.

    A registered model goes through :func:`torchkeep.save_model` / :func:`torchkeep.load_model`
    (a temporary file); any other model needs ``build``, a function returning a fresh instance,
    and goes through ``state_dict`` + :func:`torchkeep.save` / :func:`torchkeep.load`. Both
    models run in eval mode under ``torch.no_grad()``; the original's train/eval mode is restored.
    When outputs differ the message lists the :func:`audit` findings that explain why.

    Raises:
        ModelNotRegisteredError: the model is not registered and no ``build`` was given.
        UsageError: ``model`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(2, 2)
        ...         self.offset = torch.randn(2)  # the trap: not a buffer
        ...     def forward(self, x):
        ...         return self.fc(x) + self.offset
        >>> result = verify_roundtrip(Net(), torch.randn(1, 2), build=Net)
        >>> result.ok, [f.path for f in result.findings]
        (False, ['offset'])
    """
    from ..checkpoint import _api
    from ..checkpoint._state import unwrap_model
    from ._modelfile import load_model, save_model
    from ._registry import not_registered, record_of, require_module

    require_module(model, "verify_roundtrip")
    model = unwrap_model(model)
    if build is None and record_of(model) is None:
        err = not_registered(model)
        raise ModelNotRegisteredError(
            f"{err} — or pass build=lambda: YourModel(...) to verify_roundtrip", name=err.name, module=err.module
        )
    findings = audit(model)
    device = next((t.device for t in model.state_dict().values() if isinstance(t, torch.Tensor)), torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="torchkeep-roundtrip-") as tmp:
        path = os.path.join(tmp, "model.safetensors")
        with torch.random.fork_rng(devices=[]):
            if build is None:
                with warnings.catch_warnings():  # the findings are reported in the result instead
                    warnings.filterwarnings("ignore", message=f".*{SAVE_WARNING}", category=UserWarning)
                    warnings.filterwarnings("ignore", message=f".*{MAIN_WARNING}", category=UserWarning)
                    save_model(model, path)
                fresh = load_model(path, map_location=device)
            else:
                _api.save(model.state_dict(), path)
                fresh = build().to(device)
                fresh.load_state_dict(_api.load(path, map_location=device))
                fresh.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]), eval_mode(model):
            torch.manual_seed(0)
            expected = model(*example_inputs)
            torch.manual_seed(0)
            got = fresh(*example_inputs)
    ok, worst, bad = _compare(expected, got, rtol, atol)
    if ok:
        message = f"ok: outputs match after save + load (max abs diff {worst:.3g})"
        if findings:
            message += f"; but audit found {len(findings)} thing(s) a file would lose (not used by these inputs?)"
    else:
        lines = [f"outputs differ after save + load: {'; '.join(bad[:5])}"]
        if findings:
            lines.append("the audit explains it — state that files do not keep:")
            lines.extend(f"  - {f}" for f in findings)
        else:
            lines.append(
                "no audit finding explains it: look for randomness in forward() or state kept outside the module "
                "(globals, closures)"
            )
        message = "\n".join(lines)
    return RoundtripResult(ok=ok, max_abs_diff=worst, findings=findings, message=message)
