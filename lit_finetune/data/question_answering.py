"""Extractive question answering data (SQuAD v1.1 / v2.0): questions over contexts split into overlapping windows.

Batch contract (what the task module receives): ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
tokenizer makes them), one row per window ("feature") of a question's context, question first. Labeled splits add
``start_positions`` / ``end_positions`` (token indices of the first gold answer; 0, the first token, when the answer
is not in this window or the question has none). Evaluation and predict batches add ``example_id`` (a list of question
ids, repeated for each window of a question), ``offset_mapping`` (a long tensor, batch x tokens x 2: the character span
of each token in ``context``, -1 for question, special and padding tokens), ``context`` (a list of strings) and, for
labeled splits, ``answers`` (a list of the gold answer texts of each window's question; empty for unanswerable ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_warn
from transformers import DataCollatorWithPadding

from lit_finetune.bounds import PositiveInt, Probability
from lit_finetune.data import readers
from lit_finetune.data.base import SplitsDataModule
from lit_finetune.errors import ConfigError, DataError

COLUMNS = ("id", "context", "question", "answers")  # SQuAD's hub columns (title is optional)
PASSED_THROUGH = ("example_id", "context", "answers")  # lists of Python objects, not padded
SQUAD_FORMAT = ('{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", '
                '"answers": [{"answer_start", "text"}], "is_impossible"?}]}]}]}')


class QuestionAnsweringCollator:
    """Pads each batch to its own longest window; offsets are padded with -1 and the texts pass through as lists."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        lists = {key: [f.pop(key) for f in features] for key in PASSED_THROUGH if key in features[0]}
        offsets = [f.pop("offset_mapping") for f in features] if "offset_mapping" in features[0] else None
        for f in features:
            f.pop("length", None)
        batch = self.pad(features)
        if offsets is not None:
            padded = torch.full((len(offsets), batch["input_ids"].shape[1], 2), -1, dtype=torch.long)
            for i, row in enumerate(offsets):
                padded[i, :len(row)] = torch.tensor(row, dtype=torch.long).view(-1, 2)
            batch["offset_mapping"] = padded
        batch.update(lists)
        return batch


