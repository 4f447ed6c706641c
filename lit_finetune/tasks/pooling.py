"""Which pooling a classification or multiple-choice head sits on, and building a pooled head: shared by the task
modules that offer ``model.pooling`` (functions, not a parent class)."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoConfig, AutoModel, PreTrainedModel

from lit_finetune import backbones, heads
from lit_finetune.errors import ConfigError

Pooling = Literal["pooler", "cls", "mean", "max"]
KEY = "model.pooling"


def backbone_config(module):
    """The Hugging Face config of a task module's backbone, read without its weights."""
    h = module.hparams
    source = backbones.resolve(h.model_name_or_path)
    if backbones.preset(source):
        sizes, model_type = backbones.preset(source)
        return AutoConfig.for_model(model_type, **sizes)
    return AutoConfig.from_pretrained(source, trust_remote_code=h.trust_remote_code)


def resolve_pooling(module, stock_heads: dict, task: str) -> str:
    """The module's ``pooling``, checked against its backbone; unset, the checkpoint's own (logged), else
    ``pooler``. `stock_heads` maps model types to transformers' head class for `task`, which ``pooler`` needs."""
    h = module.hparams
    config = backbone_config(module)
    if h.pooling is None:
        source = backbones.resolve(h.model_name_or_path)
        found = config.pooling if config.model_type == heads.MODEL_TYPE else None
        found = found or (None if backbones.preset(source) else heads.sentence_transformers_pooling(source))
        if found:
            rank_zero_info(f"{KEY}: {found} (the pooling {h.model_name_or_path} was trained with; set {KEY} to "
                           "change it)")
        return found or "pooler"
    if h.pooling == "pooler":
        if config.model_type == heads.MODEL_TYPE:
            raise ConfigError(f"{KEY}: {h.model_name_or_path} is a lit_finetune export with a {config.pooling} head "
                              "and no pooler; use cls, mean or max")
        if config.model_type not in stock_heads:
            raise ConfigError(f"{KEY}: transformers has no {task} head for {config.model_type}; use cls, mean or "
                              "max")
        return "pooler"
    heads.check_pooling(config.get_text_config(), h.pooling, KEY)
    return h.pooling


def build_head(module, auto_class, head_class, **head_settings) -> PreTrainedModel:
    """The module's model for its resolved ``hparams.pooling``: transformers' own head for ``pooler``, an earlier
    pooled export continued as it is, or a pooled head over the pretrained backbone."""
    h = module.hparams
    if h.pooling == "pooler":
        return module.load_backbone(auto_class, **head_settings)
    if backbone_config(module).model_type == heads.MODEL_TYPE:
        return module.load_backbone(auto_class, pooling=h.pooling, **head_settings)
    return heads.pooled_classifier(module.load_backbone(AutoModel), h.pooling, head_class, **head_settings)
