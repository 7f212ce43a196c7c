"""The tutorial's dynamic model, saved with its config and rebuilt — and the trap, caught.

Run: python examples/register_and_rebuild.py   (a few seconds, CPU)

1. `DynamicModel` (a Linear layer plus an embedding vector kept in a buffer) is registered with
   `@tk.register`; `tk.save_model` writes its weights and its constructor arguments.
2. A fresh Python process rebuilds it with `tk.load_model(path)` alone: no constructor call, no
   pickle. Its outputs are identical.
3. The same model with `self.my_embed = torch.randn(...)` (no `register_buffer`): `tk.audit`
   names the attribute and the fix, and `tk.verify_roundtrip` shows the outputs change after a
   save + load, pointing at that finding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch
from torch import nn

import torchkeep as tk


@tk.register(name="dynamic-model", version=1)
class DynamicModel(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, use_buffer: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)
        rand_weight = torch.randn(hidden_size)
        if use_buffer:
            self.register_buffer("my_embed", rand_weight)  # in state_dict: saved and restored
        else:
            self.my_embed = rand_weight  # the trap: NOT in state_dict, silently lost on save

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.my_embed


REBUILD = """
import sys, torch, torchkeep as tk
sys.path.insert(0, {examples!r})
import register_and_rebuild  # the user's own import registers "dynamic-model"; nothing else runs
model = tk.load_model({path!r})
x, expected = tk.load({ref!r})["x"], tk.load({ref!r})["y"]
same = torch.equal(model(x), expected)
print(f"  fresh process rebuilt {{type(model).__name__}}(**{{tk.model_entry(model)['arguments']['items']}}) "
      f"in eval mode={{not model.training}}; identical outputs: {{same}}")
sys.exit(0 if same else 1)
"""


def main() -> None:
    torch.manual_seed(42)
    workdir = tempfile.mkdtemp(prefix="torchkeep-example-")
    path = os.path.join(workdir, "dynamic_model.safetensors")

    print("1. save the registered model with its config")
    model = DynamicModel(input_size=4, hidden_size=2).eval()
    x = torch.randn(1, 4)
    tk.save_model(model, path)
    print(f"  wrote {path} holding {tk.model_entry(model)}")

    print("2. rebuild it in a fresh Python process")
    ref = os.path.join(workdir, "reference.safetensors")
    with torch.no_grad():
        tk.save({"x": x, "y": model(x)}, ref)
    code = REBUILD.format(examples=os.path.dirname(os.path.abspath(__file__)), path=path, ref=ref)
    subprocess.run([sys.executable, "-c", code], check=True)

    print("3. the same model with a plain tensor attribute")
    bad = DynamicModel(input_size=4, hidden_size=2, use_buffer=False)
    for finding in tk.audit(bad):
        print(f"  audit: {finding.path} ({finding.kind}): fix: {finding.fix}")
    result = tk.verify_roundtrip(bad, x)
    print("  verify_roundtrip:", str(result).replace("\n", "\n  "))
    assert not result.ok and [f.path for f in result.findings] == ["my_embed"]
    assert tk.verify_roundtrip(model, x).ok


if __name__ == "__main__":
    main()
