"""Models that rebuild themselves: the registry, model files and the audit.

Builds on :mod:`torchkeep.checkpoint` and :mod:`torchkeep.io`. The public API is :mod:`torchkeep`.
"""

__all__: list[str] = []
