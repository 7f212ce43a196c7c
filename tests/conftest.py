"""Shared fixtures. Every test writes under tmp_path; nothing touches the network."""

from __future__ import annotations

import os

import pytest
import torch

# Keep torch from oversubscribing the 2-core CI machine when pytest-xdist runs two workers.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
