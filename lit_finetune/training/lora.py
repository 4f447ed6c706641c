"""LoRA through peft: its settings, wrapping a task's Hugging Face model, and the two exports (the adapter alone, or
a plain model with the adapter merged in)."""

from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from torch import nn
from transformers import Conv1D, PreTrainedModel

from lit_finetune.backbones import preset, resolve
from lit_finetune.errors import ConfigError
from lit_finetune.training.kbit import check_bitsandbytes

if TYPE_CHECKING:  # peft is imported where it is used: it adds a second to every command's start-up
    from peft import PeftModel
from lit_finetune.training.layers import head_module_names

KEY = "model.lora"
# Layers peft's LoRA can wrap (in text models); a pattern that reaches none of them would fail inside peft.
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, Conv1D)
ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output layer


@dataclass
class LoraSettings:
    """LoRA: train small low-rank updates beside frozen pretrained weights.

    Low-rank adaptation instead of full fine-tuning: the pretrained weights stay frozen, a small rank-`r` update
    is trained beside each targeted layer, and the task head is trained in full.

    Args:
        r: Rank of each update (its size grows linearly with it).
        alpha: Scale of the updates: they are multiplied by alpha / r (alpha / sqrt(r) with use_rslora).
        dropout: Dropout on the input of each update, during training.
        target_modules: Layers to adapt. A list matches whole module names or their dot-separated endings
            ([query, value] adapts bert.encoder.layer.0.attention.self.query, ...); a string is a regular expression
            that must match the whole dotted name (".*attention.*(query|value)"); "all-linear" is every linear layer
            but the output layer; null is peft's default for the model type (BERT: query, value; GPT-2: c_attn;
            T5: q, v; Llama: q_proj, v_proj).
        bias: Biases trained as well: none, all of the model's, or those of the adapted layers only.
        use_rslora: Rank-stabilized LoRA: scale by alpha / sqrt(r), so that large ranks learn as fast as small ones.
        modules_to_save: Modules trained in full and saved with the adapter. Null: the task head (classifier, score,
            qa_outputs, ...), but not a language model's output layer, which stays pretrained ([lm_head] trains it
            too, at the cost of a vocabulary-sized copy); [] trains no head.
        use_dora: DoRA (weight-decomposed LoRA): each adapted weight's direction is updated by the low-rank term
            and its magnitude learned apart; closer to full fine-tuning at low ranks, slower steps.
        init: How the updates start: ``default`` (B = 0, A random: the model starts as the pretrained one),
            ``gaussian``, or ``pissa`` / ``olora`` (A and B from the weight's principal singular vectors / a QR
            decomposition, with the pretrained weight replaced by the residual). The merged export is the same
            kind of model in every case; with pissa / olora ``adapter/`` is not written, since that adapter only
            fits the residual weights.
    """

    # The docs are in the class docstring, not under each field: jsonargparse reads those without extra settings.
    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    target_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    init: Literal["default", "gaussian", "pissa", "olora"] = "default"


def is_lora(model: nn.Module) -> bool:
    """Whether `model` is already wrapped by peft (its trainable weights are adapters)."""
    peft = sys.modules.get("peft")  # a model cannot be peft's unless peft was imported
    return peft is not None and isinstance(model, peft.PeftModel)


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap `model` (in place, as peft does) so that only the LoRA updates and the head train; a model that is
    already wrapped is returned as it is.

    No peft `task_type` is passed: the head comes from `modules_to_save` alone (one rule for every task), and the
    plain `PeftModel` forwards every argument to the Hugging Face model, `generate` included.
    Raises: ConfigError when a target pattern or a module to save matches nothing in the model, or when peft has
    no default targets for the model type.
    """
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415

    if is_lora(model):
        return model
    head = task_head(model) if settings.modules_to_save is None else list(settings.modules_to_save)
    targets = settings.target_modules if settings.target_modules is not None else default_targets(model)
    adapted = adapted_modules(model, targets, head)
    check_modules_to_save(model, head)
    extra = {}
    if settings.use_dora:
        if "use_dora" not in LoraConfig.__dataclass_fields__:
            raise ConfigError(f"{KEY}.use_dora: the installed peft has no DoRA; pip install 'peft>=0.9'")
        extra["use_dora"] = True
    if settings.init != "default":
        extra["init_lora_weights"] = settings.init
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias=settings.bias, use_rslora=settings.use_rslora,
                        modules_to_save=head or None, **extra,
                        # GPT-2's layers store their weights transposed; peft fixes a wrong guess with a warning
                        fan_in_fan_out=any(isinstance(module, Conv1D) for module in adapted))
    with warnings.catch_warnings():  # peft asks transformers 5 for a renamed property: noise the user cannot act on
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


def task_head(model: PreTrainedModel) -> list[str]:
    """Top-level modules that hold only head weights, less a language model's output layer."""
    output_layer = model.get_output_embeddings()
    return [name for name in head_module_names(model) if getattr(model, name) is not output_layer]


