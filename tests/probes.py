"""What a test reads out of a real `lit-finetune` process (importable there through PYTHONPATH=tests)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from lit_finetune.training.sharding import local


class LogitsAtEnd(pl.Callback):
    """At the end of training, the model in memory: its logits on `texts` (from rank 0) and, per rank, how many
    parameter values this process holds against the model's total, in ``<output_dir>/rank-<r>.json``."""

    def __init__(self, texts: list[str], output_dir: str):
        self.texts, self.output_dir = texts, Path(output_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        model = pl_module.model
        params = list(model.parameters())  # before the forward pass, after which FSDP2 may keep the root gathered
        held, total = sum(local(p).numel() for p in params), sum(p.numel() for p in params)
        inputs = pl_module.tokenizer(self.texts, padding=True, return_tensors="pt").to(pl_module.device)
        model.eval()
        with torch.no_grad():  # every rank runs it: FSDP2 gathers each block's weights for the forward pass
            logits = model(**{k: v for k, v in inputs.items() if k in pl_module.tokenizer.model_input_names}).logits
        model.train()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"rank-{trainer.global_rank}.json").write_text(json.dumps({
            "logits": logits.float().tolist(), "held": held, "total": total,
            "step": trainer.global_step}))
