"""Hot reload: watch a directory, verify each new version, then swap it in without dropping requests.

A poll thread looks for the newest version under the watched directory (a checkpoint
directory: highest step; an export directory: a rewritten ``export.json``). A candidate is
loaded (checksums are verified by the loader), must take the same inputs as the version being
served, and must answer a warm-up batch with finite, batch-first outputs. Only then is the
slot swapped; the batch already running keeps its reference to the old predictor and finishes
on it. A refused version is logged once and remembered, so it is not retried every poll; the
old version keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..errors import TorchkeepError
from ._batching import ModelSlot
from ._loading import check_compatible, find_version, load_slot, warm_up
from ._metrics import Metrics

__all__ = ["Watcher"]

logger = logging.getLogger(__name__)


class Watcher:
    """Poll ``directory`` every ``poll_s`` seconds and swap in verified new versions.

    Example:
        >>> w = Watcher("runs/exp1", get_slot=lambda: slot, set_slot=print,  # doctest: +SKIP
        ...             load_kwargs={"backend": None, "device": "cpu", "max_batch_size": 32}, poll_s=1.0)
        >>> w.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        directory: str,
        *,
        get_slot: Callable[[], ModelSlot],
        set_slot: Callable[[ModelSlot], None],
        load_kwargs: dict[str, Any],
        poll_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = directory
        self._get_slot = get_slot
        self._set_slot = set_slot
        self._load_kwargs = load_kwargs
        self._poll_s = poll_s
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused: dict[str, str] = {}

    def start(self) -> None:
        """Start polling in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="torchkeep-serve-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (a reload in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.check_once()
            except Exception:  # a broken directory must never stop the server
                logger.exception("hot reload: scanning %s failed; still serving the current version", self.directory)

    def check_once(self) -> bool:
        """Look once; swap if a new, valid version is there. Returns True when it swapped."""
        try:
            path, version = find_version(self.directory)
        except TorchkeepError as exc:
            logger.debug("hot reload: nothing to load in %s (%s)", self.directory, exc)
            return False
        current = self._get_slot()
        if version == current.version or version in self.refused:
            return False
        try:
            slot = load_slot(path, **self._load_kwargs)
            check_compatible(current.predictor.inputs, slot.predictor.inputs)
            warm_up(slot.predictor, (1, min(4, int(self._load_kwargs.get("max_batch_size", 1)))))
        except Exception as exc:
            self.refused[version] = f"{type(exc).__name__}: {exc}"
            if self._metrics is not None:
                self._metrics.observe_reload(False)
            logger.error(
                "hot reload: refused %s (%s: %s); still serving %s", path, type(exc).__name__, exc, current.version
            )
            return False
        self._set_slot(slot)
        if self._metrics is not None:
            self._metrics.observe_reload(True)
        logger.info("hot reload: now serving %s (was %s)", slot.version, current.version)
        return True
