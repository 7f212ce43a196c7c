"""A realistic fine-tune with deduplicated steps: a small BERT (from a config) with LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchkeep as tk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # peft calls a transformers alias deprecated for v6
]


def _bert_with_lora() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.BertConfig(
        vocab_size=2000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        num_labels=3,
    )
    base = transformers.BertForSequenceClassification(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    return peft.get_peft_model(base, lora)


def _disk(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def test_bert_lora_ten_saves_keep_last_3(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _bert_with_lora()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    full = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    delta = sum(p.numel() * p.element_size() for p in trainable) * 3  # weights + two Adam moments
    saved: dict[int, dict[str, torch.Tensor]] = {}
    run = tmp_path / "run"
    with tk.CheckpointManager(run, keep_last=3, dedup=True, model=model, optimizer=opt) as mgr:
        for step in range(1, 11):
            ids = torch.randint(0, 2000, (4, 16))
            loss = model(input_ids=ids, labels=torch.randint(0, 3, (4,))).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            mgr.save(step=step, metrics={"loss": loss.detach().item()})
            saved[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        assert [c.step for c in mgr.checkpoints] == [8, 9, 10]
    # disk: about one full model, plus the three kept steps' small deltas (adapters, head, Adam state)
    assert _disk(run) < full + 3 * delta + 3 * 256 * 1024, (_disk(run), full, delta)
    print(f"disk {_disk(run)} bytes: one full model {full}, trainable state per step {delta}")
    for entry in tk.list_checkpoints(run, verify=True):
        assert entry.status == "ok" and entry.kind == "dedup"
        fresh = _bert_with_lora()
        info = tk.load_checkpoint(entry.path, model=fresh)
        assert info.step == entry.step
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, saved[entry.step][k]), (entry.step, k)
    fresh = _bert_with_lora()
    with tk.CheckpointManager(run, read_only=True, model=fresh) as reader:
        assert reader.restore().step == 10
    assert all(torch.equal(v, saved[10][k]) for k, v in fresh.state_dict().items())
