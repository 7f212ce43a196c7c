"""torchkeep inside the Hugging Face ``Trainer``: checkpoint directories without a single pickle.

Replace ``Trainer`` with :class:`TorchkeepTrainer` (same arguments). Each ``checkpoint-N``
directory then holds:

``model.safetensors`` + ``config.json``   the model, through ``save_pretrained`` as before
``training_state.safetensors``             optimizer, learning-rate scheduler, AMP grad scaler (when there
                                           is one) and python / numpy / torch / CUDA RNG: one torchkeep
                                           file, checksummed (other processes: ``rng_state_{i}.safetensors``)
``trainer_state.json``                     the Trainer's own JSON, unchanged
``training_args.json``                     the training arguments as JSON (not ``training_args.bin``)

``trainer.train(resume_from_checkpoint=True)`` resumes from them bit-exactly;
``save_total_limit``, ``load_best_model_at_end`` and the rest of the Trainer work as before, since
directory names and the model files are the Trainer's own. A checkpoint directory from a plain
``Trainer`` (``optimizer.pt``, ``rng_state.pth``) is refused with the ``torchkeep convert``
command that makes it loadable; nothing is ever unpickled. DeepSpeed, FSDP and XLA keep their
own optimizer files (the Trainer's code path is used unchanged there).

:func:`to_pretrained` writes a ``tk.save_model`` file of a ``PreTrainedModel`` as a
``save_pretrained`` directory that ``from_pretrained`` loads.

Example:
    >>> from torchkeep.integrations.transformers import TorchkeepTrainer
    >>> TorchkeepTrainer.STATE_FILE
    'training_state.safetensors'
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from .. import load_checkpoint, load_model, read_info, save_checkpoint
from ..errors import CorruptCheckpointError, ModelNotRegisteredError, StateMismatchError, UsageError, missing_dependency
from ..models._families import register_family
from . import _files

try:
    import transformers
    from transformers import Trainer
except ImportError as exc:
    raise missing_dependency("transformers", "transformers", "torchkeep.integrations.transformers") from exc

__all__ = ["PreTrainedFamily", "TorchkeepTrainer", "to_pretrained"]

logger = logging.getLogger(__name__)


def _flag(name: str) -> bool:
    check: Any = getattr(transformers.utils, name, None)
    return bool(check()) if callable(check) else False


_LEGACY = {
    "optimizer.pt": "optimizer.safetensors",
    "scheduler.pt": "scheduler.safetensors",
    "scaler.pt": "scaler.safetensors",
}


class TorchkeepTrainer(Trainer):  # type: ignore[misc]
    """``transformers.Trainer`` whose checkpoints are torchkeep/safetensors/JSON files only.

    Takes exactly the arguments of ``Trainer``; only how checkpoint files are written and read
    changes.

    Example:
        >>> import torch, tempfile, transformers
        >>> from torchkeep.integrations.transformers import TorchkeepTrainer
        >>> args = transformers.TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True)
        >>> trainer = TorchkeepTrainer(model=torch.nn.Linear(2, 2), args=args)
        >>> trainer.STATE_FILE
        'training_state.safetensors'
    """

    STATE_FILE = "training_state.safetensors"
    OPTIMIZER_FILE = "optimizer.safetensors"
    SCHEDULER_FILE = "scheduler.safetensors"
    SCALER_FILE = "scaler.safetensors"
    RNG_FILE = "rng_state.safetensors"
    ARGS_FILE = "training_args.json"

    # -- what decides whether the Trainer's own (pickling) path must be kept ---------------------
    def _own_format(self) -> bool:
        return not (
            self.is_deepspeed_enabled
            or getattr(self, "is_fsdp_enabled", False)
            or getattr(self, "is_fsdp_xla_enabled", False)
            or _flag("is_torch_xla_available")
            or _flag("is_sagemaker_mp_enabled")
        )

    def _step(self) -> int | None:
        step = getattr(self.state, "global_step", None)
        return step if isinstance(step, int) else None

    def _write(self, output_dir: str, name: str, tree: Any, *, rng: bool = False) -> None:
        _files.save_tree(os.path.join(output_dir, name), tree, what=name.split(".")[0], step=self._step(), rng=rng)

    def _rng_file(self) -> str:
        return self.RNG_FILE if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}.safetensors"

    # -- saving ---------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        """Save the model as the Trainer does (``save_pretrained``), the arguments as JSON."""
        output_dir = str(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            # non-writer ranks only join collectives there; the Trainer writes no file for them
            super()._save(output_dir, state_dict=state_dict)
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if callable(getattr(model, "save_pretrained", None)):
            model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=True)
        else:
            import safetensors.torch

            logger.info("Trainer.model is not a PreTrainedModel; saving its state dict only")
            safetensors.torch.save_file(
                state_dict if state_dict is not None else model.state_dict(),
                os.path.join(output_dir, transformers.utils.SAFE_WEIGHTS_NAME),
                metadata={"format": "pt"},
            )
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        with open(os.path.join(output_dir, self.ARGS_FILE), "w", encoding="utf-8") as f:
            f.write(self.args.to_json_string())  # type: ignore[no-untyped-call]

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._own_format():
            super()._save_optimizer_and_scheduler(output_dir)
            return
        if self.args.should_save:
            # written with the RNG state in _save_rng_state, which the Trainer calls right after:
            # one durable file (one fsync) instead of three
            self._pending: dict[str, Any] = {"optimizer": self.optimizer}
            if self.lr_scheduler is not None:
                self._pending["scheduler"] = self.lr_scheduler

    def _save_scaler(self, output_dir: str) -> None:
        if not self._own_format():
            super()._save_scaler(output_dir)
            return
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            self._pending = {**getattr(self, "_pending", {}), "scaler": scaler}

    def _save_rng_state(self, output_dir: str) -> None:
        if not self._own_format():
            super()._save_rng_state(output_dir)
            return
        os.makedirs(output_dir, exist_ok=True)  # a rank can get here before rank 0 made the directory
        pending, self._pending = getattr(self, "_pending", {}), {}
        if pending:
            save_checkpoint(os.path.join(output_dir, self.STATE_FILE), step=self._step(), rng=True, **pending)
        else:
            self._write(output_dir, self._rng_file(), {"process_index": self.args.process_index}, rng=True)

    # -- loading --------------------------------------------------------------------------------
    def _refuse_legacy(self, checkpoint: str) -> None:
        legacy = [name for name in (*_LEGACY, "rng_state.pth") if os.path.isfile(os.path.join(checkpoint, name))]
        mine = any(os.path.isfile(os.path.join(checkpoint, n)) for n in (self.STATE_FILE, self.OPTIMIZER_FILE))
        if legacy and not mine:
            commands = "; ".join(
                f"torchkeep convert {os.path.join(checkpoint, n)} {os.path.join(checkpoint, _LEGACY[n])}"
                for n in legacy
                if n in _LEGACY
            )
            raise CorruptCheckpointError(
                f"{checkpoint}: a plain Trainer checkpoint (pickled {', '.join(legacy)}), which TorchkeepTrainer does "
                f"not unpickle. Convert it once: {commands} (the RNG state is then not restored)",
                path=checkpoint,
                reason="pickled checkpoint",
            )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        if not self._own_format():
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        self._refuse_legacy(checkpoint)
        state = os.path.join(checkpoint, self.STATE_FILE)
        if os.path.isfile(state):
            held = read_info(state).objects
            objects: dict[str, Any] = {"optimizer": self.optimizer}
            if self.lr_scheduler is not None and "scheduler" in held:
                objects["scheduler"] = self.lr_scheduler
            load_checkpoint(state, map_location="cpu", rng=False, **objects)
            return
        # optimizer.pt / scheduler.pt of a plain Trainer, converted by `torchkeep convert`
        path = os.path.join(checkpoint, self.OPTIMIZER_FILE)
        if not os.path.isfile(path):
            return  # as the Trainer does: a model-only checkpoint (save_only_model=True)
        optimizer: Any = self.optimizer
        optimizer.load_state_dict(_files.load_tree(path, map_location="cpu"))
        scheduler = os.path.join(checkpoint, self.SCHEDULER_FILE)
        if self.lr_scheduler is not None and os.path.isfile(scheduler):
            self.lr_scheduler.load_state_dict(_files.load_tree(scheduler))

    def _load_scaler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        if not self._own_format():
            super()._load_scaler(checkpoint)
            return
        scaler = getattr(self.accelerator, "scaler", None)
        state = os.path.join(checkpoint, self.STATE_FILE)
        if scaler is not None and os.path.isfile(state):
            if "scaler" in read_info(state).objects:
                load_checkpoint(state, rng=False, scaler=scaler)
            return
        path = os.path.join(checkpoint, self.SCALER_FILE)
        if scaler is not None and os.path.isfile(path):
            scaler.load_state_dict(_files.load_tree(path))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        if not self._own_format():
            super()._load_rng_state(checkpoint)
            return
        state = os.path.join(checkpoint, self.STATE_FILE)
        if self.args.should_save and os.path.isfile(state):
            load_checkpoint(state, rng=True)  # verifies and restores the RNG entry only
            return
        path = os.path.join(checkpoint, self._rng_file())
        if not os.path.isfile(path):
            logger.info("%s: no RNG state for this process; reproducibility is not guaranteed", checkpoint)
            return
        _files.load_tree(path, rng=True)


def to_pretrained(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> str:
    """Write a ``tk.save_model`` file of a ``PreTrainedModel`` as a ``save_pretrained`` directory.

    The model is rebuilt from the file (its class looked up by name inside ``transformers`` only,
    its config from the recorded JSON), then ``save_pretrained(out_dir)`` writes
    ``config.json`` + ``model.safetensors``, which ``AutoModel.from_pretrained(out_dir)`` loads.
    Returns ``out_dir``.

    Raises:
        UsageError: the file holds a model that is not a ``PreTrainedModel``.
        ModelNotRegisteredError: the recorded class is not in this ``transformers``.

    Example:
        >>> import tempfile, os, torchkeep as tk, transformers
        >>> cfg = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
        ...                               num_attention_heads=2, intermediate_size=8)
        >>> d = tempfile.mkdtemp(); f = os.path.join(d, "bert.safetensors")
        >>> tk.save_model(transformers.BertModel(cfg), f)
        >>> out = to_pretrained(f, os.path.join(d, "hf"))
        >>> type(transformers.AutoModel.from_pretrained(out)).__name__
        'BertModel'
    """
    model = load_model(path)
    if not isinstance(model, transformers.PreTrainedModel):
        raise UsageError(
            f"{os.fspath(path)}: holds a {type(model).__qualname__}, not a transformers PreTrainedModel; "
            "only those have a save_pretrained directory form",
            argument="path",
        )
    out = os.fspath(out_dir)
    model.save_pretrained(out)
    return out


def _transformers_class(name: Any, base: type, source: str) -> Any:
    """A class exported by the ``transformers`` package under ``name``, subclassing ``base``; never an import."""
    found = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ModelNotRegisteredError(
            f"{source}: the file names {name!r}, which is not a {base.__name__} class of transformers "
            f"{transformers.__version__}; a newer transformers may have it (classes are looked up by name inside "
            "the transformers package only)",
            name=str(name),
            module="transformers",
        )
    return found


class PreTrainedFamily:
    """``tk.save_model`` / ``tk.load_model`` for ``transformers.PreTrainedModel``, with no ``@tk.register``.

    The file records the model's class name and its config (the JSON of ``config.json``); loading
    looks both classes up by name in the ``transformers`` package, builds the model from the
    config and loads the weights. Registered by importing this module, which ``tk.save_model``
    and ``tk.load_model`` do themselves when they meet such a model or file.

    Example:
        >>> import tempfile, os, torch, torchkeep as tk, transformers
        >>> cfg = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
        ...                               num_attention_heads=2, intermediate_size=8)
        >>> path = os.path.join(tempfile.mkdtemp(), "bert.safetensors")
        >>> tk.save_model(transformers.BertModel(cfg), path)
        >>> type(tk.load_model(path)).__name__, tk.load_model(path).config.hidden_size
        ('BertModel', 8)
    """

    name = "transformers"

    def entry(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """The class name and config of a ``PreTrainedModel`` that ``transformers`` exports, else None."""
        cls = type(model)
        if not isinstance(model, transformers.PreTrainedModel) or getattr(transformers, cls.__name__, None) is not cls:
            return None  # a subclass of the user's own: register it with @tk.register instead
        config: Any = model.config
        return {
            "class": cls.__name__,
            "config_class": type(config).__name__,
            "config": json.loads(config.to_json_string(use_diff=False)),
            "transformers": transformers.__version__,
        }

    def build(
        self, entry: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str, strict: bool
    ) -> torch.nn.Module:
        """Rebuild the recorded class from the recorded config and load ``state``."""
        cls = _transformers_class(entry.get("class"), transformers.PreTrainedModel, source)
        config_cls = _transformers_class(entry.get("config_class"), transformers.PretrainedConfig, source)
        raw = entry.get("config")
        if not isinstance(raw, dict):
            raise CorruptCheckpointError(f"{source}: the recorded transformers config is not an object", path=source)
        model: torch.nn.Module = cls(config_cls.from_dict(raw))
        result = model.load_state_dict(dict(state), strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise StateMismatchError(
                f"{source}: the weights do not fit {cls.__name__}: missing {missing[:10]}, unexpected "
                f"{unexpected[:10]}; pass strict=False to load what fits"
            )
        tie: Any = getattr(model, "tie_weights", None)
        if callable(tie):
            tie()
        return model


register_family(PreTrainedFamily())
