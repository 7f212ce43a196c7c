"""A trainer for the concurrent-restore test: saves step after step with keep_last=1 until killed.

Usage: python _busy_writer.py SRC_DIR CKPT_DIR DEDUP(0|1). Prints ``ready`` after the first save.
"""

from __future__ import annotations

import sys

sys.path.insert(0, sys.argv[1])

import torch

import torchkeep as tk

torch.set_num_threads(1)
model = torch.nn.Linear(128, 128)
with tk.CheckpointManager(sys.argv[2], keep_last=1, dedup=sys.argv[3] == "1", model=model) as mgr:
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            model.weight.fill_(float(step))
            model.bias.fill_(float(step))
        mgr.save(step=step)
        if step == 1:
            print("ready", flush=True)
