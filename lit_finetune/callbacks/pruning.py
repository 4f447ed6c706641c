"""Magnitude pruning during fine-tuning: Lightning's `ModelPruning` driven by a gradual sparsity schedule, so the
exported model comes out with the target share of its Transformer-block weights set to zero."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ModelPruning
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from transformers.pytorch_utils import Conv1D

from lit_finetune.errors import ConfigError
from lit_finetune.training.layers import layer_groups

LINEAR_LAYERS = (nn.Linear, Conv1D)  # Conv1D: GPT-2's projections, a Linear with its weight transposed


def prunable_weights(model: nn.Module, include_head: bool = False) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every Linear layer in the Transformer blocks (with what `layer_groups` counts as part of
    them, e.g. BERT's pooler), and in the task head when asked: where most of the weights are. Embeddings,
    LayerNorms and biases stay dense; so does the head by default, as it is small and freshly trained."""
    groups = layer_groups(model)
    chosen = {id(p) for group in groups[1:] if include_head or group is not groups[-1] for p in group.params}
    return [(module, "weight") for module in model.modules()
            if isinstance(module, LINEAR_LAYERS) and id(module.weight) in chosen]


def check_position(key: str, value: float) -> None:
    """A schedule point is a fraction of the run (0 to 1) or a whole number of steps."""
    if value < 0 or (value > 1 and value != int(value)):
        raise ConfigError(f"ScheduledPruning.{key}: expected a fraction of the run's steps in [0, 1] or a whole "
                          f"number of steps, got {value}")


