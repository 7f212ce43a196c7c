"""Bytes, trees and files: the lowest layer of torchkeep.

The codec (Python values to a typed JSON tree plus named tensors, and back), the file format
(streaming writer, mmap reader, checksums), storage (local and fsspec, atomic commit) and the
``export.json`` manifest. Nothing here knows about models, optimizers or training; nothing here
imports from another torchkeep layer. The public API is :mod:`torchkeep`.
"""

__all__: list[str] = []
