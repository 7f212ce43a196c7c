"""Mid-epoch resume: ResumableSampler / ResumableLoader give the same remaining batches."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import torchkeep as tk

DATA = TensorDataset(torch.arange(22))


def _epochs(loader, epochs: int, stop_after: int | None = None) -> list[list[int]]:
    """Batches seen, epoch by epoch; with stop_after, stop (mid-epoch) after that many batches in all."""
    seen: list[list[int]] = []
    count = 0
    for _ in range(epochs):
        for (batch,) in loader:
            seen.append(batch.tolist())
            count += 1
            if stop_after is not None and count == stop_after:
                return seen
    return seen


def _make(kind: str, workers: int, seed: int | None = 0):
    if kind == "sampler":
        sampler = tk.ResumableSampler(DATA, shuffle=True, seed=seed)
        return DataLoader(DATA, batch_size=4, sampler=sampler, num_workers=workers), sampler
    loader = tk.ResumableLoader(DATA, batch_size=4, shuffle=True, seed=seed, num_workers=workers)
    return loader, loader


CASES = [("sampler", 0), ("loader", 0), pytest.param("loader", 2, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("kind", "workers"), CASES)
@pytest.mark.parametrize("stop_after", [8, 6, 1])  # an epoch has 6 batches: mid-epoch, boundary, first batch
def test_resume_gives_the_same_batches(tmp_path, kind: str, workers: int, stop_after: int) -> None:
    loader, _ = _make(kind, workers)
    straight = _epochs(loader, 3)
    assert straight[:6] != straight[6:12]  # epochs really are reshuffled

    loader, stateful = _make(kind, workers)
    first = []
    it = iter(loader)  # a killed run: stop inside the loop, right after a batch was used
    for _ in range(stop_after):
        try:
            first.append(next(it)[0].tolist())
        except StopIteration:
            it = iter(loader)
            first.append(next(it)[0].tolist())
    path = tmp_path / "ckpt.safetensors"
    tk.save_checkpoint(path, data=stateful)
    assert tk.read_info(path).objects == {"data": kind}
    del it

    loader2, stateful2 = _make(kind, workers, seed=999)  # the seed comes back from the checkpoint
    tk.load_checkpoint(path, data=stateful2)
    # a resumed script continues from the loader's own epoch count (an epoch whose last batch was
    # used but whose loop had not ended yet still counts as running: its remainder is empty)
    rest = _epochs(loader2, 3 - stateful2.epoch)
    assert first + rest == straight


def test_epoch_and_position_are_reported() -> None:
    loader = tk.ResumableLoader(DATA, batch_size=4, shuffle=True, seed=0)
    it = iter(loader)
    next(it)
    next(it)
    assert (loader.epoch, loader.position) == (0, 8)
    list(it)
    assert (loader.epoch, loader.position) == (1, 0)
    state = loader.state_dict()
    assert state["sampler"]["epoch"] == 1 and not state["sampler"]["active"]


def test_abandoned_iteration_starts_a_new_epoch() -> None:
    sampler = tk.ResumableSampler(6, shuffle=False, seed=0)
    it = iter(sampler)
    assert [next(it), next(it)] == [0, 1]
    assert list(sampler) == [0, 1, 2, 3, 4, 5]  # like torch's samplers: a fresh iter() is a fresh epoch
    assert sampler.epoch == 2


def test_resumable_loader_leaves_global_rng_alone() -> None:
    loader = tk.ResumableLoader(DATA, batch_size=4, shuffle=True, seed=0)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _epochs(loader, 2)
    assert torch.equal(torch.rand(3), expected)


def test_mismatched_state_is_refused() -> None:
    state = tk.ResumableSampler(10, seed=0).state_dict()
    with pytest.raises(tk.StateMismatchError, match="dataset of 10 samples, but this sampler has 12"):
        tk.ResumableSampler(12, seed=0).load_state_dict(state)
    with pytest.raises(tk.StateMismatchError, match="shuffle=True"):
        tk.ResumableSampler(10, shuffle=False).load_state_dict(state)
    loader_state = tk.ResumableLoader(DATA, batch_size=4).state_dict()
    with pytest.raises(tk.StateMismatchError, match="batch_size=4"):
        tk.ResumableLoader(DATA, batch_size=5).load_state_dict(loader_state)


def test_bad_arguments() -> None:
    with pytest.raises(tk.UnsupportedValueError, match="remove sampler="):
        tk.ResumableLoader(DATA, batch_size=2, sampler=[0, 1])

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(tk.UnsupportedValueError, match="map-style"):
        tk.ResumableLoader(Stream(), batch_size=2)
    with pytest.raises(tk.UnsupportedValueError, match="__len__"):
        tk.ResumableSampler(object())  # type: ignore[arg-type]


def test_loader_state_does_not_go_into_a_sampler(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, data=tk.ResumableLoader(DATA, batch_size=4))
    with pytest.raises(tk.StateMismatchError, match="state of a loader, but a sampler"):
        tk.load_checkpoint(path, data=tk.ResumableSampler(DATA))
