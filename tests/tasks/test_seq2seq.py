"""Seq2SeqModule on tiny T5 / BART models: learning, generation scores, samples, predict, export, and the shipped
config through the real CLI."""

import json
import random

import lightning.pytorch as pl
import pytest
import sacrebleu
import torch
import wandb
from helpers import REPO, assert_pinned, first_losses, logged_values, metrics_rows
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from lit_finetune import commands
from lit_finetune.callbacks import PredictionWriter
from lit_finetune.data.seq2seq import Seq2SeqDataModule
from lit_finetune.data.tokenizer_training import train_tokenizer
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.generation_metrics import GenerationScores, corpus_bleu, rouge
from lit_finetune.tasks.seq2seq import Seq2SeqModule

WORDS = "red blue green cat dog house tree car sun moon".split()
CONFIG = REPO / "configs" / "seq2seq" / "multi30k_en_de.yaml"
PINNED = [4.550548, 4.431538, 4.339731, 4.087313]  # first four step losses; see helpers.assert_pinned


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(n)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread: two spend their time synchronising, far more so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def copy_task(tmp_path_factory) -> dict:
    """A copy task (target = source) in parallel gzip-free text files, and a tokenizer of its few words: a tiny model
    learns it in a few dozen steps."""
    folder = tmp_path_factory.mktemp("copy")
    files = {}
    for split, n, seed in (("train", 96, 0), ("val", 16, 1)):
        text = "".join(line + "\n" for line in sentences(n, seed))
        for lang in ("en", "de"):
            (folder / f"{split}.{lang}").write_text(text)
        files[split] = str(folder / f"{split}.{{lang}}")
    (folder / "corpus.txt").write_text((folder / "train.en").read_text())
    tokenizer = train_tokenizer(str(folder / "corpus.txt"), str(folder / "tokenizer"), vocab_size=100)
    return {"files": files, "tokenizer": str(tokenizer), "folder": folder}


def modules(copy_task, model_type: str, **model_kwargs) -> tuple[Seq2SeqModule, Seq2SeqDataModule]:
    backbone = dict(model_name_or_path=f"tiny:{model_type}", tokenizer_name_or_path=copy_task["tokenizer"])
    data = Seq2SeqDataModule(**backbone, train_file=copy_task["files"]["train"],
                             validation_file=copy_task["files"]["val"], source_lang="en", target_lang="de",
                             batch_size=8)
    model = Seq2SeqModule(**backbone, learning_rate=1e-2, warmup=0, max_new_tokens=8, **model_kwargs)
    return model, data


def trainer(run_dir, **kwargs) -> pl.Trainer:
    return pl.Trainer(default_root_dir=run_dir, logger=CSVLogger(run_dir, name="", version=""), accelerator="cpu",
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, log_every_n_steps=1, **kwargs)


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_learns_scores_generations_predicts_and_exports(model_type, copy_task, tmp_path):
    model, data = modules(copy_task, model_type, num_samples=3)
    run_dir = tmp_path / "run"
    fit = trainer(run_dir, max_epochs=2, callbacks=[PredictionWriter()])
    fit.fit(model, datamodule=data)
    loss = logged_values(run_dir, "train/loss_step")
    assert len(loss) == 24 and sum(loss[-3:]) < 0.7 * sum(loss[:3])
    columns = set(metrics_rows(run_dir)[0])
    assert {"val/loss", "val/bleu", "val/rouge1", "val/rouge2", "val/rougeL", "val/bleu_best"} <= columns
    bleu = logged_values(run_dir, "val/bleu")
    assert len(bleu) == 2 and all(0 <= b <= 100 for b in bleu)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert [s["step"] for s in samples] == [12] * 3 + [24] * 3
    assert set(samples[0]) == {"step", "id", "source", "reference", "prediction"}

    fit.predict(model, datamodule=data)
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    assert [r["id"] for r in rows] == [str(i) for i in range(16)] and set(rows[0]) == {"id", "source", "prediction"}
    assert [r["source"] for r in rows] == sentences(16, 1)

    # The export is a plain Hugging Face folder (transformers 5 has no text2text / translation pipeline any more).
    export = model.export(tmp_path / "export")
    hf_model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(export), AutoTokenizer.from_pretrained(export)
    inputs = tokenizer([r["source"] for r in rows[:4]], return_tensors="pt", padding=True, return_token_type_ids=False)
    generated = tokenizer.batch_decode(hf_model.generate(**inputs, max_new_tokens=8), skip_special_tokens=True)
    assert generated == [r["prediction"] for r in rows[:4]]


