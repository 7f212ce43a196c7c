"""``torchkeep serve``: an inference server with dynamic batching, health, metrics and hot reload.

Needs the ``serve`` extra (FastAPI, uvicorn), imported only when an app is built.

Example:
    >>> from torchkeep.serve import ServeOptions, create_app
    >>> opts = ServeOptions(max_batch_size=32, max_wait_ms=2)
    >>> app = create_app("export/", options=opts)  # doctest: +SKIP
"""

from ._app import Server, create_app
from ._batching import Batcher, ModelSlot
from ._metrics import Metrics
from ._options import ServeOptions
from ._run import app_from_env, serve

__all__ = ["Batcher", "Metrics", "ModelSlot", "ServeOptions", "Server", "app_from_env", "create_app", "serve"]
