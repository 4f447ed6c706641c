"""Extractive question answering (SQuAD v1.1 / v2.0) on a Hugging Face span head: answers are spans of the context."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torchmetrics.text import SQuAD
from transformers import AutoModelForQuestionAnswering, PreTrainedModel

from lit_finetune.bounds import PositiveInt
from lit_finetune.data.base import in_dataset_order
from lit_finetune.distributed import gather_objects
from lit_finetune.io import write_text
from lit_finetune.run_folder import RunFolder
from lit_finetune.tasks.base import PerSplit, TaskModule

SPLITS = ("val", "test")  # the splits scored with exact match and F1 (training logs its loss only)


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: torch.Tensor, n_best: int,
               max_answer_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per window: the best answer span among the ``n_best`` most likely context starts and ends (end not before
    start, at most ``max_answer_length`` tokens), as (score, start token, end token), and the null score (the first
    token's start + end logits, SQuAD 2.0's "no answer"). Windows without a valid span score -inf."""
    in_context = offsets[..., 0] >= 0
    k = min(n_best, start_logits.shape[1])
    start_score, start = start_logits.masked_fill(~in_context, -math.inf).topk(k, dim=1)
    end_score, end = end_logits.masked_fill(~in_context, -math.inf).topk(k, dim=1)
    length = end[:, None, :] - start[:, :, None] + 1
    pair = (start_score[:, :, None] + end_score[:, None, :]).masked_fill((length < 1) | (length > max_answer_length),
                                                                         -math.inf)
    score, flat = pair.flatten(1).max(dim=1)
    rows = torch.arange(len(flat), device=flat.device)
    return score, start[rows, flat // k], end[rows, flat % k], start_logits[:, 0] + end_logits[:, 0]


def window_candidates(batch: dict, start_logits: torch.Tensor, end_logits: torch.Tensor, n_best: int,
                      max_answer_length: int) -> list[dict]:
    """One row per window: question id, best span text and score, null score (and the gold answers, if any)."""
    offsets = batch["offset_mapping"]
    score, start, end, null = best_spans(start_logits.float(), end_logits.float(), offsets, n_best, max_answer_length)
    windows = torch.arange(len(start), device=start.device)
    first, last = offsets[windows, start, 0].tolist(), offsets[windows, end, 1].tolist()  # character span
    score, null = score.tolist(), null.tolist()
    rows = []
    for i, example_id in enumerate(batch["example_id"]):
        text = batch["context"][i][first[i]:last[i]] if score[i] > -math.inf else ""
        row = {"id": example_id, "score": score[i], "text": text, "null_score": null[i]}
        if "answers" in batch:
            row["answers"] = batch["answers"][i]
        rows.append(row)
    return rows


def answers_by_id(rows: list[dict], allow_no_answer: bool, null_score_diff_threshold: float = 0.0) -> dict[str, str]:
    """Each question's answer: its windows' best span; with SQuAD 2.0, "" (no answer) when the lowest null score
    beats that span's score by more than the threshold. Ids keep the order in which they first appear."""
    best: dict[str, dict] = {}
    for row in rows:
        b = best.setdefault(row["id"], {"score": -math.inf, "text": "", "null_score": math.inf})
        if row["score"] > b["score"]:
            b["score"], b["text"] = row["score"], row["text"]
        b["null_score"] = min(b["null_score"], row["null_score"])
    return {example_id: "" if allow_no_answer and b["null_score"] - b["score"] > null_score_diff_threshold
            else b["text"] for example_id, b in best.items()}


def squad_inputs(predicted: dict[str, str], gold: dict[str, list[str]]) -> tuple[list[dict], list[dict]]:
    """torchmetrics' SQuAD arguments for the predicted questions; one without gold answers (SQuAD 2.0) is scored
    against "", as the official v2 script does."""
    texts = {example_id: gold[example_id] or [""] for example_id in predicted}
    return ([{"id": i, "prediction_text": text} for i, text in predicted.items()],
            [{"id": i, "answers": {"text": t, "answer_start": [0] * len(t)}} for i, t in texts.items()])


class QuestionAnsweringModule(TaskModule):
    """Extractive question answering on ``AutoModelForQuestionAnswering`` (SQuAD EM / F1).

    Fine-tunes ``AutoModelForQuestionAnswering``; logs ``train/loss``, ``val/loss``, ``val/em``, ``val/f1``,
    ``val/f1_best`` (and ``test/...``). EM and F1 are the official SQuAD script's, on a 0-100 scale: answers
    normalized (lower case, no punctuation, no a/an/the, single spaces), best over the gold answers.

    Features: windows of long contexts merged per question; n-best start/end search limited to the context and to
    ``max_answer_length`` tokens; SQuAD 2.0 null answers (``data.version_2_with_negative``) with a score threshold;
    correct under DDP (the windows' candidates are gathered before answers are chosen); ``predict`` with
    QuestionAnsweringPredictionWriter writes SQuAD's ``{id: answer}`` prediction JSON.
    """

    best_mode = "max"  # F1

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        n_best: PositiveInt = 20,
        max_answer_length: PositiveInt = 30,
        null_score_diff_threshold: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone to fine-tune (see TaskModule).
            n_best: Most likely start and end tokens of each window combined into candidate answers.
            max_answer_length: Longest answer, in tokens.
            null_score_diff_threshold: SQuAD 2.0: answer nothing when the null score beats the best span's score
                by more than this (tune it on validation data).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.squad = PerSplit({split: SQuAD() for split in SPLITS})
        self.candidates: list[dict] = []  # per-window rows of the running evaluation epoch

    def build_model(self) -> PreTrainedModel:
        return self.load_backbone(AutoModelForQuestionAnswering)

    @property
    def allow_no_answer(self) -> bool:
        """SQuAD 2.0 data (the data module's ``version_2_with_negative``) may be answered with nothing."""
        return bool(getattr(getattr(self.datamodule, "hparams", None), "version_2_with_negative", False))

    def forward(self, batch: dict):
        labels = {k: batch[k] for k in ("start_positions", "end_positions") if k in batch}
        return self.model(**self.model_inputs(batch), **labels)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def evaluation_step(self, batch: dict, split: str) -> None:
        out = self(batch)
        if out.loss is not None:
            self.log(f"{split}/loss", out.loss, batch_size=len(batch["input_ids"]), sync_dist=True)
        self.candidates += window_candidates(batch, out.start_logits, out.end_logits, self.hparams.n_best,
                                             self.hparams.max_answer_length)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def all_rows(self, rows: list[dict]) -> list[dict]:
        """All processes' window rows: under DDP the windows of one question may be scored on different ranks."""
        return [row for part in gather_objects(rows, self.trainer.world_size) for row in part]

    def answers(self, rows: list[dict]) -> dict[str, str]:
        """``{id: answer}`` for every question of all processes' windows."""
        return answers_by_id(self.all_rows(rows), self.allow_no_answer,
                             self.hparams.null_score_diff_threshold)

    def log_scores(self, split: str) -> dict[str, torch.Tensor]:
        rows, self.candidates = self.all_rows(self.candidates), []
        predicted = answers_by_id(rows, self.allow_no_answer, self.hparams.null_score_diff_threshold)
        gold = {row["id"]: row["answers"] for row in rows}
        # Every rank holds every answer now: each scores its share, and the metric sums the shares.
        mine = sorted(predicted)[self.trainer.global_rank::self.trainer.world_size]
        metric = self.squad[split]
        metric.update(*squad_inputs({i: predicted[i] for i in mine}, gold))
        scores = metric.compute()
        metric.reset()
        values = {f"{split}/em": scores["exact_match"], f"{split}/f1": scores["f1"]}
        self.log_dict(values, prog_bar=split == "val")
        return values

    def on_validation_epoch_start(self) -> None:
        self.candidates = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self.log_best("f1", self.log_scores("val")["val/f1"])

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        out = self(batch)
        return window_candidates(batch, out.start_logits, out.end_logits, self.hparams.n_best,
                                 self.hparams.max_answer_length)


class QuestionAnsweringPredictionWriter(BasePredictionWriter):
    """Write `predict`'s answers as a SQuAD prediction JSON file.

    Writes ``predict``'s answers as SQuAD prediction JSON, ``{question id: answer text}`` ("" = no answer), the
    format the official evaluation script reads; one file, written by rank 0 from all processes' windows."""

    def __init__(self, output_file: str | None = None):
        """
        Args:
            output_file: Where to write. Default: predictions.json in the run folder.
        """
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        answers = pl_module.answers(in_dataset_order(predictions, batch_indices))  # questions in the data's order
        if not trainer.is_global_zero:
            return
        path = Path(self.output_file) if self.output_file else RunFolder.of(trainer).predictions("json")
        write_text(path, json.dumps(answers, ensure_ascii=False, indent=1) + "\n")
        print(f"Wrote {len(answers)} answers to {path}")
