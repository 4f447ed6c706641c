"""backbones: every form of model_name_or_path, and the offline error for an uncached hub id."""

import pytest
from transformers import AutoModelForSequenceClassification

from lit_finetune import backbones
from lit_finetune.errors import ConfigError


def test_minilm_alias_is_the_packaged_model():
    path = backbones.resolve("minilm")
    assert path == backbones.packaged_minilm_path() and backbones.resolve("all-MiniLM-L6-v2") == path
    tokenizer = backbones.load_tokenizer("minilm")
    assert tokenizer.is_fast and tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_tiny_model_is_small_random_and_takes_overrides():
    model = backbones.load_model("tiny:bert", AutoModelForSequenceClassification, num_labels=3, hidden_size=16,
                                 intermediate_size=32)
    assert model.config.num_labels == 3 and model.config.hidden_size == 16 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(backbones.load_tokenizer("tiny:bert"))


def test_local_folder_round_trip(tmp_path):
    model = backbones.load_model("tiny:bert", AutoModelForSequenceClassification, num_labels=2)
    model.save_pretrained(tmp_path)
    backbones.load_tokenizer("tiny:bert").save_pretrained(tmp_path)
    loaded = backbones.load_model(str(tmp_path), AutoModelForSequenceClassification)
    assert loaded.config.hidden_size == model.config.hidden_size


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ConfigError, match=r"has no config.json; expected a Hugging Face folder"):
        backbones.resolve(str(tmp_path))


def test_missing_local_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(ConfigError, match=r"folder .*nope' does not exist"):
        backbones.resolve(str(tmp_path / "nope"))


def test_uncached_hub_id_offline_fails_at_once_with_the_fix():
    with pytest.raises(ConfigError, match=r"not in the local cache, and HF_HUB_OFFLINE is set. Point it at a local "
                                          r"folder instead"):
        backbones.resolve("some-org/some-model-that-is-not-cached")


def test_remote_code_is_off_by_default(tmp_path):
    model = backbones.load_model("tiny:bert", AutoModelForSequenceClassification, num_labels=2)
    model.config.auto_map = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    model.save_pretrained(tmp_path)
    (tmp_path / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    backbones.load_tokenizer("tiny:bert").save_pretrained(tmp_path)
    loaded = backbones.load_model(str(tmp_path), AutoModelForSequenceClassification)  # custom code ignored
    assert type(loaded).__name__ == "BertForSequenceClassification"
