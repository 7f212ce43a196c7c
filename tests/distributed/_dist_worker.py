"""One rank of a multi-process test run (launched by ``launch`` in conftest.py, env:// rendezvous).

Scenarios:
  train  — for DDP and FSDP2 (``fully_shard``) on CPU with gloo: an uninterrupted reference run,
           then the same run saving at --save-at steps, and SIGKILL after --kill-after steps. With
           --resume: resume each from its checkpoint and finish. The final full state and per-rank
           RNG probes go to OUT/{ref,resumed}-MODE-rank-R.safetensors.
  load   — load a checkpoint into a freshly initialised DDP / FSDP2 / plain model + optimizer,
           with pickle patched to raise, and write the full state to OUT/rank-R.safetensors.
  killsave — save once, then save again while rank 1 SIGKILLs itself in the middle of its shard.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import random
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

import torchkeep as tk
from torchkeep import distributed as tkd

torch.set_num_threads(1)


def build(mode: str, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 32),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    )
    model: torch.nn.Module
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(net)
    elif mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        model = fully_shard(net)
    else:
        model = net
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    # every RNG is consumed, so a resume that restored one of them wrong diverges
    x = torch.randn(16, 8) * (1.0 + random.random())
    y = torch.randn(16, 4) + float(np.random.rand())
    return x, y


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, object]:
    opts = StateDictOptions(full_state_dict=True)
    msd = {k: v.clone() for k, v in get_model_state_dict(model, options=opts).items()}
    osd = get_optimizer_state_dict(model, opt, options=opts)
    return {"model": msd, "optimizer_state": osd["state"]}


def forbid_pickle() -> None:
    """Any unpickling from here on fails the test (torch.distributed bound its own copy at import)."""

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("pickle used on a load path")

    pickle.load = refuse  # type: ignore[assignment]
    pickle.loads = refuse  # type: ignore[assignment]

    class Refused(pickle.Unpickler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("pickle used on a load path")

    pickle.Unpickler = Refused  # type: ignore[misc]
    torch.load = refuse  # type: ignore[assignment]


def write_out(out: str, rank: int, tree: dict[str, object], prefix: str = "") -> None:
    tk.save(tree, os.path.join(out, f"{prefix}rank-{rank}.safetensors"))


def segment(args: argparse.Namespace, rank: int, mode: str, *, stop: int, resume: str = "", save: bool = False) -> None:
    """Train ``mode`` from step 0 (or from ``resume``) to ``stop``; seeds are reset first."""
    model, opt, sched = build(mode, seed=0)
    torch.manual_seed(1000 + rank)
    random.seed(2000 + rank)
    np.random.seed(3000 + rank)
    start = 0
    if resume:
        info = tk.load_checkpoint(resume, model=model, optimizer=opt, scheduler=sched)
        assert info.extra == {"rank": rank, "seen": info.step}, info.extra
        start = info.step
    pending = None
    for step in range(start, stop):
        x, y = batch()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if save and done in args.save_at:
            path = os.path.join(args.ckpt, mode, f"step-{done}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            kw = dict(model=model, optimizer=opt, scheduler=sched, step=done, extra={"rank": rank, "seen": done})
            if mode in args.async_modes:
                if pending is not None:
                    pending.result()  # one background save at a time
                pending = tkd.async_save_checkpoint(path, **kw)
            else:
                tk.save_checkpoint(path, **kw)
        if not save and done == args.full_at:
            write_out(args.out, rank, full_state(model, opt), prefix=f"full-{done}-{mode}-")
    if pending is not None:
        pending.result()
    if not save:
        tree = full_state(model, opt)
        tree["probe"] = {"torch": torch.rand(4), "python": random.random(), "numpy": float(np.random.rand())}
        write_out(args.out, rank, tree, prefix=f"{'resumed' if resume else 'ref'}-{mode}-")


def train(args: argparse.Namespace, rank: int) -> None:
    if args.resume:
        forbid_pickle()
        for mode in args.modes:
            segment(
                args, rank, mode, stop=args.steps, resume=os.path.join(args.resume, mode, f"step-{args.resume_step}")
            )
        return
    for mode in args.modes:  # the uninterrupted reference runs
        segment(args, rank, mode, stop=args.steps)
    for mode in args.modes:  # the same runs, saving, then killed part-way
        segment(args, rank, mode, stop=args.kill_after, save=True)
    os.kill(os.getpid(), signal.SIGKILL)


def load(args: argparse.Namespace, rank: int) -> None:
    forbid_pickle()
    for prefix, mode, ckpt in (("a-", args.mode, args.ckpt), ("b-", "ddp", args.ckpt2)):
        if not ckpt:
            continue
        model, opt, sched = build(mode, seed=123)  # different init: everything must come from the file
        info = tk.load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched)
        tree = full_state(model, opt)
        tree["extra"] = info.extra
        tree["lr"] = sched.get_last_lr()
        write_out(args.out, rank, tree, prefix=prefix)
    if args.manager:
        manager(args, rank)


def manager(args: argparse.Namespace, rank: int) -> None:
    """A CheckpointManager on every rank: async sharded saves, retention by rank 0, restore latest."""
    directory = os.path.join(args.out, "mgr")
    model, opt, sched = build("fsdp", seed=5)
    with tk.CheckpointManager(
        directory, keep_last=2, async_save=True, model=model, optimizer=opt, scheduler=sched
    ) as mgr:
        for step in (1, 2, 3):
            x, y = batch()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            mgr.save(step=step, metrics={"loss": 1.0 / step}, extra={"rank": rank})
    expected = full_state(model, opt)
    model2, opt2, sched2 = build("fsdp", seed=6)
    with tk.CheckpointManager(directory, model=model2, optimizer=opt2, scheduler=sched2) as mgr2:
        info = mgr2.restore()
        assert info is not None
        steps = [c.step for c in mgr2.checkpoints]
    write_out(
        args.out,
        rank,
        {
            "expected": expected,
            "restored": full_state(model2, opt2),
            "step": info.step,
            "steps": steps,
            "extra": info.extra,
        },
        prefix="mgr-",
    )


def killsave(args: argparse.Namespace, rank: int) -> None:
    model, opt, _sched = build(args.mode, seed=0)
    tk.save_checkpoint(os.path.join(args.ckpt, "step-1"), model=model, optimizer=opt, step=1)
    if rank == 1:
        from torchkeep.io import _format

        real = _format._stream_tensor
        count = [0]

        def dying(dest, t, nbytes):  # type: ignore[no-untyped-def]
            count[0] += 1
            if count[0] == 3:  # a few tensors are on disk, the rest never will be
                dest.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(dest, t, nbytes)

        _format._stream_tensor = dying
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    tk.save_checkpoint(os.path.join(args.ckpt, "step-2"), model=model, optimizer=opt, step=2)
    raise SystemExit("the interrupted save returned on a surviving rank")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["train", "load", "killsave"])
    parser.add_argument("--mode", default="ddp", choices=["ddp", "fsdp", "plain"])
    parser.add_argument("--modes", nargs="*", default=["ddp", "fsdp"])
    parser.add_argument("--async-modes", nargs="*", default=[])
    parser.add_argument("--resume-step", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save-at", type=int, nargs="*", default=[])
    parser.add_argument("--kill-after", type=int, default=-1)
    parser.add_argument("--full-at", type=int, default=-1)
    parser.add_argument("--ckpt2", default="", help="load: a second checkpoint, loaded into a DDP model")
    parser.add_argument("--manager", action="store_true", help="load: then run a CheckpointManager")
    parser.add_argument("--resume", default="")
    parser.add_argument("--ckpt", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or args.mode != "plain":
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    rank = dist.get_rank() if dist.is_initialized() else 0
    {"train": train, "load": load, "killsave": killsave}[args.scenario](args, rank)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.exit(0)


if __name__ == "__main__":
    main()
