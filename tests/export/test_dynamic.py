"""Dynamic dimensions beyond the batch: BERT and an LSTM with dynamic batch and sequence length."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchkeep as tk
from torchkeep.cli._export import parse_dynamic
from torchkeep.export._dims import DynamicDims

SEQ_POINTS = ["batch=1,seq=3", "batch=3,seq=17", "batch=17,seq=64"]


class TinyBert(nn.Module):
    """transformers' BertModel from a small config (no download): token ids + mask → hidden states."""

    def __init__(self) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        config = transformers.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        self.bert = transformers.BertModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class Tagger(nn.Module):
    """An LSTM sequence tagger: (batch, seq, 8) → (batch, seq, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out)


def _bert_inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 100 + seq)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[:, seq - 1 :] = 0  # some padding
    return {"input_ids": torch.randint(0, 100, (batch, seq), generator=gen), "attention_mask": mask}


@pytest.mark.slow
def test_bert_dynamic_batch_and_sequence(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyBert().eval()
    report = tk.export(
        model, _bert_inputs(2, 8), tmp_path / "bert", formats=["pt2", "onnx", "torchscript"], dynamic_shapes="batch,seq"
    )
    assert report.ok, report.table()
    for result in report:
        assert list(result.parity) == SEQ_POINTS  # every length 3, 17, 64 checked
    ids, mask = report.inputs
    assert ids.shape == (None, None) and ids.dims == ("batch", "seq") and mask.dims == ("batch", "seq")
    assert report.outputs[0].shape == (None, None, 32) and report.outputs[0].dims == ("batch", "seq", None)
    # torch.export proved seq <= max_position_embeddings; the range is adopted and recorded
    assert report.manifest["dynamic_dims"]["seq"] == {"min": 1, "max": 128, "example": 8}
    unseen = _bert_inputs(5, 41)
    with torch.no_grad():
        want = model(**unseen)
    for fmt in ("pt2", "onnx", "torchscript"):
        predictor = tk.load_predictor(report[fmt].file)
        torch.testing.assert_close(predictor(**unseen), want, rtol=1e-4, atol=1e-4)
    predictor = tk.load_predictor(tmp_path / "bert")
    with pytest.raises(tk.PredictorInputError, match="share the dynamic dimension 'seq'"):
        predictor(input_ids=unseen["input_ids"], attention_mask=unseen["attention_mask"][:, :40])
    _serve_unseen_length(tmp_path / "bert", unseen, want)


def _serve_unseen_length(directory: Path, inputs: dict[str, torch.Tensor], want: torch.Tensor) -> None:
    pytest.importorskip("fastapi")
    import httpx

    from torchkeep.serve import ServeOptions, create_app

    async def go() -> None:
        app = create_app(str(directory), options=ServeOptions(max_batch_size=8))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                payload = {"inputs": {k: v.tolist() for k, v in inputs.items()}}
                r = await client.post("/v1/predict", json=payload)
                assert r.status_code == 200, r.text
                got = np.asarray(next(iter(r.json()["outputs"].values())))
                np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)

    asyncio.run(go())


@pytest.mark.slow
def test_lstm_dynamic_batch_and_sequence(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tagger().eval()
    report = tk.export(
        model,
        torch.randn(2, 5, 8),
        tmp_path / "lstm",
        formats=["pt2", "onnx", "torchscript"],
        dynamic_shapes="batch,seq",
    )
    assert report.ok, report.table()
    for result in report:
        assert list(result.parity) == SEQ_POINTS
    assert report.inputs[0].shape == (None, None, 8)
    x = torch.randn(4, 29, 8)  # a length no verification point used
    with torch.no_grad():
        want = model(x)
    for fmt in ("pt2", "onnx", "torchscript"):
        torch.testing.assert_close(tk.load_predictor(report[fmt].file)(x), want, rtol=1e-4, atol=1e-5)


def test_torch_export_spec_is_passed_through(tmp_path: Path) -> None:
    batch, seq = torch.export.Dim("b", min=1, max=32), torch.export.Dim("t", min=2, max=40)
    report = tk.export(
        Tagger().eval(),
        torch.randn(2, 5, 8),
        tmp_path,
        formats=["pt2"],
        dynamic_shapes=({0: batch, 1: seq},),
        verify_dims={"t": [2, 40]},
    )
    assert report.manifest["dynamic_dims"] == {
        "b": {"min": 1, "max": 32, "example": 2},
        "t": {"min": 2, "max": 40, "example": 5},
    }
    assert list(report["pt2"].parity) == ["b=1,t=2", "b=3,t=40", "b=17,t=2"]
    assert tk.load_predictor(report["pt2"].file)(torch.randn(1, 33, 8)).shape == (1, 33, 3)


def test_simple_forms_parse_alike() -> None:
    tensors = [torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(3)]
    names = ["ids", "mask", "scale"]
    batched = [True, True, False]
    everywhere = DynamicDims.parse("batch,seq", names, tensors, batched)
    assert everywhere.per_input == [{0: "batch", 1: "seq"}, {0: "batch", 1: "seq"}, {}]
    per_input = DynamicDims.parse({"ids": "batch,seq", "mask": {0: "batch", 1: "seq"}}, names, tensors, batched)
    assert per_input.per_input == everywhere.per_input
    static_seq = DynamicDims.parse({"ids": "batch,_", "mask": ["batch", None]}, names, tensors, batched)
    assert static_seq.per_input == [{0: "batch"}, {0: "batch"}, {}]
    assert everywhere.points() == [{"batch": 1, "seq": 3}, {"batch": 3, "seq": 17}, {"batch": 17, "seq": 64}]
    assert everywhere.points(verify_dims={"seq": [4]}) == [
        {"batch": 1, "seq": 4},
        {"batch": 3, "seq": 4},
        {"batch": 17, "seq": 4},
    ]
    assert parse_dynamic(["batch,seq"]) == "batch,seq"
    assert parse_dynamic(["ids=batch,seq", "mask=batch,seq"]) == {"ids": "batch,seq", "mask": "batch,seq"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"nope": "batch"}, "no input named 'nope'"),
        ({"ids": {5: "batch"}}, "has no dimension 5"),
        ({"ids": "batch,seq,extra"}, "3 dimensions named"),
        ("batch,9seq", "not an identifier"),
        ({"ids": "batch,seq", "mask": "batch,_,seq"}, "3 dimensions named"),
        ({"ids": "batch,seq", "mask": "seq,batch"}, "inputs sharing a name must have the same size"),
        (42, "got a int"),
    ],
)
def test_bad_dynamic_shapes_are_usage_errors(spec: object, match: str) -> None:
    with pytest.raises(tk.UsageError, match=match):
        DynamicDims.parse(spec, ["ids", "mask"], [torch.zeros(2, 5), torch.zeros(2, 5)], [True, True])


def test_refine_adopts_torch_export_suggested_ranges() -> None:
    dims = DynamicDims.parse("batch,seq", ["ids"], [torch.zeros(2, 5)], [True])
    message = "Constraints violated (seq)!\nSuggested fixes:\n  seq = Dim('seq', max=128)\n"
    assert dims.refine(RuntimeError(message)) and dims.ranges["seq"] == (1, 128)
    assert not dims.refine(RuntimeError(message))  # nothing new
    assert DynamicDims.specialized(RuntimeError("Suggested fixes:\n  seq = 5\n")) == ["seq=5"]


def test_save_model_records_example_inputs(tmp_path: Path) -> None:
    @tk.register(name="test-dynamic-tagger")
    class RegisteredTagger(Tagger):
        pass

    path = tmp_path / "tagger.safetensors"
    tk.save_model(RegisteredTagger(), path, example_inputs=torch.randn(2, 6, 8))
    (x,) = tk.load_predictor(path).example_inputs(2)
    assert x.shape == (2, 6, 8)
    from torchkeep.models._examples import example_inputs_of

    (recorded,) = example_inputs_of(path)
    assert recorded.shape == (2, 6, 8) and recorded.dtype == torch.float32
    predictor = tk.load_predictor(path)
    assert predictor.inputs[0].shape == (None, 6, 8)
    with pytest.raises(tk.UsageError, match="expected a tensor"):
        tk.save_model(RegisteredTagger(), tmp_path / "bad.safetensors", example_inputs="nope")


def test_cli_export_uses_recorded_examples_and_dynamic(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from torchkeep.cli import app

    @tk.register(name="test-dynamic-tagger-cli")
    class CliTagger(Tagger):
        pass

    path = tmp_path / "tagger.safetensors"
    tk.save_model(CliTagger().eval(), path, example_inputs=torch.randn(2, 5, 8))
    out = tmp_path / "exported"
    result = CliRunner().invoke(
        app, ["export", str(path), "--torchscript", "--dynamic", "batch,seq", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    from torchkeep.runtime import export_targets

    assert "torchscript" in export_targets(str(out))
    predictor = tk.load_predictor(out)
    assert predictor.inputs[0].shape == (None, None, 8)
    assert predictor(torch.randn(1, 11, 8)).shape == (1, 11, 3)
