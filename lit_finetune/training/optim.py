"""Optimizer parameter groups and learning-rate schedules shared by every task module."""

from __future__ import annotations

import importlib
import importlib.util
import math
from typing import Literal

import torch
from torch.optim.lr_scheduler import CyclicLR, LambdaLR, OneCycleLR
from transformers import get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

from lit_finetune.errors import ConfigError
from lit_finetune.training.kbit import check_bitsandbytes
from lit_finetune.training.layers import layer_groups

Schedule = Literal["linear", "cosine", "cosine_with_restarts", "constant_with_warmup", "one_cycle", "cyclic",
                   "warmup_stable_decay", "cosine_with_min_lr", "inverse_sqrt"]
OptimizerName = Literal["adamw", "adafactor", "sgd", "lion", "adamw_8bit", "schedule_free"]
# name -> (module, class, pip package when it is not torch's or transformers'): the class path form takes any other
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW", None),
    "adafactor": ("transformers.optimization", "Adafactor", None),
    "sgd": ("torch.optim", "SGD", None),
    "lion": ("lion_pytorch", "Lion", "lion-pytorch"),
    "adamw_8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "schedule_free": ("schedulefree", "AdamWScheduleFree", "schedulefree"),
}


# The Hugging Face Trainer's rule (Trainer.get_decay_parameter_names): no decay for biases and normalization weights,
# found by name and by LayerNorm module, so it holds for any architecture and under FSDP, whose flattened parameters
# have lost the shapes a rule by number of dimensions would read.
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def decayed_parameters(module: torch.nn.Module) -> set[int]:
    """The ids of `module`'s parameters that weight decay applies to."""
    names = set(get_parameter_names(module, [torch.nn.LayerNorm], NO_DECAY_PATTERNS))
    return {id(p) for name, p in module.named_parameters() if name in names}


def decay_split(params, decayed: set[int], weight_decay: float, lr: float | None = None,
                prefix: str = "") -> list[dict]:
    """Trainable `params` as AdamW groups: those in `decayed` with weight decay, the others (biases, normalization
    weights) without.

    Group names show up in LearningRateMonitor's keys (lr-AdamW/decay, lr-AdamW/layer.3/no_decay); empty groups are
    left out.
    """
    trainable = [p for p in params if p.requires_grad]
    groups = []
    for kind, selected, decay in (("decay", [p for p in trainable if id(p) in decayed], weight_decay),
                                  ("no_decay", [p for p in trainable if id(p) not in decayed], 0.0)):
        if selected:
            groups.append({"params": selected, "weight_decay": decay, "name": prefix + kind,
                           **({"lr": lr} if lr is not None else {})})
    return groups


def layer_lr(learning_rate: float, layer_lr_decay: float, depth: int) -> float:
    """Layer-wise learning-rate decay: the head gets `learning_rate`, each layer below it `layer_lr_decay` times the
    one above, the embeddings the least."""
    return learning_rate * layer_lr_decay ** depth


