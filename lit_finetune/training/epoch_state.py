"""The training epoch's running aggregates, carried through a checkpoint so that a run resumed mid-epoch logs the
same epoch metrics (``train/loss_epoch``, ``train/acc``, ...) as one that was never stopped.

Two kinds of aggregate hold the batches done so far: the states of a task's ``train_*`` torchmetrics, and Lightning's
own sums behind ``self.log(..., on_epoch=True)`` in ``training_step``. Neither is in a Lightning checkpoint. Each
process keeps its own share, so the checkpoint holds one entry per process and each process takes back its own.
"""

from __future__ import annotations

import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_warn

STATE_KEY = "lit_finetune_epoch_state"  # checkpoint entry: one dict per process, in rank order


def _cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_cpu(v) for v in value]
    return value


def train_metrics(module: torch.nn.Module) -> dict[str, torchmetrics.Metric]:
    """The torchmetrics that accumulate over a training epoch: those under a ``train_*`` attribute or a ``train``
    key (of a ModuleDict of splits)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, torchmetrics.Metric)
            and any(part == "train" or part.startswith("train_") for part in name.split("."))}


def capture(module, results) -> dict:
    """This process's share of the epoch so far: metric states and Lightning's epoch sums of training steps."""
    metrics = {name: {"state": {k: _cpu(v) for k, v in m.metric_state.items()}, "updates": m.update_count}
               for name, m in train_metrics(module).items() if m.update_count}
    logged = {}
    for key, result in results.valid_items() if results is not None else ():
        meta = result.meta
        if result.is_tensor and meta.on_epoch and meta.fx == "training_step":
            logged[key] = {"value": _cpu(result.value), "reduce": reduce_name(result),
                           "batch_size": _cpu(getattr(result, "cumulated_batch_size", torch.tensor(0)))}
    return {"metrics": metrics, "logged": logged}


def reduce_name(result) -> str:
    meta = result.meta
    if meta.is_mean_reduction:
        return "mean"
    if meta.is_sum_reduction:
        return "sum"
    return "max" if meta.is_max_reduction else "min" if meta.is_min_reduction else "custom"


def own_share(states: list[dict] | None, rank: int, world_size: int) -> dict | None:
    """This process's entry of a checkpoint's states; none when the run resumes on another number of processes."""
    if not states:
        return None
    if len(states) != world_size:
        rank_zero_warn(f"The checkpoint was written by {len(states)} processes and the run resumes on {world_size}: "
                       "this epoch's training aggregates cover the batches after the resume only")
        return None
    return states[rank]


def restore_metrics(module, state: dict) -> None:
    """Put the saved states back into the task's training metrics."""
    metrics = train_metrics(module)
    for name, saved in state["metrics"].items():
        metric = metrics.get(name)
        if metric is None:
            continue
        for attr, value in saved["state"].items():
            current = getattr(metric, attr)
            if isinstance(value, list):
                setattr(metric, attr, [v.to(metric.device) for v in value])
            else:
                setattr(metric, attr, value.to(device=current.device, dtype=current.dtype))
        metric._update_count = saved["updates"]
        metric._computed = None


def merge_logged(results, pending: dict) -> dict:
    """Add the saved epoch sums into Lightning's results for the keys that exist by now (created by the first
    ``self.log`` of a resumed run); returns those still waiting."""
    waiting = {}
    for key, saved in pending.items():
        result = results.get(key) if results is not None else None
        if result is None or result.has_reset:
            waiting[key] = saved
            continue
        value = saved["value"].to(result.value.device, result.value.dtype)
        if saved["reduce"] == "mean":
            result.value = result.value + value
            result.cumulated_batch_size = result.cumulated_batch_size + saved["batch_size"].to(
                result.cumulated_batch_size.device)
        elif saved["reduce"] == "sum":
            result.value = result.value + value
        elif saved["reduce"] == "max":
            result.value = torch.maximum(result.value, value)
        elif saved["reduce"] == "min":
            result.value = torch.minimum(result.value, value)
        result._computed = None
    return waiting
