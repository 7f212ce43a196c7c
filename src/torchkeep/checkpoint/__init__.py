"""Training checkpoints: collecting and restoring state, one-file and sharded steps.

Builds on :mod:`torchkeep.io` only. ``sharded/`` holds the ``torch.distributed.checkpoint``
planner and storage, reached by users as :mod:`torchkeep.distributed`. The public API is
:mod:`torchkeep`.
"""

__all__: list[str] = []
