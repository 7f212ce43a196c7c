"""tk.audit finds each trap and nothing on clean models; tk.verify_roundtrip explains mismatches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchkeep as tk


class DynamicModel(nn.Module):
    """The tutorial's model: my_embed is a buffer, or (the trap) a plain attribute."""

    def __init__(self, input_size: int = 4, hidden_size: int = 2, use_buffer: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)
        rand_weight = torch.randn(hidden_size)
        if use_buffer:
            self.register_buffer("my_embed", rand_weight)
        else:
            self.my_embed = rand_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.my_embed


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layers = nn.ModuleList([Block(8), Block(8)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(8, 10)})
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.heads["cls"](self.pool(x).flatten(1))


def _after_forward(m: nn.Module) -> nn.Module:
    m(torch.randn(2, 3))  # old-style norms recompute `weight` as a plain (derived) attribute
    return m


def _kinds(model: nn.Module) -> list[tuple[str, str]]:
    return [(f.kind, f.path) for f in tk.audit(model)]


@pytest.mark.parametrize(
    "make",
    [
        TinyResNet,
        lambda: nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16),
        lambda: nn.LSTM(3, 4, num_layers=2),
        lambda: DynamicModel(use_buffer=True),
        lambda: nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)),
        lambda: _after_forward(nn.utils.spectral_norm(nn.Linear(3, 3))),
        lambda: _after_forward(nn.utils.weight_norm(nn.Linear(3, 3))),
        lambda: nn.LazyLinear(3),
    ],
    ids=["resnet-like", "transformer", "lstm", "dynamic-buffer", "weight-norm", "old-spectral", "old-wn", "lazy"],
)
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")
@pytest.mark.filterwarnings("ignore:Lazy modules are a new feature:UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_clean_models_have_no_findings(make) -> None:  # type: ignore[no-untyped-def]
    assert tk.audit(make()) == []


def test_plain_tensor_attribute_is_found() -> None:
    findings = tk.audit(DynamicModel(use_buffer=False))
    assert len(findings) == 1
    f = findings[0]
    assert (f.kind, f.path, f.severity) == ("tensor-attribute", "my_embed", "error")
    assert "register_buffer('my_embed', tensor)" in f.fix
    assert "float32[2]" in f.detail
    assert str(f).startswith("my_embed: ")


def test_nested_paths_and_containers() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.cache = {"k": [torch.zeros(3), (1, torch.ones(2))]}
            self.experts = [nn.Linear(2, 2), nn.Linear(2, 2)]
            self.by_name = {"a": nn.Linear(2, 3)}
            self.weights = [nn.Parameter(torch.ones(2))]
            self.tags = {"not", "tensors"}
            self.alias_list = [self.lin]  # also registered: not lost
            self.alias_view = self.lin.weight.detach()[0]  # shares storage with a saved weight

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Sequential(Inner())

    assert _kinds(Outer()) == [
        ("tensor-in-container", "inner.0.cache['k'][0]"),
        ("tensor-in-container", "inner.0.cache['k'][1][1]"),
        ("module-in-container", "inner.0.experts[0]"),
        ("module-in-container", "inner.0.experts[1]"),
        ("module-in-container", "inner.0.by_name['a']"),
        ("tensor-in-container", "inner.0.weights[0]"),
    ]
    by_path = {f.path: f for f in tk.audit(Outer())}
    assert "nn.ModuleList" in by_path["inner.0.experts[0]"].fix
    assert "nn.ModuleDict" in by_path["inner.0.by_name['a']"].fix
    assert "ParameterList" in by_path["inner.0.weights[0]"].fix
    assert "6 state values" in by_path["inner.0.experts[0]"].detail


def test_cycles_do_not_hang() -> None:
    m = nn.Linear(2, 2)
    loop: list[object] = []
    loop.append(loop)
    m.loop = loop
    assert tk.audit(m) == []


def test_non_persistent_buffer_read_by_forward_unregistered() -> None:
    class Unregistered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("noise", torch.randn(2), persistent=False)
            self.register_buffer("unused", torch.randn(2), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.noise

    assert [(f.kind, f.path, f.severity) for f in tk.audit(Unregistered())] == [
        ("non-persistent-buffer", "noise", "warning")
    ]


def test_non_persistent_buffer_registered_is_checked_against_fresh_builds() -> None:
    @tk.register(name="np-buffers")
    class NP(nn.Module):
        def __init__(self, n: int = 3) -> None:
            super().__init__()
            self.register_buffer("freqs", torch.arange(n, dtype=torch.float32), persistent=False)
            self.register_buffer("noise", torch.randn(n), persistent=False)
            self.register_buffer("counter", torch.zeros(1), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.freqs + self.noise + self.counter

    model = NP()
    assert [(f.path, "random" in f.detail) for f in tk.audit(model)] == [("noise", True)]
    model.counter += 1  # a running value kept in a non-persistent buffer: lost on save
    findings = {f.path: f for f in tk.audit(model)}
    assert set(findings) == {"noise", "counter"}
    assert "changed since __init__" in findings["counter"].detail
    assert findings["counter"].severity == "error"


@pytest.mark.slow
def test_registered_hugging_face_bert_is_clean() -> None:
    transformers = pytest.importorskip("transformers")
    config = {
        "vocab_size": 32,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 16,
    }

    @tk.register(name="audit-bert")
    def bert(cfg: dict) -> nn.Module:  # type: ignore[type-arg]
        return transformers.BertModel(transformers.BertConfig(**cfg))

    assert tk.audit(bert(config)) == []
    # unregistered, its deterministic non-persistent buffers can only be flagged as warnings
    unregistered = transformers.BertModel(transformers.BertConfig(**config))
    assert {f.severity for f in tk.audit(unregistered)} == {"warning"}


def test_verify_roundtrip_ok_for_registered_model() -> None:
    @tk.register(name="rt-ok")
    class Good(DynamicModel):
        pass

    model = Good(4, 3)
    model.train()
    result = tk.verify_roundtrip(model, torch.randn(2, 4))
    assert result.ok and bool(result)
    assert result.max_abs_diff == 0.0
    assert result.findings == []
    assert model.training  # mode restored
    assert str(result).startswith("ok:")


def test_verify_roundtrip_points_at_the_trap() -> None:
    @tk.register(name="rt-bad")
    class Bad(DynamicModel):
        pass

    result = tk.verify_roundtrip(Bad(use_buffer=False), torch.randn(2, 4))
    assert not result.ok
    assert result.max_abs_diff > 0
    assert [f.path for f in result.findings] == ["my_embed"]
    assert "the audit explains it" in result.message
    assert "my_embed: tensor float32[2] held as a plain attribute" in result.message


def test_verify_roundtrip_with_build_for_unregistered_models() -> None:
    assert tk.verify_roundtrip(TinyResNet().eval(), torch.randn(1, 3, 8, 8), build=TinyResNet).ok
    bad = tk.verify_roundtrip(
        DynamicModel(use_buffer=False), torch.randn(1, 4), build=lambda: DynamicModel(use_buffer=False)
    )
    assert not bad.ok and bad.findings[0].path == "my_embed"
    with pytest.raises(tk.ModelNotRegisteredError, match="pass build="):
        tk.verify_roundtrip(TinyResNet(), torch.randn(1, 3, 8, 8))


def test_verify_roundtrip_structured_outputs() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.bias = torch.randn(2)

        def forward(self, x: torch.Tensor) -> dict[str, object]:
            return {"a": self.a(x), "pair": (self.a(x) + self.bias, 3)}

    result = tk.verify_roundtrip(TwoHeads(), torch.randn(1, 2), build=TwoHeads)
    assert not result.ok
    assert "output['pair'][0]: max abs diff" in result.message
    assert "output['a']" not in result.message.splitlines()[0]
