"""A transformers config as a registered factory's argument saves and loads (issue 18, item 10)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.io import _codec, _decode

transformers = pytest.importorskip("transformers")

MODELS = textwrap.dedent(
    """
    import torchkeep as tk
    from transformers import BertConfig, BertModel


    @tk.register(name="ux-bert")
    def bert(config: BertConfig) -> BertModel:
        return BertModel(config)


    def tiny() -> BertConfig:
        return BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                          vocab_size=30, max_position_embeddings=16)
    """
)


def test_config_argument_roundtrips_in_another_process(tmp_path: Path) -> None:
    (tmp_path / "hf_models.py").write_text(MODELS, encoding="utf-8")
    env_path = str(Path(__file__).resolve().parents[2] / "src")
    save = "import hf_models, torchkeep as tk; tk.save_model(hf_models.bert(hf_models.tiny()), 'bert.safetensors')"
    load = (
        "import torch, hf_models, torchkeep as tk; m = tk.load_model('bert.safetensors'); "
        "assert m.config.hidden_size == 16 and m.config.num_hidden_layers == 1; "
        "ids = torch.tensor([[1, 2, 3]]); print(m(ids).last_hidden_state.shape)"
    )
    for code in (save, load):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={"PYTHONPATH": f"{tmp_path}:{env_path}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([1, 3, 16])" in proc.stdout


def test_config_value_roundtrips_with_tk_save(tmp_path: Path) -> None:
    config = transformers.BertConfig(hidden_size=24, num_attention_heads=3, id2label={0: "neg", 1: "pos"})
    tk.save({"config": config, "w": torch.ones(1)}, tmp_path / "c.safetensors")
    back = tk.load(tmp_path / "c.safetensors")["config"]
    assert type(back) is transformers.BertConfig
    assert back.hidden_size == 24 and back.id2label == {0: "neg", 1: "pos"}
    assert back.to_dict() == config.to_dict()


def test_hostile_config_class_names_are_refused() -> None:
    for ref in ("transformers:__loader__", "transformers:AutoModel", "transformers:NoSuchConfig", "os:system"):
        tree = {"t": "hfconfig", "cls": ref, "config": {"t": "dict", "items": {}}}
        with pytest.raises(tk.CorruptCheckpointError):
            _decode.decode(tree, lambda n: torch.zeros(0))
    enc = _codec.encode(transformers.BertConfig())
    assert enc.tree["cls"] == "transformers:BertConfig"
