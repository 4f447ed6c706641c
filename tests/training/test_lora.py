"""LoRA on tiny random models: what trains, what training changes, both exports, target patterns and their errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import OFFLINE_ENV
from jsonargparse import ArgumentParser
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from lit_finetune.backbones import load_model
from lit_finetune.bounds import settings_dict
from lit_finetune.errors import ConfigError
from lit_finetune.training.layers import parameter_counts
from lit_finetune.training.lora import (
    KEY,
    LoraSettings,
    adapter_fits_the_base,
    apply_lora,
    is_lora,
    merged_copy,
    save_adapter,
)

# kind: (preset, Auto class, config overrides, peft's default targets for the model type, head trained in full)
KINDS = {
    "sequence_classification": ("tiny:bert", AutoModelForSequenceClassification, {"num_labels": 3}, ["query", "value"],
                                ["classifier"]),
    "token_classification": ("tiny:bert", AutoModelForTokenClassification, {"num_labels": 5}, ["query", "value"],
                             ["classifier"]),
    "causal_lm": ("tiny:llama", AutoModelForCausalLM, {}, ["q_proj", "v_proj"], []),  # untied lm_head stays frozen
    "causal_lm_conv1d": ("tiny:gpt2", AutoModelForCausalLM, {}, ["c_attn"], []),
    "seq2seq": ("tiny:t5", AutoModelForSeq2SeqLM, {}, ["q", "v"], []),
}


def build(kind: str):
    preset, auto_class, overrides, _, _ = KINDS[kind]
    torch.manual_seed(0)
    return load_model(preset, auto_class, **overrides)


def batch(model, kind: str, seed: int = 1) -> dict:
    """Random token ids (padding-free) and labels of the task's shape."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (4, 9), generator=generator)
    if kind == "sequence_classification":
        labels = torch.randint(0, 3, (4,), generator=generator)
    elif kind == "token_classification":
        labels = torch.randint(0, 5, (4, 9), generator=generator)
    else:
        labels = ids
    return {"input_ids": ids, "labels": labels}


def train(model, kind: str, steps: int = 3) -> None:
    """A few AdamW steps on random data, dropout on."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        model(**batch(model, kind, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def logits(model, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(model, kind, seed=99)).logits


def expected_trainable(model, targets: list[str], head: list[str], r: int) -> int:
    """r * (in + out) per targeted linear layer (GPT-2's Conv1D stores [in, out]), plus the whole head."""
    count = 0
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in targets:
            d_in, d_out = module.weight.shape if type(module).__name__ == "Conv1D" else module.weight.shape[::-1]
            count += r * (d_in + d_out)
    return count + sum(p.numel() for name in head for p in getattr(model, name).parameters())


@pytest.mark.parametrize("kind", list(KINDS))
def test_only_lora_updates_and_head_train(kind):
    model = build(kind)
    _, _, _, targets, head = KINDS[kind]
    expected = expected_trainable(model, targets, head, r=4)
    total_before = sum(p.numel() for p in model.parameters())
    peft_model = apply_lora(model, LoraSettings(r=4))
    trainable = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    assert all("lora_" in name or ".modules_to_save." in name for name in trainable)
    assert {name.split(".")[2] for name in trainable if ".modules_to_save." in name} == set(head)
    # peft adds the updates and a trained copy of the head; its pretrained copy stays, frozen like the base weights
    total = total_before + expected
    assert sum(p.numel() for p in peft_model.parameters()) == total
    assert parameter_counts(peft_model) == (expected, total)


@pytest.mark.parametrize("kind", ["sequence_classification", "causal_lm", "seq2seq"])
def test_training_changes_the_updates_and_head_but_not_the_base_weights(kind):
    peft_model = apply_lora(build(kind), LoraSettings())
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    train(peft_model, kind)
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in changed) and any("lora_B" in name for name in changed)


