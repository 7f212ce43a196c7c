"""The Example blocks of the foundation modules run and stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "torchkeep.checkpoint._api",
    "torchkeep.io._codec",
    "torchkeep.io._decode",
    "torchkeep.io._dtypes",
    "torchkeep.io._format",
    "torchkeep.io._storage",
    "torchkeep.cli._files",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
