"""torchkeep inside Lightning (the ``lightning`` package): ``Trainer(plugins=[TorchkeepCheckpointIO()])``.

Every checkpoint the Trainer writes (``ModelCheckpoint``'s top-k, ``last.ckpt``,
``every_n_train_steps``, ``trainer.save_checkpoint``) becomes a torchkeep file under the name
Lightning chose: no pickle, atomic, checksummed. ``trainer.fit(ckpt_path="last")`` and
``Model.load_from_checkpoint(path)`` keep working; importing this module teaches
``load_from_checkpoint`` to read torchkeep files (any other file still goes to Lightning's own
loader). A remote ``dirpath`` (``s3://...``) works through fsspec. For the ``pytorch_lightning``
package use :mod:`torchkeep.integrations.pytorch_lightning`.

Example:
    >>> import lightning as L
    >>> from torchkeep.integrations.lightning import TorchkeepCheckpointIO
    >>> trainer = L.Trainer(plugins=[TorchkeepCheckpointIO()], max_epochs=1, logger=False)
    >>> type(trainer.strategy.checkpoint_io).__name__
    'TorchkeepCheckpointIO'
"""

from __future__ import annotations

from typing import Any

from ..errors import missing_dependency
from ._lightning_io import TorchkeepIO, patch_load_from_checkpoint

try:
    import lightning.pytorch.core.saving  # noqa: F401  (patched below)
    from lightning.fabric.plugins import CheckpointIO
except ImportError as exc:
    raise missing_dependency("lightning", "lightning", "torchkeep.integrations.lightning") from exc

__all__ = ["TorchkeepCheckpointIO"]


class TorchkeepCheckpointIO(TorchkeepIO, CheckpointIO):  # type: ignore[misc]
    """Lightning ``CheckpointIO`` plugin writing torchkeep files: ``Trainer(plugins=[TorchkeepCheckpointIO()])``.

    Args:
        storage_options: fsspec options for a remote ``dirpath`` (``endpoint_url``, ``key``, ...).
        dedup: store each distinct large tensor once per local ``dirpath`` (``blobs/``), so a
            fine-tune writes the frozen weights once and then only what changed; the blobs no
            checkpoint needs are removed when ``ModelCheckpoint`` deletes one.

    Example:
        >>> import torch, tempfile, os
        >>> io = TorchkeepCheckpointIO()
        >>> p = os.path.join(tempfile.mkdtemp(), "last.ckpt")
        >>> io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, p)
        >>> io.load_checkpoint(p)["global_step"]
        3
    """

    def __init__(self, *, storage_options: dict[str, Any] | None = None, dedup: bool = False) -> None:
        TorchkeepIO.__init__(self, storage_options=storage_options, dedup=dedup)


patch_load_from_checkpoint("lightning.pytorch.core.saving")
