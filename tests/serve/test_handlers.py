"""Request handlers: a BERT-style text model behind the tokenizer handler, images, labels, bad handlers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from torchkeep.errors import ServeError
from torchkeep.serve import ImageHandler, LabelHandler, ServeOptions
from torchkeep.serve._handlers import handler_from_file, import_handler

from .conftest import export_onnx, real_server, running

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "is",
    "good",
    "bad",
    "very",
    "movie",
]


@pytest.mark.slow
def test_bert_with_tokenizer_handler_answers_a_sentence_like_eager(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import torchkeep as tk

    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))  # built locally, no hub
    model_dir = tmp_path / "repo" / "bert"
    tokenizer.save_pretrained(str(model_dir / "tokenizer"))
    config = transformers.BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    torch.manual_seed(0)

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertForSequenceClassification(config)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    model = Logits().eval()
    example = dict(tokenizer(["the cat sat"], padding="max_length", max_length=16, return_tensors="pt"))
    tk.export(model, example, model_dir / "1", formats=("onnx",))
    handler = {
        "handler": "tokenizer",
        "options": {"tokenizer": "tokenizer", "max_length": 16, "labels": ["neg", "neu", "pos"]},
    }
    (model_dir / "handler.json").write_text(json.dumps(handler))

    sentences = ["the cat sat on the mat", "a very good movie"]
    with torch.no_grad():
        enc = tokenizer(sentences, padding="max_length", max_length=16, return_tensors="pt")
        want = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).numpy()

    with real_server(tmp_path / "repo") as base:
        # What `curl -d '{"inputs": [...]}' .../v2/models/bert/infer` sends.
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": sentences}]}
        r = httpx.post(base + "/v2/models/bert/infer", json=body)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        got = np.array(outputs["output"]["data"], np.float32).reshape(outputs["output"]["shape"])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        labels = ["neg", "neu", "pos"]
        assert outputs["label"]["datatype"] == "BYTES"
        assert outputs["label"]["data"] == [labels[i] for i in want.argmax(1)]
        meta = httpx.get(base + "/v2/models/bert").json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        # /predict takes one sentence.
        r = httpx.post(base + "/predict", json={"values": sentences[1]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["prediction"]["output"], want[1:], rtol=1e-4, atol=1e-5)
        # Bad input is a 4xx naming the problem: numbers for text, non-UTF-8 bytes, wrong datatype.
        r = httpx.post(base + "/v1/predict", json={"inputs": {"text": [1, 2]}})
        assert r.status_code == 422 and "string" in r.json()["error"]["message"]
        raw = b"\x04\x00\x00\x00\xff\xfe\xfd\xfc"
        head = json.dumps(
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}
        ).encode()
        r = httpx.post(
            base + "/v2/models/bert/infer",
            content=head + raw,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        assert r.status_code == 400 and "UTF-8" in r.json()["error"]
        r = httpx.post(
            base + "/v2/models/bert/infer",
            json={"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        )
        assert r.status_code == 400 and "BYTES" in r.json()["error"]


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _png(color: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_handler_and_labels_in_process(tmp_path: Path) -> None:
    asyncio.run(_image_handler(tmp_path))


async def _image_handler(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    model_dir = tmp_path / "repo" / "vision"
    (model_dir / "1").mkdir(parents=True)
    module = TinyConv().eval()
    export_onnx(module, torch.randn(2, 3, 8, 8), model_dir / "1" / "model.onnx")
    spec = {
        "handler": "image",
        "options": {"size": [8, 8], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "labels": ["a", "b"]},
    }
    (model_dir / "handler.json").write_text(json.dumps(spec))
    images = [_png((255, 0, 0)), _png((0, 40, 200))]
    want = []
    for raw in images:
        from PIL import Image

        arr = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB").resize((8, 8)), np.float32) / 255.0
        arr = (arr.transpose(2, 0, 1)[None] - 0.5) / 0.25
        with torch.no_grad():
            want.append(module(torch.from_numpy(arr.astype(np.float32))).numpy())
    async with running(str(tmp_path / "repo")) as c:
        blobs = b"".join(len(b).to_bytes(4, "little") + b for b in images)
        head = json.dumps(
            {
                "inputs": [
                    {"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(blobs)}}
                ],
                "parameters": {"binary_data_output": False},
            }
        ).encode()
        r = await c.post(
            "/v2/models/vision/infer", content=head + blobs, headers={"Inference-Header-Content-Length": str(len(head))}
        )
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        got = np.array(out["output"]["data"], np.float32).reshape(2, 2)
        np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-4, atol=1e-5)
        assert out["label"]["data"] == [["a", "b"][i] for i in got.argmax(1)]
        # Not an image: 400, not 500.
        r = await c.post(
            "/v2/models/vision/infer",
            json={
                "inputs": [
                    {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"no").decode()]}
                ]
            },
        )
        assert r.status_code == 400 and "image" in r.json()["error"]


HANDLER_MODULE = """
import numpy as np
from torchkeep.errors import UsageError
from torchkeep.serve import Handler


