"""What exporters say: backend errors shortened to their meaningful lines, warnings routed to logging."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

__all__ = ["capture_warnings", "summarize_error"]

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summarize_error(exc: BaseException, *, limit: int = 600) -> str:
    """The first meaningful lines of a backend's error message, without colour codes."""
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    out = " ".join(lines[:3])
    return out if len(out) <= limit else out[: limit - 3] + "..."


_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


# Backends that log chatter at WARNING during a normal export (e.g. torch.onnx's "torchvision is
# not installed" lines); quiet while we export unless torchkeep's own logging is at DEBUG.
_CHATTY_LOGGERS = ("torch", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def capture_warnings(fmt: str, collected: list[str]) -> Iterator[None]:
    """Route the warnings an exporter emits to logging instead of the user's terminal.

    Exporters warn a lot (deprecations of TorchScript, onnxscript internals, TracerWarnings).
    Deprecations go to DEBUG; anything else goes to INFO and, once per message, into
    ``collected`` (the report and ``export.json`` keep them). The backends' own loggers are
    raised to ERROR meanwhile, unless torchkeep logs at DEBUG (``torchkeep --debug``).
    """
    quiet = not logger.isEnabledFor(logging.DEBUG)
    levels = {name: logging.getLogger(name).level for name in _CHATTY_LOGGERS} if quiet else {}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if issubclass(w.category, _DEPRECATIONS):
            logger.debug("%s: %s", fmt, text)
        elif text not in collected:
            collected.append(text)
            logger.info("%s: %s", fmt, text)
