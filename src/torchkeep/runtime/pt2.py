"""torch.export programs (``.pt2`` from ``torch.export.save``), run through ``ExportedProgram.module()``.

Specs: from export.json when present, else from the program's signature (names, dtypes, static
dims; symbolic dims become None).

Security note: ``torch.export.load`` may unpickle tensors stored in the archive, so treat a
``.pt2`` file as code: load only artifacts you (or your export pipeline) wrote.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import PredictorError
from ..io._dtypes import dtype_name
from ._base import TensorSpec
from ._common import BasePredictor, fill_missing
from ._inputs import Bound

__all__ = ["PT2Predictor", "load", "program_specs"]


def _spec(name: str, val: Any) -> TensorSpec | None:
    if not isinstance(val, torch.Tensor):
        return None
    shape = tuple(d if isinstance(d, int) else None for d in val.shape)
    return TensorSpec(name, shape, dtype_name(val.dtype))


def program_specs(ep: Any) -> tuple[list[TensorSpec], list[TensorSpec], str, str | None]:
    """Input specs, output specs, input structure and output structure of an ExportedProgram."""
    sig = ep.graph_signature
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = [s for s in (_spec(name, placeholders[name].meta.get("val")) for name in sig.user_inputs) if s]
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    flat = out_node.args[0]
    user_outs = list(flat)[-len(sig.user_outputs) :] if sig.user_outputs else []
    out_spec = ep.call_spec.out_spec
    in_spec = ep.call_spec.in_spec
    structure: str | None = None
    names = [f"output_{i}" if i else "output" for i in range(len(user_outs))]
    if out_spec is not None:
        if out_spec.type is dict:
            structure, names = "dict", [str(k) for k in out_spec.context]
        elif out_spec.type in (tuple, list):
            structure = "tuple"
        elif out_spec.num_children == 0:
            structure = "tensor"
    outputs = []
    if len(names) == len(user_outs):
        for name, node in zip(names, user_outs, strict=True):
            spec = _spec(name, getattr(node, "meta", {}).get("val"))
            if spec is not None:
                outputs.append(spec)
    takes_kwargs = False
    if in_spec is not None and in_spec.num_children == 2:
        # torch >= 2.10 has TreeSpec.child(i) and deprecates children_specs.
        kwargs_spec = in_spec.child(1) if hasattr(in_spec, "child") else in_spec.children_specs[1]
        takes_kwargs = kwargs_spec.num_children > 0
    return inputs, outputs, "dict" if takes_kwargs else "positional", structure


class PT2Predictor(BasePredictor):
    """Runs ``torch.export.load(path).module()``.

    Example:
        >>> import torch, tempfile, os, torchkeep as tk
        >>> path = os.path.join(tempfile.mkdtemp(), "model.pt2")
        >>> torch.export.save(torch.export.export(torch.nn.Linear(3, 1), (torch.zeros(2, 3),)), path)
        >>> tk.load_predictor(path).inputs[0].shape
        (2, 3)
    """

    backend = "pt2"

    def __init__(self, module: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.module = module

    def _run(self, bound: Bound) -> Any:
        return self._call_module(self.module, bound)


def load(path: str | os.PathLike[str], *, device: str = "cpu", **kwargs: Any) -> PT2Predictor:
    """Load a torch.export program; specs from ``kwargs`` (export.json) or the program."""
    path = os.fspath(path)
    try:
        ep = torch.export.load(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise PredictorError(
            f"{path}: torch.export.load failed ({type(exc).__name__}: {exc}); is it a torch.export .pt2 file?"
        ) from exc
    inputs, outputs, input_structure, output_structure = program_specs(ep)
    fill_missing(
        kwargs, inputs=inputs, outputs=outputs, input_structure=input_structure, output_structure=output_structure
    )
    module = ep.module()
    if device != "cpu":
        module = module.to(device)
    return PT2Predictor(module, device=device, path=path, **kwargs)
