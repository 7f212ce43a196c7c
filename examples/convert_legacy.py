"""Bring legacy files over: torch.save state dicts and checkpoints, pickled models, HF directories.

Run: python examples/convert_legacy.py   (a few seconds, CPU)

Each source is written the way the tutorials do it, then converted with
`torchkeep.convert.convert` (the CLI is `torchkeep convert SRC DST [--trust-pickle]`):

1. `torch.save(model.state_dict(), "model.pth")` — loaded with `torch.load(weights_only=True)`,
   so no pickle code runs; the result is the same state dict.
2. A training checkpoint dict (model, optimizer, epoch, loss) — the whole tree is kept.
3. `torch.save(model, "whole.pt")`, a pickled model — refused without `trust_pickle=True`
   (the error says so); with it, stored as the model's state dict.
4. A Hugging Face-style directory (`model.safetensors` + `config.json`).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors.torch import save_file
from torch import nn

import torchkeep as tk
from torchkeep.convert import convert


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def main() -> None:
    torch.manual_seed(0)
    d = tempfile.mkdtemp(prefix="torchkeep-convert-")
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()

    print("1. a torch.save'd state dict")
    torch.save(model.state_dict(), os.path.join(d, "model.pth"))
    report = convert(os.path.join(d, "model.pth"), os.path.join(d, "model.safetensors"))
    print(f"  {report.kind}: {report.tensors} tensors, {report.tensor_bytes} bytes")
    fresh = Net()
    fresh.load_state_dict(tk.load(os.path.join(d, "model.safetensors")))

    print("2. a training checkpoint dict")
    torch.save(
        {"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "loss": 0.42},
        os.path.join(d, "checkpoint.pt"),
    )
    convert(os.path.join(d, "checkpoint.pt"), os.path.join(d, "checkpoint.safetensors"))
    ckpt = tk.load(os.path.join(d, "checkpoint.safetensors"))
    opt2 = torch.optim.Adam(fresh.parameters())
    opt2.load_state_dict(ckpt["optimizer_state_dict"])
    print(f"  kept: {sorted(ckpt)}; epoch={ckpt['epoch']}, optimizer step={opt2.state_dict()['state'][0]['step']}")

    print("3. a pickled whole model")
    torch.save(model, os.path.join(d, "whole.pt"))
    try:
        convert(os.path.join(d, "whole.pt"), os.path.join(d, "whole.safetensors"))
    except tk.UnsupportedValueError as exc:
        print(f"  refused: {str(exc)[len(d) + 1 :][:150]}...")
    report = convert(os.path.join(d, "whole.pt"), os.path.join(d, "whole.safetensors"), trust_pickle=True)
    print(f"  with trust_pickle=True: {report.notes}")

    print("4. a Hugging Face-style directory")
    hf = os.path.join(d, "hf-model")
    os.mkdir(hf)
    save_file(model.state_dict(), os.path.join(hf, "model.safetensors"))
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump({"model_type": "net", "hidden_size": 16}, f)
    report = convert(hf, os.path.join(d, "hf.safetensors"))
    print(f"  {report.kind}: {report.tensors} tensors; {report.notes[0]}")

    x = torch.randn(2, 8)
    for name in ("model", "whole", "hf"):
        restored = Net()
        restored.load_state_dict(tk.load(os.path.join(d, f"{name}.safetensors")))
        assert torch.equal(restored(x), model(x)), name
    print("all converted files restore identical outputs")


if __name__ == "__main__":
    main()
