"""Faults a test injects into a real `lit-finetune` process (importable there through PYTHONPATH=tests)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Sends this process real signals at the start of chosen training steps (``{step: "SIGTERM", ...}``), each once
    (a file in `state_dir` remembers it), so the same command run again goes on to the next one. Under DDP, only
    the process of `rank` is signalled, as when a scheduler's signal reaches one node first."""

    def __init__(self, signals: dict[int, str], state_dir: str, rank: int = 0):
        self.signals, self.state_dir, self.rank = signals, Path(state_dir), rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank != self.rank:
            return
        name = self.signals.get(trainer.global_step)
        sent = self.state_dir / f"sent-{trainer.global_step}"
        if name and not sent.exists():
            sent.write_text(name)
            os.kill(os.getpid(), getattr(signal, name))
