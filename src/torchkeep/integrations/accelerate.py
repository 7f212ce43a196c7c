"""torchkeep for Hugging Face Accelerate: ``save_state`` / ``load_state`` without pickle.

``accelerator.save_state(dir)`` pickles the optimizers, schedulers, samplers, RNG states and
custom objects (``optimizer.bin``, ``random_states_0.pkl``, ...). These two functions store the
same things as torchkeep files and restore them bit-exactly:

``state.safetensors``            every prepared model (unwrapped), optimizer, scheduler, the grad
                                 scaler, every object given to ``register_for_checkpointing``,
                                 the dataloaders' positions (epoch counters, seedable-sampler
                                 seeds, stateful-dataloader state) and the main process's RNG
``rng_state_{process}.safetensors``  python / numpy / torch / CUDA RNG of every other process

The change in a training script is the two calls::

    from torchkeep.integrations.accelerate import load_state, save_state
    save_state(accelerator, "ckpt/epoch-3")       # instead of accelerator.save_state(...)
    load_state(accelerator, "ckpt/epoch-3")       # instead of accelerator.load_state(...)

Example:
    >>> import torch, tempfile, accelerate
    >>> from torchkeep.integrations.accelerate import load_state, save_state
    >>> acc = accelerate.Accelerator(cpu=True)
    >>> model = acc.prepare(torch.nn.Linear(2, 2))
    >>> d = tempfile.mkdtemp()
    >>> save_state(acc, d)
    >>> load_state(acc, d).step
    0
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .. import CheckpointInfo, load_checkpoint, save_checkpoint
from ..errors import CheckpointNotFoundError, missing_dependency

try:
    import accelerate  # noqa: F401  (the framework this adapter is for)
except ImportError as exc:
    raise missing_dependency("accelerate", "accelerate", "torchkeep.integrations.accelerate") from exc

__all__ = ["STATE_FILE", "load_state", "save_state"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"


def _rng_file(accelerator: Any) -> str:
    return f"rng_state_{accelerator.process_index}.safetensors"


def _objects(accelerator: Any) -> dict[str, Any]:
    """Everything ``accelerator.save_state`` stores, by stable names (model_0, optimizer_0, ...)."""
    objects: dict[str, Any] = {}
    for i, model in enumerate(accelerator._models):
        objects[f"model_{i}"] = accelerator.unwrap_model(model)
    for i, optimizer in enumerate(accelerator._optimizers):
        objects[f"optimizer_{i}"] = optimizer
    for i, scheduler in enumerate(accelerator._schedulers):
        objects[f"scheduler_{i}"] = scheduler
    for i, obj in enumerate(accelerator._custom_objects):
        objects[f"custom_{i}"] = obj
    if getattr(accelerator, "scaler", None) is not None:
        objects["scaler"] = accelerator.scaler
    return objects


def _sampler_of(dataloader: Any) -> Any:
    get = getattr(dataloader, "get_sampler", None)
    sampler = get() if callable(get) else getattr(dataloader, "sampler", None)
    return sampler if hasattr(sampler, "initial_seed") and hasattr(sampler, "epoch") else None


def _positions(accelerator: Any) -> list[dict[str, Any]]:
    positions = []
    for dataloader in accelerator._dataloaders:
        sampler = _sampler_of(dataloader)
        stateful = getattr(dataloader, "use_stateful_dataloader", False)
        positions.append(
            {
                "iteration": getattr(dataloader, "iteration", None),
                "sampler": {"epoch": int(sampler.epoch), "initial_seed": int(sampler.initial_seed)}
                if sampler
                else None,
                "state": dataloader.state_dict() if stateful else None,
            }
        )
    return positions


def save_state(accelerator: Any, directory: str | os.PathLike[str]) -> None:
    """Store what ``accelerator.save_state`` stores, as torchkeep files in ``directory``.

    The main process writes ``state.safetensors`` (with its RNG state); every other process writes
    its own RNG file. Each
    write is atomic, so a crash mid-save leaves the previous files whole.

    Raises:
        UnsupportedValueError: a registered object's state has no pickle-free form (named).
        CheckpointWriteError: a write failed; earlier files are unchanged.

    Example:
        >>> import torch, tempfile, os, accelerate
        >>> acc = accelerate.Accelerator(cpu=True)
        >>> model, opt = acc.prepare(torch.nn.Linear(2, 2), torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
        >>> d = tempfile.mkdtemp(); save_state(acc, d)
        >>> sorted(os.listdir(d))
        ['state.safetensors']
    """
    out = os.fspath(directory)
    os.makedirs(out, exist_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # the main process's RNG rides in the state file: one durable write (fsync) instead of two
        save_checkpoint(
            os.path.join(out, STATE_FILE),
            step=int(accelerator.step),
            extra={"step": int(accelerator.step), "dataloaders": _positions(accelerator)},
            rng=True,
            **_objects(accelerator),
        )
    else:
        save_checkpoint(os.path.join(out, _rng_file(accelerator)), extra={"process": accelerator.process_index})
    accelerator.wait_for_everyone()
    logger.info("saved accelerator state to %s", out)


def load_state(accelerator: Any, directory: str | os.PathLike[str], *, strict: bool = True) -> CheckpointInfo:
    """Restore what :func:`save_state` stored into the objects ``accelerator`` prepared/registered.

    Objects must be prepared (and registered) in the same order as when saving, as with
    ``accelerator.load_state``. Every tensor's checksum is verified before anything changes.
    Returns the state file's :class:`~torchkeep.CheckpointInfo` (``.step`` is the accelerator's step).

    Raises:
        CheckpointNotFoundError: ``directory`` holds no ``state.safetensors``.
        CorruptCheckpointError: a file is damaged (names it); nothing was changed.
        MissingObjectError / StateMismatchError: the objects do not match what was saved.

    Example:
        >>> import torch, tempfile, accelerate
        >>> acc = accelerate.Accelerator(cpu=True)
        >>> model = acc.prepare(torch.nn.Linear(2, 2))
        >>> d = tempfile.mkdtemp(); save_state(acc, d)
        >>> load_state(acc, d).objects
        {'model_0': 'module'}
    """
    src = os.fspath(directory)
    state_file = os.path.join(src, STATE_FILE)
    if not os.path.isfile(state_file):
        raise CheckpointNotFoundError(
            f"{src}: no {STATE_FILE}; save it with torchkeep.integrations.accelerate.save_state "
            "(a directory from accelerator.save_state holds pickles, which this does not load)",
            path=state_file,
        )
    main = accelerator.is_main_process
    info = load_checkpoint(state_file, rng=main, strict=strict, **_objects(accelerator))
    extra = info.extra if isinstance(info.extra, dict) else {}
    accelerator.step = int(extra.get("step", 0))
    for dataloader, saved in zip(accelerator._dataloaders, extra.get("dataloaders") or [], strict=False):
        if saved.get("iteration") is not None and hasattr(dataloader, "iteration"):
            dataloader.iteration = saved["iteration"]
        sampler = _sampler_of(dataloader)
        if sampler is not None and saved.get("sampler"):
            sampler.epoch = saved["sampler"]["epoch"]
            sampler.initial_seed = saved["sampler"]["initial_seed"]
        if saved.get("state") is not None and getattr(dataloader, "use_stateful_dataloader", False):
            dataloader.load_state_dict(saved["state"])
    rng_file = os.path.join(src, _rng_file(accelerator))
    if main:
        pass  # restored with the state file
    elif os.path.isfile(rng_file):
        load_checkpoint(rng_file)
    else:
        logger.warning(
            "%s: no RNG state for process %d; the resumed run is not bit-exact", src, accelerator.process_index
        )
    return info
