"""Export tests: parity runs through torchkeep.runtime.load_predictor once it exists."""

from __future__ import annotations

import pytest
from export_native import load_native

from torchkeep import runtime
from torchkeep.export import _parity


@pytest.fixture(autouse=True)
def _parity_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before the runtime package lands, verify with each format's own runtime instead.
    if not hasattr(runtime, "load_predictor"):
        monkeypatch.setattr(_parity, "load_runner", load_native)