def default_targets(model: PreTrainedModel) -> list[str] | str:
    """peft's default target modules for the model type."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING  # noqa: PLC0415

    model_type = model.config.get_text_config().model_type  # a composite config's backbone (e.g. a pooled head's)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if targets is None:
        raise ConfigError(f"{KEY}.target_modules: peft has no default for model type {model_type!r}; name the "
                          f"layers to adapt (or use {ALL_LINEAR}); its adaptable layers are named: "
                          f"{', '.join(adaptable_names(model, []))}")
    return targets


def adaptable_names(model: nn.Module, head: list[str]) -> list[str]:
    """Distinct last names of the layers LoRA could adapt outside the head (query, value, dense, ...)."""
    return sorted({name.rpartition(".")[2] for name, module in model.named_modules()
                   if isinstance(module, ADAPTABLE) and name.partition(".")[0] not in head})


def adapted_modules(model: nn.Module, targets: list[str] | str, head: list[str]) -> list[nn.Module]:
    """The layers `targets` select, matched by peft's own rule (modules of the head are never targets).

    Raises: ConfigError naming each pattern that selects no layer LoRA can adapt, with the names there are.
    """
    from peft import LoraConfig  # noqa: PLC0415
    from peft.tuners.tuners_utils import check_target_module_exists  # noqa: PLC0415

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, ADAPTABLE)]
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        return [module for _, module in layers]
    patterns = [targets] if isinstance(targets, str) else list(targets)
    selected: dict[str, list[nn.Module]] = {}
    for pattern in patterns:
        config = LoraConfig(target_modules=pattern if isinstance(targets, str) else [pattern],
                            modules_to_save=head or None)
        selected[pattern] = [module for name, module in layers if check_target_module_exists(config, name)]
    unmatched = [pattern for pattern, modules in selected.items() if not modules]
    if unmatched or not patterns:
        how = ("a string is a regular expression for the whole dotted module name, e.g. '.*\\.(query|value)'"
               if isinstance(targets, str) else "each entry matches a module name or its dot-separated ending")
        trained_in_full = f" ({', '.join(head)}: trained in full)" if head else ""
        what = ", ".join(map(repr, unmatched)) or "an empty list"
        raise ConfigError(f"{KEY}.target_modules: {what} matched no layer of {type(model).__name__} that LoRA can "
                          f"adapt ({how}); the adaptable layers outside the head{trained_in_full} are named: "
                          f"{', '.join(adaptable_names(model, head))}")
    return [module for modules in selected.values() for module in modules]


def check_modules_to_save(model: nn.Module, names: list[str]) -> None:
    """ConfigError for a module to save that names no module (peft would go on without it, leaving it frozen)."""
    keys = [key for key, _ in model.named_modules()]
    unmatched = [name for name in names if not any(key.endswith(name) for key in keys)]  # peft's rule for these
    if unmatched:
        raise ConfigError(f"{KEY}.modules_to_save: {', '.join(map(repr, unmatched))} named no module of "
                          f"{type(model).__name__}; its top-level modules are: "
                          f"{', '.join(name for name, _ in model.named_children())}")


def adapter_fits_the_base(peft_model: PeftModel) -> bool:
    """False for PiSSA / OLoRA adapters, which were trained over residual weights, not the pretrained ones."""
    init = peft_model.peft_config["default"].init_lora_weights
    return not (isinstance(init, str) and init.startswith(("pissa", "olora")))


def save_adapter(peft_model: PeftModel, folder: str | Path) -> Path:
    """Write the adapter alone (adapter_config.json, adapter_model.safetensors with the LoRA weights and the saved
    head) into `folder`, for `PeftModel.from_pretrained(base_model, folder)`; callers wanting an atomic write pass
    a folder of `atomic_directory`."""
    peft_model.save_pretrained(folder)
    return Path(folder)


def merged_copy(peft_model: PeftModel) -> PreTrainedModel:
    """A plain Hugging Face model with the LoRA updates merged into its weights and the trained head in place, which
    `save_pretrained` writes as any model (loadable without peft); the training model is left as it is.

    The copy is made first, so exporting needs room for a second model on the same device.
    """
    return copy.deepcopy(peft_model).merge_and_unload()


@dataclass
class QuantizationSettings:
    """QLoRA: the frozen base weights loaded in 4 bits (bitsandbytes), LoRA adapters trained over them.

    Args:
        load_in_4bit: Load the base weights in 4 bits.
        quant_type: The 4-bit data type: nf4 (normal float, QLoRA's) or fp4.
        compute_dtype: The dtype the 4-bit weights are dequantized to for each matmul; null: bfloat16 on a GPU,
            float32 on CPU (where bfloat16 matmuls are many times slower).
        double_quant: Quantize the quantization constants too (about 0.4 bits per weight less).
    """

    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["bfloat16", "float16", "float32"] | None = None
    double_quant: bool = True


QUANTIZATION_KEY = "model.quantization"


def check_quantization(settings: QuantizationSettings, device_type: str, lora: dict | None,
                       model_name_or_path: str) -> None:
    """Refuse, before any weights are read, 4-bit loading that this machine or run cannot do."""
    if lora is None:
        raise ConfigError(f"{QUANTIZATION_KEY}: 4-bit base weights cannot be trained; QLoRA trains LoRA adapters over "
                          "them: set model.lora (e.g. {r: 16})")
    if preset(resolve(model_name_or_path)):
        raise ConfigError(f"{QUANTIZATION_KEY}: {model_name_or_path} is a randomly initialised size preset, and 4-bit "
                          "loading quantizes pretrained weights as they are read; name a pretrained model (a hub id "
                          "or a folder written by save_pretrained)")
    check_bitsandbytes(QUANTIZATION_KEY, "4-bit training", device_type,
                       "remove model.quantization (plain LoRA runs everywhere)")


def quantization_config(settings: QuantizationSettings, device_type: str, keep_full_precision: list[str]):
    """transformers' BitsAndBytesConfig for `from_pretrained`; the modules in `keep_full_precision` (the task head,
    which trains in full, and what transformers keeps by default) are not quantized."""
    import torch
    from transformers import BitsAndBytesConfig

    compute_dtype = settings.compute_dtype or ("float32" if device_type == "cpu" else "bfloat16")
    return BitsAndBytesConfig(load_in_4bit=settings.load_in_4bit, bnb_4bit_quant_type=settings.quant_type,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
                              bnb_4bit_use_double_quant=settings.double_quant,
                              llm_int8_skip_modules=keep_full_precision)


def full_precision_modules(skeleton: PreTrainedModel) -> list[str]:
    """The modules of a model (built on the meta device: no weights read) that 4-bit loading must leave alone:
    the task head, trained in full by LoRA, and what transformers keeps in full precision by default (the output
    embeddings, tied weights, the last layer). Naming any module replaces transformers' defaults, hence both."""
    from transformers.quantizers.base import get_keys_to_not_convert  # noqa: PLC0415

    return sorted(set(get_keys_to_not_convert(skeleton)) | set(task_head(skeleton)))


