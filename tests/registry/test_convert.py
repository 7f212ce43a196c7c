"""tk convert: each source kind, with and without --trust-pickle; no pickle runs without it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import torchkeep as tk
from torchkeep import convert as conv


def _state() -> dict[str, torch.Tensor]:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict()


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_state_dict_without_trust(tmp_path: Path, suffix: str) -> None:
    state = _state()
    src, dst = tmp_path / f"weights{suffix}", tmp_path / "weights.safetensors"
    torch.save(state, src)
    report = conv.convert(src, dst)
    assert (report.kind, report.tensors, report.trusted_pickle) == ("torch", 4, False)
    assert report.tensor_bytes == sum(t.numel() * 4 for t in state.values())
    _assert_same_state(tk.load(dst), state)
    _assert_same_state(load_file(str(dst)), state)  # any safetensors tool sees the state dict


def test_legacy_non_zip_format(tmp_path: Path) -> None:
    state = _state()
    src = tmp_path / "old.pth"
    torch.save(state, src, _use_new_zipfile_serialization=False)
    conv.convert(src, tmp_path / "new.safetensors")
    _assert_same_state(tk.load(tmp_path / "new.safetensors"), state)


def test_training_checkpoint_tree_is_kept(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    ckpt = {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 7,
        "best_acc": 0.91,
        "history": [0.5, 0.7],
    }
    src, dst = tmp_path / "ckpt.pth.tar", tmp_path / "ckpt.safetensors"
    torch.save(ckpt, src)
    conv.convert(src, dst)
    back = tk.load(dst)
    assert back["epoch"] == 7 and back["best_acc"] == 0.91 and back["history"] == [0.5, 0.7]
    assert list(back["optimizer_state_dict"]["state"]) == [0, 1]  # int keys survive
    assert torch.equal(back["optimizer_state_dict"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # and the converted state restores a fresh optimizer exactly
    opt2 = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer_state_dict"])
    assert opt2.param_groups[0]["lr"] == 0.01


MODELS = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

class AttributeDict(dict):
    pass

class Marker:
    def __init__(self, path):
        self.path = path
    def __reduce__(self):
        # what a malicious file does: run code while being unpickled
        return (_touch, (self.path,))

def _touch(path):
    open(path, "w").close()
    return "payload ran"
"""


@pytest.fixture
def legacy(write_module: Callable[[str, str], Path]) -> object:
    write_module("tk_legacy_models", MODELS)
    import tk_legacy_models  # type: ignore[import-not-found]

    return tk_legacy_models


def test_whole_pickled_model_needs_trust(tmp_path: Path, legacy: object) -> None:
    net = legacy.Net()  # type: ignore[attr-defined]
    src, dst = tmp_path / "model.pt", tmp_path / "model.safetensors"
    torch.save(net, src)
    with pytest.raises(tk.UnsupportedValueError, match="--trust-pickle") as info:
        conv.convert(src, dst)
    assert "tk_legacy_models.Net" in str(info.value)
    assert not dst.exists()
    report = conv.convert(src, dst, trust_pickle=True)
    assert report.trusted_pickle
    assert any("stored as its state_dict()" in n for n in report.notes)
    _assert_same_state(tk.load(dst), net.state_dict())


