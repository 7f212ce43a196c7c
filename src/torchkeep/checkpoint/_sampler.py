"""Resume in the middle of an epoch: a sampler and a DataLoader that remember where they were.

A shuffled ``DataLoader`` draws a fresh permutation from a random generator every epoch, so a
run restarted mid-epoch sees different batches than the run that was killed. The fix is to keep,
per epoch, the generator state the permutation was drawn from and how many samples the training
loop has already consumed; on resume, the same permutation is drawn again and the consumed
prefix is skipped (the skipped samples are never loaded).

*Consumed* is the subtle word. With ``num_workers > 0`` the DataLoader asks its sampler for
indices ``prefetch_factor * num_workers`` batches ahead of the loop, so a sampler alone cannot
know how far the loop got. :class:`ResumableLoader` counts the batches it hands to the loop and
tells its sampler; :class:`ResumableSampler` on its own counts the indices it yields, which is
exact only with ``num_workers=0``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..errors import StateMismatchError, UnsupportedValueError

__all__ = ["ResumableLoader", "ResumableSampler"]

_STATE_VERSION = 1


def _length(data_source: Sized | int) -> int:
    if isinstance(data_source, int):
        n = data_source
    else:
        try:
            n = len(data_source)
        except TypeError as exc:
            raise UnsupportedValueError(
                f"ResumableSampler needs a dataset with __len__ (or its length as an int); "
                f"got {type(data_source).__qualname__}",
                value_type=type(data_source).__qualname__,
            ) from exc
    if n < 0:
        raise UnsupportedValueError(f"ResumableSampler: the dataset length must be >= 0, got {n}")
    return n


class ResumableSampler(Sampler[int]):
    """A random (or sequential) sampler whose position and generator are checkpointable.

    Each epoch is one permutation drawn from the sampler's own ``torch.Generator``;
    :meth:`state_dict` records the generator state that permutation was drawn from, the number
    of completed epochs and how many samples of the current epoch were consumed. After
    :meth:`load_state_dict` the next iteration yields exactly the samples the interrupted epoch
    had left, in the same order, and later epochs match the uninterrupted run.

    Used directly as ``DataLoader(..., sampler=...)`` it counts the indices it yields, which is
    exact with ``num_workers=0``. With worker processes, use :class:`ResumableLoader`, which
    counts what the training loop actually received.

    Args:
        data_source: the dataset (anything with ``len()``) or its length.
        shuffle: draw a new permutation every epoch (True) or go in order (False).
        seed: seed of the sampler's generator; None draws one from torch's global generator
            (so ``torch.manual_seed`` makes it reproducible).

    Example:
        >>> import torch, torchkeep as tk
        >>> sampler = tk.ResumableSampler(10, shuffle=True, seed=0)
        >>> it = iter(sampler)
        >>> first = [next(it) for _ in range(4)]
        >>> state = sampler.state_dict()
        >>> rest = list(it)
        >>> again = tk.ResumableSampler(10, shuffle=True, seed=123)
        >>> again.load_state_dict(state)
        >>> list(again) == rest
        True
    """

    def __init__(self, data_source: Sized | int, *, shuffle: bool = True, seed: int | None = None) -> None:
        self._n = _length(data_source)
        self.shuffle = bool(shuffle)
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.seed = int(seed)
        self._gen = torch.Generator()
        self._gen.manual_seed(self.seed)
        self._epoch = 0  # epochs completed
        self._start_state = self._gen.get_state()  # generator state the current/next epoch draws from
        self._position = 0  # samples of the current epoch consumed
        self._offset = 0  # where the running iteration started
        self._active = False  # an epoch has started and not finished
        self._resume = False  # a loaded mid-epoch state waits for the next iteration
        self._managed = False  # a ResumableLoader counts consumption instead of us

    # -- progress -----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Number of epochs completed."""
        return self._epoch

    @property
    def position(self) -> int:
        """Samples of the current epoch consumed so far (0 between epochs)."""
        return self._position

    def __len__(self) -> int:
        return self._n

    def _begin(self) -> torch.Tensor:
        """Start (or, after a load, resume) an epoch; return the indices still to come."""
        if self._resume:
            self._gen.set_state(self._start_state)
        else:
            if self._active:  # the previous iteration was abandoned: a new one is a new epoch
                self._finish()
            self._start_state = self._gen.get_state()
            self._position = 0
        order = torch.randperm(self._n, generator=self._gen) if self.shuffle else torch.arange(self._n)
        self._active, self._resume = True, False
        self._offset = min(self._position, self._n)
        return order[self._offset :]

    def _finish(self) -> None:
        self._epoch += 1
        self._position = 0
        self._active = False
        self._start_state = self._gen.get_state()

    def __iter__(self) -> Iterator[int]:
        order = self._begin()
        for i in order.tolist():
            if not self._managed:
                self._position += 1
            yield i
        if not self._managed:
            self._finish()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Epoch, position and generator state; plain values and one uint8 tensor.

        Example:
            >>> import torchkeep as tk
            >>> sorted(tk.ResumableSampler(4, seed=1).state_dict())
            ['active', 'epoch', 'generator', 'length', 'position', 'seed', 'shuffle', 'version']
        """
        return {
            "version": _STATE_VERSION,
            "length": self._n,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "epoch": self._epoch,
            "position": self._position,
            "active": self._active,
            "generator": self._start_state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state: the next iteration yields what that epoch had left.

        Raises:
            StateMismatchError: the dataset length or the shuffle setting differs from the saved
                one (the remaining samples would not be the same).

        Example:
            >>> import torchkeep as tk
            >>> s = tk.ResumableSampler(6, seed=0)
            >>> s.load_state_dict(tk.ResumableSampler(6, seed=0).state_dict())
        """
        version = state.get("version", 1)
        if version != _STATE_VERSION:
            raise StateMismatchError(
                f"ResumableSampler state version {version} is not supported (this torchkeep reads "
                f"version {_STATE_VERSION}); upgrade torchkeep"
            )
        if state["length"] != self._n:
            raise StateMismatchError(
                f"ResumableSampler: the saved state is for a dataset of {state['length']} samples, but this "
                f"sampler has {self._n}; resume with the same dataset (or start a fresh epoch without loading it)"
            )
        if bool(state["shuffle"]) != self.shuffle:
            raise StateMismatchError(
                f"ResumableSampler: the saved state has shuffle={state['shuffle']}, this sampler "
                f"shuffle={self.shuffle}; construct it with the same setting"
            )
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._active = bool(state["active"])
        self._start_state = state["generator"].to("cpu", torch.uint8).clone()
        self._gen.set_state(self._start_state)
        self._resume = self._active


