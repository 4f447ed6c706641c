"""QuestionAnsweringModule: span search on hand-made logits, SQuAD EM/F1, and a tiny model trained, predicting and
exported through the real CLI (in-process, then the shipped config in a subprocess)."""

import json
import math
import random

import pytest
import torch
from helpers import REPO, assert_pinned, first_losses, logged_values, metrics_rows
from torchmetrics.text import SQuAD
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from lit_finetune import commands
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.tasks.question_answering import answers_by_id, best_spans, squad_inputs

CONFIG = REPO / "configs" / "qa" / "squad.yaml"
COLOURS = "red blue green gold black white pink gray".split()
FILLER = "the a river city old new song film game team".split()


PINNED = [3.253285, 3.152085, 3.211803, 3.099508]  # first four step losses; see helpers.assert_pinned


def synthetic_squad(path, n: int, seed: int):
    """A task a 2-layer model learns in a few steps: the answer is the word after 'answer:'."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        before, after = (" ".join(rng.choices(FILLER, k=rng.randint(1, 10))) for _ in range(2))
        answer = rng.choice(COLOURS)
        context = f"{before} answer: {answer} {after}"
        paragraphs.append({"context": context, "qas": [{"id": f"s{seed}-{i}", "question": "What is the answer?",
                           "answers": [{"text": answer, "answer_start": len(before) + 9}]}]})
    path.write_text(json.dumps({"data": [{"title": "synthetic", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture
def squad_files(tmp_path) -> dict:
    return {"train": synthetic_squad(tmp_path / "train.json", 64, 0),
            "validation": synthetic_squad(tmp_path / "dev.json", 24, 1)}


def tiny_qa_args(files: dict, run_dir, *extra: str) -> list[str]:
    """The shipped SQuAD config on a tiny random model, the synthetic files and short windows."""
    return ["--config", str(CONFIG), "--model.init_args.model_name_or_path=tiny:bert",
            "--model.init_args.learning_rate=3e-3", "--model.init_args.warmup=0",
            f"--trainer.default_root_dir={run_dir}", "--data.init_args.dataset_name=null",
            *[f"--data.init_args.{split}_file={path}" for split, path in files.items()],
            "--data.init_args.max_length=48", "--data.init_args.doc_stride=8",
            "--data.init_args.max_question_length=16", "--data.init_args.batch_size=8", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false", *extra]


# --------------------------------------------------------------------------------------------------------------- #
# Choosing answers


def test_best_span_keeps_to_the_context_n_best_and_max_length():
    # Tokens: 0 [CLS], 1-2 question, 3 [SEP], 4-9 context, 10 [SEP], 11 padding.
    offsets = torch.tensor([[[-1, -1]] * 4 + [[c, c + 1] for c in range(0, 12, 2)] + [[-1, -1]] * 2])
    start = torch.full((1, 12), -5.0)
    end = torch.full((1, 12), -5.0)
    start[0, [1, 11, 7, 5]] = torch.tensor([9.0, 9.0, 4.0, 2.0])  # question and padding starts never count
    end[0, [2, 6, 9]] = torch.tensor([9.0, 3.0, 5.0])
    score, s, e, null = best_spans(start, end, offsets, n_best=20, max_answer_length=30)
    assert (s.item(), e.item(), score.item(), null.item()) == (7, 9, 9.0, -10.0)
    score, s, e, _ = best_spans(start, end, offsets, n_best=20, max_answer_length=2)
    assert (s.item(), e.item(), score.item()) == (5, 6, 5.0)  # 7..9 is 3 tokens
    score, s, e, _ = best_spans(start, end, offsets, n_best=20, max_answer_length=1)
    assert (s.item(), e.item(), score.item()) == (9, 9, 0.0)
    score, *_ = best_spans(start, end, offsets, n_best=1, max_answer_length=2)
    assert score.item() == -math.inf  # only the top start (7) and end (9) are tried: too long
    score, s, e, _ = best_spans(start, end, offsets, n_best=2, max_answer_length=2)
    assert (s.item(), e.item()) == (5, 6)


def test_answers_merge_windows_and_squad2_null_answers():
    rows = [{"id": "a", "score": 3.0, "text": "Paris", "null_score": 2.0},
            {"id": "a", "score": 5.0, "text": "London", "null_score": 9.0},
            {"id": "b", "score": 1.0, "text": "blue", "null_score": 4.0},
            {"id": "c", "score": -math.inf, "text": "", "null_score": 0.0}]
    assert answers_by_id(rows, allow_no_answer=False) == {"a": "London", "b": "blue", "c": ""}
    # SQuAD 2.0: the lowest null score of a question's windows against its best span.
    assert answers_by_id(rows, allow_no_answer=True) == {"a": "London", "b": "", "c": ""}
    assert answers_by_id(rows, allow_no_answer=True, null_score_diff_threshold=3.0)["b"] == "blue"


def test_exact_match_and_f1_as_the_official_script():
    predicted = {"1": "the Cat", "2": "big red ball", "3": "", "4": "a dog"}
    gold = {"1": ["cat"], "2": ["red ball game", "ball"], "3": [], "4": ["dog", "cat"]}
    metric = SQuAD()
    metric.update(*squad_inputs(predicted, gold))
    scores = metric.compute()
    # EM: 1 (articles, case), 0, 1 (no answer for no answer), 1 (best gold); F1 of 2: 2 * (2/3 * 2/3) / (4/3).
    assert scores["exact_match"].item() == pytest.approx(75.0)
    assert scores["f1"].item() == pytest.approx(100 * (3 + 2 / 3) / 4)


# --------------------------------------------------------------------------------------------------------------- #
# Training, predicting and exporting through the CLI


def test_fit_learns_predict_writes_squad_json_and_export_answers(tmp_path, squad_files):
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_qa_args(squad_files, run_dir, "--trainer.max_epochs=3",
                                              "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger")])
    losses = logged_values(run_dir, "train/loss_epoch")
    assert len(losses) >= 2 and losses[-1] < 0.5 * losses[0]
    assert logged_values(run_dir, "val/em")[-1] >= 90 and logged_values(run_dir, "val/f1_best")[-1] >= 90
    assert {"val/em", "val/f1", "val/f1_best", "val/loss", "train/loss_epoch"} <= set(metrics_rows(run_dir)[0])

    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    predict_dir = tmp_path / "predict"
    LitFinetuneCLI(args=["predict", *tiny_qa_args({"predict": squad_files["validation"]}, predict_dir,
                                                  "--trainer.logger=false"), "--ckpt_path", str(best)])
    answers = json.loads((predict_dir / "predictions.json").read_text())
    gold = json.loads(squad_files["validation"].read_text())["data"][0]["paragraphs"]
    expected = {p["qas"][0]["id"]: p["qas"][0]["answers"][0]["text"] for p in gold}
    assert list(answers) == list(expected)  # SQuAD's format: {id: answer}, in file order
    assert sum(answers[i] == expected[i] for i in expected) >= 0.9 * len(expected)

    # transformers 5 has no question-answering pipeline: load the export as its users would, and take the argmax span.
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    model = AutoModelForQuestionAnswering.from_pretrained(run_dir / "export")
    context = "the old city answer: pink river song"
    inputs = tokenizer("What is the answer?", context, return_offsets_mapping=True, return_tensors="pt")
    offsets = inputs.pop("offset_mapping")[0]
    with torch.no_grad():
        out = model(**inputs)
    assert context[offsets[out.start_logits.argmax(), 0]:offsets[out.end_logits.argmax(), 1]] == "pink"


def test_shipped_config_trains_through_the_cli(tmp_path, squad_files, capsys):
    """The user's path: `lit-finetune fit --config configs/qa/squad.yaml` (the entry point, in this process;
    tests/test_cli.py runs it as a subprocess), best checkpoint on val/f1 exported (W&B off to save its start-up)."""
    run_dir = tmp_path / "run"
    commands.main(["fit", *tiny_qa_args(squad_files, run_dir, "--trainer.max_epochs=1",
                                        "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger")])
    stdout = capsys.readouterr().out
    assert "Validation: val/em=" in stdout and "val/f1_best=" in stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["best"]["metric"] == "val/f1"
    assert (run_dir / "export" / "model.safetensors").is_file()


def test_pinned_losses(tmp_path, squad_files):
    assert_pinned(first_losses(tmp_path / "run", *tiny_qa_args(squad_files, tmp_path / "unused")), PINNED)