def trainable_state(state_dict: dict, module: nn.Module, prefix: str = "model.") -> dict:
    """A QLoRA checkpoint's weights: every entry of `state_dict` but the frozen (4-bit) base under `prefix`, which
    loading reads again from the pretrained model (bitsandbytes' packed weights do not load back into a model)."""
    trainable = {prefix + name for name, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix) or k in trainable}


def loaded_in_4bit(model: nn.Module) -> bool:
    """Whether any part of `model` was loaded in 4 bits: the model itself, or the backbone a pooled head wraps."""
    return any(getattr(module, "is_loaded_in_4bit", False) for module in model.modules())


def prepare_for_kbit_training(model: PreTrainedModel) -> PreTrainedModel:
    """peft's preparation of a 4-bit model: base frozen, half-precision weights cast to fp32. Gradient
    checkpointing stays as the task module set it (non-reentrant, which needs no input-gradient hook).

    bitsandbytes' 4-bit layers repack their weights for its fast CPU inference kernel at the first forward pass
    without gradients (a validation step) and never back, and a later training step through that kernel fails
    (bitsandbytes 0.50): the layers keep the format both training and evaluation compute in.
    """
    from bitsandbytes.nn import Linear4bit  # noqa: PLC0415
    from peft import prepare_model_for_kbit_training  # noqa: PLC0415

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def full_precision_merge(peft_model: PeftModel, full_precision_base: PreTrainedModel,
                         settings: LoraSettings) -> PreTrainedModel:
    """The trained adapters and head of a (4-bit) peft model moved onto a full-precision copy of its base, merged:
    a plain Hugging Face model, as a LoRA run without quantization exports."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict  # noqa: PLC0415

    fresh = apply_lora(full_precision_base, settings)
    state = {k: v.float() for k, v in get_peft_model_state_dict(peft_model).items()}
    set_peft_model_state_dict(fresh, state)
    return fresh.merge_and_unload()
