"""A model repository on disk: ``REPO/name/version/``, like Triton's layout, and version policies.

Each ``REPO/name/`` folder is one model; each of its integer-named subfolders is one version
and holds anything ``torchkeep serve`` can serve alone: an export directory, a model file, or a
``tk.CheckpointManager`` directory (newest checkpoint). A ``handler.json`` next to the versions
names a built-in request handler (see :mod:`torchkeep.serve._handlers`); it is read as data,
never imported. The repository is hostile input: names are checked, links out are not followed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import ServeError
from ..io._manifest import MANIFEST_NAME

__all__ = ["HANDLER_FILE", "VersionPolicy", "is_repository", "model_versions", "scan_repository"]

HANDLER_FILE = "handler.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MODEL_SUFFIXES = (".safetensors", ".pt2", ".onnx", ".pt", ".ts", ".engine", ".plan")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are loaded: the newest ``n``, all, or the listed ones.

    Example:
        >>> VersionPolicy.parse("latest:2").select([1, 2, 3])
        [2, 3]
        >>> VersionPolicy.parse("specific:1,3").select([1, 2, 3])
        [1, 3]
        >>> VersionPolicy.parse("all").select([3, 1])
        [1, 3]
    """

    kind: str = "latest"
    n: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest[:N]``, ``all`` or ``specific:V1,V2``.

        Raises:
            ServeError: anything else (the message shows the valid forms).
        """
        usage = "expected 'latest', 'latest:N', 'all' or 'specific:1,2'"
        kind, _, rest = text.strip().partition(":")
        try:
            if kind == "all" and not rest:
                return cls("all")
            if kind == "latest":
                n = int(rest) if rest else 1
                if n < 1:
                    raise ValueError(n)
                return cls("latest", n)
            if kind == "specific" and rest:
                versions = tuple(sorted({int(v) for v in rest.split(",")}))
                if min(versions) < 1:
                    raise ValueError(versions)
                return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ServeError(f"--version-policy {text!r}: {usage}", option="version_policy")

    def select(self, available: list[int]) -> list[int]:
        """The versions to load among ``available``, oldest first."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.n :]
        return [v for v in ordered if v in self.versions]

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.n}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


def _looks_servable(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_NAME)) or any(
        n.endswith(_MODEL_SUFFIXES) and not n.startswith(".") for n in os.listdir(path)
    )


def is_repository(path: str) -> bool:
    """True when ``path`` is a directory laid out as ``name/version/`` (and not itself a model).

    Example:
        >>> is_repository("models/")  # doctest: +SKIP
        True
    """
    if not os.path.isdir(path) or _looks_servable(path):
        return False
    return bool(scan_repository(path))


def model_versions(model_dir: str) -> dict[int, str]:
    """The integer-named version folders under one model folder: ``{version: path}``."""
    out: dict[int, str] = {}
    try:
        names = os.listdir(model_dir)
    except OSError:
        return out
    for name in names:
        path = os.path.join(model_dir, name)
        if name.isdigit() and int(name) > 0 and os.path.isdir(path) and not os.path.islink(path):
            out[int(name)] = path
    return out


def scan_repository(repo: str) -> dict[str, dict[int, str]]:
    """Every model folder with at least one version: ``{name: {version: path}}``.

    Folders whose names are not plain (letters, digits, ``_ . -``), hidden folders and links
    are skipped: a name travels into URLs and metric labels.
    """
    out: dict[str, dict[int, str]] = {}
    try:
        names = sorted(os.listdir(repo))
    except OSError as exc:
        raise ServeError(f"{repo}: cannot list the model repository ({exc})") from exc
    for name in names:
        path = os.path.join(repo, name)
        if not _NAME.match(name) or not os.path.isdir(path) or os.path.islink(path):
            continue
        versions = model_versions(path)
        if versions:
            out[name] = versions
    return out
