"""The Example blocks of the foundation modules run and stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "torchkeep._api",
    "torchkeep._codec",
    "torchkeep._decode",
    "torchkeep._dtypes",
    "torchkeep._format",
    "torchkeep._storage",
    "torchkeep.cli._files",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
