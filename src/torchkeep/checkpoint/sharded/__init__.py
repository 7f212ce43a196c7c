"""Sharded checkpoints (one directory per step, one shard per rank); public as :mod:`torchkeep.distributed`."""

__all__: list[str] = []
