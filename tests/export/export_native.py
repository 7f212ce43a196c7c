"""Run an artifact with the format's own runtime (torch.export.load, onnxruntime, torch.jit.load, AOTI, TensorRT).

Tests use this to prove each artifact works for someone who never heard of torchkeep; tk.export's
own parity check goes through ``torchkeep.load_predictor``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path.parent / "export.json").read_text())


def load_native(path: Path, backend: str, device: str = "cpu") -> Callable[..., Any]:
    """A callable with the model's calling convention, built on the format's own runtime."""
    path = Path(path)
    if backend == "pt2":
        module = torch.export.load(str(path)).module()
        return module  # type: ignore[no-any-return]
    if backend == "torchscript":
        return torch.jit.load(str(path), map_location=device)  # type: ignore[no-any-return]
    if backend == "aoti":
        return torch._inductor.aoti_load_package(str(path))  # type: ignore[no-any-return]
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        manifest = _manifest(path)
        out_names = [o["name"] for o in manifest["outputs"]]

        def run(*args: Any, **kwargs: Any) -> Any:
            values = dict(zip(names, args, strict=True)) if args else kwargs
            feed = {k: v.detach().cpu().numpy() for k, v in values.items()}
            outs = [torch.from_numpy(np.asarray(o)) for o in session.run(None, feed)]
            if manifest["output_structure"] == "dict":
                return dict(zip(out_names, outs, strict=True))
            return outs[0] if manifest["output_structure"] == "tensor" else tuple(outs)

        return run
    if backend == "tensorrt":
        return _tensorrt_runner(path)
    raise AssertionError(f"no native runner for {backend}")


def _tensorrt_runner(path: Path) -> Callable[..., Any]:
    """TensorRT 10 name-based execution: set_input_shape, set_tensor_address, execute_async_v3."""
    import tensorrt as trt

    manifest = _manifest(path)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    in_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    out_names = [o["name"] for o in manifest["outputs"]]

    def torch_dtype(name: str) -> torch.dtype:
        return torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype

    def run(*args: Any, **kwargs: Any) -> Any:
        order = [i["name"] for i in manifest["inputs"]]
        values = dict(zip(order, args, strict=True)) if args else kwargs
        keep = []
        for name in in_names:
            t = values[name].to("cuda", torch_dtype(name)).contiguous()
            keep.append(t)
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in out_names:
            o = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch_dtype(name), device="cuda")
            context.set_tensor_address(name, o.data_ptr())
            outs.append(o)
        stream = torch.cuda.current_stream()
        assert context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        if manifest["output_structure"] == "dict":
            return dict(zip(out_names, outs, strict=True))
        return outs[0] if manifest["output_structure"] == "tensor" else tuple(outs)

    return run
