"""What benchmarks/scale_out.py reads out of each `lit-finetune` process (importable there with PYTHONPATH=benchmarks):
per rank, the bytes of model state it holds, its peak memory, and the training loop's wall time and tokens."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lit_finetune.training.sharding import local


def tensor_bytes(tensors) -> int:
    return sum(local(t).numel() * local(t).element_size() for t in tensors if isinstance(t, torch.Tensor))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ScaleProbe(pl.Callback):
    """Writes ``<output_dir>/rank-<r>.json``: the parameters, gradients and optimizer state this process holds after
    its last step (its shards under FSDP2), its peak RSS when training starts (model built, loaded and sharded) and
    at the end, and the wall time and non-padding tokens of every step after the first (data loading included)."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self.state: dict = {}
        self.started = self.first_end = self.last_end = 0.0
        self.tokens = self.steps = 0
        self.rss_at_start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.rss_at_start = peak_rss_mib()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if not self.first_end:
            self.first_end = now
        else:
            self.steps += 1
            mask = batch.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.last_end = now
        if trainer.global_step >= trainer.max_steps > 0:  # the last step: gradients and optimizer state are there
            params = list(pl_module.parameters())
            optimizer = trainer.optimizers[0]
            self.state = {"params": tensor_bytes(params), "grads": tensor_bytes(p.grad for p in params),
                          "optimizer": tensor_bytes(v for s in optimizer.state.values() for v in s.values()),
                          "full_params": sum(p.numel() * p.element_size() for p in params)}

    def on_train_end(self, trainer, pl_module) -> None:
        seconds = self.last_end - self.first_end
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"rank-{trainer.global_rank}.json").write_text(json.dumps({
            **self.state, "peak_rss_at_start_mib": self.rss_at_start, "peak_rss_mib": peak_rss_mib(),
            "steps_timed": self.steps, "seconds": seconds, "tokens_per_s": self.tokens / seconds if seconds else None,
            "global_step": trainer.global_step}))
