"""``torchkeep serve``: an inference server with dynamic batching, health, metrics and hot reload.

One core (:class:`ServingCore`: loaded models and versions, each a :class:`LoadedModel` with
its predictor, batcher, handler and specs) and front ends on it: ``/predict`` + ``/v1``, the
Open Inference Protocol over REST (``/v2``) and gRPC (``--grpc-port``).

Needs the ``serve`` extra (FastAPI, uvicorn), imported only when an app is built.

Example:
    >>> from torchkeep.serve import ServeOptions, create_app
    >>> opts = ServeOptions(max_batch_size=32, max_wait_ms=2)
    >>> app = create_app("export/", options=opts)  # doctest: +SKIP
"""

from ._app import Server, create_app
from ._batching import Batcher, ModelSlot
from ._core import LoadedModel, ServingCore
from ._handlers import Handler, ImageHandler, LabelHandler, TokenizerHandler
from ._inputs import Reject
from ._metrics import Metrics
from ._options import ServeOptions
from ._repository import VersionPolicy
from ._run import app_from_env, serve

__all__ = [
    "Batcher",
    "Handler",
    "ImageHandler",
    "LabelHandler",
    "LoadedModel",
    "Metrics",
    "ModelSlot",
    "Reject",
    "ServeOptions",
    "Server",
    "ServingCore",
    "TokenizerHandler",
    "VersionPolicy",
    "app_from_env",
    "create_app",
    "serve",
]