@pytest.mark.parametrize("kind", ["sequence_classification", "causal_lm"])
def test_adapter_export_reloads_on_a_fresh_base_model(tmp_path, kind):
    _, auto_class, _, _, head = KINDS[kind]
    base = build(kind)
    base.save_pretrained(tmp_path / "base")  # the preset's weights are random: keep them to rebuild the base
    peft_model = apply_lora(base, LoraSettings())
    train(peft_model, kind)
    folder = save_adapter(peft_model, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (json.loads((folder / "adapter_config.json").read_text())["modules_to_save"] or []) == head
    saved = load_file(folder / "adapter_model.safetensors")
    for name in head:  # the trained head, under its plain name
        trained = getattr(peft_model.base_model.model, name).modules_to_save["default"].weight
        assert torch.equal(saved[f"base_model.model.{name}.weight"], trained)
    reloaded = PeftModel.from_pretrained(auto_class.from_pretrained(tmp_path / "base"), folder).eval()
    assert torch.equal(logits(reloaded, kind), logits(peft_model, kind))


@pytest.mark.parametrize("kind", list(KINDS))
def test_merged_copy_saves_a_plain_model_with_the_same_outputs(tmp_path, kind):
    _, auto_class, _, _, head = KINDS[kind]
    peft_model = apply_lora(build(kind), LoraSettings())
    train(peft_model, kind)
    expected = logits(peft_model, kind)
    merged = merged_copy(peft_model)
    merged.save_pretrained(tmp_path / "merged")
    # the training model keeps its adapters and outputs
    assert is_lora(peft_model) and any("lora_A" in name for name, _ in peft_model.named_parameters())
    assert torch.equal(logits(peft_model, kind), expected)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    keys = load_file(tmp_path / "merged" / "model.safetensors").keys()
    assert not [k for k in keys if any(s in k for s in ("lora_", "base_layer", "modules_to_save", "original_module"))]
    loaded, info = auto_class.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(logits(loaded.eval(), kind), expected, atol=1e-5, rtol=1e-4)
    for name in head:
        assert torch.equal(getattr(loaded, name).weight,
                           getattr(peft_model.base_model.model, name).modules_to_save["default"].weight)


@pytest.mark.slow  # a fresh interpreter: ~6 s of imports
def test_merged_export_loads_where_peft_is_not_installed(tmp_path):
    for kind in ("sequence_classification", "causal_lm"):
        peft_model = apply_lora(build(kind), LoraSettings())
        train(peft_model, kind)
        merged_copy(peft_model).save_pretrained(tmp_path / kind)
        torch.save({"batch": batch(peft_model, kind, seed=99), "logits": logits(peft_model, kind)},
                   tmp_path / f"{kind}.pt")
    script = """
import sys
sys.modules["peft"] = None  # as if it were not installed
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
folder = sys.argv[1]
for kind, auto_class in [("sequence_classification", AutoModelForSequenceClassification),
                         ("causal_lm", AutoModelForCausalLM)]:
    expected = torch.load(f"{folder}/{kind}.pt")
    model = auto_class.from_pretrained(f"{folder}/{kind}").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**expected["batch"]).logits, expected["logits"], atol=1e-5, rtol=1e-4)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def adapted_layers(peft_model) -> list[str]:
    return sorted(name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
                  if isinstance(module, LoraLayer))


@pytest.mark.parametrize("targets", [["query", "value"], ["self.query", "self.value"], ".*attention.*(query|value)"])
def test_list_and_regex_targets_select_the_same_layers(targets):
    peft_model = apply_lora(build("sequence_classification"), LoraSettings(target_modules=targets))
    assert adapted_layers(peft_model) == [f"bert.encoder.layer.{i}.attention.self.{name}"
                                          for i in (0, 1) for name in ("query", "value")]


def test_all_linear_adapts_every_linear_layer_but_the_head():
    layers = adapted_layers(apply_lora(build("sequence_classification"), LoraSettings(target_modules="all-linear")))
    assert len(layers) == 2 * 6 + 1  # per block: query, key, value, 3 dense; and the pooler's dense
    assert not [name for name in layers if name.startswith("classifier")]


@pytest.mark.parametrize("targets, bad", [(["query", "nope"], "'nope'"), ("query", "'query'"),
                                          (["classifier"], "'classifier'"), (["attention"], "'attention'"),
                                          ([], "an empty list")])
def test_a_pattern_that_matches_no_layer_is_a_config_error(targets, bad):
    model = build("sequence_classification")
    with pytest.raises(ConfigError) as error:
        apply_lora(model, LoraSettings(target_modules=targets))
    message = str(error.value)
    assert message.startswith("model.lora.target_modules: ") and bad in message.split("matched")[0]
    listed = message.split("are named: ")[1].split(", ")
    assert {"query", "key", "value", "dense", "word_embeddings"} <= set(listed) and "classifier" not in listed
    assert not [m for m in model.modules() if isinstance(m, LoraLayer)]  # checked before peft touched the model


def test_a_model_type_without_peft_defaults_needs_targets():
    model = load_model("tiny:mpnet", AutoModelForSequenceClassification, num_labels=2)
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: peft has no default for model type 'mpnet'"):
        apply_lora(model, LoraSettings())
    assert is_lora(apply_lora(model, LoraSettings(target_modules=["q", "v"])))


def test_modules_to_save_replaces_the_default_head():
    peft_model = apply_lora(build("causal_lm"), LoraSettings(modules_to_save=["lm_head"]))
    assert peft_model.base_model.model.lm_head.modules_to_save["default"].weight.requires_grad
    peft_model = apply_lora(build("sequence_classification"), LoraSettings(modules_to_save=[]))
    assert not peft_model.base_model.model.classifier.weight.requires_grad
    with pytest.raises(ConfigError, match=r"model\.lora\.modules_to_save: 'clasifier' named no module .* classifier"):
        apply_lora(build("sequence_classification"), LoraSettings(modules_to_save=["clasifier"]))


def test_applying_twice_wraps_once():
    model = build("sequence_classification")
    assert not is_lora(model)
    peft_model = apply_lora(model, LoraSettings())
    layers = adapted_layers(peft_model)
    assert apply_lora(peft_model, LoraSettings(r=16, target_modules=["key"])) is peft_model
    assert adapted_layers(peft_model) == layers and not is_lora(peft_model.get_base_model())


@pytest.mark.parametrize("value, targets", [("{r: 4, alpha: 8, target_modules: [query, value]}", ["query", "value"]),
                                            ('{target_modules: ".*attention.*(query|value)"}',
                                             ".*attention.*(query|value)")])
def test_settings_parse_as_a_config_type(value, targets):
    parser = ArgumentParser()
    parser.add_argument("--lora", type=LoraSettings | None, default=None)
    settings = parser.instantiate(parser.parse_args([f"--lora={value}"])).lora
    assert isinstance(settings, LoraSettings) and settings.target_modules == targets


def test_lora_run_exports_merged_model_and_adapter_and_reloads_its_checkpoint(tmp_path, tiny_data):
    """Through the CLI with the shipped fragment: the export loads in a pipeline without peft, the adapter loads on
    the base model with peft, and `lit-finetune export` rebuilds the same model from the checkpoint."""
    from helpers import REPO, tiny_args
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lit_finetune.commands.fit import LitFinetuneCLI
    from lit_finetune.tasks.base import export_checkpoint

    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--config",
                                                 str(REPO / "configs" / "strategies" / "lora.yaml"))])
    assert is_lora(cli.model.model)
    export = run_dir / "export"
    assert not (export / "adapter_config.json").exists() and (export / "adapter" / "adapter_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(export)
    inputs = tokenizer(["the plot was good", "bad acting"], return_tensors="pt", padding=True)
    merged = AutoModelForSequenceClassification.from_pretrained(export).eval()
    base = backbone_for(cli.model)
    adapted = PeftModel.from_pretrained(base, export / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, adapted(**inputs).logits, atol=1e-5)
    again = export_checkpoint(str(cli.trainer.checkpoint_callback.best_model_path), str(tmp_path / "again"))
    with torch.no_grad():
        reloaded = AutoModelForSequenceClassification.from_pretrained(again).eval()
        assert torch.allclose(merged(**inputs).logits, reloaded(**inputs).logits, atol=1e-6)


def backbone_for(module):
    """The pretrained model the adapter was trained on: the run's model without its LoRA layers (its frozen base
    weights are the initial ones)."""
    import copy

    return copy.deepcopy(module.model).unload()


def test_unknown_lora_key_is_named():
    with pytest.raises(ConfigError, match=r"model.lora: unknown keys \['rank'\]; expected some of \['r', "):
        settings_dict({"rank": 8}, LoraSettings, KEY)
    assert settings_dict({"r": 4}, LoraSettings, KEY)["r"] == 4 and settings_dict(None, LoraSettings, KEY) is None


@pytest.mark.parametrize("settings", [dict(use_dora=True), dict(init="pissa"), dict(init="olora"),
                                      dict(init="gaussian", use_dora=True)], ids=lambda s: "-".join(map(str, s.values())))
def test_dora_and_initialisations_train_and_merge_into_a_plain_model(tmp_path, settings):
    kind = "sequence_classification"
    base = build(kind)
    before = logits(base.eval(), kind)
    peft_model = apply_lora(base, LoraSettings(**settings))
    config = peft_model.peft_config["default"]
    assert config.use_dora == settings.get("use_dora", False)
    assert config.init_lora_weights == settings.get("init", True)
    if settings.get("use_dora"):
        assert any("lora_magnitude_vector" in name for name, _ in peft_model.named_parameters())
    residual = settings.get("init") in ("pissa", "olora")
    assert adapter_fits_the_base(peft_model) == (not residual)  # the export writes adapter/ only when it fits
    if residual:  # residual + low-rank start equals the pretrained layer
        torch.testing.assert_close(logits(peft_model.eval(), kind), before, atol=1e-4, rtol=1e-3)
    train(peft_model, kind)
    expected = logits(peft_model, kind)
    merged_copy(peft_model).save_pretrained(tmp_path / "merged")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(loaded, kind), expected, atol=1e-5, rtol=1e-4)


@pytest.fixture
def pretrained_bert_folder(tmp_path):
    """A tiny BERT saved as a pretrained folder, 64 wide (one bitsandbytes quantization block per row)."""
    from helpers import pretrained_tiny_bert

    return pretrained_tiny_bert(tmp_path / "pretrained", hidden_size=64, intermediate_size=128)


QLORA = ("--model.init_args.quantization={quant_type: nf4}", "--model.init_args.lora={r: 4, alpha: 8, dropout: 0.0}")


def test_qlora_trains_4bit_on_cpu_checkpoints_the_adapters_and_exports_a_full_precision_model(
        tmp_path, tiny_data, pretrained_bert_folder):
    """QLoRA end to end on this CPU: the base trains in 4 bits (float32 compute on CPU), checkpoints hold the trained
    weights only, `export` re-reads the base in full precision and merges, and the checkpoint reloads into the
    trained model."""
    from bitsandbytes.nn import Linear4bit
    from helpers import tiny_args
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lit_finetune.commands.fit import LitFinetuneCLI
    from lit_finetune.tasks.base import ADAPTERS_ONLY_KEY, TaskModule, export_checkpoint
    from lit_finetune.training.checkpointing import read_checkpoint

    run_dir = tmp_path / "run"
    args = tiny_args(tiny_data, run_dir, *QLORA, f"--model.init_args.model_name_or_path={pretrained_bert_folder}",
                     "--trainer.max_epochs=1")
    cli = LitFinetuneCLI(args=["fit", *args])
    module = cli.model
    quantized = [m for m in module.model.modules() if isinstance(m, Linear4bit)]
    assert module.quantized and quantized and quantized[0].compute_dtype == torch.float32
    head = module.model.base_model.model.classifier
    assert not isinstance(head.original_module, Linear4bit) and head.modules_to_save["default"].weight.requires_grad

    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    assert checkpoint[ADAPTERS_ONLY_KEY] is True
    saved = {k for k in checkpoint["state_dict"] if k.startswith("model.")}
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)
    trained = get_peft_model_state_dict(module.model)
    assert len(saved) == len(trained)

    # the checkpoint reloads into the trained model: the same base quantized again, the trained weights loaded
    reloaded = TaskModule.load_checkpoint(last)
    inputs = module.tokenizer(["the plot was good", "bad acting"], return_tensors="pt", padding=True)
    module.model.eval()
    reloaded.model.eval()
    with torch.no_grad():
        in_memory = module.model(**inputs).logits
        torch.testing.assert_close(reloaded.model(**inputs).logits, in_memory, atol=1e-6, rtol=1e-5)

    # the export: a plain full-precision folder, each adapted weight = pretrained + scale * B @ A, the rest as read
    export = export_checkpoint(str(last), str(tmp_path / "export"))
    config = json.loads((export / "config.json").read_text())
    assert "quantization_config" not in config
    weights, pretrained = load_file(export / "model.safetensors"), load_file(pretrained_bert_folder / "model.safetensors")
    layer = "encoder.layer.0.attention.self"
    a, b = (trained[f"base_model.model.bert.{layer}.query.lora_{x}.weight"] for x in "AB")
    torch.testing.assert_close(weights[f"bert.{layer}.query.weight"], pretrained[f"{layer}.query.weight"] + 8 / 4 * b @ a)
    torch.testing.assert_close(weights[f"bert.{layer}.key.weight"], pretrained[f"{layer}.key.weight"], atol=0, rtol=0)
    torch.testing.assert_close(weights["classifier.weight"], head.modules_to_save["default"].weight.detach())
    end_of_fit = load_file(run_dir / "export" / "model.safetensors")  # the same, written from memory by the fit
    assert end_of_fit.keys() == weights.keys() and all(torch.equal(end_of_fit[k], weights[k]) for k in weights)
    plain = AutoModelForSequenceClassification.from_pretrained(export).eval()
    assert not any(isinstance(m, Linear4bit) for m in plain.modules())
    with torch.no_grad():  # only the base's 4-bit rounding differs
        assert (plain(**inputs).logits - in_memory).abs().max() < 0.1

    # the same command with more epochs continues from last.ckpt over the base quantized again
    steps = cli.trainer.global_step
    resumed = LitFinetuneCLI(args=["fit", *args, "--trainer.max_epochs=2", f"--ckpt_path={last}"])
    assert resumed.trainer.global_step == 2 * steps and resumed.model.quantized


def test_qlora_is_refused_where_it_cannot_run(tmp_path, tiny_data, pretrained_bert_folder, monkeypatch):
    """Without LoRA there is nothing to train, a size preset has no pretrained weights to quantize, and a device or
    bitsandbytes release without 4-bit training is named: each before any weights are read."""
    import importlib.metadata

    from helpers import tiny_args

    from lit_finetune.commands.fit import LitFinetuneCLI
    from lit_finetune.training.lora import QuantizationSettings, check_quantization

    def fit(name, *extra):
        LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / name, QLORA[0], *extra)])

    with pytest.raises(ConfigError, match="model.quantization: 4-bit base weights cannot be trained; QLoRA"):
        fit("no_lora", f"--model.init_args.model_name_or_path={pretrained_bert_folder}")
    with pytest.raises(ConfigError, match="model.quantization: tiny:bert is a randomly initialised size preset"):
        fit("preset", QLORA[1])
    assert not (tmp_path / "preset" / "checkpoints").exists()
    settings, lora = QuantizationSettings(), {"r": 4}
    with pytest.raises(ConfigError, match="bitsandbytes runs 4-bit training on CUDA GPUs and CPUs, and this run is on mps"):
        check_quantization(settings, "mps", lora, str(pretrained_bert_folder))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.45.0")
    with pytest.raises(ConfigError, match=r"bitsandbytes 0.45.0 runs 4-bit training on CUDA GPUs only.*>=0.48"):
        check_quantization(settings, "cpu", lora, str(pretrained_bert_folder))
    check_quantization(settings, "cuda", lora, str(pretrained_bert_folder))


def test_full_precision_merge_moves_the_trained_adapters_onto_a_fresh_base():
    """The QLoRA export's path, on a model this CPU can run: adapters and head moved onto the base read again and
    merged give the outputs of the trained model, and the task module keeps its own parts."""
    from lit_finetune.tasks import SequenceClassificationModule

    module = SequenceClassificationModule(model_name_or_path="tiny:bert", labels={0: "a", 1: "b", 2: "c"},
                                          lora={"r": 4})
    torch.manual_seed(0)  # a random preset: the same seed reads "the same pretrained base" again below
    module.configure_model()
    metrics = module.metrics
    train(module.model, "sequence_classification")
    expected = logits(module.model, "sequence_classification")
    torch.manual_seed(0)
    merged = module.full_precision_model().eval()
    assert not is_lora(merged) and module.metrics is metrics and is_lora(module.model)
    torch.testing.assert_close(logits(merged, "sequence_classification"), expected, atol=1e-5, rtol=1e-4)
