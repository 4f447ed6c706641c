"""Classification and multiple-choice heads over pooled token states (``[CLS]``, mean or max), for backbones whose
own head sits on a pooler that was never trained (sentence-transformers checkpoints such as all-MiniLM-L6-v2).

Transformers' stock classes pool one way per architecture (BERT: the pooler over ``[CLS]``), so these heads are small
Hugging Face model classes of their own: any ``AutoModel`` backbone, the pooling, dropout and a linear layer.
Importing this module registers them with ``AutoConfig``, ``AutoModelForSequenceClassification`` and
``AutoModelForMultipleChoice`` (model type ``lit_finetune_pooled``), so an export loads with ``from_pretrained`` and
``pipeline`` after ``import lit_finetune.heads``, with no ``trust_remote_code``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.modeling_outputs import MultipleChoiceModelOutput, SequenceClassifierOutput

from lit_finetune.errors import ConfigError

MODEL_TYPE = "lit_finetune_pooled"
TokenPooling = Literal["cls", "mean", "max"]
# sentence-transformers' Pooling config flags, as this head's pooling names
SENTENCE_TRANSFORMERS_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                               "pooling_mode_max_tokens": "max"}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per sequence from the last hidden states: the first token's, or the mean or max over the
    non-padding tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)
    raise ValueError(f"unknown pooling {pooling!r}")


@strict
class PooledClassifierConfig(PreTrainedConfig):
    """The backbone's config (``text_config``) plus the pooling and the head's dropout."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    text_config: dict | PreTrainedConfig | None = None
    pooling: str = "mean"
    classifier_dropout: float | None = None


class PooledForSequenceClassification(PreTrainedModel):
    """Backbone, pooling, dropout, linear layer; a ``SequenceClassifierOutput`` like transformers' own heads (with
    the loss of the config's ``problem_type`` when ``labels`` are given)."""

    config_class = PooledClassifierConfig
    base_model_prefix = "backbone"  # what `model.base_model` returns: the body that layer-wise strategies walk
    supports_gradient_checkpointing = True
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = True

    def __init__(self, config: PooledClassifierConfig):
        super().__init__(config)
        text = config.get_text_config()
        self.backbone = drop_pooler(AutoModel.from_config(text))
        dropout = config.classifier_dropout
        self.dropout = torch.nn.Dropout(getattr(text, "hidden_dropout_prob", 0.1) if dropout is None else dropout)
        self.classifier = torch.nn.Linear(text.hidden_size, self.scores_per_input(config))
        self.post_init()

    @staticmethod
    def scores_per_input(config: PooledClassifierConfig) -> int:
        return config.num_labels

    def _init_weights(self, module: torch.nn.Module) -> None:
        if module is self.classifier:  # the backbone's own modules initialise themselves as its class does
            std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
            torch.nn.init.normal_(module.weight, std=std)
            torch.nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **backbone_inputs) -> SequenceClassifierOutput:
        backbone_inputs.pop("return_dict", None)
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **backbone_inputs)
        pooled = pool(outputs.last_hidden_state, attention_mask, self.config.pooling)
        logits = self.classifier(self.dropout(pooled))
        return SequenceClassifierOutput(loss=None if labels is None else self.loss(logits, labels), logits=logits,
                                        hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.num_labels == 1 or self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)


class PooledForMultipleChoice(PooledForSequenceClassification):
    """One score per (context, choice) input from its pooled states; ``MultipleChoiceModelOutput`` logits of shape
    [batch, choices], like transformers' multiple-choice heads."""

    @staticmethod
    def scores_per_input(config: PooledClassifierConfig) -> int:
        return 1

    def forward(self, input_ids=None, attention_mask=None, labels=None, **backbone_inputs) -> MultipleChoiceModelOutput:
        backbone_inputs.pop("return_dict", None)
        batch, choices = input_ids.shape[:2]
        flat = {name: value.flatten(0, 1) if isinstance(value, torch.Tensor) and value.dim() > 2 else value
                for name, value in backbone_inputs.items()}
        mask = attention_mask.flatten(0, 1) if attention_mask is not None else None
        outputs = self.backbone(input_ids=input_ids.flatten(0, 1), attention_mask=mask, **flat)
        pooled = pool(outputs.last_hidden_state, mask, self.config.pooling)
        logits = self.classifier(self.dropout(pooled)).view(batch, choices)
        return MultipleChoiceModelOutput(loss=None if labels is None else F.cross_entropy(logits, labels),
                                         logits=logits, hidden_states=outputs.hidden_states,
                                         attentions=outputs.attentions)


