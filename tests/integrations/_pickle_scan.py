"""One scanner for every integration test: nothing a run writes may be a pickle.

Each file must be a safetensors/torchkeep file (its header parses), JSON, or UTF-8 text that is
not a protocol-0 pickle. A ``torch.save`` zip (``PK``), a raw pickle (``0x80``) or any other
binary is reported with its path.
"""

from __future__ import annotations

import json
import pickletools
from pathlib import Path

import safetensors

from torchkeep.io._external import BLOB_DIR, content_hash, is_blob_name


def _is_safetensors(path: Path) -> bool:
    head = path.read_bytes()[:9]
    if len(head) < 9 or head[8:9] != b"{":
        return False
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception:
        return False
    return True


def _parses_as_pickle(data: bytes) -> bool:
    try:
        ops = list(pickletools.genops(data))
    except Exception:
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


def classify(path: Path) -> str:
    """'safetensors', 'blob', 'json', 'text', or 'PICKLE/BINARY: why' for one file.

    A 'blob' is one tensor's raw bytes in a deduplicated directory's ``blobs/``, named by their
    xxh3-128 (checked here): loaders read it as a dtype and a shape, nothing in it is executable.
    """
    data = path.read_bytes()
    if path.parent.name == BLOB_DIR and is_blob_name(path.name):
        return "blob" if content_hash(data) == path.name else "PICKLE/BINARY: a blob whose bytes do not match its name"
    if data[:2] == b"PK":
        return "PICKLE/BINARY: a zip (torch.save) file"
    if data[:1] == b"\x80":
        return "PICKLE/BINARY: a pickle"
    if _is_safetensors(path):
        return "safetensors"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "PICKLE/BINARY: binary, neither safetensors nor text"
    if _parses_as_pickle(data):
        return "PICKLE/BINARY: a protocol-0 pickle"
    try:
        json.loads(text)
    except ValueError:
        return "text"
    return "json"


def scan(*roots: Path) -> dict[str, str]:
    """Classify every file under ``roots``; fail listing each pickle or unknown binary.

    Returns {relative path: kind} so a test can also assert what is there.
    """
    kinds: dict[str, str] = {}
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            kinds[str(path.relative_to(root))] = classify(path)
    bad = {p: k for p, k in kinds.items() if k.startswith("PICKLE")}
    assert not bad, f"pickle or unknown binary files written: {bad}"
    assert kinds, f"no files were written under {roots}"
    return kinds