def test_encoder_only_backbone_fails_before_training(copy_task, tmp_path):
    model, data = modules(copy_task, "bert")
    fit = trainer(tmp_path, max_steps=2)
    with pytest.raises(ConfigError, match=r"'tiny:bert' is an encoder-only or decoder-only model \(bert\); "
                                          r"sequence-to-sequence needs an encoder-decoder model such as"):
        fit.fit(model, datamodule=data)
    assert fit.global_step == 0
    with pytest.raises(ConfigError, match=r"'minilm' is an encoder-only"):
        Seq2SeqModule(model_name_or_path="minilm").require_encoder_decoder()


def test_label_smoothing_is_cross_entropy_over_the_labels(copy_task):
    plain, data = modules(copy_task, "t5")
    plain.configure_model()
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    smoothed = Seq2SeqModule(model_name_or_path="tiny:t5", tokenizer_name_or_path=copy_task["tokenizer"],
                             label_smoothing=0.1)
    smoothed.configure_model()
    smoothed.model.load_state_dict(plain.model.state_dict())
    plain.eval(), smoothed.eval()
    with torch.no_grad():
        logits = plain(batch).logits
        mask = batch["labels"] != -100
        expected = torch.nn.functional.cross_entropy(logits[mask], batch["labels"][mask], label_smoothing=0.1)
        assert plain.loss(batch) == pytest.approx(float(torch.nn.functional.cross_entropy(logits[mask],
                                                                                         batch["labels"][mask])))
        assert smoothed.loss(batch) == pytest.approx(float(expected))


def test_generation_scores_accumulate_to_sacrebleu_and_rouge_score():
    predictions = ["the cat sat on the mat", "a dog runs", "hello world", "completely different"]
    references = ["the cat sat on a mat", "a dog runs fast", "hello world", "nothing in common here"]
    metric = GenerationScores()
    metric.update(predictions[:3], references[:3])
    metric.update(predictions[3:], references[3:])
    scores = {k: float(v) for k, v in metric.compute().items()}
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert scores["bleu"] == pytest.approx(corpus_bleu(predictions, references)) and 0 < scores["bleu"] < 100
    for name, value in rouge(predictions, references).items():
        assert scores[name] == pytest.approx(value, rel=1e-5)
    assert scores["rouge1"] > scores["rouge2"] > 0


@pytest.mark.slow
def test_shipped_config_trains_on_parallel_files_through_the_cli(copy_task, tmp_path):
    run_dir = tmp_path / "run"
    files = copy_task["files"]
    commands.main(["fit", "--config", str(CONFIG), f"--trainer.default_root_dir={run_dir}",  # in this process
                   "--model.init_args.model_name_or_path=tiny:t5",
                   f"--model.init_args.tokenizer_name_or_path={copy_task['tokenizer']}",
                   "--data.init_args.dataset_name=null", f"--data.init_args.train_file={files['train']}",
                   f"--data.init_args.validation_file={files['val']}", "--data.init_args.batch_size=16",
                   "--data.init_args.max_train_examples=32", "--model.init_args.max_new_tokens=8",
                   "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])
    wandb.finish()  # its offline files written whole, as when the process ends
    assert len(logged_values(run_dir, "val/bleu")) == 1 and logged_values(run_dir, "val/bleu_best")
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    assert AutoModelForSeq2SeqLM.from_pretrained(run_dir / "export").config.model_type == "t5"
    # The generated samples, as a table of the (offline) W&B run: a row per example, as in samples.jsonl.
    [table] = (run_dir / "wandb").glob("offline-run-*/files/media/table/val/samples_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"] == ["step", "id", "source", "reference", "prediction"] and len(table["data"]) == 4
    sources = sentences(16, 1)  # the first validation batch's examples (the longest come first)
    assert len({row[1] for row in table["data"]}) == 4
    assert [row[2] for row in table["data"]] == [sources[int(row[1])] for row in table["data"]]


def test_pinned_losses(copy_task, tmp_path):
    files = copy_task["files"]
    args = ["--config", str(CONFIG), "--model.init_args.model_name_or_path=tiny:t5",
            f"--model.init_args.tokenizer_name_or_path={copy_task['tokenizer']}", "--data.init_args.dataset_name=null",
            f"--data.init_args.train_file={files['train']}", f"--data.init_args.validation_file={files['val']}",
            "--data.init_args.batch_size=8"]
    assert_pinned(first_losses(tmp_path / "run", *args), PINNED)