class ResumableLoader(DataLoader[Any]):
    """A ``DataLoader`` whose place in the epoch can be checkpointed, with any ``num_workers``.

    Same arguments as ``torch.utils.data.DataLoader`` (it owns the sampler, so ``sampler=`` and
    ``batch_sampler=`` are not accepted), plus ``seed``. Pass it to
    :func:`torchkeep.save_checkpoint` like any stateful object (``loader=loader``); after
    :func:`torchkeep.load_checkpoint` the next ``for batch in loader`` yields exactly the
    batches the interrupted epoch had left, and later epochs match the uninterrupted run.

    It counts the batches it hands to the training loop, so prefetching by worker processes does
    not skew the position. It also owns the generator the DataLoader draws worker seeds from, so
    creating an iterator never consumes torch's global random numbers (which would shift
    dropout and everything else in a resumed run).

    Args:
        dataset: a map-style dataset (with ``__len__``).
        batch_size: samples per batch.
        shuffle: a new permutation every epoch.
        seed: seed of the shuffling generator; None draws one from torch's global generator.
        **kwargs: any other ``DataLoader`` argument (``num_workers``, ``collate_fn``,
            ``drop_last``, ``pin_memory``, ...).

    Example:
        >>> import torch, torchkeep as tk
        >>> data = torch.utils.data.TensorDataset(torch.arange(10.0))
        >>> loader = tk.ResumableLoader(data, batch_size=4, shuffle=True, seed=0)
        >>> batches = iter(loader)
        >>> _ = next(batches)
        >>> state = loader.state_dict()
        >>> rest = [b[0].tolist() for b in batches]
        >>> resumed = tk.ResumableLoader(data, batch_size=4, shuffle=True)
        >>> resumed.load_state_dict(state)
        >>> [b[0].tolist() for b in resumed] == rest
        True
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int | None = 1,
        shuffle: bool = False,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("sampler", "batch_sampler"):
            if kwargs.get(name) is not None:
                raise UnsupportedValueError(
                    f"ResumableLoader builds its own sampler; remove {name}= (use shuffle= and seed=)",
                    path=name,
                )
        if isinstance(dataset, IterableDataset):
            raise UnsupportedValueError(
                "ResumableLoader needs a map-style dataset (with __getitem__ and __len__); an IterableDataset "
                "decides its own order, so checkpoint its position in the dataset itself",
                value_type=type(dataset).__qualname__,
            )
        if batch_size is None:
            raise UnsupportedValueError("ResumableLoader needs a batch_size (automatic batching)", path="batch_size")
        sampler = ResumableSampler(dataset, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        sampler._managed = True
        generator = kwargs.pop("generator", None)
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(sampler.seed + 1)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)
        self._resumable = sampler
        self._seed_gen: torch.Generator = generator
        self._seed_start = generator.get_state()  # worker-seed generator state at the epoch's start

    @property
    def epoch(self) -> int:
        """Number of epochs completed."""
        return self._resumable.epoch

    @property
    def position(self) -> int:
        """Samples of the current epoch the training loop has received (0 between epochs)."""
        return self._resumable.position

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self._resumable
        if sampler._resume:
            self._seed_gen.set_state(self._seed_start)
        else:
            self._seed_start = self._seed_gen.get_state()
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        sampler = self._resumable
        bs = int(self.batch_size or 1)
        for done, batch in enumerate(batches, start=1):
            sampler._position = min(sampler._offset + done * bs, sampler._n)
            yield batch
        if sampler._active:
            sampler._finish()
            self._seed_start = self._seed_gen.get_state()

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state plus the worker-seed generator state of the current epoch.

        Example:
            >>> import torch, torchkeep as tk
            >>> data = torch.utils.data.TensorDataset(torch.zeros(4))
            >>> sorted(tk.ResumableLoader(data, batch_size=2).state_dict())
            ['batch_size', 'generator', 'sampler', 'version']
        """
        return {
            "version": _STATE_VERSION,
            "batch_size": self.batch_size,
            "sampler": self._resumable.state_dict(),
            "generator": (self._seed_start if self._resumable._active else self._seed_gen.get_state()).clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (see :meth:`ResumableSampler.load_state_dict`).

        Raises:
            StateMismatchError: the batch size, dataset length or shuffle setting differs.

        Example:
            >>> import torch, torchkeep as tk
            >>> data = torch.utils.data.TensorDataset(torch.zeros(4))
            >>> tk.ResumableLoader(data, batch_size=2).load_state_dict(tk.ResumableLoader(data, batch_size=2).state_dict())
        """
        if state.get("batch_size") != self.batch_size:
            raise StateMismatchError(
                f"ResumableLoader: the saved state has batch_size={state.get('batch_size')}, this loader "
                f"batch_size={self.batch_size}; resume with the same batch size"
            )
        self._resumable.load_state_dict(state["sampler"])
        self._seed_start = state["generator"].to("cpu", torch.uint8).clone()
        self._seed_gen.set_state(self._seed_start)
