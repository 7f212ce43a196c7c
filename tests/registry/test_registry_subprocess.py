"""A fresh interpreter rebuilds registered models from files (class, factory, Hugging Face)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import torchkeep as tk

MODELS = """
import dataclasses
import torch
import torchkeep as tk

@dataclasses.dataclass
class Config:
    input_size: int = 4
    hidden_size: int = 2

@tk.register(name="dynamic", version=1)
class DynamicModel(torch.nn.Module):
    def __init__(self, config: Config, use_buffer: bool = True):
        super().__init__()
        self.linear = torch.nn.Linear(config.input_size, config.hidden_size)
        self.register_buffer("my_embed", torch.randn(config.hidden_size))

    def forward(self, x):
        return self.linear(x) + self.my_embed

@tk.register(name="conv-factory")
def conv_net(channels: int = 3, classes: int = 5, widths: tuple = (4, 8)):
    layers = []
    c = channels
    for w in widths:
        layers += [torch.nn.Conv2d(c, w, 3, padding=1), torch.nn.BatchNorm2d(w), torch.nn.ReLU()]
        c = w
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c, classes)]
    return torch.nn.Sequential(*layers)
"""

CHILD = """
import sys, torch, torchkeep as tk
ref = tk.load({ref!r})
# 1. nothing imported: the error names the module, and torchkeep imported nothing itself
try:
    tk.load_model(ref["dynamic_path"])
    sys.exit("loaded without the model code")
except tk.ModelNotRegisteredError as exc:
    print("NOT-REGISTERED", exc.module, "|", exc)
assert "tk_test_models" not in sys.modules
# 2. opt in: torchkeep imports the recorded module; outputs are identical
for name in ("dynamic", "conv"):
    model = tk.load_model(ref[name + "_path"], import_module=True)
    assert not model.training
    with torch.no_grad():
        out = model(ref[name + "_x"])
    assert torch.equal(out, ref[name + "_y"]), (name, (out - ref[name + "_y"]).abs().max())
    print("REBUILT", name, type(model).__name__)
"""


@pytest.fixture
def saved(tmp_path: Path, write_module: Callable[[str, str], Path]) -> tuple[Path, Path]:
    root = write_module("tk_test_models", MODELS)
    import tk_test_models as m  # type: ignore[import-not-found]

    dyn = m.DynamicModel(m.Config(input_size=4, hidden_size=3))
    conv = m.conv_net(channels=2, widths=(3, 6)).eval()
    dyn_path, conv_path = tmp_path / "dynamic.safetensors", tmp_path / "conv.safetensors"
    tk.save_model(dyn, dyn_path)
    tk.save_model(conv, conv_path)
    x1, x2 = torch.randn(2, 4), torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        ref = {
            "dynamic_path": str(dyn_path),
            "dynamic_x": x1,
            "dynamic_y": dyn.eval()(x1),
            "conv_path": str(conv_path),
            "conv_x": x2,
            "conv_y": conv(x2),
        }
    tk.save(ref, tmp_path / "ref.safetensors")
    return root, tmp_path / "ref.safetensors"


@pytest.mark.slow
def test_fresh_process_rebuilds_class_and_factory(saved: tuple[Path, Path], run_python) -> None:  # type: ignore[no-untyped-def]
    root, ref = saved
    out = run_python(CHILD.format(ref=str(ref)), root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "NOT-REGISTERED tk_test_models |" in out.stdout
    assert "`import tk_test_models` before loading" in out.stdout
    assert "import_module=True" in out.stdout
    assert "REBUILT dynamic DynamicModel" in out.stdout
    assert "REBUILT conv Sequential" in out.stdout


def test_import_module_fails_cleanly_when_module_is_missing(saved: tuple[Path, Path]) -> None:
    _, ref = saved
    dyn_path = tk.load(ref)["dynamic_path"]
    from torchkeep.models import _registry

    _registry._unregister("dynamic")
    sys.modules.pop("tk_test_models", None)
    sys.path[:] = [p for p in sys.path if not p.endswith("pkgs")]
    with pytest.raises(tk.ModelNotRegisteredError, match="could not import 'tk_test_models'"):
        tk.load_model(dyn_path, import_module=True)


@pytest.mark.slow
def test_scripts_run_as_main(tmp_path: Path) -> None:
    pkg = tmp_path / "proj" / "trainpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(
        "import sys, torch, torchkeep as tk\n"
        "@tk.register(name='in-script')\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(2, 2)\n"
        "if __name__ == '__main__':\n"
        "    tk.save_model(Net(), sys.argv[1])\n"
    )
    src = str(Path(tk.__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join([src, str(tmp_path / "proj")]), "PATH": "", "OMP_NUM_THREADS": "1"}
    as_file, as_module = tmp_path / "file.safetensors", tmp_path / "module.safetensors"
    subprocess.run([sys.executable, str(pkg / "train.py"), str(as_file)], check=True, env=env, timeout=120)
    subprocess.run([sys.executable, "-m", "trainpkg.train", str(as_module)], check=True, env=env, timeout=120)
    # `python train.py`: the class lives in __main__, which no other process can import
    with pytest.raises(tk.ModelNotRegisteredError, match="registered in '__main__', which cannot be imported"):
        tk.load_model(as_file, import_module=True)
    # `python -m trainpkg.train`: the file records the importable module name
    sys.path.insert(0, str(tmp_path / "proj"))
    try:
        model = tk.load_model(as_module, import_module=True)
        assert type(model).__module__ == "trainpkg.train"
        # and once it is registered, the __main__ file loads by name too
        assert type(tk.load_model(as_file)) is type(model)
    finally:
        sys.path.remove(str(tmp_path / "proj"))
        for name in [m for m in sys.modules if m.startswith("trainpkg")]:
            del sys.modules[name]


@pytest.mark.slow
def test_hugging_face_model_through_a_factory(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")

    @tk.register(name="tiny-bert")
    def tiny_bert(config: dict) -> torch.nn.Module:  # type: ignore[type-arg]
        return transformers.BertModel(transformers.BertConfig(**config))

    config = {
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    }
    model = tiny_bert(config).eval()
    path = tmp_path / "bert.safetensors"
    tk.save_model(model, path)
    loaded = tk.load_model(path)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, loaded(ids).last_hidden_state)
