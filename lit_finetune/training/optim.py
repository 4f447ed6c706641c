"""Optimizer parameter groups and learning-rate schedules shared by every task module."""

from __future__ import annotations

import math
from typing import Literal

import torch
from transformers import get_scheduler

Schedule = Literal["linear", "cosine", "constant_with_warmup"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: biases and LayerNorm weights (all 1-d parameters) are left undecayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    # Names show up in LearningRateMonitor's keys: lr-AdamW/decay, lr-AdamW/no_decay.
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` below 1 is a fraction of the run (rounded up, as transformers' Trainer does), from 1 up a number of
    steps."""
    return math.ceil(warmup * total_steps) if warmup < 1 else int(warmup)


def build_scheduler(optimizer: torch.optim.Optimizer, name: Schedule, warmup: float, total_steps: int):
    """A per-step LambdaLR; its state (the step count) is checkpointed, so resuming continues the same curve."""
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(warmup, total_steps),
                         num_training_steps=total_steps)
