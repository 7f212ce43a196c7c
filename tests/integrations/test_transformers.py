"""TorchkeepTrainer inside real Hugging Face Trainer runs (a tiny BERT on CPU, a few steps each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _pickle_scan import scan

import torchkeep as tk

transformers = pytest.importorskip("transformers")
from torchkeep.integrations.transformers import TorchkeepTrainer, to_pretrained  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")  # the Trainer's own hints

HERE = Path(__file__).parent


def _data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30, (n, 6), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def _config() -> Any:
    return transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=2
    )


def _trainer(out: Path, steps: int, cls: type = TorchkeepTrainer, **kwargs: Any) -> Any:
    transformers.set_seed(0)
    options: dict[str, Any] = {
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "save_strategy": "steps",
        "save_steps": 2,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        **kwargs,
    }
    evaluating = options.get("eval_strategy", "no") != "no"
    return cls(
        model=transformers.BertForSequenceClassification(_config()),
        args=transformers.TrainingArguments(**options),
        train_dataset=_data(24, 1),
        eval_dataset=_data(8, 2) if evaluating else None,
    )


def test_checkpoints_hold_no_pickle_and_rotation_works(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 6, save_total_limit=2)
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoint-4", "checkpoint-6"]
    kinds = scan(tmp_path)
    names = {Path(p).name for p in kinds}
    assert {"training_state.safetensors", "model.safetensors", "trainer_state.json", "training_args.json"} <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
    info = tk.read_info(tmp_path / "checkpoint-6" / "training_state.safetensors")
    assert info.step == 6 and info.rng and set(info.objects) == {"optimizer", "scheduler"}


def test_load_best_model_at_end(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path, 6, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True, metric_for_best_model="loss"
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and os.path.isdir(best)
    from safetensors.torch import load_file

    saved = load_file(os.path.join(best, "model.safetensors"))
    assert torch.equal(saved["classifier.weight"], trainer.model.classifier.weight.detach())
    scan(tmp_path)


def test_corrupt_optimizer_file_stops_with_typed_error(tmp_path: Path) -> None:
    _trainer(tmp_path, 4).train()
    target = tmp_path / "checkpoint-4" / "training_state.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    before = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(tk.CorruptCheckpointError, match=r"training_state\.safetensors") as err:
        _trainer(tmp_path, 6).train(resume_from_checkpoint=True)
    assert err.value.path is not None and err.value.path.endswith("training_state.safetensors")
    assert {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing deleted


def test_plain_trainer_checkpoint_refused_then_converted(tmp_path: Path) -> None:
    from torchkeep.convert import convert

    _trainer(tmp_path, 2, cls=transformers.Trainer).train()  # the stock Trainer: pickles
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "optimizer.pt").exists()
    with pytest.raises(tk.CorruptCheckpointError, match="torchkeep convert"):
        _trainer(tmp_path, 4).train(resume_from_checkpoint=True)
    for name in ("optimizer", "scheduler"):
        convert(ckpt / f"{name}.pt", ckpt / f"{name}.safetensors")  # plain state dicts: no --trust-pickle
    trainer = _trainer(tmp_path, 4)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 4


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(HERE / "_hf_run.py"), *args], capture_output=True, text=True, env=env, timeout=400
    )


@pytest.mark.slow
def test_sigkill_midway_then_resume_is_bitwise_equal(tmp_path: Path) -> None:
    straight = _run(str(tmp_path / "a"), str(tmp_path / "a.out"), "--steps", "12")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(str(tmp_path / "b"), str(tmp_path / "b.out"), "--steps", "12", "--kill-at-step", "8")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    resumed = _run(str(tmp_path / "b"), str(tmp_path / "b.out"), "--steps", "12", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = tk.load(tmp_path / "a.out"), tk.load(tmp_path / "b.out")
    assert a["step"] == b["step"] == 12
    for name, tensor in a["model"].items():  # dropout is on: the RNG resumed exactly too
        assert torch.equal(tensor, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    kinds = scan(tmp_path / "a", tmp_path / "b")
    assert "checkpoint-12/training_state.safetensors" in kinds


def test_save_model_load_model_round_trip_without_register(tmp_path: Path) -> None:
    model = transformers.BertForSequenceClassification(_config()).eval()
    path = tmp_path / "bert.safetensors"
    tk.save_model(model, path)
    loaded = tk.load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config.to_dict()["hidden_size"] == 16
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    out = to_pretrained(path, tmp_path / "hf")
    again = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    for key, value in model.state_dict().items():  # the same weights, bit for bit
        assert torch.equal(value, again.state_dict()[key]), key
    # from_pretrained may pick another attention kernel: outputs agree to float rounding
    torch.testing.assert_close(model(ids).logits, again(ids).logits, rtol=1e-5, atol=1e-6)
    assert set(scan(tmp_path).values()) <= {"safetensors", "json"}


def test_model_file_never_imports_what_it_names(tmp_path: Path) -> None:
    model = transformers.BertModel(_config())
    path = tmp_path / "bert.safetensors"
    tk.save_model(model, path)
    data = path.read_bytes()
    marker = b'\\"class\\":\\"BertModel\\"'
    assert marker in data  # the class is recorded by name
    # a hostile file naming a module instead of a transformers model class (same length: header intact)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data.replace(marker, marker.replace(b"BertModel", b"os.system"), 1))
    with pytest.raises(tk.ModelNotRegisteredError, match=r"'os\.system', which is not a PreTrainedModel class"):
        tk.load_model(bad)


@pytest.mark.parametrize("name", ["torchkeep.integrations.transformers", "torchkeep.models._families"])
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