class Scale(Handler):
    def preprocess(self, inputs):
        x = inputs[0]
        if (x < -100).any():
            raise UsageError("values below -100 are not allowed; send values >= -100")
        if (x > 100).any():
            raise RuntimeError("the handler broke")
        return [x * 2]
"""


def test_cli_handler_errors_are_400_for_bad_input_and_500_with_request_id(tmp_path: Path) -> None:
    asyncio.run(_cli_handler(tmp_path))


async def _cli_handler(tmp_path: Path) -> None:
    (tmp_path / "serve_test_handlers.py").write_text(HANDLER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        model = tmp_path / "m.onnx"
        export_onnx(nn.Linear(3, 1), torch.randn(2, 3), model)
        async with running(str(model), handlers=("serve_test_handlers:Scale",)) as c:
            ok = await c.post("/v1/predict", json={"inputs": [[1.0, 2.0, 3.0]]})
            assert ok.status_code == 200
            bad = await c.post("/v1/predict", json={"inputs": [[-500.0, 2.0, 3.0]]})
            assert bad.status_code == 400 and "-100" in bad.json()["error"]["message"]
            broken = await c.post("/v1/predict", json={"inputs": [[500.0, 2.0, 3.0]]})
            assert broken.status_code == 500
            assert broken.headers["x-request-id"] in broken.json()["error"]["message"]
            v2 = await c.post(
                "/v2/models/model/infer",
                json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [500, 1, 1]}]},
            )
            assert v2.status_code == 500 and v2.headers["x-request-id"] in v2.json()["error"]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("serve_test_handlers", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"handler": "exec", "options": {}}, "built-in handlers"),
        ({"handler": "tokenizer", "options": {"tokenizer": "../../etc"}}, "outside the model folder"),
        ({"handler": "labels", "options": {"labels": ["a"], "colour": 1}}, "valid options"),
        ({"handler": "labels", "options": {"labels": "ab"}}, "list of class names"),
        ({"module": "os:system"}, "expected"),
        (["not", "an", "object"], "expected"),
    ],
)
def test_handler_json_is_data_and_is_checked(tmp_path: Path, spec: object, message: str) -> None:
    path = tmp_path / "handler.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ServeError, match=message):
        handler_from_file(str(tmp_path), str(path))


def test_handler_contract_checks_up_front() -> None:
    from torchkeep.runtime import TensorSpec

    with pytest.raises(ServeError, match="give one per column"):
        LabelHandler(labels=["a", "b", "c"]).setup(
            [TensorSpec("x", (None, 2), "float32")], [TensorSpec("y", (None, 2), "float32")]
        )
    with pytest.raises(ServeError, match=r"\[height, width\]"):
        ImageHandler(size=[8])
    with pytest.raises(ServeError, match=r"mypkg\.handlers:TextHandler"):
        ServeOptions(handlers=("no_colon",))
    with pytest.raises(ServeError, match="cannot import"):
        import_handler("no_such_module_xyz:Cls")
