"""A tiny Hugging Face Trainer run under TorchkeepTrainer, as its own process (the tests SIGKILL it).

python _hf_run.py OUTPUT_DIR FINAL --steps N [--kill-at-step S] [--resume] [--plain]
Writes the final weights and optimizer state to FINAL (a torchkeep file) when training ends.
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

import transformers  # noqa: E402

from torchkeep.integrations.transformers import TorchkeepTrainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("output_dir")
parser.add_argument("final")
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--kill-at-step", type=int, default=None)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--plain", action="store_true", help="the stock Trainer (pickled files), for comparison")
parser.add_argument("--best", action="store_true", help="evaluate and load_best_model_at_end")
args = parser.parse_args()


class KillAt(transformers.TrainerCallback):
    def on_step_end(self, targs, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: a real crash


def dataset(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30, (n, 6), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


config = transformers.BertConfig(
    vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=2
)
transformers.set_seed(0)
model = transformers.BertForSequenceClassification(config)  # dropout on: the RNG must resume too
targs = transformers.TrainingArguments(
    output_dir=args.output_dir,
    max_steps=args.steps,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    lr_scheduler_type="linear",
    warmup_steps=2,
    save_strategy="steps",
    save_steps=3,
    save_total_limit=2,
    eval_strategy="steps" if args.best else "no",
    eval_steps=3,
    load_best_model_at_end=args.best,
    metric_for_best_model="loss" if args.best else None,
    logging_steps=100,
    report_to=[],
    use_cpu=True,
    seed=0,
    data_seed=0,
    push_to_hub=False,
    disable_tqdm=True,
    dataloader_num_workers=0,
)
cls = transformers.Trainer if args.plain else TorchkeepTrainer
trainer = cls(
    model=model,
    args=targs,
    train_dataset=dataset(40, 1),
    eval_dataset=dataset(8, 2) if args.best else None,
    callbacks=[KillAt()] if args.kill_at_step else [],
)
trainer.train(resume_from_checkpoint=True if args.resume else None)
tk.save(
    {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "step": trainer.state.global_step,
    },
    args.final,
)
