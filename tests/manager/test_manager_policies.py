"""Retention policies, table-tested: each row is (records, policy, expected keep mask)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import torchkeep as tk
from torchkeep.manager import KeepAny, KeepBestK, KeepEveryNSteps, KeepLastN, KeepNewerThan, Record

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def recs(*rows: tuple[int, Any]) -> list[Record]:
    return [Record(step=s, metrics={} if v is None else {"loss": v}) for s, v in rows]


def aged(*rows: tuple[int, float | None]) -> list[Record]:
    return [Record(step=s, created_at=None if h is None else NOW - dt.timedelta(hours=h)) for s, h in rows]


TABLE = [
    # keep last N
    ("last1", recs((1, None), (2, None), (3, None)), KeepLastN(1), [False, False, True]),
    ("last2-of-1", recs((5, None)), KeepLastN(2), [True]),
    ("last2-unsorted", recs((30, None), (10, None), (20, None)), KeepLastN(2), [True, False, True]),
    ("last-empty", [], KeepLastN(3), []),
    # keep best K (min / max), missing and non-finite metrics never best, ties -> newer
    ("best1-min", recs((1, 0.5), (2, 0.3), (3, 0.4)), KeepBestK(1, "loss"), [False, True, False]),
    ("best2-min", recs((1, 0.5), (2, 0.3), (3, 0.4)), KeepBestK(2, "loss"), [False, True, True]),
    ("best1-max", recs((1, 0.5), (2, 0.3), (3, 0.4)), KeepBestK(1, "loss", "max"), [True, False, False]),
    ("best-missing", recs((1, None), (2, 0.9), (3, None)), KeepBestK(2, "loss"), [False, True, False]),
    ("best-nan", recs((1, "nan"), (2, 0.9), (3, float("inf"))), KeepBestK(1, "loss"), [False, True, False]),
    ("best-tie-newer", recs((1, 0.1), (2, 0.1)), KeepBestK(1, "loss"), [False, True]),
    ("best-bool-not-number", recs((1, True), (2, 0.5)), KeepBestK(1, "loss", "max"), [False, True]),
    ("best-int", recs((1, 3), (2, 2)), KeepBestK(1, "loss"), [False, True]),
    # keep every N steps
    (
        "every",
        recs((0, None), (500, None), (1000, None), (1500, None)),
        KeepEveryNSteps(1000),
        [True, False, True, False],
    ),
    # keep newer than
    ("newer", aged((1, 30), (2, 2), (3, 0.5)), KeepNewerThan(dt.timedelta(hours=3), now=NOW), [False, True, True]),
    ("newer-seconds", aged((1, 2), (2, 0.5)), KeepNewerThan(3600, now=NOW), [False, True]),
    ("newer-unknown-age", aged((1, None), (2, 48)), KeepNewerThan(60, now=NOW), [True, False]),
    # union
    (
        "last1+best1",
        recs((1, 0.1), (2, 0.5), (3, 0.9)),
        KeepAny(KeepLastN(1), KeepBestK(1, "loss")),
        [True, False, True],
    ),
    (
        "last2+every2",
        recs((1, None), (2, None), (3, None), (4, None), (5, None)),
        KeepAny(KeepLastN(2), KeepEveryNSteps(2)),
        [False, True, False, True, True],
    ),
    ("none", recs((1, None), (2, None)), KeepAny(), [False, False]),
]


@pytest.mark.parametrize(("records", "policy", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_policy_table(records: list[Record], policy: Any, expected: list[bool]) -> None:
    assert policy.keep(records) == expected


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KeepLastN(0), "KeepLastN.n must be a positive int"),
        (lambda: KeepLastN(True), "KeepLastN.n must be a positive int"),
        (lambda: KeepBestK(2, "loss", mode="lowest"), "'min' or 'max'"),
        (lambda: KeepBestK(1, ""), "metric name"),
        (lambda: KeepEveryNSteps(-5), "positive int"),
        (lambda: KeepNewerThan(0), "must be positive"),
        (lambda: KeepNewerThan("1h"), "timedelta or seconds"),  # type: ignore[arg-type]
    ],
)
def test_bad_policy_arguments(make: Any, match: str) -> None:
    with pytest.raises(tk.UsageError, match=match) as info:
        make()
    assert info.value.argument.split(".")[0] in {"KeepLastN", "KeepBestK", "KeepEveryNSteps", "KeepNewerThan"}


def test_keep_any_rejects_non_policies() -> None:
    with pytest.raises(TypeError, match="retention policies"):
        KeepAny(3)  # type: ignore[arg-type]
