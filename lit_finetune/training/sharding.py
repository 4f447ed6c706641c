"""Sharded data parallelism, each Transformer block its own unit, the block class found in the model (so one config
serves BERT, GPT-2, Llama ...).

FSDP2 (``configs/strategies/fsdp2.yaml``): Lightning's ModelParallelStrategy; each block, then the model, then any
weighted part of the task module outside it wrapped with PyTorch's ``fully_shard``. Task modules shard themselves in
``configure_model`` (see TaskModule), before the optimizer is built. It runs on GPUs (NCCL) and on CPU (gloo), which
is how it is tested.

FSDP (``configs/strategies/fsdp.yaml``): Lightning's FSDPStrategy (GPUs only), its auto-wrap and activation
checkpointing policies set to the model's block class when Lightning wraps the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.distributed.tensor import DTensor

from lit_finetune.errors import ConfigError
from lit_finetune.training.layers import backbone, block_lists


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism: parameters, gradients and optimizer state sharded across all processes.

    Lightning's ModelParallelStrategy with no tensor parallelism: its data-parallel size is every process of every
    node (Lightning's own default counts nodes only, for 2-D meshes).

    Args:
        save_distributed_checkpoint: Each process saves its shards into a checkpoint folder (fast, for large
            models); by default rank 0 gathers one full checkpoint file, which resumes on any number of processes
            and exports like a single-device run's.
        **kwargs: ModelParallelStrategy's other settings (process_group_backend, timeout).
    """

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """A folder of shards is written beside its destination and moved into place once every process has
        written its part, so a kill during the save leaves the previous checkpoint whole."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        staging, previous = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.previous")
        if self.is_global_zero:
            for leftover in (staging, previous):
                shutil.rmtree(leftover, ignore_errors=True)
        self.barrier("sharded_checkpoint_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("sharded_checkpoint_written")
        if self.is_global_zero:
            if path.is_file():
                path.unlink()
            elif path.exists():
                path.rename(previous)
            staging.rename(path)
            shutil.rmtree(previous, ignore_errors=True)
        self.barrier("sharded_checkpoint_in_place")


def block_classes(module: nn.Module) -> set[type[nn.Module]]:
    """The classes of the Transformer blocks of the model inside a task `module` (or of a model)."""
    model = getattr(module, "model", module)
    classes = {type(block) for blocks in block_lists(backbone(model)) for block in blocks}
    if not classes:
        raise ConfigError(f"trainer.strategy: found no Transformer blocks (a ModuleList of layers) in "
                          f"{type(model).__name__} to shard one by one; use trainer.strategy=ddp")
    return classes


class FSDPBlocksStrategy(FSDPStrategy):
    """Lightning's FSDP (GPUs): each Transformer block one FSDP unit, optionally recomputing its activations in the
    backward pass; parameters keep their names (``use_orig_params``), so weight decay and layer-wise learning rates
    are grouped as without sharding.

    Args:
        activation_checkpointing: Recompute each block's activations in the backward pass (less memory, ~30% more
            compute).
        sharding_strategy: ``FULL_SHARD`` (parameters, gradients, optimizer state), ``SHARD_GRAD_OP`` (gradients and
            optimizer state), ``HYBRID_SHARD`` (full within a node, replicated across nodes) or ``NO_SHARD``.
        state_dict_type: ``full`` (rank 0 writes one checkpoint file) or ``sharded`` (each process writes its shards
            into a checkpoint folder, which `export` consolidates).
        **kwargs: FSDPStrategy's other settings (cpu_offload, mixed_precision, process_group_backend, timeout).
    """

    def __init__(self, activation_checkpointing: bool = False, sharding_strategy: str = "FULL_SHARD",
                 state_dict_type: Literal["full", "sharded"] = "full", **kwargs):
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)
        self.checkpoint_blocks = activation_checkpointing

    def _setup_model(self, model: nn.Module) -> nn.Module:
        classes = block_classes(model)
        self.kwargs.setdefault("auto_wrap_policy", ModuleWrapPolicy(classes))
        if self.checkpoint_blocks:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(classes)}
        return super()._setup_model(model)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (a DTensor), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def is_sharding(trainer) -> bool:
    """Whether `trainer` (possibly None) runs FSDP2, so that task modules shard themselves."""
    return trainer is not None and isinstance(trainer.strategy, ModelParallelStrategy)


def shard_task_module(module: nn.Module, model: nn.Module, mesh) -> None:
    """Shard `model`'s Transformer blocks one by one (each gathers its weights only while it runs), then the model
    (embeddings and head), then each part of the task `module` outside the model that holds weights (a
    distillation projection), so that every gradient is reduced across the processes.

    Raises: ConfigError for a task module whose parts share weights with the model (ELECTRA's generator shares its
    embeddings), which FSDP2 cannot shard as two units.
    """
    in_model = {id(p) for p in model.parameters()}
    model_parts = {id(m) for m in model.modules()}
    outside = [m for m in module.modules() if m is not module and id(m) not in model_parts
               and any(True for _ in m.parameters(recurse=False))]
    for part in outside:
        if any(id(p) in in_model for p in part.parameters()):
            raise ConfigError(f"trainer.strategy: FSDP2 cannot shard {type(module).__name__}, whose "
                              f"{type(part).__name__} shares weights with the model; use trainer.strategy=ddp")
    data_parallel = mesh["data_parallel"] if mesh.ndim > 1 else mesh
    for block in (block for blocks in block_lists(backbone(model)) for block in blocks):
        fully_shard(block, mesh=data_parallel)
    fully_shard(model, mesh=data_parallel)
    for part in outside:
        fully_shard(part, mesh=data_parallel)