class ScheduledPruning(ModelPruning):
    """Prune the Transformer blocks' weights gradually to a target sparsity during training.

    Unstructured L1 (magnitude) pruning of the Transformer blocks' Linear weights, raised gradually to `amount`
    with the cubic schedule of Zhu & Gupta (2017): sparsity(t) = amount * (1 - (1 - p)^3), p going from 0 at
    `start` to 1 at `end`. It prunes fast early, while redundant weights abound, and slowly near the target, and
    leaves the steps after `end` for the model to recover at the target sparsity.

    Pruning happens every `every_n_steps` optimizer steps (fine-tuning runs are often 1-3 epochs, too few for
    epoch-end pruning), or at each training epoch end when it is None. Masks only grow: a pruned weight stays zero
    (through torch's pruning masks, which also zero its gradient), as in Zhu & Gupta. Torch prunes a fraction of the
    weights a tensor *still has*, so each call converts the schedule's cumulative target into that fraction
    (per-layer), or into a count of weights over all tensors (global, exact); re-pruning from the dense weights
    instead would let pruned weights come back.

    Each time it prunes, the actual fraction of zeros in the pruned tensors is logged as ``pruning/sparsity``
    straight to the loggers (not through ``self.log``, which writes only every ``log_every_n_steps``). Every
    checkpoint holds plain weights with the zeros in them (ModelPruning's ``on_save_checkpoint``), so the best
    checkpoint exports as a plain Hugging Face folder; the masks are made permanent when training ends.

    A denser model usually scores better, so when the schedule reaches `amount`, the monitoring ModelCheckpoints
    and EarlyStopping forget their earlier bests: only models at the target sparsity compete for the best checkpoint
    (and the export), and patience restarts (the earlier files stay on disk).

    Raises: ConfigError for an amount outside [0, 1), a start not before end, or a schedule past the run's steps.
    """

    def __init__(self, amount: float = 0.5, start: float = 0.0, end: float = 0.8, every_n_steps: int | None = 50,
                 use_global_unstructured: bool = False, prune_head: bool = False):
        """
        Args:
            amount: Target sparsity: the fraction of the pruned weights that are zero at `end`, in [0, 1).
            start: Where the schedule starts: a fraction of the run's optimizer steps (<= 1) or a step number.
            end: Where it reaches `amount`: a fraction of the run's steps (<= 1) or a step number.
            every_n_steps: Optimizer steps between two prunings; null prunes at each training epoch end instead
                (after that epoch's validation, so its metric and checkpoint score predate the pruning).
            use_global_unstructured: Rank all pruned weights together (layers end up with different sparsities,
                `amount` overall) instead of pruning each weight matrix to `amount`.
            prune_head: Also prune the Linear layers of the task head (e.g. the classifier).
        """
        if not 0 <= amount < 1:
            raise ConfigError(f"ScheduledPruning.amount: expected a target sparsity in [0, 1), got {amount}")
        check_position("start", start)
        check_position("end", end)
        if (start <= 1) == (end <= 1) and start >= end:
            raise ConfigError(f"ScheduledPruning.start: expected it before end, got start={start} and end={end}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"ScheduledPruning.every_n_steps: expected a positive number of steps (or null for "
                              f"every epoch end), got {every_n_steps}")
        # No lottery-ticket rewinding: it would reset the surviving weights to their pretrained values.
        super().__init__("l1_unstructured", parameter_names=["weight"], use_global_unstructured=use_global_unstructured,
                         amount=amount, make_pruning_permanent=True, use_lottery_ticket_hypothesis=False)
        self.start = start
        self.end = end
        self.every_n_steps = every_n_steps
        self.prune_head = prune_head
        self.start_step = self.end_step = 0  # the schedule in optimizer steps, once the run's length is known
        self.reached = 0.0  # the schedule's sparsity the weights were last pruned to

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.configure_model()  # Lightning builds the model after callbacks' setup; the layers are needed now
        self._parameters_to_prune = prunable_weights(pl_module.model, self.prune_head)
        if not self._parameters_to_prune:
            raise ConfigError(f"ScheduledPruning: found no Linear layers to prune in {type(pl_module.model).__name__}")
        super().setup(trainer, pl_module, stage)

    def schedule_steps(self, trainer: pl.Trainer) -> tuple[int, int]:
        """`start` and `end` as optimizer steps of this run."""
        total = trainer.estimated_stepping_batches
        if math.isinf(total) and (self.start <= 1 or self.end <= 1):
            raise ConfigError("ScheduledPruning.start/end: fractions of the run need its length (trainer.max_steps "
                              "or max_epochs); give step numbers instead")
        start, end = (round(x * total) if x <= 1 else int(x) for x in (self.start, self.end))
        if start >= end or end > total:
            raise ConfigError(f"ScheduledPruning.start/end: the schedule runs from step {start} to step {end}, "
                              f"which does not fit in this run's {total} steps")
        return start, end

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step, self.end_step = self.schedule_steps(trainer)
        if self.reached:  # resumed: the checkpoint has the zeros but no masks; these smallest weights get them back
            self.prune_to(self.reached)

    def scheduled_sparsity(self, step: int) -> float:
        """Zhu & Gupta's cubic schedule, at optimizer step `step`."""
        progress = min(max((step - self.start_step) / (self.end_step - self.start_step), 0.0), 1.0)
        return self.amount * (1 - (1 - progress) ** 3)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        # The last due step prunes to the target exactly, even when it is no multiple of every_n_steps.
        if self.every_n_steps and step > self.start_step and (
                (step - self.start_step) % self.every_n_steps == 0 or step >= self.end_step):
            self.prune_on_schedule(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps is None:  # replaces ModelPruning's, which would prune `amount` more every epoch
            self.prune_on_schedule(trainer)

    def prune_on_schedule(self, trainer: pl.Trainer) -> None:
        target = self.scheduled_sparsity(trainer.global_step)
        if target <= self.reached:  # e.g. the other micro-batches of an accumulated step
            return
        self.prune_to(target)
        self.reached = target
        metrics = {"pruning/sparsity": self.measured_sparsity()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if target >= self.amount:
            forget_denser_bests(trainer)

    def prune_to(self, target: float) -> None:
        """Prune until `target` of the weights are masked, counting what earlier calls masked already."""
        params = self._parameters_to_prune
        size = sum(getattr(module, name).numel() for module, name in params)
        masked = sum(int((getattr(module, f"{name}_mask") == 0).sum()) for module, name in params
                     if hasattr(module, f"{name}_mask"))
        if self._use_global_unstructured:
            amount = round(target * size) - masked  # an int: that many more weights, ranked over all tensors
        else:
            amount = (target - masked / size) / (1 - masked / size)  # the share of each tensor's remaining weights
        if amount > 0:
            self.apply_pruning(amount)

    def measured_sparsity(self) -> float:
        """The fraction of zeros in the pruned weights, as the model computes with them."""
        zeros = total = 0
        for module, name in self._parameters_to_prune:
            mask = getattr(module, f"{name}_mask", None)
            weight = mask if mask is not None else getattr(module, name)
            zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
        return zeros / max(total, 1)

    def state_dict(self) -> dict:
        return {"sparsity": self.reached}

    def load_state_dict(self, state_dict: dict) -> None:
        self.reached = state_dict["sparsity"]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # masks made permanent: the weights now hold the zeros
        if self.reached < self.amount:
            rank_zero_warn(f"ScheduledPruning: training stopped at step {trainer.global_step}, before the schedule's "
                           f"end (step {self.end_step}): sparsity {self.reached:.3f}, not {self.amount}")


def forget_denser_bests(trainer: pl.Trainer) -> None:
    """Make the monitoring ModelCheckpoints and EarlyStopping start afresh, as at the start of a run."""
    for checkpoint in trainer.checkpoint_callbacks:
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor:
            checkpoint.best_k_models, checkpoint.kth_best_model_path = {}, ""
            checkpoint.best_model_path, checkpoint.best_model_score = "", None
            checkpoint.kth_value = torch.tensor(math.inf if checkpoint.mode == "min" else -math.inf)
    for stopping in trainer.early_stopping_callbacks:
        stopping.wait_count = 0
        stopping.best_score = torch.tensor(math.inf if stopping.monitor_op == torch.lt else -math.inf)
