"""The tutorial's whole deployment path, the torchkeep way.

state dict saved after training → rebuild the model → export TorchScript and ONNX → load them
with torch.jit.load and onnxruntime.InferenceSession (no torchkeep) → the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from export_models import MLP

import torchkeep as tk


def test_state_dict_to_torchscript_and_onnx_same_outputs(tmp_path: Path) -> None:
    trained = MLP()
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    for _ in range(5):
        loss = trained(torch.randn(8, 10)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tk.save(trained.state_dict(), tmp_path / "model_weights.safetensors")

    model = MLP()
    model.load_state_dict(tk.load(tmp_path / "model_weights.safetensors"))
    model.eval()
    report = tk.export(model, torch.randn(1, 10), tmp_path / "exported", formats=["torchscript", "onnx"])
    assert report.ok

    import onnxruntime as ort

    scripted = torch.jit.load(str(tmp_path / "exported" / "model.torchscript.pt"))
    session = ort.InferenceSession(str(tmp_path / "exported" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    for batch in (1, 3, 17):
        x = torch.randn(batch, 10)
        with torch.no_grad():
            expected = trained.eval()(x)
            from_script = scripted(x)
        (from_onnx,) = session.run(None, {"x": x.numpy()})
        torch.testing.assert_close(from_script, expected)
        np.testing.assert_allclose(from_onnx, expected.numpy(), rtol=1e-5, atol=1e-6)
