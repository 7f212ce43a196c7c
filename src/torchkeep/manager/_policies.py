"""Retention as small composable policies that return keep masks.

A policy looks at every checkpoint in a directory (oldest step first) and answers, for each one,
"keep it?". The manager keeps a checkpoint when *any* policy keeps it, and always keeps the newest
one, so no policy can leave a run without something to resume from. Policies see only what the
files say about themselves (step, metrics, creation time), so retention after a restart is the
same as retention without one.

Example:
    >>> recs = [Record(step=s, metrics={"loss": l}) for s, l in [(1, 0.9), (2, 0.5), (3, 0.7), (4, 0.8)]]
    >>> KeepLastN(2).keep(recs)
    [False, False, True, True]
    >>> KeepBestK(1, "loss").keep(recs)
    [False, True, False, False]
    >>> KeepAny(KeepLastN(1), KeepBestK(1, "loss")).keep(recs)
    [False, True, False, True]
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import UsageError

__all__ = [
    "KeepAny",
    "combined_policy",
    "KeepBestK",
    "KeepEveryNSteps",
    "KeepLastN",
    "KeepNewerThan",
    "Policy",
    "Record",
    "metric_value",
]


@dataclass(frozen=True)
class Record:
    """What a policy may look at: one checkpoint's step, metrics and creation time.

    Example:
        >>> Record(step=100, metrics={"val_loss": 0.3}).step
        100
    """

    step: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    created_at: _dt.datetime | None = None


@runtime_checkable
class Policy(Protocol):
    """Anything with ``keep(records) -> list[bool]`` (records sorted by step, oldest first)."""

    def keep(self, records: Sequence[Record]) -> list[bool]:
        """One bool per record: True keeps it."""


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive int, got {value!r}", argument=name)
    return value


def metric_value(metrics: Mapping[str, Any], name: str) -> float | None:
    """The metric as a finite float, or None when it is missing, not a number, nan or inf.

    Example:
        >>> metric_value({"loss": 0.5}, "loss"), metric_value({"loss": "nan"}, "loss")
        (0.5, None)
    """
    v = metrics.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class KeepLastN:
    """Keep the ``n`` checkpoints with the highest steps.

    Example:
        >>> KeepLastN(1).keep([Record(1), Record(2)])
        [False, True]
    """

    n: int

    def __post_init__(self) -> None:
        _positive_int("KeepLastN.n", self.n)

    def keep(self, records: Sequence[Record]) -> list[bool]:
        order = sorted(range(len(records)), key=lambda i: records[i].step, reverse=True)
        kept = set(order[: self.n])
        return [i in kept for i in range(len(records))]


@dataclass(frozen=True)
class KeepBestK:
    """Keep the ``k`` checkpoints with the best value of ``metric`` (``mode`` "min" or "max").

    Checkpoints without the metric (or with nan/inf) never count as best. Ties go to the newer
    checkpoint.

    Example:
        >>> KeepBestK(1, "acc", mode="max").keep([Record(1, {"acc": 0.9}), Record(2, {"acc": 0.8})])
        [True, False]
    """

    k: int
    metric: str
    mode: str = "min"

    def __post_init__(self) -> None:
        _positive_int("KeepBestK.k", self.k)
        if not isinstance(self.metric, str) or not self.metric:
            raise UsageError(
                f"KeepBestK.metric must be a metric name such as 'val_loss', got {self.metric!r}",
                argument="KeepBestK.metric",
            )
        if self.mode not in ("min", "max"):
            raise UsageError(f"KeepBestK.mode must be 'min' or 'max', got {self.mode!r}", argument="KeepBestK.mode")

    def ranking(self, records: Sequence[Record]) -> list[int]:
        """Indices of records that have the metric, best first."""
        scored = [(metric_value(r.metrics, self.metric), r.step, i) for i, r in enumerate(records)]
        sign = 1.0 if self.mode == "min" else -1.0
        valid = [(sign * v, -step, i) for v, step, i in scored if v is not None]
        return [i for _, _, i in sorted(valid)]

    def keep(self, records: Sequence[Record]) -> list[bool]:
        kept = set(self.ranking(records)[: self.k])
        return [i in kept for i in range(len(records))]


@dataclass(frozen=True)
class KeepEveryNSteps:
    """Keep checkpoints whose step is a multiple of ``n`` (milestones that outlive keep_last).

    Example:
        >>> KeepEveryNSteps(1000).keep([Record(500), Record(1000), Record(1500), Record(2000)])
        [False, True, False, True]
    """

    n: int

    def __post_init__(self) -> None:
        _positive_int("KeepEveryNSteps.n", self.n)

    def keep(self, records: Sequence[Record]) -> list[bool]:
        return [r.step % self.n == 0 for r in records]


@dataclass(frozen=True)
class KeepNewerThan:
    """Keep checkpoints created less than ``max_age`` ago (a timedelta, or seconds).

    ``now`` pins the clock (for tests); by default it is the current UTC time. A checkpoint
    whose creation time is unknown is kept (age cannot be judged, so it is not deleted for it).

    Example:
        >>> now = _dt.datetime(2026, 1, 2, tzinfo=_dt.timezone.utc)
        >>> old = Record(1, created_at=now - _dt.timedelta(days=3))
        >>> KeepNewerThan(_dt.timedelta(days=1), now=now).keep([old, Record(2, created_at=now)])
        [False, True]
    """

    max_age: _dt.timedelta | float
    now: _dt.datetime | None = None

    def __post_init__(self) -> None:
        age = self.max_age
        if isinstance(age, bool) or not isinstance(age, (_dt.timedelta, int, float)):
            raise UsageError(
                f"KeepNewerThan.max_age must be a timedelta or seconds, got {age!r}", argument="KeepNewerThan.max_age"
            )
        seconds = age.total_seconds() if isinstance(age, _dt.timedelta) else float(age)
        if not seconds > 0:
            raise UsageError(f"KeepNewerThan.max_age must be positive, got {age!r}", argument="KeepNewerThan.max_age")
        now = self.now
        if now is not None and (not isinstance(now, _dt.datetime) or now.utcoffset() is None):
            # checkpoint times are timezone-aware (UTC): a naive or non-datetime clock fails only
            # later, inside retention, after a save has already been written
            raise UsageError(
                f"KeepNewerThan.now must be a timezone-aware datetime such as datetime.now(timezone.utc), got {now!r}",
                argument="KeepNewerThan.now",
            )

    def keep(self, records: Sequence[Record]) -> list[bool]:
        age = self.max_age if isinstance(self.max_age, _dt.timedelta) else _dt.timedelta(seconds=self.max_age)
        now = self.now or _dt.datetime.now(_dt.timezone.utc)
        return [r.created_at is None or now - r.created_at < age for r in records]


@dataclass(frozen=True, init=False)
class KeepAny:
    """Keep what any of the given policies keeps (the union of their masks).

    Example:
        >>> KeepAny(KeepLastN(1), KeepEveryNSteps(2)).keep([Record(1), Record(2), Record(3)])
        [False, True, True]
    """

    policies: tuple[Policy, ...]

    def __init__(self, *policies: Policy) -> None:
        for p in policies:
            if not isinstance(p, Policy):
                raise TypeError(f"KeepAny takes retention policies (with a keep() method), got {type(p).__qualname__}")
        object.__setattr__(self, "policies", tuple(policies))

    def keep(self, records: Sequence[Record]) -> list[bool]:
        mask = [False] * len(records)
        for p in self.policies:
            got = p.keep(records)
            if len(got) != len(records):
                raise UsageError(
                    f"{type(p).__qualname__}.keep returned {len(got)} flags for {len(records)} records; a retention "
                    "policy must return one bool per record",
                    argument="retention",
                )
            mask = [a or bool(b) for a, b in zip(mask, got, strict=True)]
        return mask


def combined_policy(
    *,
    keep_last: int | None = None,
    keep_best: int | None = None,
    monitor: str | None = None,
    mode: str = "min",
    keep_every: int | None = None,
    retention: Policy | Sequence[Policy] | None = None,
) -> KeepAny | None:
    """The one policy a manager applies, from its keyword arguments; None when nothing is pruned.

    Raises:
        UsageError: ``keep_best`` without ``monitor``, or a count that is not a positive int.

    Example:
        >>> combined_policy(keep_last=2, keep_every=10).keep([Record(step=s) for s in (10, 11, 12, 13)])
        [True, False, True, True]
        >>> combined_policy() is None
        True
    """
    if keep_best is not None and not monitor:
        raise UsageError(
            "keep_best needs monitor=, the name of the metric that defines 'best' (e.g. 'val_loss')",
            argument="monitor",
        )
    policies: list[Policy] = []
    if keep_last is not None:
        policies.append(KeepLastN(keep_last))
    if keep_best is not None:
        policies.append(KeepBestK(keep_best, str(monitor), mode))
    if keep_every is not None:
        policies.append(KeepEveryNSteps(keep_every))
    if retention is not None:
        extra = [retention] if isinstance(retention, Policy) else list(retention)
        policies.extend(KeepAny(*extra).policies)
    return KeepAny(*policies) if policies else None