def drop_pooler(backbone: PreTrainedModel) -> PreTrainedModel:
    """The backbone without BERT-style pooler weights, which this head never uses (and so never trains)."""
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone


def pooled_classifier(backbone: PreTrainedModel, pooling: str, head_class=None,
                      **head_settings) -> PooledForSequenceClassification:
    """A pooled head (`head_class`: sequence classification by default, or PooledForMultipleChoice) over an already
    loaded backbone (its weights kept as they are; the linear layer random)."""
    config = PooledClassifierConfig(text_config=backbone.config, pooling=pooling, **head_settings)
    with torch.device("meta"):  # no time or memory spent on a second, random backbone
        model = (head_class or PooledForSequenceClassification)(config)
    model.backbone = drop_pooler(backbone)
    model.dropout = torch.nn.Dropout(model.dropout.p)
    model.classifier = torch.nn.Linear(model.classifier.in_features, model.classifier.out_features)
    model._init_weights(model.classifier)
    return model


def check_pooling(config: PreTrainedConfig, pooling: str, key: str) -> None:
    """Refuse a pooling the backbone cannot give, naming `key`."""
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"{key}: {pooling!r} pools an encoder's token states, and {config.model_type} is an "
                          "encoder-decoder model; use pooling: pooler (its own classification head)")
    if pooling == "cls" and (getattr(config, "is_decoder", False) or config.model_type in causal_model_types()):
        raise ConfigError(f"{key}: 'cls' takes the first token's state, which in a causal model "
                          f"({config.model_type}) has seen only itself; use mean, max or pooler")


def causal_model_types() -> set[str]:
    """Model types that are causal language models and not also masked ones (GPT-2, Llama; not BERT, which has both)."""
    from transformers.models.auto import modeling_auto

    return set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - set(modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def sentence_transformers_pooling(source: str) -> str | None:
    """The pooling a sentence-transformers checkpoint (a local folder or a hub id) was trained with: ``modules.json``
    names its Pooling module, whose config says mean, cls or max; None for any other model or pooling mode."""
    import json

    modules = checkpoint_file(source, "modules.json")
    for module in json.loads(Path(modules).read_text()) if modules else ():
        if module.get("type", "").endswith(".Pooling"):
            config_file = checkpoint_file(source, f"{module.get('path') or '.'}/config.json")
            flags = json.loads(Path(config_file).read_text()) if config_file else {}
            chosen = [name for flag, name in SENTENCE_TRANSFORMERS_MODES.items() if flags.get(flag)]
            others = [k for k, v in flags.items() if k.startswith("pooling_mode") and v and k not in
                      SENTENCE_TRANSFORMERS_MODES]
            return chosen[0] if len(chosen) == 1 and not others else None
    return None


def checkpoint_file(source: str, name: str) -> str | None:
    """Path of file `name` of a local folder or a hub checkpoint (cached, or downloaded when online), or None."""
    from transformers.utils import cached_file

    if Path(source).is_dir():
        path = Path(source) / name
        return str(path) if path.is_file() else None
    try:
        return cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        return None


AutoConfig.register(MODEL_TYPE, PooledClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledClassifierConfig, PooledForSequenceClassification, exist_ok=True)
AutoModelForMultipleChoice.register(PooledClassifierConfig, PooledForMultipleChoice, exist_ok=True)
