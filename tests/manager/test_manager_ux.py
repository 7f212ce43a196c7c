"""The manager as a new user meets it (issue 18, item 17): a skipped checkpoint is reported once."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from _manager_helpers import flip_byte

import torchkeep as tk


def test_skip_message_is_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Linear(2, 2)
    with tk.CheckpointManager(tmp_path, model=model) as mgr:
        mgr.save(step=1)
        mgr.save(step=2)
        newest = mgr.latest.path  # type: ignore[union-attr]
    flip_byte(newest)  # type: ignore[arg-type]
    with (
        caplog.at_level(logging.DEBUG, logger="torchkeep"),
        warnings.catch_warnings(record=True) as caught,
        tk.CheckpointManager(tmp_path, model=torch.nn.Linear(2, 2)) as mgr,
    ):
        warnings.simplefilter("always")
        assert mgr.restore().step == 1  # type: ignore[union-attr]
    skips = [str(w.message) for w in caught if "skipping checkpoint" in str(w.message)]
    assert len(skips) == 1 and skips[0].count(str(newest)) == 1
    assert not [r for r in caplog.records if "skipping checkpoint" in r.getMessage()]  # not logged as well
