"""Drop-in adapters for training frameworks: each keeps its own loop and gains torchkeep files.

Nothing here is imported by ``import torchkeep``; import the module for your framework, which
needs that framework installed (``pip install 'torchkeep[lightning]'``, ``[transformers]``,
``[accelerate]``):

``torchkeep.integrations.lightning``           ``TorchkeepCheckpointIO`` for ``lightning``
``torchkeep.integrations.pytorch_lightning``   the same plugin for the ``pytorch_lightning`` package
``torchkeep.integrations.transformers``        ``TorchkeepTrainer`` and ``to_pretrained``
``torchkeep.integrations.accelerate``          ``save_state`` / ``load_state`` for ``Accelerator``

Each adapter calls only torchkeep's public checkpoint API (``tk.save_checkpoint``,
``tk.load_checkpoint``, ``tk.read_info``, ``tk.load``), so every file it writes is a checksummed
torchkeep file written atomically, and no load path unpickles.

Example:
    >>> import torchkeep.integrations as integrations
    >>> integrations.__all__
    []
"""

__all__: list[str] = []
