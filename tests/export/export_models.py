"""Small models covering the shapes users export (used by the export tests)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_dim: int = 10, out_dim: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


class TwoInputsDictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.a(x) + self.b(y))
        return {"logits": h, "score": h.sum(dim=1, keepdim=True)}


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, (h, _c) = self.lstm(x)
        return self.head(out[:, -1]), h[-1]


class TokenModel(nn.Module):
    """Dict (keyword) inputs with integer token ids and a float mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.out(h.sum(1) / attention_mask.sum(1, keepdim=True).clamp_min(1))


class DataDependent(nn.Module):
    """Branches on tensor values: graph capture (pt2/onnx/aoti) cannot export it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        if h.sum() > 0:
            return h * 2
        return h - 1


def cases() -> dict[str, tuple[nn.Module, object]]:
    """name → (model, example inputs), examples at batch 1 like the tutorials."""
    torch.manual_seed(0)
    return {
        "mlp": (MLP(), torch.randn(1, 10)),
        "cnn_bn": (CNN(), torch.randn(1, 3, 16, 16)),
        "two_inputs_dict_out": (TwoInputsDictOutput(), (torch.randn(1, 6), torch.randn(1, 3))),
        "transformer": (Encoder(), torch.randn(1, 5, 16)),
        "lstm": (LSTMClassifier(), torch.randn(1, 7, 8)),
    }
