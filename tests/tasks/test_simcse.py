"""SimCSE: unsupervised and supervised contrastive training, STS Spearman, and an export sentence-transformers loads."""

import random

import pytest
import torch
from helpers import REPO, assert_pinned, first_losses, logged_values, write_rows
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.data import SentenceEmbeddingDataModule
from lit_finetune.errors import ConfigError, DataError
from lit_finetune.tasks.pretraining.simcse import pool

ANIMALS, PLACES = "cat dog bird horse fish cow".split(), "park river house garden road field".split()


PINNED = [3.216727, 3.093339, 3.056410, 3.004836]  # first four step losses; see helpers.assert_pinned


@pytest.fixture
def sts_data(tmp_path):
    rng = random.Random(0)
    sentences = [f"the {rng.choice(ANIMALS)} walked to the {rng.choice(PLACES)} today" for _ in range(256)]
    (tmp_path / "sentences.txt").write_text("\n".join(sentences) + "\n")
    pairs = []
    for i in range(40):
        animal, place = rng.choice(ANIMALS), rng.choice(PLACES)
        other = rng.choice([a for a in ANIMALS if a != animal])
        pairs.append({"sentence1": f"the {animal} walked to the {place} today",
                      "sentence2": f"the {animal if i % 2 else other} walked to the {place} today",
                      "score": 5.0 if i % 2 else 1.0})
    write_rows(tmp_path / "sts.tsv", pairs)
    write_rows(tmp_path / "nli.csv", [{"text": s, "positive": s.replace("walked", "went"),
                                       "negative": s.replace("today", "never")} for s in sentences])
    return tmp_path


def simcse_args(data, run_dir, *extra):
    return ["--config", str(REPO / "configs" / "pretrain" / "simcse.yaml"), f"--trainer.default_root_dir={run_dir}",
            "--model.init_args.model_name_or_path=tiny:bert", "--model.init_args.pooling=mean",
            "--model.init_args.learning_rate=1e-3", "--data.init_args.dataset_name=null",
            "--data.init_args.validation_dataset=null", f"--data.init_args.validation_file={data / 'sts.tsv'}",
            "--data.init_args.batch_size=32", "--trainer.max_epochs=3", "--trainer.val_check_interval=1.0",
            "--trainer.accelerator=cpu", "--trainer.enable_model_summary=false", *extra]


def test_unsupervised_simcse_trains_and_exports_a_sentence_transformer(sts_data, tmp_path):
    run = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", *simcse_args(sts_data, run, f"--data.init_args.train_file={sts_data / 'sentences.txt'}")])
    losses = logged_values(run, "train/loss_epoch")
    assert len(losses) == 3 and losses[-1] < losses[0]
    spearman, pearson = logged_values(run, "val/spearman"), logged_values(run, "val/pearson")
    assert len(spearman) == len(pearson) == 3 and all(-1 <= s <= 1 for s in spearman + pearson)
    export = run / "export"
    encoder = SentenceTransformer(str(export), device="cpu")
    sentences = ["the cat walked to the park today", "a dog"]
    ours = AutoModel.from_pretrained(export).eval()
    batch = AutoTokenizer.from_pretrained(export)(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = pool(ours(**batch).last_hidden_state, batch["attention_mask"], "mean")
    assert torch.allclose(torch.as_tensor(encoder.encode(sentences)), expected, atol=1e-5)
    assert cli.model.hparams.pooling == "mean"


def test_supervised_simcse_with_hard_negatives(sts_data, tmp_path):
    run = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *simcse_args(sts_data, run, f"--data.init_args.train_file={sts_data / 'nli.csv'}",
                                             "--data.init_args.positive_column=positive",
                                             "--data.init_args.negative_column=negative")])
    losses = logged_values(run, "train/loss_epoch")
    assert len(losses) == 3 and losses[-1] < losses[0]
    # With hard negatives each sentence picks among 2 x batch candidates: chance accuracy is 1/64.
    assert logged_values(run, "train/contrastive_acc")[-1] > 0.5


def test_bad_sentence_data_is_named(sts_data, tmp_path):
    write_rows(tmp_path / "bad.tsv", [{"sentence1": "a", "sentence2": "b", "score": "high"}])
    dm = SentenceEmbeddingDataModule("tiny:bert", train_file=str(sts_data / "sentences.txt"),
                                     validation_file=str(tmp_path / "bad.tsv"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"bad.tsv, row 1 \(line 2\): column 'score' is 'high'; expected a number"):
        dm.prepare_data()
    with pytest.raises(ConfigError, match=r"data.negative_column: hard negatives need data.positive_column"):
        SentenceEmbeddingDataModule("tiny:bert", train_file="x.csv", negative_column="neg")


def test_pinned_losses(tmp_path, sts_data):
    args = simcse_args(sts_data, tmp_path / "unused", f"--data.init_args.train_file={sts_data / 'sentences.txt'}")
    assert_pinned(first_losses(tmp_path / "run", *args), PINNED)