def param_groups(module: torch.nn.Module, weight_decay: float, learning_rate: float | None = None,
                 layer_lr_decay: float = 1.0, model: torch.nn.Module | None = None) -> list[dict]:
    """AdamW groups for every trainable parameter of `module` (the task module: its Hugging Face model and any extra
    part, e.g. ELECTRA's generator).

    With `layer_lr_decay` < 1, `model`'s layer groups (see training.layers) each get their own learning rate; parts
    of `module` outside `model` count as head.
    Raises: ConfigError when nothing is trainable.
    """
    decayed = decayed_parameters(module)
    if layer_lr_decay == 1.0:
        groups = decay_split(module.parameters(), decayed, weight_decay)
    else:
        layers = layer_groups(model)
        in_layers = {id(p) for layer in layers for p in layer.params}
        layers[-1].params += [p for p in module.parameters() if id(p) not in in_layers]
        groups = [group for layer in layers for group in decay_split(
            layer.params, decayed, weight_decay, layer_lr(learning_rate, layer_lr_decay, layer.depth),
            f"{layer.name}/")]
    if not groups:
        raise ConfigError("model: no parameter is trainable (every layer is frozen); unfreeze at least the head")
    return groups


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` below 1 is a fraction of the run (rounded up, as transformers' Trainer does), from 1 up a number of
    steps."""
    return math.ceil(warmup * total_steps) if warmup < 1 else int(warmup)


def build_scheduler(optimizer: torch.optim.Optimizer, name: Schedule, warmup: float, total_steps: int,
                    cycles: int = 1, min_lr_ratio: float = 0.1, decay: float = 0.1):
    """A per-step schedule sized from the run's total steps; its state is checkpointed, so a resumed run continues the
    same curve. Each group's peak is its own ``lr`` (layer-wise rates keep their ratios).

    - linear, cosine, constant_with_warmup: linear warmup, then the decay (transformers' schedules);
    - cosine_with_restarts: warmup, then `cycles` cosine decays, each restarting at the peak;
    - one_cycle: rise for the warmup (a cosine ramp from peak/25), then a cosine anneal to peak/1e4 (OneCycleLR);
    - cyclic: triangular cycles between ``min_lr_ratio`` x peak and the peak, `cycles` of them over the run
      (CyclicLR; no separate warmup: each cycle starts low);
    - warmup_stable_decay: warmup, the peak held, then a cosine decay to ``min_lr_ratio`` x peak over the last
      `decay` of the run (a fraction < 1, or steps);
    - cosine_with_min_lr: warmup, then a cosine decay to ``min_lr_ratio`` x peak instead of 0;
    - inverse_sqrt: warmup, then the peak x sqrt(warmup / step) (the original Transformer's decay).
    """
    warmup_count = warmup_steps(warmup, total_steps)
    if name == "warmup_stable_decay":
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_count, num_training_steps=total_steps,
                             scheduler_specific_kwargs=dict(num_decay_steps=warmup_steps(decay, total_steps),
                                                            min_lr_ratio=min_lr_ratio))
    if name == "cosine_with_min_lr":
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_count, num_training_steps=total_steps,
                             scheduler_specific_kwargs=dict(min_lr_rate=min_lr_ratio))
    if name == "inverse_sqrt":
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_count, num_training_steps=total_steps)
    if name == "one_cycle":
        rise = min(max(warmup_count, 1) / total_steps, 0.5)  # OneCycleLR needs a rise of at least one step
        return OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
                          pct_start=rise, cycle_momentum=False)
    if name == "cyclic":
        peaks = [g["lr"] for g in optimizer.param_groups]
        half_cycle = max(total_steps // (2 * cycles), 1)
        return CyclicLR(optimizer, base_lr=[p * min_lr_ratio for p in peaks], max_lr=peaks,
                        step_size_up=half_cycle, mode="triangular", cycle_momentum=False)
    extra = {"num_cycles": cycles} if name == "cosine_with_restarts" else {}
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_count, num_training_steps=total_steps,
                         scheduler_specific_kwargs=extra)


def optimizer_class(name: str, device_type: str, key: str = "model.optimizer"):
    """The optimizer class a name (OPTIMIZERS) or a class path (``torch.optim.RAdam``) stands for.

    Raises: ConfigError naming `key` when its package is missing, it cannot run on this device, or the path names
    nothing importable.
    """
    if name in OPTIMIZERS:
        module_name, class_name, package = OPTIMIZERS[name]
        if name == "adamw_8bit":
            check_bitsandbytes(key, "adamw_8bit (8-bit optimizer states)", device_type, "use adamw")
        elif package and importlib.util.find_spec(module_name.partition(".")[0]) is None:
            raise ConfigError(f"{key}: {name} needs the {package} package: pip install {package}")
    else:
        module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{key}: {name!r} is neither one of {', '.join(OPTIMIZERS)} nor an importable optimizer "
                          "class path (e.g. torch.optim.RAdam)") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"{key}: {name} is not a torch.optim.Optimizer")
    return cls


def optimizer_defaults(name: str) -> dict:
    """What a named optimizer needs to follow this project's schedule and learning rate: Adafactor without its own
    relative step sizes, SGD with momentum."""
    if name == "adafactor":
        return dict(scale_parameter=False, relative_step=False, warmup_init=False)
    if name == "sgd":
        return dict(momentum=0.9)
    return {}


def is_schedule_free(optimizer) -> bool:
    """Schedule-free optimizers switch their weights between a training and an evaluation point (train()/eval())."""
    return callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))


def add_param_groups(optimizer: torch.optim.Optimizer, schedulers: list, groups: list[dict]) -> None:
    """Add `groups` (each with its peak ``lr``) to a running optimizer so that its schedulers drive them as they
    drive the first group: same point on the curve now, same shape afterwards."""
    first = optimizer.param_groups[0]
    for group in groups:
        peak = group["lr"]
        for scheduler in schedulers:
            if isinstance(scheduler, OneCycleLR):
                scale = peak / first["max_lr"]
                group.update(max_lr=peak, initial_lr=first["initial_lr"] * scale, min_lr=first["min_lr"] * scale,
                             lr=first["lr"] * scale)
            elif isinstance(scheduler, CyclicLR):
                low, high = scheduler.base_lrs[0], scheduler.max_lrs[0]
                base = peak * low / high
                scheduler.base_lrs.append(base)
                scheduler.max_lrs.append(peak)
                group.update(initial_lr=base, lr=base + (peak - base) * (first["lr"] - low) / (high - low))
            elif isinstance(scheduler, LambdaLR):
                scheduler.base_lrs.append(peak)
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
                group.update(initial_lr=peak, lr=peak * scheduler.lr_lambdas[0](scheduler.last_epoch))
        optimizer.add_param_group(group)


def sync_schedulers(optimizer: torch.optim.Optimizer, schedulers: list) -> None:
    """After a resume that restored groups added mid-run: a LambdaLR's functions are not checkpointed, so give the
    restored groups the first group's function again."""
    for scheduler in schedulers:
        if isinstance(scheduler, LambdaLR):
            missing = len(optimizer.param_groups) - len(scheduler.lr_lambdas)
            scheduler.lr_lambdas += [scheduler.lr_lambdas[0]] * missing