def test_lightning_style_ckpt(tmp_path: Path, legacy: object) -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 2)).sum().backward()
    opt.step()
    hparams = legacy.AttributeDict(lr=0.1, layers=[2, 2])  # type: ignore[attr-defined]
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hyper_parameters": hparams,
        "hparams_namespace": argparse.Namespace(batch_size=32),
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
    }
    src, dst = tmp_path / "epoch=3.ckpt", tmp_path / "epoch3.safetensors"
    torch.save(ckpt, src)
    with pytest.raises(tk.UnsupportedValueError, match=r"refers to tk_legacy_models\.AttributeDict.*--trust-pickle"):
        conv.convert(src, dst)
    conv.convert(src, dst, trust_pickle=True)
    back = tk.load(dst)
    assert back["epoch"] == 3 and back["global_step"] == 120
    assert back["hyper_parameters"] == {"lr": 0.1, "layers": [2, 2]} and type(back["hyper_parameters"]) is dict
    assert back["hparams_namespace"] == {"batch_size": 32}
    assert back["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    assert set(back["state_dict"]) == {"model.weight", "model.bias"}
    assert float(back["callbacks"]["ModelCheckpoint{'monitor': 'val_loss'}"]["best_model_score"]) == 0.25


def test_no_pickle_runs_without_trust(tmp_path: Path, legacy: object) -> None:
    marker = tmp_path / "PWNED"
    src = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": legacy.Marker(str(marker))}, src)  # type: ignore[attr-defined]
    with pytest.raises(tk.UnsupportedValueError, match="_touch"):
        conv.convert(src, tmp_path / "out.safetensors")
    assert not marker.exists()
    with pytest.raises(tk.CorruptCheckpointError, match=r"torch\.save"):
        tk.load(src)  # torchkeep's own loader never unpickles either
    assert not marker.exists()
    # the payload is live: trusting the file runs it (which is why it is opt-in)
    report = conv.convert(src, tmp_path / "out.safetensors", trust_pickle=True)
    assert marker.exists()
    assert tk.load(tmp_path / "out.safetensors")["payload"] == "payload ran"
    assert report.trusted_pickle


@pytest.mark.slow
def test_cli_refuses_pickle_and_runs_nothing(tmp_path: Path, legacy: object, run_python) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "PWNED"
    src, dst = tmp_path / "evil.pt", tmp_path / "out.safetensors"
    torch.save({"payload": legacy.Marker(str(marker))}, src)  # type: ignore[attr-defined]
    root = Path(legacy.__file__).parent  # type: ignore[attr-defined]
    # the real command line, in a process where the payload's module is importable
    code = f"import sys; from torchkeep.cli import main; main(['convert', {str(src)!r}, {str(dst)!r}])"
    out = run_python(code, root)
    assert out.returncode == 1
    assert "error:" in out.stderr and "--trust-pickle" in out.stderr
    assert not marker.exists() and not dst.exists()
    from typer.testing import CliRunner

    from torchkeep.cli import app

    result = CliRunner().invoke(app, ["convert", str(src), str(dst), "--trust-pickle", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["trusted_pickle"] is True
    assert marker.exists() and dst.exists()


def _hf_dir(root: Path, *, sharded: bool = False) -> dict[str, torch.Tensor]:
    root.mkdir()
    state = {
        "embeddings.weight": torch.randn(10, 4),
        "encoder.weight": torch.randn(4, 4),
        "encoder.bias": torch.zeros(4),
    }
    if sharded:
        save_file({"embeddings.weight": state["embeddings.weight"]}, root / "model-00001-of-00002.safetensors")
        save_file({k: state[k] for k in ("encoder.weight", "encoder.bias")}, root / "model-00002-of-00002.safetensors")
        weight_map = {
            "embeddings.weight": "model-00001-of-00002.safetensors",
            "encoder.weight": "model-00002-of-00002.safetensors",
            "encoder.bias": "model-00002-of-00002.safetensors",
        }
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(state, root / "model.safetensors", metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 4}))
    return state


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_hugging_face_directory(tmp_path: Path, sharded: bool) -> None:
    state = _hf_dir(tmp_path / "bert", sharded=sharded)
    dst = tmp_path / "bert.safetensors"
    report = conv.convert(tmp_path / "bert", dst)
    assert report.kind == "safetensors-dir" and report.tensors == 3
    back = tk.load(dst)
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k])
    from safetensors import safe_open

    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config.json"]) == {"model_type": "bert", "hidden_size": 4}
    assert meta["converted_from"] == "safetensors-dir"


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "model.bin", "sub/model.safetensors"])
def test_hostile_shard_index_is_refused(tmp_path: Path, shard: str) -> None:
    root = tmp_path / "hf"
    root.mkdir()
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(tk.CorruptCheckpointError, match="refusing to read it"):
        conv.convert(root, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_directory_with_pytorch_model_bin_and_single_safetensors(tmp_path: Path) -> None:
    state = _state()
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "pytorch_model.bin")
    assert conv.convert(tmp_path / "old", tmp_path / "a.safetensors").kind == "torch"
    _assert_same_state(tk.load(tmp_path / "a.safetensors"), state)
    save_file(state, tmp_path / "plain.safetensors")
    assert conv.convert(tmp_path / "plain.safetensors", tmp_path / "b.safetensors").kind == "safetensors"
    _assert_same_state(tk.load(tmp_path / "b.safetensors"), state)