def read_squad_json(path: str, key: str) -> tuple[datasets.Dataset, list[str]]:
    """The questions of a SQuAD JSON file as flat rows in the hub's columns, and each row's place in the file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}: file {file} does not exist")
    readers.check_utf8(file)
    try:
        squad = json.loads(file.read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{key}: {file} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                        f"expected SQuAD JSON {SQUAD_FORMAT}, or flat rows in a .jsonl file") from None
    if not isinstance(squad, dict) or not isinstance(squad.get("data"), list):
        raise DataError(f"{key}: {file} has no 'data' list at the top; expected SQuAD JSON {SQUAD_FORMAT} (flat "
                        f"rows with columns {list(COLUMNS)} go in a .jsonl file)")
    rows = {name: [] for name in ("id", "title", "context", "question", "answers")}
    places = []

    def need(obj, name: str, kind: type | tuple, where: str):
        if not isinstance(obj, dict) or not isinstance(obj.get(name), kind):
            kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise DataError(f"{file}, {where}: no {name!r} ({kinds}); expected SQuAD JSON {SQUAD_FORMAT}")
        return obj[name]

    for a, article in enumerate(squad["data"]):
        for p, paragraph in enumerate(need(article, "paragraphs", list, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = need(paragraph, "context", str, where)
            for q, qa in enumerate(need(paragraph, "qas", list, where)):
                place = f"{where}.qas[{q}]"
                answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                if not all(isinstance(x, dict) and isinstance(x.get("text"), str)
                           and isinstance(x.get("answer_start"), int) for x in answers):
                    raise DataError(f"{file}, {place}: each answer needs 'text' (a string) and 'answer_start' (a "
                                    "character offset into the context)")
                rows["id"].append(str(need(qa, "id", (str, int), place)))
                rows["title"].append(str(article.get("title", "")))
                rows["context"].append(context)
                rows["question"].append(need(qa, "question", str, place))
                rows["answers"].append({"text": [x["text"] for x in answers],
                                        "answer_start": [x["answer_start"] for x in answers]})
                places.append(place)
    return datasets.Dataset.from_dict(rows), places


def nearest_occurrence(context: str, text: str, start: int) -> int | None:
    """Start of the occurrence of `text` in `context` closest to `start` (off-by-a-few offsets are common), or None."""
    found, at = [], context.find(text)
    while at != -1 and text:
        found.append(at)
        at = context.find(text, at + 1)
    return min(found, key=lambda s: abs(s - start)) if found else None


class QuestionAnsweringDataModule(SplitsDataModule):
    """Extractive question answering data (SQuAD v1.1 / v2.0 style).

    SQuAD-style extractive QA from hub datasets (``rajpurkar/squad``, ``rajpurkar/squad_v2``), SQuAD JSON files,
    or flat rows (jsonl / parquet) in the hub's columns ``id``, ``context``, ``question``, ``answers`` (``{"text":
    [...], "answer_start": [...]}``).

    Features: long contexts become overlapping windows (``doc_stride``); over-long questions are cut to
    ``max_question_length`` tokens; misplaced ``answer_start`` offsets are moved to the nearest occurrence of the
    answer when they are rare.
    Raises: DataError for missing files or keys, empty contexts or questions, duplicate ids, unanswered questions in
    SQuAD v1.1 data, and answers that do not match their context too often; ConfigError for settings that cannot work.
    """

    cache_family = "question_answering"

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        version_2_with_negative: bool = False,
        max_length: PositiveInt = 384,
        doc_stride: PositiveInt = 128,
        max_question_length: PositiveInt = 64,
        max_bad_answer_fraction: Probability = 0.01,
        group_by_length: bool = False,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            version_2_with_negative: SQuAD 2.0: questions may have no answer (and the model may answer nothing).
            max_length: Tokens per window: question, context part and special tokens.
            doc_stride: Context tokens shared by consecutive windows of a long context.
            max_question_length: Questions longer than this many tokens are cut (and counted in the log).
            max_bad_answer_fraction: Share of answers whose ``answer_start`` does not point at their text that is
                fixed (moved to the nearest occurrence) with a warning; more than this is an error.
            group_by_length: Sample training batches of windows of similar length (less padding).
            **kwargs: Data source, tokenizer, batch sizes, workers and cache (see SplitsDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.places: dict[str, list[str]] = {}  # SQuAD JSON: each row's place in its file, for messages
        if self.tokenizer.padding_side != "right":
            raise ConfigError(f"model.model_name_or_path: the tokenizer pads on the {self.tokenizer.padding_side}; "
                              "question answering here expects right padding (question first, context second)")
        if max_question_length < 1:
            raise ConfigError(f"data.max_question_length: got {max_question_length}; expected at least 1 token")
        context_room = max_length - max_question_length - self.tokenizer.num_special_tokens_to_add(pair=True)
        if not 0 <= doc_stride < context_room:
            raise ConfigError(f"data.doc_stride: got {doc_stride}; expected 0 <= doc_stride < {context_room} (the "
                              f"context tokens left in a window of data.max_length={max_length} after a question of "
                              f"data.max_question_length={max_question_length} and special tokens)")
        if not 0 <= max_bad_answer_fraction <= 1:
            raise ConfigError(f"data.max_bad_answer_fraction: got {max_bad_answer_fraction}; expected a share in "
                              "[0, 1]")

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading and checking the raw data (rank 0 only, in prepare_data)

    def read_local(self, split: str, path: str) -> datasets.Dataset:
        """SQuAD JSON (each row's place in the file kept for messages), or flat rows in the hub's columns."""
        if Path(path).suffix != ".json":
            return super().read_local(split, path)
        ds, self.places[split] = read_squad_json(path, f"data.{split}_file")
        return ds

    def check(self, split: str, ds: datasets.Dataset, source: str, places: list[str] | None) -> datasets.Dataset:
        """Non-empty contexts and questions, unique ids, answers where the data version needs them and at the
        offsets they claim (rare misplaced ones are moved to the nearest occurrence, unfindable ones dropped)."""
        h = self.hparams
        labeled = split != "predict"
        readers.require_columns(ds, list(COLUMNS[:3]) + (["answers"] if labeled else []), source,
                                {c: "the SQuAD format" for c in COLUMNS})
        where = (lambda i: f"{source}, {places[i]}") if places else (lambda i: readers.row_location(source, i))
        ids = [str(i) for i in readers.column(ds, "id").to_pylist()]
        contexts = readers.column(ds, "context").to_pylist()
        questions = readers.column(ds, "question").to_pylist()
        for name, values in (("context", contexts), ("question", questions)):
            empty = next((i for i, v in enumerate(values) if not (v or "").strip()), None)
            if empty is not None:
                raise DataError(f"{where(empty)} (id {ids[empty]!r}): the {name} is empty; expected text")
        seen = {}
        for i, example_id in enumerate(ids):
            if example_id in seen:
                raise DataError(f"{where(i)}: question id {example_id!r} is also the id of {where(seen[example_id])}; "
                                "ids must be unique (answers are collected per id)")
            seen[example_id] = i
        rows = {"id": ids, "context": contexts, "question": self.cut_questions(questions, split)}
        if not labeled:
            return datasets.Dataset.from_dict(rows)
        answers = readers.column(ds, "answers").to_pylist()
        if not h.version_2_with_negative:
            unanswered = next((i for i, a in enumerate(answers) if not (a and a["text"])), None)
            if unanswered is not None:
                raise DataError(f"{where(unanswered)} (id {ids[unanswered]!r}): the question has no answer; SQuAD "
                                "v1.1 data needs at least one per question (set data.version_2_with_negative: true "
                                "for SQuAD 2.0 data with unanswerable questions)")
        rows["answers"], keep = self.fix_answer_starts(answers, contexts, ids, where, source)
        return datasets.Dataset.from_dict(rows).select(keep)

    def fix_answer_starts(self, answers: list[dict], contexts: list[str], ids: list[str], where,
                          source: str) -> tuple[list[dict], list[int]]:
        """Answers whose text is at their ``answer_start``, and the rows to keep (a question whose every answer was
        unfindable is dropped). Fails when more than ``max_bad_answer_fraction`` of the answers are misplaced."""
        limit = self.hparams.max_bad_answer_fraction
        total, bad, first_bad, dropped = 0, 0, None, 0
        fixed, keep = [], []
        for i, (answer, context) in enumerate(zip(answers, contexts)):
            texts, starts = [], []
            for text, start in zip(answer["text"] if answer else [], answer["answer_start"] if answer else []):
                total += 1
                if context[start:start + len(text)] != text:
                    bad += 1
                    first_bad = first_bad or (i, text, start)
                    start = nearest_occurrence(context, text, start)
                    if start is None:
                        continue
                texts.append(text)
                starts.append(start)
            fixed.append({"text": texts, "answer_start": starts})
            if texts or not answer or not answer["text"]:  # unanswerable questions stay unanswerable
                keep.append(i)
            else:
                dropped += 1
        if bad:
            i, text, start = first_bad
            detail = (f"{bad} of {total} answers ({100 * bad / total:.2f}%) are not at their answer_start; the first "
                      f"is question id {ids[i]!r} ({where(i)}): context[{start}:{start + len(text)}] is "
                      f"{contexts[i][start:start + len(text)]!r}, not the answer {text!r}")
            if bad > limit * total:
                raise DataError(f"{source}: {detail}. That is more than data.max_bad_answer_fraction={limit}; fix "
                                "the offsets (character positions in the context) or raise the limit")
            rank_zero_warn(f"{detail}. Moved them to the nearest occurrence of the answer; dropped the answers "
                           f"not found in their context and {dropped} questions left without any.")
        return fixed, keep

    def cut_questions(self, questions: list[str], split: str) -> list[str]:
        """Questions cut to ``max_question_length`` tokens (the window keeps room for the context), leading spaces
        stripped (they would otherwise count against the window)."""
        limit = self.hparams.max_question_length
        questions = [q.lstrip() for q in questions]
        encoded = self.tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        cut = 0
        for i, offsets in enumerate(encoded["offset_mapping"]):
            if len(offsets) > limit:
                questions[i] = questions[i][:offsets[limit - 1][1]]
                cut += 1
        if cut:
            rank_zero_warn(f"{cut} of {len(questions)} {split} questions were cut to "
                           f"data.max_question_length={limit} tokens.")
        return questions

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing once, then loading on every rank

    def tokenize(self, batch: dict, labeled: bool, evaluation: bool) -> dict:
        """Windows of each question's context: labels for training, offsets and texts for answering."""
        h = self.hparams
        enc = self.tokenizer(batch["question"], batch["context"], truncation="only_second", max_length=h.max_length,
                             stride=h.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        out = {k: enc[k] for k in self.tokenizer.model_input_names if k in enc}
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        out.update({k: [] for k in (["start_positions", "end_positions"] if labeled else [])
                    + (["example_id", "offset_mapping", "context"] if evaluation else [])
                    + (["answers"] if labeled and evaluation else [])})
        for window, row in enumerate(enc["overflow_to_sample_mapping"]):
            sequence = enc.sequence_ids(window)
            offsets = [list(span) if part == 1 else [-1, -1] for span, part in zip(enc["offset_mapping"][window],
                                                                                    sequence)]
            if labeled:
                start, end = answer_tokens(batch["answers"][row], offsets)
                out["start_positions"].append(start)
                out["end_positions"].append(end)
            if evaluation:
                out["example_id"].append(batch["id"][row])
                out["offset_mapping"].append(offsets)
                out["context"].append(batch["context"][row])
                if labeled:
                    out["answers"].append(batch["answers"][row]["text"])
        return out

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata."""
        tokenized, examples = {}, {}
        raw, sources = self.read_raw()
        for split, ds in raw.items():
            rows = self.check(split, ds, sources[split], self.places.get(split))
            examples[split] = len(rows)
            tokenized[split] = rows.map(self.tokenize, batched=True, remove_columns=rows.column_names,
                                        fn_kwargs=dict(labeled=split != "predict", evaluation=split != "train"),
                                        desc=f"Tokenizing {split}", new_fingerprint=f"{fingerprint}-{split}")
        return tokenized, dict(examples=examples, version_2_with_negative=self.hparams.version_2_with_negative)

    def summary(self, meta: dict) -> str:
        return f"Tokenized {meta['examples']} questions into {meta['sizes']} windows"

    def setup(self, stage: str | None = None) -> None:
        self.meta = self.load_splits(stage, test_needs_labels=False)  # answers live in the examples

    # ----------------------------------------------------------------------------------------------------------- #

    def collator(self) -> QuestionAnsweringCollator:
        return QuestionAnsweringCollator(self.tokenizer)


def answer_tokens(answers: dict, offsets: list[list[int]]) -> tuple[int, int]:
    """Token span of the first answer in this window (offsets are -1 outside the context), or (0, 0), the first
    token, when the question has no answer or the answer is not wholly inside the window."""
    if not answers["text"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [i for i, (s, _) in enumerate(offsets) if s >= 0]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = max(i for i in context if offsets[i][0] <= start_char)
    end = min(i for i in context if offsets[i][1] >= end_char)
    return start, end
