"""A tiny Lightning run under TorchkeepCheckpointIO, as its own process (the tests SIGKILL it).

python _lightning_run.py DIR OUT --epochs N [--kill-at-step S] [--resume] [--package pytorch_lightning] [--dedup]
``--dedup`` writes through ``TorchkeepCheckpointIO(dedup=True)`` and widens the net so that its
weights and Adam moments are blobs (at least 64 KiB each). Writes the final weights and optimizer state to OUT (a torchkeep file) when training ends.
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

parser = argparse.ArgumentParser()
parser.add_argument("dir")
parser.add_argument("out")
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--kill-at-step", type=int, default=None)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--package", default="lightning")
parser.add_argument("--dedup", action="store_true")
args = parser.parse_args()

if args.package == "lightning":
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from torchkeep.integrations.lightning import TorchkeepCheckpointIO
else:
    import pytorch_lightning as L  # type: ignore[no-redef]
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint  # type: ignore[assignment]

    from torchkeep.integrations.pytorch_lightning import TorchkeepCheckpointIO  # type: ignore[assignment]


class Net(L.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.05, wide: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        middle = [torch.nn.Linear(hidden, hidden), torch.nn.Tanh()] if wide else []
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Tanh(), *middle, torch.nn.Linear(hidden, 1)
        )

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *rest):  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: a real crash


g = torch.Generator().manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)

L.seed_everything(0, verbose=False)
model = Net(hidden=128, wide=True) if args.dedup else Net()
callbacks: list[Callback] = [
    ModelCheckpoint(dirpath=args.dir, save_top_k=2, monitor="train_loss", save_last=True),
    ModelCheckpoint(dirpath=os.path.join(args.dir, "steps"), every_n_train_steps=3, save_top_k=-1),
]
if args.kill_at_step is not None:
    callbacks.append(KillAt(args.kill_at_step))
trainer = L.Trainer(
    max_epochs=args.epochs,
    plugins=[TorchkeepCheckpointIO(dedup=args.dedup)],
    callbacks=callbacks,
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    default_root_dir=args.dir,
)
trainer.fit(model, loader, ckpt_path="last" if args.resume else None)
opt = trainer.optimizers[0]
tk.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "global_step": trainer.global_step}, args.out)
