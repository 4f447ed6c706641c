"""MultipleChoiceModule through the shipped SWAG config (in-process CLI): learning, accuracy, predict, export."""

import json
import random

import pytest
import torch
from helpers import REPO, logged_values, metrics_rows, one_line_error, write_rows
from transformers import AutoModelForMultipleChoice, AutoTokenizer

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.tasks.multiple_choice import MultipleChoiceModule

SWAG = REPO / "configs" / "multiple_choice" / "swag.yaml"


def story_rows(n: int, seed: int, prefix: str) -> list[dict]:
    """SWAG's columns; a 2-layer model learns in a few steps that the right ending is the one that 'fits'."""
    rng = random.Random(seed)
    words = ["the", "man", "walks", "a", "dog", "runs", "then", "slowly", "away", "home"]
    rows = []
    for i in range(n):
        label = rng.randrange(4)
        endings = {f"ending{k}": " ".join(rng.choices(words, k=rng.randint(1, 4))) + (" fits" if k == label else "")
                   for k in range(4)}
        rows.append({"id": f"{prefix}-{i}", "sent1": " ".join(rng.choices(words, k=6)), "sent2": "Then he",
                     **endings, "label": label})
    return rows


def swag_args(files: dict, run_dir, *extra: str) -> list[str]:
    """The shipped SWAG recipe switched to a tiny random model and local files (as its header comment says)."""
    return ["--config", str(SWAG), "--model.init_args.model_name_or_path=tiny:bert",
            "--model.init_args.learning_rate=3e-3", "--model.init_args.warmup=0",
            "--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null",
            *(f"--data.init_args.{split}_file={path}" for split, path in files.items()),
            "--data.init_args.id_column=id", "--data.init_args.batch_size=8", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false",
            "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger", f"--trainer.default_root_dir={run_dir}",
            *extra]


def test_fit_learns_then_predict_and_export_agree(tmp_path):
    files = {split: write_rows(tmp_path / "data" / f"{split}.csv", story_rows(n, seed, split))
             for split, n, seed in (("train", 64, 0), ("validation", 32, 1), ("test", 16, 2))}
    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", *swag_args(files, run_dir, "--trainer.max_epochs=4")])
    train_loss = logged_values(run_dir, "train/loss_epoch")
    assert len(train_loss) == 4 and train_loss[-1] < 0.7 * train_loss[0]  # chance is ln 4 = 1.39
    assert logged_values(run_dir, "val/acc")[-1] >= 0.9
    assert {"val/acc_best", "val/loss", "train/acc"} <= set(metrics_rows(run_dir)[0])
    assert isinstance(cli.model, MultipleChoiceModule) and cli.model.hparams.num_choices == 4
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(best))
    assert tested[0]["test/acc"] >= 0.9

    predict_dir = tmp_path / "predict"
    LitFinetuneCLI(args=["predict", *swag_args(files, predict_dir), "--ckpt_path", str(best)])
    rows = [json.loads(line) for line in (predict_dir / "predictions.jsonl").open()]
    truth = story_rows(16, 2, "test")
    assert [r["id"] for r in rows] == [t["id"] for t in truth]
    for row in rows:
        probs = [row["probabilities"][str(k)] for k in range(4)]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and row["label"] == max(range(4), key=probs.__getitem__)
    assert sum(r["label"] == t["label"] for r, t in zip(rows, truth)) >= 14

    # The export (the best checkpoint) scores choices with plain transformers: there is no multiple-choice pipeline.
    model = AutoModelForMultipleChoice.from_pretrained(run_dir / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    example = truth[0]
    endings = [f"{example['sent2']} {example[f'ending{k}']}" for k in range(4)]
    enc = tokenizer([example["sent1"]] * 4, endings, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits.softmax(-1)[0].tolist()
    assert probs == pytest.approx([rows[0]["probabilities"][str(k)] for k in range(4)], abs=1e-4)


def test_distillation_is_refused_in_one_line(capsys, tmp_path):
    """Multiple choice has no teacher: a config that names one stops at parsing, naming the key."""
    line = one_line_error(capsys, ["fit", *swag_args({"train": tmp_path / "none.csv"}, tmp_path / "run"),
                                   "--model.init_args.distillation.teacher=some/teacher"])
    assert "distillation" in line
    assert not (tmp_path / "run").exists()


def test_mean_pooled_choices_export_scores_alike(tmp_path):
    from lit_finetune import heads

    files = {split: write_rows(tmp_path / "data" / f"{split}.csv", story_rows(n, seed, split))
             for split, n, seed in (("train", 32, 0), ("validation", 16, 1))}
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *swag_args(files, run_dir, "--trainer.max_epochs=2", "--model.init_args.pooling=mean")])
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    module = MultipleChoiceModule.load_checkpoint(best).eval()
    assert module.hparams.pooling == "mean" and isinstance(module.model, heads.PooledForMultipleChoice)
    model = AutoModelForMultipleChoice.from_pretrained(run_dir / "export").eval()
    assert isinstance(model, heads.PooledForMultipleChoice) and model.config.pooling == "mean"
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    example = story_rows(2, 5, "x")[0]
    enc = tokenizer([example["sent1"]] * 4, [f"{example['sent2']} {example[f'ending{k}']}" for k in range(4)],
                    padding=True, return_tensors="pt")
    batch = {k: v.unsqueeze(0) for k, v in enc.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, module(batch), atol=1e-5, rtol=1e-4)