def test_bad_sources_and_destinations(tmp_path: Path) -> None:
    with pytest.raises(tk.CheckpointNotFoundError):
        conv.convert(tmp_path / "missing.pt", tmp_path / "out.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(tk.CorruptCheckpointError, match="not a format torchkeep convert knows"):
        conv.convert(tmp_path / "notes.txt", tmp_path / "out.safetensors")
    (tmp_path / "trunc.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(tk.CorruptCheckpointError, match="could not read it with the safe loader"):
        conv.convert(tmp_path / "trunc.pt", tmp_path / "out.safetensors")
    torch.save(_state(), tmp_path / "w.pt")
    (tmp_path / "out.safetensors").write_bytes(b"precious")
    with pytest.raises(tk.CheckpointWriteError, match="already exists"):
        conv.convert(tmp_path / "w.pt", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == b"precious"
    conv.convert(tmp_path / "w.pt", tmp_path / "out.safetensors", overwrite=True)
    assert set(tk.load(tmp_path / "out.safetensors")) == set(_state())
    with pytest.raises(tk.CheckpointWriteError, match="is the source"):
        conv.convert(tmp_path / "w.pt", tmp_path / "w.pt", overwrite=True)
    with pytest.raises(TypeError, match="trust_pickle must be True or False"):
        conv.convert(tmp_path / "w.pt", tmp_path / "x.safetensors", trust_pickle="yes")  # type: ignore[arg-type]


def test_unsupported_values_named_or_dropped(tmp_path: Path, legacy: object) -> None:
    src = tmp_path / "odd.pt"
    torch.save({"w": torch.ones(1), "meta": {"tags": {1, 2}, "ok": 1}}, src)
    with pytest.raises(tk.UnsupportedValueError, match=r"\['meta'\]\['tags'\]: cannot store a set.*--drop-unsupported"):
        conv.convert(src, tmp_path / "o.safetensors", trust_pickle=True)
    report = conv.convert(src, tmp_path / "o.safetensors", trust_pickle=True, drop_unsupported=True)
    assert [d.split(":")[0] for d in report.dropped] == ["['meta']['tags']"]
    assert tk.load(tmp_path / "o.safetensors")["meta"] == {"ok": 1}


def test_a_new_source_kind_plugs_in_with_one_function(tmp_path: Path) -> None:
    @conv.source_kind("npz", detect=lambda p: p.suffix == ".npz")
    def read_npz(path: Path, options: conv.ConvertOptions) -> conv.Source:
        import numpy as np

        with np.load(path) as data:
            return conv.Source(tree={k: torch.from_numpy(data[k]) for k in data.files}, notes=["from numpy"])

    try:
        import numpy as np

        np.savez(tmp_path / "w.npz", a=np.arange(3.0))
        assert [k.name for k in conv.source_kinds()][-2:] == ["npz", "torch"]
        report = conv.convert(tmp_path / "w.npz", tmp_path / "w.safetensors")
        assert report.kind == "npz" and report.notes == ["from numpy"]
        assert tk.load(tmp_path / "w.safetensors")["a"].tolist() == [0.0, 1.0, 2.0]
    finally:
        conv._convert._KINDS[:] = [k for k in conv._convert._KINDS if k.name != "npz"]


def test_cli_convert_in_process(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from torchkeep.cli import app

    state = _state()
    torch.save(state, tmp_path / "w.pt")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "w.pt"), str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "converted" in text and "(torch)" in text and "4 tensors" in text
    _assert_same_state(tk.load(tmp_path / "w.safetensors"), state)
