"""Request handlers: code between a front end and the model (text -> token ids, image bytes -> tensor).

The contract is small (in the spirit of LitServe's ``decode_request``/``encode_response``):

* :meth:`Handler.setup` is called once with the model's input and output specs, and returns
  the specs clients see (``inputs``, ``outputs``); it checks its options up front.
* :meth:`Handler.preprocess` turns a batch of client inputs (already checked against the
  handler's input specs: names, dtypes, batch dimension) into the model's input batches.
* :meth:`Handler.postprocess` turns the model's output batches into the client's outputs.

Bad client input is raised as :class:`torchkeep.errors.UsageError` (the server answers 400);
any other exception is a server fault (500 with a request id in the log).

A model folder declares a BUILT-IN handler in ``handler.json``, which is data, never code::

    {"handler": "tokenizer", "options": {"tokenizer": "tokenizer", "max_length": 32}}

Your own class is only imported when the operator names it on the command line
(``--handler mypkg.handlers:MyHandler``): a file in a repository never makes the server
import code.
"""

from __future__ import annotations

import importlib
import io
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ServeError, UsageError, missing_dependency
from ..runtime._base import TensorSpec

__all__ = [
    "BUILTIN_HANDLERS",
    "Handler",
    "ImageHandler",
    "LabelHandler",
    "TokenizerHandler",
    "handler_from_file",
    "import_handler",
]

_MAX_HANDLER_JSON = 64 * 1024


