"""The pooled classification head (cls / mean / max): the pooling itself, sentence-transformers detection, the CLI
run whose export loads in `pipeline` and predicts what the module predicted, and the poolings a backbone refuses."""

import json
import logging

import pytest
import torch
from helpers import tiny_args
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from lit_finetune import heads
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError
from lit_finetune.tasks import SequenceClassificationModule
from lit_finetune.training.layers import head_module_names


def test_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert heads.pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert heads.pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert heads.pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]


def write_sentence_transformers_files(folder, **flags):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))


def test_sentence_transformers_pooling_is_read_from_the_checkpoint(tmp_path):
    write_sentence_transformers_files(tmp_path / "cls", pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    write_sentence_transformers_files(tmp_path / "sqrt", pooling_mode_mean_sqrt_len_tokens=True)
    (tmp_path / "plain").mkdir()
    assert heads.sentence_transformers_pooling(str(tmp_path / "cls")) == "cls"
    assert heads.sentence_transformers_pooling(str(tmp_path / "sqrt")) is None  # a mode this head does not have
    assert heads.sentence_transformers_pooling(str(tmp_path / "plain")) is None


def test_packaged_minilm_defaults_to_its_mean_pooling(caplog):
    module = SequenceClassificationModule(model_name_or_path="minilm", labels={0: "neg", 1: "pos"})
    with caplog.at_level(logging.INFO):
        module.configure_model()
    assert module.hparams.pooling == "mean" and "model.pooling: mean (the pooling minilm was trained with" in caplog.text
    assert isinstance(module.model, heads.PooledForSequenceClassification)
    assert not any("pooler" in name for name, _ in module.model.named_parameters())  # never trained: not there
    assert head_module_names(module.model) == ["classifier"]  # what feature extraction and LoRA train
    assert SequenceClassificationModule(model_name_or_path="tiny:bert", labels={0: "a", 1: "b"}).chosen_pooling() \
        == "pooler"  # no sentence-transformers files: the model's own head


def test_mean_pooled_run_exports_what_pipeline_loads_and_predicts_alike(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--model.init_args.pooling=mean",
                                           "--trainer.max_epochs=6")])
    # The export is the best checkpoint's model; rebuilt from the checkpoint, the head is the same (pooling saved).
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    module = SequenceClassificationModule.load_checkpoint(best).eval()
    assert module.hparams.pooling == "mean" and isinstance(module.model, heads.PooledForSequenceClassification)
    export = run_dir / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == heads.MODEL_TYPE and config["pooling"] == "mean"
    assert config["text_config"]["model_type"] == "bert"
    tokenizer = AutoTokenizer.from_pretrained(export)
    texts = ["plot was good acting", "the movie bad", "good good good fine", "bad plot"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = module(dict(batch)).softmax(-1)
        loaded = AutoModelForSequenceClassification.from_pretrained(export).eval()
        assert torch.allclose(loaded(**batch).logits.softmax(-1), expected, atol=1e-5)
    classifier = pipeline("text-classification", model=str(export))
    predicted = classifier(texts)
    names = module.model.config.id2label
    assert [p["label"] for p in predicted] == [names[i] for i in expected.argmax(-1).tolist()]
    assert [p["score"] for p in predicted] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-5)
    assert predicted[0]["label"] == "good" and predicted[1]["label"] == "bad"  # it learned, through the mean
    # An export fine-tuned further keeps its head.
    again = SequenceClassificationModule(model_name_or_path=str(export), labels={0: "bad", 1: "good"})
    assert again.chosen_pooling() == "mean"
    with pytest.raises(ConfigError, match="export with a mean head and no pooler"):
        SequenceClassificationModule(model_name_or_path=str(export), labels={0: "bad", 1: "good"},
                                     pooling="pooler").chosen_pooling()


@pytest.mark.parametrize("model, pooling, message", [
    ("tiny:gpt2", "cls", "in a causal model"),
    ("tiny:t5", "mean", "encoder-decoder"),
])
def test_poolings_the_backbone_cannot_give_are_refused(model, pooling, message):
    module = SequenceClassificationModule(model_name_or_path=model, labels={0: "a", 1: "b"}, pooling=pooling)
    with pytest.raises(ConfigError, match=f"model.pooling: .*{message}"):
        module.configure_model()


def test_pooled_head_trains_under_lora_with_peft_defaults():
    module = SequenceClassificationModule(model_name_or_path="tiny:bert", labels={0: "a", 1: "b"}, pooling="max",
                                          lora={"r": 4})
    module.configure_model()
    trainable = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name and "query" in name for name in trainable)  # peft's BERT targets, found through
    assert any("classifier" in name for name in trainable)                   # the pooled config's backbone type
    assert not any("word_embeddings" in name for name in trainable)
    assert AutoConfig.for_model(heads.MODEL_TYPE).model_type == heads.MODEL_TYPE
