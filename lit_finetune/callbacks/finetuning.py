"""Which layers train: freezing policies and gradual unfreezing, as Lightning `BaseFinetuning` callbacks that act on
the task module's layer groups (training.layers)."""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info

from lit_finetune.errors import ConfigError
from lit_finetune.training.layers import LayerGroup, backbone, check_layer_count, layer_groups
from lit_finetune.training.lora import is_lora
from lit_finetune.training.optim import (
    add_param_groups,
    decay_split,
    decayed_parameters,
    layer_lr,
    sync_schedulers,
)

Policy = Literal["full", "feature_extraction", "freeze_bottom", "train_top"]


def check_not_lora(pl_module: pl.LightningModule, callback: str) -> None:
    """Freezing by layer would unfreeze the pretrained weights that LoRA keeps frozen."""
    if is_lora(pl_module.model):
        raise ConfigError(f"{callback}: cannot be combined with model.lora (LoRA already freezes the pretrained "
                          "weights; unfreezing layers would train them in full)")


def set_trainable(groups: list[LayerGroup], trainable: bool) -> None:
    for group in groups:
        for param in group.params:
            param.requires_grad_(trainable)


class LayerFinetuning(BaseFinetuning):
    """BaseFinetuning over a task module's layer groups, which exist once its model is built."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.configure_model()  # Lightning builds the model after callbacks' setup; freezing needs it now
        super().setup(trainer, pl_module, stage)


class FreezeLayers(LayerFinetuning):
    """Train only some layers of the model; the others keep their pretrained weights.

    Layers are chosen by group: embeddings, Transformer blocks, head.

    Policies: ``full`` trains everything; ``feature_extraction`` trains the head on a frozen backbone kept in eval mode
    (no dropout, so its features are the pretrained model's); ``freeze_bottom`` freezes the embeddings and the bottom
    ``layers`` blocks; ``train_top`` trains only the top ``layers`` blocks and the head.
    """

    def __init__(self, policy: Policy = "full", layers: int = 0):
        """
        Args:
            policy: full | feature_extraction | freeze_bottom | train_top.
            layers: Blocks frozen from the bottom (freeze_bottom) or trained from the top (train_top).
        """
        super().__init__()
        self.policy = policy
        self.layers = layers

    def frozen_groups(self, groups: list[LayerGroup]) -> list[LayerGroup]:
        blocks = len(groups) - 2
        return {"full": [], "feature_extraction": groups[:-1], "freeze_bottom": groups[:1 + self.layers],
                "train_top": groups[:1 + blocks - self.layers]}[self.policy]

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        if self.policy != "full":
            check_not_lora(pl_module, "FreezeLayers")
        if self.policy in ("freeze_bottom", "train_top"):
            check_layer_count(pl_module.model, "FreezeLayers.layers", self.layers)
        set_trainable(self.frozen_groups(layer_groups(pl_module.model)), False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        """Nothing changes during training."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.policy == "feature_extraction":  # Lightning restores this mode after each validation
            backbone(pl_module.model).eval()


class GradualUnfreezing(LayerFinetuning):
    """Unfreeze the model one layer group at a time, from the head down (ULMFiT).

    Start with only the head trainable, then unfreeze one layer group from the top every ``every`` epochs or steps
    (top block first, embeddings last), as in ULMFiT; fine-tuning runs are often one epoch, so steps can be given as
    a fraction of the run. Newly unfrozen groups join the optimizer with their own
    learning rate (the module's ``learning_rate``, times ``layer_lr_decay`` per layer of depth when set) and follow the
    same schedule from where it is."""

    def __init__(self, every: float = 1, interval: Literal["epoch", "step"] = "epoch"):
        """
        Args:
            every: Epochs, or steps (a fraction of the run's steps when below 1), between two unfreezings.
            interval: epoch | step: what `every` counts.
        """
        super().__init__()
        if every <= 0 or (interval == "epoch" and every != int(every)):
            raise ConfigError(f"GradualUnfreezing.every: expected a positive whole number of epochs, or of steps (or "
                              f"a fraction of the run's steps below 1), got {every} with interval={interval}")
        self.every = every
        self.interval = interval

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        check_not_lora(pl_module, "GradualUnfreezing")
        set_trainable(layer_groups(pl_module.model)[:-1], False)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # on resume: the groups unfrozen before, back in the optimizer
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        for optimizer in trainer.optimizers:
            sync_schedulers(optimizer, schedulers)
        optimized = {id(p) for optimizer in trainer.optimizers for g in optimizer.param_groups for p in g["params"]}
        for group in layer_groups(pl_module.model):
            if group.params and all(id(p) in optimized for p in group.params):
                set_trainable([group], True)

    def unfrozen_count(self, trainer: pl.Trainer) -> int:
        """Layer groups below the head unfrozen by now."""
        if self.interval == "epoch":
            return trainer.current_epoch // int(self.every)
        steps = self.every * trainer.estimated_stepping_batches if self.every < 1 else self.every
        return int(trainer.global_step // max(round(steps), 1))

    def unfreeze_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        groups = layer_groups(pl_module.model)
        below_head = list(reversed(groups[:-1]))  # top block first, embeddings last
        h = pl_module.hparams
        for group in below_head[:self.unfrozen_count(trainer)]:
            if not group.params or group.params[0].requires_grad:
                continue
            set_trainable([group], True)
            lr = layer_lr(h.learning_rate, h.get("layer_lr_decay", 1.0), group.depth)
            add_param_groups(optimizer, [c.scheduler for c in trainer.lr_scheduler_configs],
                             decay_split(group.params, decayed_parameters(pl_module.model), h.weight_decay, lr,
                                         f"{group.name}/"))
            rank_zero_info(f"GradualUnfreezing: unfroze {group.name} at epoch {trainer.current_epoch}, step "
                           f"{trainer.global_step} (lr {lr:.2e})")
            pl_module.log_parameter_counts()

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        if self.interval == "epoch":
            self.unfreeze_due(pl_module.trainer, pl_module, optimizer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.interval == "step":
            for index, optimizer in enumerate(trainer.optimizers):
                before = len(optimizer.param_groups)
                self.unfreeze_due(trainer, pl_module, optimizer)
                self._store(pl_module, index, before, optimizer.param_groups)
