"""Deduplicated checkpoint steps against plain ones, side by side in one run.

A state of ``--size`` MiB (default 2048) in 64 MiB tensors, of which ``--trainable`` (5 %) changes
between saves (a fine-tune: frozen backbone, trained adapters/head), saved ``--saves`` (10) times
by a ``CheckpointManager(keep_last=3)`` with and without ``dedup=True``. Then the same with a state
whose every tensor changes at every save (nothing to share), and loads of the newest step.

Reported, with the issue's targets:

* disk after the saves, vs one full checkpoint (dedup ≤ 1.2×; plain keeps 3 full copies here);
* an incremental dedup save vs a full plain save (≤ 0.15×);
* an all-changing dedup save vs a plain save (≤ 1.05×);
* loading a dedup step vs a plain one (speed ≥ 0.9×).

With ``--lightning``, also a Lightning fine-tune (a frozen backbone of ``--size`` MiB and a small
trained head, one ``ModelCheckpoint`` save per step, ``save_top_k=3``) under Lightning's default
``TorchCheckpointIO`` (``torch.save``, no fsync), ``TorchkeepCheckpointIO()`` and
``TorchkeepCheckpointIO(dedup=True)``: median save time and the disk the kept files use.

Usage::

    PYTHONPATH=$PWD/src python benchmarks/dedup.py --size 256     # quick (~1 min)
    PYTHONPATH=$PWD/src python benchmarks/dedup.py                # 2 GiB: needs ~10 GiB disk, 6 GiB RAM
    PYTHONPATH=$PWD/src python benchmarks/dedup.py --size 512 --lightning
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

import torchkeep as tk

CHUNK_NUMEL = 16 * 1024 * 1024  # 64 MiB of float32


class State:
    """A fine-tune's state: frozen tensors and trainable ones (each a stateful object's entry)."""

    def __init__(self, size_mib: int, trainable: float) -> None:
        total = size_mib * 1024 * 1024 // 4
        train_numel = max(1024, int(total * trainable))
        frozen_numel = total - train_numel
        # Random values: after `add_(1.0)` every tensor holds bytes no earlier step held. (Constants
        # would not: in float32, 2**24 + 1 rounds back to 2**24, and c + 1 is the next tensor's c.)
        g = torch.Generator().manual_seed(0)
        self.frozen = [
            torch.randn(min(CHUNK_NUMEL, frozen_numel - i), generator=g) for i in range(0, frozen_numel, CHUNK_NUMEL)
        ]
        self.trainable = [torch.zeros(min(CHUNK_NUMEL, train_numel - i)) for i in range(0, train_numel, CHUNK_NUMEL)]

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": list(self.frozen), "trainable": list(self.trainable)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen, self.trainable = list(state["frozen"]), list(state["trainable"])

    def step(self, *, everything: bool = False) -> None:
        for t in self.trainable + (self.frozen if everything else []):
            t.add_(1.0)


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _side_by_side(root: Path, state: State, saves: int, *, everything: bool) -> tuple[list[float], list[float]]:
    """Each step, the same state is saved by a plain and by a dedup manager, alternately (same load)."""
    plain: list[float] = []
    dedup: list[float] = []
    with (
        tk.CheckpointManager(root / "plain", keep_last=3, state=state) as mgr_plain,
        tk.CheckpointManager(root / "dedup", keep_last=3, dedup=True, state=state) as mgr_dedup,
    ):
        for step in range(saves):
            state.step(everything=everything)
            for mgr, times in (
                ((mgr_plain, plain), (mgr_dedup, dedup)) if step % 2 else ((mgr_dedup, dedup), (mgr_plain, plain))
            ):
                start = time.perf_counter()
                mgr.save(step=step)
                times.append(time.perf_counter() - start)
    return plain, dedup


def _warm(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with open(f, "rb", buffering=0) as fh:
                while fh.read(64 << 20):
                    pass


def _loads(root: Path, state: State, repeat: int) -> tuple[list[float], list[float]]:
    """Load the newest step of each directory (verifying every tensor, as restore() does), alternately."""
    paths = {name: tk.list_checkpoints(root / name)[-1].path for name in ("plain", "dedup")}
    times: dict[str, list[float]] = {"plain": [], "dedup": []}
    for _ in range(repeat):
        for name in ("plain", "dedup"):
            _warm(root / name)
            start = time.perf_counter()
            tk.load_checkpoint(paths[name], state=state)
            times[name].append(time.perf_counter() - start)
    return times["plain"], times["dedup"]


def _lightning(root: Path, size_mib: int, saves: int) -> list[tuple[str, float, int]]:
    """(plugin, median save seconds, bytes of the kept files) for each plugin, one fit after another."""
    import lightning as L
    from lightning.fabric.plugins import TorchCheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint

    from torchkeep.integrations.lightning import TorchkeepCheckpointIO

    width, layers = 1024, max(1, size_mib // 4)  # a Linear(1024, 1024) is 4 MiB

    class FineTune(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.backbone = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
            self.backbone.requires_grad_(False)
            self.head = torch.nn.Linear(width, 16)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.head(self.backbone(batch[0])).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.head.parameters(), lr=1e-3)

    def timed(base: type) -> Any:
        class Timed(base):  # type: ignore[misc, valid-type]
            def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
                start = time.perf_counter()
                super().save_checkpoint(*args, **kwargs)
                self.seconds.append(time.perf_counter() - start)

        return Timed

    data = torch.utils.data.TensorDataset(torch.randn(4 * saves, width))
    results = []
    for name, make in (
        ("Lightning default (torch.save, no fsync)", lambda: timed(TorchCheckpointIO)()),
        ("TorchkeepCheckpointIO()", lambda: timed(TorchkeepCheckpointIO)()),
        ("TorchkeepCheckpointIO(dedup=True)", lambda: timed(TorchkeepCheckpointIO)(dedup=True)),
    ):
        io = make()
        io.seconds = []
        directory = root / "lightning" / name.split(" ")[0].replace("(", "-").replace(")", "").replace("=", "")
        trainer = L.Trainer(
            max_steps=saves,
            plugins=[io],
            callbacks=[
                ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=3, monitor="step", mode="max")
            ],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(FineTune(), torch.utils.data.DataLoader(data, batch_size=4))
        results.append((name, statistics.median(io.seconds), _disk(directory)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="state size in MiB (default 2048)")
    parser.add_argument("--trainable", type=float, default=0.05, help="fraction that changes per save")
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--lightning", action="store_true", help="also a Lightning fine-tune under each plugin")
    args = parser.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    root = Path(args.dir or tempfile.mkdtemp(prefix="tk-dedup-bench-"))
    full = args.size * 1024 * 1024
    try:
        plain, dedup = _side_by_side(root / "finetune", State(args.size, args.trainable), args.saves, everything=False)
        plain_disk, dedup_disk = _disk(root / "finetune" / "plain"), _disk(root / "finetune" / "dedup")
        loads_plain, loads_dedup = _loads(root / "finetune", State(args.size, args.trainable), 5)
        shutil.rmtree(root / "finetune")
        changing = max(4, args.saves // 2)
        all_plain, all_dedup = _side_by_side(root / "all", State(args.size, args.trainable), changing, everything=True)
        shutil.rmtree(root / "all")
        lightning = _lightning(root, args.size, args.saves) if args.lightning else []
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    full_save = statistics.median(plain)
    incremental = statistics.median(dedup[1:])
    load = os.getloadavg()
    print(
        f"\nstate {args.size} MiB, {args.trainable:.0%} trainable, {args.saves} saves, keep_last=3, plain and dedup "
        f"saves alternating on the same state; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f}; files in {root}\n"
    )
    print("| case | seconds (median) | vs plain save |\n|---|---:|---:|")
    rows = [
        ("plain save (every save)", full_save),
        ("dedup first save", dedup[0]),
        ("dedup incremental save", incremental),
        ("all-changing: plain save", statistics.median(all_plain)),
        ("all-changing: dedup save", statistics.median(all_dedup)),
        ("load newest step: plain (verify)", statistics.median(loads_plain)),
        ("load newest step: dedup (verify)", statistics.median(loads_dedup)),
    ]
    for name, seconds in rows:
        base = (
            full_save
            if "save" in name and "all-changing" not in name
            else (statistics.median(all_plain) if "all-changing" in name else statistics.median(loads_plain))
        )
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f}x |")
    print("\n| disk after the saves | MiB | vs one full checkpoint |\n|---|---:|---:|")
    print(f"| plain (keeps 3 steps) | {plain_disk / 2**20:.0f} | {plain_disk / full:.2f}x |")
    print(f"| plain, no retention ({args.saves} steps, computed) | {args.saves * full / 2**20:.0f} | {args.saves:.2f}x |")
    print(f"| dedup (keeps 3 steps) | {dedup_disk / 2**20:.0f} | {dedup_disk / full:.2f}x |")
    print("\ntargets:")
    print(f"  disk <= 1.2x one full checkpoint: {dedup_disk / full:.2f}x")
    print(f"  incremental save <= 0.15x a full save: {incremental / full_save:.2f}x")
    print(
        f"  all-changing dedup save <= 1.05x plain: {statistics.median(all_dedup) / statistics.median(all_plain):.2f}x"
    )
    print(f"  dedup load speed >= 0.9x plain: {statistics.median(loads_plain) / statistics.median(loads_dedup):.2f}x")
    if lightning:
        _, default_s, _ = lightning[0]
        _, _, one_full = lightning[1]
        one_full //= 3  # TorchkeepCheckpointIO() keeps 3 whole files
        print(
            f"\nLightning fine-tune: frozen backbone {args.size} MiB + trained head, {args.saves} saves "
            "(every_n_train_steps=1, save_top_k=3), one fit per plugin, one after another\n"
        )
        print("| plugin | save s (median) | save speed vs default | kept files MiB | vs one full checkpoint |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds, size in lightning:
            print(
                f"| {name} | {seconds:.3f} | {default_s / seconds:.2f}x | {size / 2**20:.0f} | {size / one_full:.2f}x |"
            )


if __name__ == "__main__":
    main()