class Handler:
    """Base class of request handlers; override what you need (identity by default).

    Example:
        >>> class Doubler(Handler):
        ...     def preprocess(self, inputs):
        ...         return [x * 2 for x in inputs]
        >>> h = Doubler()
        >>> specs = [TensorSpec("x", (None, 2), "float32")]
        >>> h.setup(specs, specs) == (specs, specs)
        True
        >>> h.preprocess([np.ones((1, 2), np.float32)])[0].tolist()
        [[2.0, 2.0]]
    """

    def setup(
        self, model_inputs: Sequence[TensorSpec], model_outputs: Sequence[TensorSpec]
    ) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Check the handler fits the model; return ``(client input specs, client output specs)``."""
        return list(model_inputs), list(model_outputs)

    def preprocess(self, inputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Client input batches (in client-spec order) -> model input batches (model order)."""
        return inputs

    def postprocess(self, outputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Model output batches -> client output batches (client-spec order)."""
        return outputs


def _texts(batch: np.ndarray[Any, Any], what: str) -> list[str]:
    out = []
    for item in batch.reshape(-1).tolist():
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{what}: an element is not UTF-8 text; send UTF-8 encoded strings") from None
        if not isinstance(item, str):
            raise UsageError(f"{what}: found {type(item).__name__}, expected a string")
        out.append(item)
    return out


def _check_options(name: str, options: dict[str, Any], allowed: dict[str, str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(f"{k} ({v})" for k, v in allowed.items())
        raise ServeError(f"handler {name!r}: unknown option(s) {unknown}; valid options: {valid}", option="handler")


class LabelHandler(Handler):
    """Add a ``label`` output: the name of the highest-scoring class of the first output.

    Args:
        labels: class names, index ``i`` naming column ``i`` of the model's first output.

    Example:
        >>> h = LabelHandler(labels=["cat", "dog"])
        >>> _ = h.setup([TensorSpec("x", (None, 3), "float32")], [TensorSpec("logits", (None, 2), "float32")])
        >>> h.postprocess([np.array([[0.1, 0.9]], np.float32)])[1].tolist()
        [b'dog']
    """

    def __init__(self, *, labels: Sequence[str]) -> None:
        if isinstance(labels, str) or not labels or not all(isinstance(x, str) for x in labels):
            raise ServeError(f"labels={labels!r}: expected a list of class names such as ['cat', 'dog']")
        self.labels = [x.encode() for x in labels]

    def setup(
        self, model_inputs: Sequence[TensorSpec], model_outputs: Sequence[TensorSpec]
    ) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Check the first output has one column per label."""
        first = model_outputs[0]
        width = first.shape[-1] if first.shape else None
        if width is not None and width != len(self.labels):
            raise ServeError(
                f"labels: {len(self.labels)} names for an output '{first.name}' of width {width}; give one per column"
            )
        return list(model_inputs), [*model_outputs, TensorSpec("label", (None,), "bytes")]

    def postprocess(self, outputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Append the label of each row's arg-max."""
        scores = outputs[0].reshape(outputs[0].shape[0], -1)
        idx = scores.argmax(axis=1)
        table = np.array(self.labels, dtype=object)
        return [*outputs, table[np.minimum(idx, len(self.labels) - 1)]]


class TokenizerHandler(Handler):
    """Text in (``BYTES``), token ids to the model: a ``transformers`` tokenizer saved in the model folder.

    Every text is padded (and truncated) to ``max_length`` tokens, so requests batch together.
    Model inputs are filled by name from the tokenizer's output (``input_ids``,
    ``attention_mask``, ``token_type_ids``).

    Args:
        tokenizer: folder written by ``tokenizer.save_pretrained`` (relative to the model folder).
        max_length: tokens per text.
        input_name: the client's input name.
        labels: optional class names for a ``label`` output (see :class:`LabelHandler`).

    Example:
        >>> h = TokenizerHandler(tokenizer="models/bert/tokenizer", max_length=16)  # doctest: +SKIP
    """

    def __init__(
        self, *, tokenizer: str, max_length: int = 128, input_name: str = "text", labels: Sequence[str] | None = None
    ) -> None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 1 <= max_length <= 65536:
            raise ServeError(f"max_length={max_length!r}: expected an integer in [1, 65536]", option="handler")
        if not isinstance(tokenizer, str) or not os.path.isdir(tokenizer):
            raise ServeError(
                f"tokenizer={tokenizer!r}: expected the folder a tokenizer was saved to with save_pretrained",
                option="handler",
            )
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise missing_dependency("transformers", "serve", "the tokenizer handler") from None
        try:
            # local_files_only: never reach the hub; no trust_remote_code: never import repo code.
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except Exception as exc:
            raise ServeError(f"tokenizer={tokenizer!r}: cannot load it ({type(exc).__name__}: {exc})") from exc
        self.max_length = max_length
        self.input_name = input_name
        self.labels = LabelHandler(labels=labels) if labels is not None else None
        self._model_inputs: list[TensorSpec] = []

    def setup(
        self, model_inputs: Sequence[TensorSpec], model_outputs: Sequence[TensorSpec]
    ) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Check the tokenizer produces every model input."""
        produced = set(self._encode([""]))
        missing = [s.name for s in model_inputs if s.name not in produced]
        if missing:
            raise ServeError(
                f"tokenizer handler: the model takes {missing}, which the tokenizer does not produce "
                f"(it gives {sorted(produced)}); export the model with inputs named like the tokenizer's"
            )
        self._model_inputs = list(model_inputs)
        outputs = list(model_outputs)
        if self.labels is not None:
            _, outputs = self.labels.setup(model_inputs, model_outputs)
        return [TensorSpec(self.input_name, (None,), "bytes")], outputs

    def _encode(self, texts: list[str]) -> dict[str, np.ndarray[Any, Any]]:
        enc = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="np"
        )
        return {k: np.asarray(v) for k, v in enc.items()}

    def preprocess(self, inputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Tokenize each text; one array per model input."""
        enc = self._encode(_texts(inputs[0], self.input_name))
        return [enc[s.name].astype(s.dtype if s.dtype != "bfloat16" else "float32") for s in self._model_inputs]

    def postprocess(self, outputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """The model's outputs (plus ``label`` when labels were given)."""
        return self.labels.postprocess(outputs) if self.labels is not None else outputs


class ImageHandler(Handler):
    """Encoded images in (``BYTES``: PNG, JPEG, ...), a normalized float batch ``[N, 3, H, W]`` to the model.

    Args:
        size: ``[height, width]`` every image is resized to (default: the model's fixed dims).
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        input_name: the client's input name.
        max_pixels: larger images are refused (decompression bombs).
        labels: optional class names for a ``label`` output.

    Example:
        >>> h = ImageHandler(size=[32, 32], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    """

    def __init__(
        self,
        *,
        size: Sequence[int] | None = None,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        input_name: str = "image",
        max_pixels: int = 40_000_000,
        labels: Sequence[str] | None = None,
    ) -> None:
        if size is not None and (len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size)):
            raise ServeError(f"size={size!r}: expected [height, width] such as [224, 224]", option="handler")
        if len(mean) != 3 or len(std) != 3 or not all(float(s) > 0 for s in std):
            raise ServeError(f"mean={mean!r}, std={std!r}: expected three numbers each (std > 0)", option="handler")
        self.size = tuple(size) if size is not None else None
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.input_name = input_name
        self.max_pixels = max_pixels
        self.labels = LabelHandler(labels=labels) if labels is not None else None

    def setup(
        self, model_inputs: Sequence[TensorSpec], model_outputs: Sequence[TensorSpec]
    ) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Check the model takes one ``[N, 3, H, W]`` float input."""
        if len(model_inputs) != 1 or len(model_inputs[0].shape) != 4:
            raise ServeError("image handler: the model must take one input shaped [batch, 3, height, width]")
        spec = model_inputs[0]
        h, w = spec.shape[2], spec.shape[3]
        if self.size is None:
            if h is None or w is None:
                raise ServeError("image handler: the model's height/width are dynamic; give options.size [H, W]")
            self.size = (h, w)
        self._dtype = spec.dtype if spec.dtype in ("float16", "float64") else "float32"
        outputs = list(model_outputs)
        if self.labels is not None:
            _, outputs = self.labels.setup(model_inputs, model_outputs)
        return [TensorSpec(self.input_name, (None,), "bytes")], outputs

    def preprocess(self, inputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Decode, convert to RGB, resize, scale and normalize each image."""
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise missing_dependency("pillow", "serve", "the image handler") from None
        assert self.size is not None  # set in setup
        height, width = self.size
        out = []
        for i, raw in enumerate(inputs[0].reshape(-1).tolist()):
            if not isinstance(raw, bytes):
                raise UsageError(f"{self.input_name}[{i}]: expected the encoded image bytes (PNG, JPEG, ...)")
            try:
                with Image.open(io.BytesIO(raw)) as img:
                    if img.width * img.height > self.max_pixels:
                        raise UsageError(
                            f"{self.input_name}[{i}]: {img.width}x{img.height} pixels is over the limit "
                            f"of {self.max_pixels}; send a smaller image"
                        )
                    rgb = img.convert("RGB").resize((width, height))
                    out.append(np.asarray(rgb, dtype=np.float32))
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                raise UsageError(f"{self.input_name}[{i}]: not a readable image ({exc})") from None
        batch = np.stack(out).transpose(0, 3, 1, 2) / np.float32(255.0)
        return [((batch - self.mean) / self.std).astype(self._dtype)]

    def postprocess(self, outputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """The model's outputs (plus ``label`` when labels were given)."""
        return self.labels.postprocess(outputs) if self.labels is not None else outputs


BUILTIN_HANDLERS: dict[str, tuple[Callable[..., Handler], dict[str, str]]] = {
    "tokenizer": (
        TokenizerHandler,
        {"tokenizer": "folder", "max_length": "int", "input_name": "str", "labels": "list of str"},
    ),
    "image": (
        ImageHandler,
        {
            "size": "[H, W]",
            "mean": "3 floats",
            "std": "3 floats",
            "input_name": "str",
            "max_pixels": "int",
            "labels": "list of str",
        },
    ),
    "labels": (LabelHandler, {"labels": "list of str"}),
}


def _inside(model_dir: str, value: str) -> str:
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(root, value))
    if os.path.commonpath([root, path]) != root:
        raise ServeError(f"handler.json: {value!r} points outside the model folder {model_dir}; keep files inside it")
    return path


def handler_from_file(model_dir: str, path: str) -> Handler:
    """The built-in handler that ``handler.json`` names, with its options (paths relative to ``model_dir``).

    Raises:
        ServeError: unreadable JSON, an unknown handler or option (the message lists the valid ones).

    Example:
        >>> handler_from_file("models/bert", "models/bert/handler.json")  # doctest: +SKIP
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_HANDLER_JSON + 1)
        if len(raw) > _MAX_HANDLER_JSON:
            raise ValueError(f"larger than {_MAX_HANDLER_JSON} bytes")
        spec = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ServeError(f"{path}: cannot read it as JSON ({exc})") from exc
    usage = f'expected {{"handler": one of {sorted(BUILTIN_HANDLERS)}, "options": {{...}}}}'
    if not isinstance(spec, dict) or set(spec) - {"handler", "options"} or not isinstance(spec.get("handler"), str):
        raise ServeError(f"{path}: {usage}")
    name, options = spec["handler"], spec.get("options", {})
    if name not in BUILTIN_HANDLERS:
        raise ServeError(
            f"{path}: unknown handler {name!r}; built-in handlers: {sorted(BUILTIN_HANDLERS)} "
            "(your own class: pass --handler module:Class on the command line)"
        )
    if not isinstance(options, dict):
        raise ServeError(f"{path}: 'options' must be an object; {usage}")
    factory, allowed = BUILTIN_HANDLERS[name]
    _check_options(name, options, allowed)
    if name == "tokenizer" and isinstance(options.get("tokenizer"), str):
        options = {**options, "tokenizer": _inside(model_dir, options["tokenizer"])}
    try:
        return factory(**options)
    except TypeError as exc:
        raise ServeError(f"{path}: {exc}; valid options: {allowed}") from exc


def import_handler(ref: str) -> Handler:
    """Import ``module:Class`` (named by the operator with ``--handler``) and instantiate it.

    Raises:
        ServeError: a malformed reference, a failed import, or a class that is not a handler.

    Example:
        >>> import_handler("torchkeep.serve._handlers:Handler")  # doctest: +ELLIPSIS
        <torchkeep.serve._handlers.Handler object at ...>
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ServeError(f"--handler {ref!r}: expected module:Class, e.g. mypkg.handlers:TextHandler", option="handler")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ServeError(f"--handler {ref!r}: cannot import it ({type(exc).__name__}: {exc})") from exc
    handler = cls() if isinstance(cls, type) else cls
    for method in ("setup", "preprocess", "postprocess"):
        if not callable(getattr(handler, method, None)):
            raise ServeError(
                f"--handler {ref!r}: {attr} has no {method}(); subclass torchkeep.serve.Handler "
                "and override preprocess/postprocess"
            )
    return handler  # type: ignore[no-any-return]
