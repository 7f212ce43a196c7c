"""Fixtures for the distributed tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything unpickles while it runs."""
    import pickle

    import torch

    def refuse(*a: object, **k: object) -> object:
        raise AssertionError("pickle used on a load path")

    class Refused(pickle.Unpickler):
        def __init__(self, *a: object, **k: object) -> None:
            raise AssertionError("pickle used on a load path")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refused)
    monkeypatch.setattr(torch, "load", refuse)
