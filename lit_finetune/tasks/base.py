"""What every task module shares: the backbone, AdamW with a warmup schedule, checkpoint metadata and export."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedModel

from lit_finetune import backbones
from lit_finetune.bounds import (
    DecayFactor,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    plain_hparams,
    settings_dict,
)
from lit_finetune.data import packing
from lit_finetune.distributed import gather_objects
from lit_finetune.errors import ConfigError
from lit_finetune.io import atomic_directory
from lit_finetune.run_folder import EXPORT_MARKER
from lit_finetune.training import epoch_state
from lit_finetune.training.checkpointing import NonFiniteError, non_finite_tensors, read_checkpoint
from lit_finetune.training.layers import parameter_counts
from lit_finetune.training.lora import KEY as LORA_KEY
from lit_finetune.training.lora import (
    QUANTIZATION_KEY,
    LoraSettings,
    QuantizationSettings,
    adapter_fits_the_base,
    apply_lora,
    check_quantization,
    full_precision_merge,
    full_precision_modules,
    is_lora,
    loaded_in_4bit,
    merged_copy,
    prepare_for_kbit_training,
    quantization_config,
    save_adapter,
    trainable_state,
)
from lit_finetune.training.optim import (
    OPTIMIZERS,
    Schedule,
    build_scheduler,
    is_schedule_free,
    optimizer_class,
    optimizer_defaults,
    param_groups,
    warmup_steps,
)
from lit_finetune.training.sharding import is_sharding, local, shard_task_module

AttnImplementation = Literal["sdpa", "eager", "flash_attention_2", "flex_attention"]
TASK_KEY = "lit_finetune_task"  # checkpoint entry naming the task class, so `export` needs no config
BEST_KEY = "lit_finetune_best"  # checkpoint entry: the best validation value so far, which a resume continues
# checkpoint entry of a QLoRA run: its state dict holds the trained weights only, the 4-bit base is read again
ADAPTERS_ONLY_KEY = "lit_finetune_adapters_only"


class PerSplit(torch.nn.ModuleDict):
    """One metric collection per split, looked up by the split's name (``metrics["val"]``); stored under
    ``<split>_metrics``, since ``train`` is a method of every module."""

    def __init__(self, per_split: dict):
        super().__init__({f"{split}_metrics": metrics for split, metrics in per_split.items()})

    def __getitem__(self, split: str):
        return super().__getitem__(f"{split}_metrics")


def label_set(labels: dict | None) -> dict[int, str] | None:
    """`labels` with integer ids: a YAML or JSON config, or the config dump that LightningCLI hands to
    `save_hyperparameters`, gives them as strings."""
    return None if labels is None else {int(k): str(v) for k, v in labels.items()}


class TaskModule(pl.LightningModule):
    """Base of all task modules: subclasses build the Hugging Face model and define the steps and metrics."""

    # How the task's key validation metric improves ("max" or "min"): the module then keeps its best value so far
    # in `best`, logged as val/<key>_best and carried through checkpoints; None for tasks without one.
    best_mode: str | None = None
    key_metric: str | None = None  # its name (val/<key_metric>), for tasks whose metrics are a PerSplit
    # Hyperparameters that the data decides (the label set, a tag scheme), named as the data module's attributes:
    # taken from it on the first build, then saved with the hyperparameters, so a checkpoint needs no data.
    from_data: tuple[str, ...] = ()
    auto_class = None  # the task's Hugging Face Auto class, where one fits (a distillation teacher is read as one)
    causal_lm = False  # whether the model predicts the next token (a decoder), for packed rows' boundaries

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        learning_rate: PositiveFloat = 5e-5,
        weight_decay: NonNegativeFloat = 0.01,
        warmup: NonNegativeFloat = 0.06,
        lr_scheduler: Schedule = "linear",
        layer_lr_decay: DecayFactor = 1.0,
        lr_cycles: PositiveInt = 1,
        min_lr_ratio: Probability = 0.1,
        decay_phase: NonNegativeFloat = 0.1,
        optimizer: str = "adamw",
        optimizer_args: dict | None = None,
        adam_epsilon: PositiveFloat = 1e-8,
        fused_adamw: bool = True,
        trust_remote_code: bool = False,
        tokenizer_name_or_path: str | None = None,
        config_overrides: dict | None = None,
        lora: LoraSettings | None = None,
        quantization: QuantizationSettings | None = None,
        max_bad_steps: NonNegativeInt = 0,
        gradient_checkpointing: bool = False,
        attn_implementation: AttnImplementation | None = None,
        compile: bool = False,
        compile_backend: str = "inductor",
    ):
        """
        Args:
            model_name_or_path: Hub id, local model folder (e.g. an earlier run's export), ``minilm`` for the
                packaged all-MiniLM-L6-v2, or ``tiny:bert`` for a small random model.
            learning_rate: Peak learning rate of AdamW, reached after warmup.
            weight_decay: AdamW weight decay; never applied to biases and LayerNorm weights.
            warmup: Linear warmup, as a fraction of all training steps (< 1) or a number of steps (>= 1).
            lr_scheduler: Schedule, sized from the Trainer's estimated total steps: linear, cosine or
                constant_with_warmup after warmup; cosine_with_restarts (``lr_cycles`` cosines); one_cycle (rise for
                the warmup, then anneal); cyclic (triangular, ``lr_cycles`` cycles from ``min_lr_ratio`` x peak);
                warmup_stable_decay (the peak held, then a cosine to ``min_lr_ratio`` x peak over ``decay_phase``);
                cosine_with_min_lr (a cosine to ``min_lr_ratio`` x peak); inverse_sqrt (peak x sqrt(warmup/step)).
            layer_lr_decay: Layer-wise learning-rate decay: the head trains at ``learning_rate``, each Transformer
                layer below it at ``layer_lr_decay`` times the one above, the embeddings lowest (1 = off).
            lr_cycles: Cycles of the cosine_with_restarts and cyclic schedules.
            min_lr_ratio: Lowest learning rate of the cyclic, warmup_stable_decay and cosine_with_min_lr schedules,
                as a fraction of the peak.
            decay_phase: The final decay of warmup_stable_decay: a fraction of all steps (< 1) or a number of steps.
            optimizer: ``adamw`` (PyTorch's, fused), ``adafactor`` (transformers', at this learning rate and
                schedule), ``sgd`` (momentum 0.9), ``lion`` (lion-pytorch), ``adamw_8bit`` (bitsandbytes),
                ``schedule_free`` (schedulefree's AdamW: no schedule, it warms up itself for ``warmup``; evaluation
                and checkpoints use its averaged weights), or the class path of any torch optimizer
                (``torch.optim.RAdam``). Every one keeps the no-decay groups and layer-wise rates.
            optimizer_args: Further arguments of the optimizer, e.g. ``{betas: [0.9, 0.95]}`` or ``{momentum: 0.8}``.
            adam_epsilon: AdamW epsilon.
            fused_adamw: Use PyTorch's fused AdamW kernel (faster on CPU and GPU); not with gradient clipping
                under mixed precision, where Lightning unscales gradients itself.
            trust_remote_code: Allow model code from the hub to run (off unless you trust the repository).
            tokenizer_name_or_path: Tokenizer folder or hub id when it is not the model's own, e.g. one trained by
                `lit-finetune tokenizer` for a ``small:bert`` model pretrained from scratch.
            config_overrides: Settings of the backbone's Hugging Face config, e.g. ``{num_hidden_layers: 2}`` for a
                student that keeps the bottom 2 pretrained layers, or ``{hidden_dropout_prob: 0.2}``.
            lora: Train low-rank adapters (peft) and the task head instead of every weight, e.g.
                ``{r: 8, alpha: 16, target_modules: [query, value]}``; the export holds the merged model (no peft
                needed to load it) and the adapter alone in ``adapter/``.
            quantization: QLoRA: the base loaded in 4 bits by bitsandbytes (CUDA GPUs, and CPUs from 0.48), e.g.
                ``{quant_type: nf4}``, with ``lora`` set; the head stays in full precision, peft's k-bit preparation
                is applied, checkpoints hold the trained weights only (the base is read again), and the export
                re-reads the base in full precision before merging, so ``export/`` stays a plain Hugging Face folder.
            max_bad_steps: Batches whose loss or gradient norm is NaN or inf that may be skipped (no update) before
                the run stops with an error naming the step (0: stop at the first).
            gradient_checkpointing: Recompute each Transformer block's activations in the backward pass instead of
                keeping them (non-reentrant, so it works with LoRA, DDP and FSDP): much less activation memory for
                one more forward pass of the blocks per step (BENCHMARKS.md: peak RSS 0.7x for SmolLM2 SFT).
            attn_implementation: The backbone's attention kernel: ``sdpa`` (PyTorch's fused attention, the default
                where the model has it), ``eager`` (plain matmuls), ``flash_attention_2`` (the flash-attn package, on
                a GPU, with fp16/bf16) or ``flex_attention``; null keeps the model's own default.
            compile: ``torch.compile`` the model for training, after LoRA and sharding (in place, so checkpoints and
                exports keep their keys). The first steps compile; each new batch shape can recompile, so set
                data.pad_to_multiple_of (e.g. 64) to bound the shapes.
            compile_backend: torch.compile's backend: ``inductor`` (generated kernels; needs a C++ compiler on CPU)
                or e.g. ``aot_eager`` (traces without generating code, to check a model compiles).
        """
        super().__init__()
        if not 0 < layer_lr_decay <= 1:
            raise ConfigError(f"model.layer_lr_decay: expected a factor in (0, 1], got {layer_lr_decay}")
        if lr_cycles < 1:
            raise ConfigError(f"model.lr_cycles: expected a positive number of cycles, got {lr_cycles}")
        if optimizer not in OPTIMIZERS and "." not in optimizer:
            raise ConfigError(f"model.optimizer: {optimizer!r} is neither one of {', '.join(OPTIMIZERS)} nor a class "
                              "path (e.g. torch.optim.RAdam)")
        if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation: flash_attention_2 needs the flash-attn package, which is not "
                              "installed (pip install flash-attn, on a machine with a CUDA GPU); use sdpa")
        lora = settings_dict(lora, LoraSettings, LORA_KEY)
        quantization = settings_dict(quantization, QuantizationSettings, QUANTIZATION_KEY)
        self.save_hyperparameters(logger=False)  # the CLI logs the run's config, with dotted keys (RunConfig)
        plain_hparams(self)
        if self.hparams.get("labels") is not None:
            self.hparams["labels"] = label_set(self.hparams["labels"])
        self.model: PreTrainedModel | None = None
        self.tokenizer = None
        self.pretrained_weights = True  # False when a checkpoint supplies the weights (no need to read them twice)
        self.full_precision = False  # True while the export re-reads a QLoRA run's base in full precision
        self.distiller = None  # a task that distils sets a tasks.distillation.Distiller; its teacher loads in fit
        self.bad_steps = 0
        self.step_grad_norm: torch.Tensor | None = None  # this step's gradient norm, for clipping
        self.best = {"max": torchmetrics.MaxMetric, "min": torchmetrics.MinMetric}[self.best_mode]() \
            if self.best_mode else None
        self.resumed_best: torch.Tensor | None = None
        self.resumed_epoch: list[dict] | None = None  # each process's training aggregates at the checkpoint
        self.pending_epoch_sums: dict = {}  # Lightning's epoch sums of those, until the resumed run logs the keys

    def build_model(self) -> PreTrainedModel:
        """The Hugging Face model for this task; called once, when the Trainer (or a checkpoint) needs it."""
        raise NotImplementedError

    def load_backbone(self, model_class, model_name_or_path: str | None = None, **config_overrides) -> PreTrainedModel:
        """`model_class` over this module's backbone (or another one), with its weights unless a checkpoint is
        about to supply them."""
        h = self.hparams
        if not model_name_or_path:  # config_overrides are this module's backbone's, not a helper model's
            config_overrides = {**(h.config_overrides or {}), **config_overrides}
        if h.get("attn_implementation"):
            config_overrides["attn_implementation"] = h.attn_implementation
        if h.get("quantization") and not model_name_or_path and self.pretrained_weights and not self.full_precision:
            with torch.device("meta"):  # the architecture alone, to find the modules that stay in full precision
                skeleton = backbones.load_model(h.model_name_or_path, model_class, h.trust_remote_code,
                                                pretrained=False, **config_overrides)
            config_overrides["quantization_config"] = quantization_config(
                QuantizationSettings(**h.quantization), self.device_type, full_precision_modules(skeleton))
        return backbones.load_model(model_name_or_path or h.model_name_or_path, model_class, h.trust_remote_code,
                                    pretrained=self.pretrained_weights, tokenizer_name_or_path=h.tokenizer_name_or_path,
                                    **config_overrides)

    @property
    def datamodule(self):
        """The Trainer's data module, if there is one (not when loading a checkpoint on its own)."""
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    @property
    def device_type(self) -> str:
        """The device the Trainer runs on (cpu, cuda, ...); cpu for a module loaded on its own."""
        return self.trainer.strategy.root_device.type if self._trainer is not None else "cpu"

    @property
    def fitting(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING

    def configure_model(self) -> None:
        """Build the model, once, in this order: the settings the data decides, the tokenizer, the task's model,
        LoRA, training mode, the parts only fitting needs (a distillation teacher), and sharding under FSDP2."""
        if self.model is not None:  # Lightning calls this for every fit/validate/test/predict
            return
        h = self.hparams
        self.check_speed_settings()
        self.adopt_from_data()
        self.tokenizer = self.data_tokenizer()
        if self.tokenizer is None:
            self.tokenizer = backbones.load_tokenizer(h.model_name_or_path, h.trust_remote_code,
                                                      h.tokenizer_name_or_path)
        self.model = self.build_model()
        if h.get("gradient_checkpointing"):
            if not self.model.supports_gradient_checkpointing:
                raise ConfigError(f"model.gradient_checkpointing: {type(self.model).__name__} does not support it; "
                                  "set it false")
            enable = getattr(self.model, "activation_checkpointing_enable", None)  # its name from transformers 5.2x
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if h.get("quantization") and loaded_in_4bit(self.model):
            self.model = prepare_for_kbit_training(self.model)
        if h.lora is not None:  # before any checkpoint loads: its keys are the wrapped model's
            self.model = apply_lora(self.model, LoraSettings(**h.lora))
        # from_pretrained returns eval mode, and Lightning keeps submodules' modes: without this, dropout stays off.
        self.model.train()
        if self.distiller is not None and self.fitting:
            self.distiller.attach(self)
        if is_sharding(self._trainer):  # FSDP2: shards before the optimizer sees the parameters
            shard_task_module(self, self.model, self.device_mesh)
        if h.get("compile") and self.fitting:  # in place: the state dict keeps its keys
            self.model.compile(backend=h.compile_backend)

    def check_speed_settings(self) -> None:
        """Refuse, before any weights are read, speed settings that this machine or run cannot use."""
        h = self.hparams
        if self._trainer is None:
            return
        device = self.device_type
        if h.get("quantization"):
            check_quantization(QuantizationSettings(**h.quantization), device, h.lora, h.model_name_or_path)
        if h.get("attn_implementation") == "flash_attention_2":
            if device != "cuda":
                raise ConfigError(f"model.attn_implementation: flash_attention_2 runs on CUDA GPUs only, and this run "
                                  f"is on {device}; use sdpa")
            if not str(self.trainer.precision).startswith(("16", "bf16")):
                raise ConfigError(f"model.attn_implementation: flash_attention_2 computes in fp16 or bf16, and "
                                  f"trainer.precision is {self.trainer.precision}; use bf16-mixed")
        if h.get("compile") and self.fitting and h.compile_backend == "inductor" and device == "cpu" \
                and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
            raise ConfigError("model.compile: torch.compile's inductor backend generates C++ on CPU and finds no "
                              "compiler (g++ or clang++) on PATH; install one, or set model.compile: false")

    def data_tokenizer(self):
        """The data module's tokenizer when it was read from the same settings: one copy per process, not two
        (a fast tokenizer of a 30k vocabulary holds ~11 MiB)."""
        dm = self.datamodule
        settings = ("model_name_or_path", "trust_remote_code", "tokenizer_name_or_path")
        if dm is None or getattr(dm, "tokenizer", None) is None:
            return None
        same = all(dm.hparams.get(name) == self.hparams.get(name) for name in settings)
        return dm.tokenizer if same else None

    def adopt_from_data(self) -> None:
        """Write each `from_data` setting into the hyperparameters from the data module, unless the config or a
        checkpoint already gave it, in which case the data must agree."""
        dm = self.datamodule
        ready = dm is not None and getattr(dm, "splits", None) is not None
        for name in self.from_data:
            offered, known = getattr(dm, name) if ready else None, self.hparams.get(name)
            if known is None and offered is None:
                raise ConfigError(f"model.{name}: unknown; train with a data module or load a checkpoint")
            if known is None:
                self.hparams[name] = offered
            elif offered is not None and offered != known:
                raise ConfigError(f"model.{name}: set to {known}, but the data has {offered}")

    @property
    def labels(self) -> dict[int, str] | None:
        """The label set, {id: name}, of a task whose labels come from the data (``{0: "score"}`` for regression)."""
        return self.hparams.get("labels")

    @property
    def num_labels(self) -> int | None:
        return None if self.labels is None else len(self.labels)

    def label_overrides(self) -> dict:
        """Config settings that carry the label names into the Hugging Face model and its export (`pipeline` names
        the labels)."""
        return dict(num_labels=self.num_labels, id2label=self.labels, label2id={v: k for k, v in self.labels.items()})

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        """The loss of a batch of `split` (train, val or test), with the split's metrics updated."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout draws from a seed of (run seed, epoch, batch, rank) alone, not from everything drawn before: a run
        # resumed at any step draws what the uninterrupted one drew.
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed(hash((base, self.current_epoch, batch_idx, self.global_rank)) % 2**63)
        trainer = self.trainer
        if 0 < trainer.max_steps <= self.global_step + 1 and not trainer.fit_loop._should_accumulate():
            # The last step: stopping here makes Lightning validate after it, so a run shorter than an epoch still
            # ends with a validation, a checkpoint and an export.
            trainer.should_stop = True

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the update of a batch whose loss or gradients are NaN or inf (fp16's loss scaler does its own)."""
        if str(self.trainer.precision).startswith("16"):
            return
        # Under FSDP2 each process checks its own shards of the gradients; the decision is shared below.
        grads = [local(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        bad = not bool(torch.isfinite(norm))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            # Whole gradients (not shards): the norm clipping needs, so configure_gradient_clipping need not redo it.
            self.step_grad_norm = None if is_sharding(self.trainer) else norm
            return
        self.bad_steps += 1
        loss = self.trainer.callback_metrics.get("train/loss_step")
        what = f"loss is {float(loss)}" if loss is not None and not torch.isfinite(loss) else f"gradient norm is {norm}"
        if self.bad_steps > self.hparams.max_bad_steps:
            raise NonFiniteError(
                f"training step {self.global_step}: the {what}; stopping (model.max_bad_steps="
                f"{self.hparams.max_bad_steps}). The weights were not updated with it and the earlier checkpoints are "
                "kept; lower model.learning_rate, clip gradients (trainer.gradient_clip_val) or allow skipped batches "
                "with model.max_bad_steps")
        rank_zero_info(f"Skipping training step {self.global_step}: the {what} ({self.bad_steps} of "
                       f"{self.hparams.max_bad_steps} allowed)")
        self.log("train/skipped_steps", float(self.bad_steps))
        for p in (p for group in optimizer.param_groups for p in group["params"]):
            p.grad = None  # AdamW leaves parameters without a gradient as they are

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by norm with the norm on_before_optimizer_step has just taken: one pass over the gradients instead of
        two (each is ~15 ms of a ~400 ms MiniLM step on CPU). Lightning clips wherever that norm is not the one it
        would take itself: sharded gradients, 16-bit loss scaling, other precision plugins, clipping by value."""
        norm, self.step_grad_norm = self.step_grad_norm, None
        plugin = self.trainer.precision_plugin
        plain = type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)
        if norm is None or not plain or not gradient_clip_val or gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, then the gradients freed at once: Lightning zeroes them only after the next batch's
        forward, so they would sit beside its activations (a copy of the weights more at the run's peak)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def log_best(self, name: str, value: torch.Tensor | float) -> None:
        """Keep and log ``val/<name>_best``, the best validation value so far (not during the sanity check)."""
        if self.trainer.sanity_checking:
            return
        self.best.update(torch.as_tensor(value, dtype=torch.float32, device=self.device))
        self.log(f"val/{name}_best", self.best.compute())

    def log_split_metrics(self, split: str) -> dict[str, torch.Tensor]:
        """Compute (synced across processes by torchmetrics), log and reset the split's collection in
        ``self.metrics`` (a PerSplit); nothing when it saw no batch (a resume that starts at an epoch's end)."""
        metrics = self.metrics[split]
        if not any(metric.update_count for metric in metrics.values()):
            return {}
        values = metrics.compute()
        metrics.reset()
        self.log_dict(values, prog_bar=split == "val")
        return values

    def on_train_epoch_end(self) -> None:
        if isinstance(getattr(self, "metrics", None), PerSplit):
            self.log_split_metrics("train")

    def on_validation_epoch_end(self) -> None:
        if isinstance(getattr(self, "metrics", None), PerSplit):
            values = self.log_split_metrics("val")
            if values and self.best is not None:
                self.log_best(self.key_metric, values[f"val/{self.key_metric}"])

    def on_test_epoch_end(self) -> None:
        if isinstance(getattr(self, "metrics", None), PerSplit):
            self.log_split_metrics("test")

    def log_loss(self, split: str, loss: torch.Tensor, batch_size: int) -> None:
        """``<split>/loss``: per step and epoch in training, per epoch (synced across processes) in evaluation."""
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, batch_size=batch_size,
                 sync_dist=not on_step)

    def model_inputs(self, batch: dict) -> dict:
        """The tensors of the batch that the Hugging Face model takes (the rest are labels and ids)."""
        return {k: batch[k] for k in self.tokenizer.model_input_names if k in batch}

    def configure_optimizers(self):
        h = self.hparams
        total = self.trainer.estimated_stepping_batches
        optimizer_cls = optimizer_class(h.optimizer, self.device.type)
        kwargs = {**optimizer_defaults(h.optimizer), **(h.optimizer_args or {})}
        if optimizer_cls is torch.optim.AdamW:
            # Lightning refuses to clip gradients under mixed precision with an optimizer that unscales them itself.
            clipped_amp = "mixed" in str(self.trainer.precision) and bool(self.trainer.gradient_clip_val)
            fused = h.fused_adamw and self.device.type in ("cpu", "cuda") and not clipped_amp
            kwargs = {"eps": h.adam_epsilon, "fused": fused, **kwargs}
        if h.optimizer == "schedule_free":
            kwargs.setdefault("warmup_steps", warmup_steps(h.warmup, total))
        # Every trainable parameter of the task module: the model, and any extra part (e.g. ELECTRA's generator).
        groups = param_groups(self, h.weight_decay, h.learning_rate, h.layer_lr_decay, self.model)
        try:
            optimizer = optimizer_cls(groups, lr=h.learning_rate, **kwargs)
        except TypeError as err:
            raise ConfigError(f"model.optimizer_args: {optimizer_cls.__name__} refuses {kwargs}: {err}") from None
        if is_schedule_free(optimizer):
            rank_zero_info(f"model.optimizer: {h.optimizer} warms up for {kwargs['warmup_steps']} steps itself and "
                           f"follows no schedule (model.lr_scheduler={h.lr_scheduler} is not used)")
            return optimizer
        scheduler = build_scheduler(optimizer, h.lr_scheduler, h.warmup, total, h.lr_cycles, h.min_lr_ratio,
                                    h.decay_phase)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def set_optimizer_mode(self, train: bool) -> None:
        """A schedule-free optimizer's weights: the training point while training, its average for evaluation,
        checkpoints and the export."""
        for optimizer in self.trainer.optimizers if self._trainer is not None else ():
            if is_schedule_free(optimizer):
                optimizer.train() if train else optimizer.eval()

    def on_train_epoch_start(self) -> None:
        self.set_optimizer_mode(train=True)

    def on_validation_start(self) -> None:
        self.set_optimizer_mode(train=False)

    def on_validation_end(self) -> None:
        if self.fitting:  # callbacks (the checkpoint) ran first, with the averaged weights
            self.set_optimizer_mode(train=True)

    def on_train_end(self) -> None:
        self.set_optimizer_mode(train=False)  # before on_fit_end, where the export is written

    def on_fit_start(self) -> None:
        key = getattr(self.datamodule, "packing_key", None)
        if key:
            self.check_keeps_examples_apart(key)
        if not self.trainer.ckpt_path:  # a resumed run's counts are in its metrics already
            self.log_parameter_counts()

    def check_keeps_examples_apart(self, key: str) -> None:
        """Refuse packed rows, before training, when this model (with its attention implementation) lets an
        example's logits depend on the example before it in the row."""
        with self.trainer.strategy.precision_plugin.forward_context():
            change = packing.keeps_examples_apart(self.model, self.causal_lm)
        tolerance = 1e-3 if str(self.trainer.precision) in ("32-true", "32", "64-true") else 5e-2
        if change > tolerance:
            implementation = getattr(self.model.config, "_attn_implementation", None)
            raise ConfigError(f"{key}: {self.hparams.model_name_or_path!r} with attn_implementation "
                              f"{implementation!r} does not keep packed examples apart (an example's logits change "
                              f"by {change:.1%} when another precedes it in the row); turn {key} off, or use "
                              "model.attn_implementation: sdpa")

    def on_train_start(self) -> None:
        best = getattr(self, "best", None)  # a task's best validation value so far (a Max/MinMetric)
        if best is not None:
            best.reset()  # forget the sanity check's values
            if self.resumed_best is not None:
                best.update(self.resumed_best.to(self.device))
        if self.resume_train_loader():
            self.resume_epoch_aggregates()
        self.resumed_epoch = None

    def resume_train_loader(self) -> bool:
        """Hand a resumed run's train loader its saved position; True when the run resumes mid-epoch."""
        # Lightning builds the train loader (for estimated_stepping_batches) before it restores a checkpoint, and
        # so never hands it the position: hand it over here, then start the epoch anew.
        loop = self.trainer.fit_loop
        if not loop._combined_loader_states_to_load or loop._combined_loader is None:
            return False
        loop._combined_loader._load_state_dicts(loop._combined_loader_states_to_load)
        loop._combined_loader_states_to_load = []
        mid_epoch = any(getattr(loader, "skip", 0) for loader in loop._combined_loader.flattened)
        iter(loop._data_fetcher)
        return mid_epoch

    def resume_epoch_aggregates(self) -> None:
        """Continue the interrupted epoch's training metrics from the checkpoint's aggregates."""
        own = epoch_state.own_share(self.resumed_epoch, self.global_rank, self.trainer.world_size)
        if own is not None:
            epoch_state.restore_metrics(self, own)
            self.pending_epoch_sums = dict(own["logged"])

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.pending_epoch_sums:
            self.pending_epoch_sums = epoch_state.merge_logged(self.trainer.fit_loop.epoch_loop._results,
                                                               self.pending_epoch_sums)

    def log_parameter_counts(self) -> None:
        """Print and log (``params/trainable``, ``params/total``) how much of the model trains: freezing, gradual
        unfreezing and LoRA change it."""
        trainable, total = parameter_counts(self)
        rank_zero_info(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
        for logger in self.loggers:
            logger.log_metrics({"params/trainable": trainable, "params/total": total}, step=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        best = getattr(self, "best", None)
        if best is not None and best.update_count:
            checkpoint[BEST_KEY] = best.compute().detach().cpu()
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            results = self.trainer.fit_loop.epoch_loop._results
            if self.pending_epoch_sums:  # a save before the resumed run's first step ended
                self.pending_epoch_sums = epoch_state.merge_logged(results, self.pending_epoch_sums)
            state = epoch_state.capture(self, results)
            checkpoint[epoch_state.STATE_KEY] = gather_objects(state, self.trainer.world_size)  # one per process
        if self.quantized:
            checkpoint["state_dict"] = trainable_state(checkpoint["state_dict"], self.model)
            checkpoint[ADAPTERS_ONLY_KEY] = True

    @property
    def quantized(self) -> bool:
        """Whether the base was loaded in 4 bits (a QLoRA run)."""
        return self.model is not None and loaded_in_4bit(self.model)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        for name in self.from_data if self.model is not None else ():  # a resume: built from this run's data
            if saved.get(name) != self.hparams.get(name):
                raise ConfigError(f"--ckpt_path: the checkpoint was trained on {name} {saved.get(name)}, the data "
                                  f"has {self.hparams.get(name)}")
        self.resumed_best = checkpoint.get(BEST_KEY)
        self.resumed_epoch = checkpoint.get(epoch_state.STATE_KEY)
        self.configure_model()  # `load_from_checkpoint` never calls it, and the weights need somewhere to go
        if checkpoint.get(ADAPTERS_ONLY_KEY):
            self.check_adapters_only(checkpoint["state_dict"])

    def check_adapters_only(self, state_dict: dict) -> None:
        """Let a QLoRA checkpoint (trained weights only) load over the 4-bit base read from the pretrained model, once
        every trained weight is known to be in it."""
        missing = sorted(set(trainable_state(self.state_dict(), self.model)) - set(state_dict))
        if missing or not self.quantized:
            what = f"lacks {len(missing)} trained weights (e.g. {missing[0]})" if missing else \
                "holds the trained weights of a 4-bit (QLoRA) run, and this module's base is not in 4 bits"
            raise ConfigError(f"--ckpt_path: the checkpoint {what}; load it with the run's own model.lora and "
                              "model.quantization")
        self.strict_loading = False  # the frozen base stays as read; every other weight comes from the checkpoint

    def export(self, output_dir: str | Path) -> Path:
        """Write a Hugging Face folder (model + tokenizer) that `from_pretrained` and `pipeline` load; with LoRA, the
        adapters merged in, and the adapter alone in ``adapter/``."""
        bad = non_finite_tensors(self.model.state_dict().items())
        if bad:
            raise NonFiniteError(f"export: the model holds NaN or inf ({len(bad)} tensors, e.g. {bad[0]}); nothing "
                                 f"written to {output_dir}")
        with atomic_directory(output_dir, marker=EXPORT_MARKER) as tmp:
            if is_lora(self.model) and self.hparams.get("quantization"):
                self.full_precision_model().save_pretrained(tmp)
            elif is_lora(self.model):
                merged_copy(self.model).save_pretrained(tmp)
                if adapter_fits_the_base(self.model):
                    save_adapter(self.model, tmp / "adapter")
            else:
                self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.write_export_extras(tmp)
        return Path(output_dir)

    def full_precision_model(self) -> PreTrainedModel:
        """A QLoRA run's model for the export: the task's model built again over the base read in full precision,
        with the trained adapters and head moved onto it and merged."""
        # build_model also sets the task's parts (metrics, a CRF): keep the trained ones
        modules, attributes = dict(self._modules), {k: v for k, v in vars(self).items() if not k.startswith("_")}
        self.full_precision = True
        try:
            base = self.build_model()
        finally:
            self._modules.clear()
            self._modules.update(modules)
            self.__dict__.update(attributes)
        return full_precision_merge(self.model, base, LoraSettings(**self.hparams.lora))

    def write_export_extras(self, folder: Path) -> None:
        """Files a task adds to its export beside the model and tokenizer (inside the same atomic write)."""

    @staticmethod
    def load_checkpoint(ckpt_path: str | Path) -> TaskModule:
        """Rebuild whichever task module wrote this checkpoint, on CPU, with its weights.

        The file is read once and memory-mapped, so the optimizer state it also holds costs no memory.
        """
        checkpoint = read_checkpoint(ckpt_path, mmap=True)
        module_name, _, class_name = checkpoint.get(TASK_KEY, "").rpartition(".")
        if not module_name:
            raise ConfigError(f"--ckpt_path: {ckpt_path} was not written by a lit_finetune task module")
        cls = getattr(importlib.import_module(module_name), class_name)
        hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
        module = cls(**hparams)
        module.pretrained_weights = bool(checkpoint.get(ADAPTERS_ONLY_KEY))  # a QLoRA run's frozen base: read again
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
        return module



def export_checkpoint(ckpt_path: str, output_dir: str) -> Path:
    """Export any lit_finetune checkpoint as a Hugging Face folder (model with its labels, and tokenizer).

    Args:
        ckpt_path: A checkpoint written by ``lit-finetune fit`` (e.g. runs/NAME/checkpoints/last.ckpt).
        output_dir: Folder to write; an earlier export there is replaced only once the new one is complete, and any
            other non-empty folder is refused.
    """
    path = TaskModule.load_checkpoint(ckpt_path).export(output_dir)
    print(f"Exported {ckpt_path} to {path}")
    return path
