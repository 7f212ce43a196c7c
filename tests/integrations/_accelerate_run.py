"""A tiny Accelerate loop checkpointing with torchkeep's save_state each epoch (the tests SIGKILL it).

python _accelerate_run.py DIR FINAL --epochs N [--kill-at-step S] [--resume]
"""

from __future__ import annotations

import argparse
import os
import signal
import warnings

import torch

import torchkeep as tk

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

import accelerate  # noqa: E402

from torchkeep.integrations.accelerate import load_state, save_state  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("dir")
parser.add_argument("final")
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--kill-at-step", type=int, default=None)
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()


class Counter:
    """A custom object registered for checkpointing."""

    def __init__(self) -> None:
        self.seen = 0

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seen = state["seen"]


accelerate.utils.set_seed(0)
accelerator = accelerate.Accelerator(
    cpu=True, dataloader_config=accelerate.DataLoaderConfiguration(use_seedable_sampler=True)
)
g = torch.Generator().manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.8)
loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
counter = Counter()
accelerator.register_for_checkpointing(counter)

start = 0
if args.resume:
    done = sorted(int(n.split("-")[1]) for n in os.listdir(args.dir) if n.startswith("epoch-"))
    load_state(accelerator, os.path.join(args.dir, f"epoch-{done[-1]}"))
    start = done[-1] + 1
step = start * len(loader)
for epoch in range(start, args.epochs):
    model.train()
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        counter.seen += len(x)
        step += 1
        if step == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup: a real crash
    save_state(accelerator, os.path.join(args.dir, f"epoch-{epoch}"))

unwrapped = accelerator.unwrap_model(model)
tk.save(
    {"model": unwrapped.state_dict(), "optimizer": opt.state_dict(), "seen": counter.seen, "step": step}, args.final
)
