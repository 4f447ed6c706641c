"""Pretraining objectives: BERT masking statistics, MLM and causal LM training on packed blocks, and chaining a
pretraining export into fine-tuning."""

import json
import random
from pathlib import Path

import pytest
import torch
import wandb
from helpers import REPO, assert_pinned, first_losses, logged_values, metrics_rows, tiny_args, wandb_records
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from lit_finetune import backbones, commands
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.data.tokenizer_training import train_tokenizer
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.pretraining import CausalLMModule, MaskedLMModule
from lit_finetune.tasks.pretraining.masking import IGNORE, mask_tokens, select_tokens

TEMPLATES = ["the {} ball rolled slowly to the {} .", "a {} dog sat on the {} mat .", "we walked to the {} park ."]
SLOTS = "red blue green small big old new quiet".split()


PINNED_MLM = [10.284393, 10.116630, 9.978696, 9.895097]  # first four step losses; see helpers.assert_pinned
PINNED_ELECTRA = [44.997917, 43.901398, 42.888718, 42.215557]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Documents of templated sentences: a tiny model learns the fixed words from context within a few epochs."""
    rng = random.Random(0)
    docs = [" ".join(rng.choice(TEMPLATES).format(*rng.choices(SLOTS, k=2)) for _ in range(rng.randint(2, 5)))
            for _ in range(300)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus_tokenizers(corpus_file) -> dict[str, Path]:
    """WordPiece (encoders) and byte-level BPE (GPT-2) tokenizers trained on the corpus. With MiniLM's 30,522
    tokens, the output layer and its loss are nearly all of a tiny model's step; with these (100 and 300 tokens)
    the objectives train the same way several times faster (and most words are several WordPiece pieces)."""
    return {kind: train_tokenizer(str(corpus_file), str(corpus_file.parent / kind), kind=kind, vocab_size=size)
            for kind, size in (("wordpiece", 100), ("bpe", 300))}


def pretrain_args(config: str, corpus_file, run_dir, *extra: str, tokenizers: dict | None = None) -> list[str]:
    """A shipped pretraining recipe on the corpus; with `tokenizers`, on its vocabulary (BPE for causal LM)."""
    vocabulary = [] if tokenizers is None else \
        [f"--model.init_args.tokenizer_name_or_path={tokenizers['bpe' if config == 'clm.yaml' else 'wordpiece']}"]
    return ["--config", str(REPO / "configs" / "pretrain" / config), f"--trainer.default_root_dir={run_dir}",
            "--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null",
            f"--data.init_args.train_file={corpus_file}", "--data.init_args.max_length=32",
            "--data.init_args.batch_size=16", "--model.init_args.learning_rate=3e-3", "--model.init_args.warmup=0",
            "--trainer.max_epochs=3", "--trainer.val_check_interval=1.0", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false", *vocabulary, *extra]


def test_bert_masking_rates_and_special_tokens():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 1000, (256, 128), generator=generator)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = special[:, 100:] = True  # [CLS], [SEP] and padding
    selected = select_tokens(special, None, 0.15, generator)
    assert not (selected & special).any()
    assert selected[~special].float().mean().item() == pytest.approx(0.15, abs=0.005)
    corrupted, labels = mask_tokens(input_ids, selected, mask_token_id=4, vocab_size=1000, generator=generator)
    assert torch.equal(labels[selected], input_ids[selected]) and (labels[~selected] == IGNORE).all()
    assert torch.equal(corrupted[~selected], input_ids[~selected])
    n = selected.sum().item()
    as_mask = (corrupted[selected] == 4).sum().item() / n
    changed = ((corrupted[selected] != 4) & (corrupted[selected] != input_ids[selected])).sum().item() / n
    assert as_mask == pytest.approx(0.8, abs=0.02) and changed == pytest.approx(0.1, abs=0.015)


def test_whole_word_masking_selects_complete_words():
    generator = torch.Generator().manual_seed(0)
    starts = torch.rand(256, 128, generator=generator) < 0.6  # words of 1-4 pieces
    starts[:, 0] = False  # the block opens in the middle of a word cut off by packing
    special = torch.zeros_like(starts)
    special[:, -1] = True
    selected = select_tokens(special, starts, 0.15, generator)
    word_index = starts.long().cumsum(-1)
    assert not selected[word_index == 0].any() and not (selected & special).any()
    words_selected = []
    for row in range(starts.shape[0]):
        for word in word_index[row].unique().tolist()[1:]:
            pieces = selected[row][(word_index[row] == word) & ~special[row]]
            assert pieces.all() or not pieces.any()  # never part of a word
            words_selected.append(bool(pieces.any()))
    assert sum(words_selected) / len(words_selected) == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize("config, acc", [("mlm.yaml", "val/masked_acc"), ("clm.yaml", "val/next_token_acc")])
def test_objective_trains_with_falling_loss(config, acc, corpus_file, corpus_tokenizers, tmp_path):
    extra = ["--model.init_args.model_name_or_path=tiny:bert"] if config == "mlm.yaml" else []
    LitFinetuneCLI(args=["fit", *pretrain_args(config, corpus_file, tmp_path / "run", *extra,
                                               tokenizers=corpus_tokenizers)])
    perplexity = logged_values(tmp_path / "run", "val/perplexity")
    vocabulary = len(AutoTokenizer.from_pretrained(tmp_path / "run" / "export"))  # a uniform guess's perplexity
    assert len(perplexity) == 3 and perplexity[-1] < perplexity[0] and perplexity[-1] < vocabulary / 4
    accuracy = logged_values(tmp_path / "run", acc)
    assert len(accuracy) == 3 and all(0 < a <= 1 for a in accuracy)  # too few steps to rise reliably; loss does
    # The Throughput callback: full 32-token blocks, so tokens/s is exactly 32 x samples/s.
    tokens, samples = logged_values(tmp_path / "run", "perf/tokens_per_s"), logged_values(tmp_path / "run", "perf/samples_per_s")
    assert len(tokens) == 3 and tokens == pytest.approx([32 * s for s in samples])
    assert logged_values(tmp_path / "run", "perf/peak_rss_mb")[-1] > 100
    assert (tmp_path / "run" / "export" / "config.json").is_file()


@pytest.mark.parametrize("config, task, model", [("mlm_nsp.yaml", "nsp", "tiny:bert"),
                                                 ("mlm_sop.yaml", "sop", "tiny:albert")])
def test_mlm_with_sentence_pair_objective(config, task, model, corpus_file, corpus_tokenizers, tmp_path):
    LitFinetuneCLI(args=["fit", *pretrain_args(config, corpus_file, tmp_path / "run", "--data.init_args.max_length=48",
                                               f"--model.init_args.model_name_or_path={model}",
                                               "--trainer.max_epochs=2", "--trainer.log_every_n_steps=5",
                                               tokenizers=corpus_tokenizers)])
    run = tmp_path / "run"
    total = logged_values(run, "val/pretraining_loss")
    assert len(total) == 2 and total[-1] < total[0]
    assert logged_values(run, "val/mlm_loss")[-1] < logged_values(run, "val/mlm_loss")[0]
    assert len(logged_values(run, f"val/{task}_loss")) == 2 and len(logged_values(run, f"train/{task}_loss_step")) > 0
    pair_acc = logged_values(run, f"val/{task}_acc")
    assert len(pair_acc) == 2 and all(0 <= a <= 1 for a in pair_acc)
    assert (run / "export" / "config.json").is_file()


def test_pair_objective_and_pair_data_must_match(corpus_file, tmp_path):
    with pytest.raises(ConfigError, match=r"data.examples: got 'sop', but model.sentence_task is 'nsp'"):
        LitFinetuneCLI(args=["fit", *pretrain_args("mlm_nsp.yaml", corpus_file, tmp_path / "run",
                                                   "--model.init_args.model_name_or_path=tiny:bert",
                                                   "--data.init_args.examples=sop")])


def test_causal_lm_logs_generated_samples_each_validation(corpus_file, corpus_tokenizers, tmp_path):
    LitFinetuneCLI(args=["fit", *pretrain_args("clm.yaml", corpus_file, tmp_path / "run", "--trainer.max_epochs=2",
                                               tokenizers=corpus_tokenizers)])
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 3 and {s["prompt"] for s in samples} == {"The history of the city",
                                                                        "In the early years , the team", "The film was"}
    assert all(s["continuation"].strip() for s in samples) and len({s["step"] for s in samples}) == 2
    wandb.finish()
    logged = ["/".join(item.nested_key) for r in wandb_records(tmp_path / "run")
              if r.WhichOneof("record_type") == "history" for item in r.history.item]
    assert logged.count("val/samples/_type") == 2  # a W&B table at each validation, with the same rows
    tables = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/files/media/table/val/samples_*.table.json"))
    last = json.loads(tables[-1].read_text())
    assert len(tables) == 2 and last["columns"] == ["step", "prompt", "continuation"]
    assert [row[1:] for row in last["data"]] == [[s["prompt"], s["continuation"]] for s in samples[3:]]


def test_whole_word_mlm_and_fixed_validation_masking(corpus_file, corpus_tokenizers, tmp_path):
    cli = LitFinetuneCLI(args=["fit", *pretrain_args("mlm.yaml", corpus_file, tmp_path / "run",
                                                     "--model.init_args.model_name_or_path=tiny:bert",
                                                     "--model.init_args.whole_word_mask=true",
                                                     "--trainer.max_epochs=1", tokenizers=corpus_tokenizers)])
    first = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    second = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert first["val/loss"] == second["val/loss"]  # the same masking at every validation


def test_mlm_settings_are_checked():
    with pytest.raises(ConfigError, match=r"model.mlm_probability: got 1.5"):
        MaskedLMModule("tiny:bert", mlm_probability=1.5)
    with pytest.raises(ConfigError, match=r"model.mask_replace_prob \+ model.random_replace_prob: got 0.8 \+ 0.3"):
        MaskedLMModule("tiny:bert", random_replace_prob=0.3)


def test_mlm_export_is_the_starting_point_of_fine_tuning(corpus_file, corpus_tokenizers, tmp_path, tiny_data):
    LitFinetuneCLI(args=["fit", *pretrain_args("mlm.yaml", corpus_file, tmp_path / "pretrain",
                                               "--model.init_args.model_name_or_path=tiny:bert",
                                               tokenizers=corpus_tokenizers)])
    export = tmp_path / "pretrain" / "export"
    pretrained = AutoModelForMaskedLM.from_pretrained(export)
    classifier = backbones.load_model(str(export), AutoModelForSequenceClassification, num_labels=2)
    assert torch.equal(classifier.bert.encoder.layer[1].output.dense.weight,
                       pretrained.bert.encoder.layer[1].output.dense.weight)  # the encoder came from pretraining
    cli = LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / "finetune",
                                                 f"--model.init_args.model_name_or_path={export}")])
    assert cli.trainer.state.finished and len(logged_values(tmp_path / "finetune", "val/acc")) == 2
    tuned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "finetune" / "export")
    assert tuned.config.id2label == {0: "bad", 1: "good"}


def test_electra_trains_and_exports_the_discriminator_for_fine_tuning(corpus_file, corpus_tokenizers, tmp_path):
    cli = LitFinetuneCLI(args=["fit", *pretrain_args("electra.yaml", corpus_file, tmp_path / "run",
                                                     tokenizers=corpus_tokenizers)])
    module = cli.model
    shared = module.model.electra.embeddings.word_embeddings.weight
    assert module.generator.electra.embeddings.word_embeddings.weight is shared
    assert module.generator.get_output_embeddings().weight is shared  # generator head tied to the shared table
    assert module.generator.config.hidden_size * 4 == module.model.config.hidden_size  # generator_size 0.25
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in module.generator.parameters()} <= optimized and id(shared) in optimized
    run = tmp_path / "run"
    losses = logged_values(run, "val/loss")
    assert len(losses) == 3 and losses[-1] < losses[0]
    for key in ("val/disc_acc", "val/replaced_precision", "val/replaced_recall", "val/generator_acc"):
        values = logged_values(run, key)
        assert len(values) == 3 and all(0 <= v <= 1 for v in values), key
    for part in ("val/generator_loss", "val/discriminator_loss"):  # both parts learn, not only their sum
        assert logged_values(run, part)[-1] < logged_values(run, part)[0], part
    classifier = AutoModelForSequenceClassification.from_pretrained(run / "export", num_labels=2)
    best = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)["state_dict"]
    assert torch.equal(classifier.electra.embeddings.word_embeddings.weight,  # the export is the best checkpoint's
                       best["model.electra.embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("kind, config, model", [("wordpiece", "mlm.yaml", "tiny:bert"),
                                                 ("bpe", "clm.yaml", "tiny:gpt2")])
def test_pretraining_from_scratch_with_a_tokenizer_trained_on_the_corpus(kind, config, model, corpus_file, tmp_path):
    tokenizer_dir = tmp_path / f"tokenizer-{kind}"
    commands.main(["tokenizer", f"--train_file={corpus_file}", f"--output_dir={tokenizer_dir}", f"--kind={kind}",
                   "--vocab_size=300"])  # the command, in this process
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tokenizer) <= 300 and tokenizer.is_fast
    assert (tokenizer.mask_token is not None) == (kind == "wordpiece")
    cli = LitFinetuneCLI(args=["fit", *pretrain_args(config, corpus_file, tmp_path / "run",
                                                     f"--model.init_args.model_name_or_path={model}",
                                                     f"--model.init_args.tokenizer_name_or_path={tokenizer_dir}")])
    assert cli.model.model.config.vocab_size == len(tokenizer) == len(cli.datamodule.tokenizer)
    perplexity = logged_values(tmp_path / "run", "val/perplexity")
    assert perplexity[-1] < perplexity[0] < len(tokenizer) * 2
    exported = AutoTokenizer.from_pretrained(tmp_path / "run" / "export")
    assert exported.get_vocab() == tokenizer.get_vocab()  # the export carries the trained tokenizer


def test_size_presets_build_from_config():
    small = backbones.load_model("small:bert", AutoModelForMaskedLM)
    assert (small.config.hidden_size, small.config.num_hidden_layers) == (256, 4)
    with pytest.raises(ConfigError, match=r"'huge:bert' is not a local folder, a hub id \(owner/name\) or a size "
                                          r"preset \(tiny\|small\|base:<model_type>"):
        backbones.resolve("huge:bert")


@pytest.mark.parametrize("backbone", ["tiny:bert", "minilm", "tiny:t5"])
def test_causal_lm_refuses_encoders_before_reading_weights(backbone):
    module = CausalLMModule(model_name_or_path=backbone)
    with pytest.raises(ConfigError, match="causal language modeling needs a decoder-only model"):
        module.configure_model()
    assert module.model is None


@pytest.mark.parametrize("config, extra", [("mlm.yaml", ("--model.init_args.model_name_or_path=tiny:bert",
                                                         "--model.init_args.whole_word_mask=true")),
                                           ("electra.yaml", ())])
def test_pretraining_resumed_mid_epoch_draws_the_same_masks_and_ends_where_an_uninterrupted_run_does(
        config, extra, corpus_file, corpus_tokenizers, tmp_path):
    """Masks, random replacements and ELECTRA's sampled tokens come from the per-step seed: a run preempted
    mid-epoch (SIGTERM, in this process) and resumed by the same command ends with the uninterrupted run's weights
    and metrics, the interrupted epoch's training aggregates included. One epoch of 10 steps, validated twice."""
    def callbacks(folder, signals=None):
        listed = [{"class_path": "lit_finetune.callbacks.RunCheckpoint",
                   "init_args": {"monitor": "val/loss", "mode": "min", "save_top_k": 1}}]
        if signals:
            listed.append({"class_path": "faults.SignalAt", "init_args": {"signals": signals,
                                                                          "state_dir": str(folder)}})
        path = folder / "callbacks.yaml"
        path.write_text(json.dumps({"trainer": {"callbacks": listed}}))
        return f"--config={path}"

    def run(run_dir, *more):
        return pretrain_args(config, corpus_file, run_dir, *extra, "--trainer.max_epochs=1", "--trainer.max_steps=10",
                             "--trainer.val_check_interval=4", "--trainer.enable_progress_bar=false", *more,
                             tokenizers=corpus_tokenizers)

    reference = tmp_path / "reference"
    reference.mkdir()
    LitFinetuneCLI(args=["fit", *run(reference, callbacks(reference))])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    args = ["fit", *run(resumed, callbacks(resumed, {5: "SIGTERM"}))]
    with pytest.raises(SystemExit) as stopped:
        LitFinetuneCLI(args=args)
    assert stopped.value.code == 143
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    LitFinetuneCLI(args=args)
    assert json.loads((resumed / "run.json").read_text())["status"] == "finished"
    rows, reference_rows = metrics_rows(resumed), metrics_rows(reference)
    assert len([r for r in reference_rows if r.get("train/loss_epoch")]) == 1 and rows == reference_rows
    ours = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    theirs = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("config, pinned", [("mlm.yaml", PINNED_MLM), ("electra.yaml", PINNED_ELECTRA)])
def test_pinned_losses(config, pinned, corpus_file, tmp_path):
    args = pretrain_args(config, corpus_file, tmp_path / "unused", "--model.init_args.model_name_or_path=tiny:"
                         + ("bert" if config == "mlm.yaml" else "electra"))
    assert_pinned(first_losses(tmp_path / "run", *args), pinned)
