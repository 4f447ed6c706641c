"""Multiple-choice data (SWAG-style): a context, an optional question or start of the ending, and N candidate endings.

Batch contract (what the task module receives): ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
tokenizer makes them) of shape (batch, num_choices, seq), each choice tokenized as the pair (context, question +
ending); ``labels`` (the index of the right ending; absent for unlabeled prediction data) and ``example_id`` (a list of
strings, the id column or the row number).
"""

from __future__ import annotations

import datasets
from lightning.pytorch.utilities import rank_zero_warn
from transformers import DataCollatorForMultipleChoice

from lit_finetune.bounds import OpenFraction, PositiveInt
from lit_finetune.data import readers
from lit_finetune.data.base import SplitsDataModule
from lit_finetune.data.classification import PaddingCollator
from lit_finetune.errors import ConfigError, DataError


class MultipleChoiceCollator(PaddingCollator):
    """Pads every choice of every example to the batch's longest one, as (batch, num_choices, seq) tensors."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorForMultipleChoice(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        if "labels" in features[0]:
            return super().__call__(features)
        batch = super().__call__([{**f, "labels": -100} for f in features])  # the library collator needs labels
        del batch["labels"]
        return batch


class MultipleChoiceDataModule(SplitsDataModule):
    """Pick-the-right-ending data (SWAG, HellaSwag-like) from hub datasets or local csv, tsv, json(l), parquet.

    Splits are read, held out, loaded and served by TokenizedDataModule; the checks, the tokenizing and the
    collator are its own.
    Raises: ConfigError for settings that cannot work; DataError naming the file, row and column for a missing
    column, empty context or ending, a row with a different number of choices, or a label that is no choice.
    """

    cache_family = "multiple_choice"

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        context_column: str = "sent1",
        question_column: str | None = "sent2",
        ending_columns: list[str] | None = ["ending0", "ending1", "ending2", "ending3"],
        choices_column: str | None = None,
        label_column: str = "label",
        id_column: str | None = None,
        max_length: PositiveInt = 128,
        validation_fraction: OpenFraction = 0.1,
        seed: int = 42,
        pad_to_multiple_of: PositiveInt | None = None,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            context_column: Column holding the context, the first text of every pair.
            question_column: Column put before each ending (SWAG's start of the ending, or a question); optional.
            ending_columns: Columns holding the candidate endings, one per column (SWAG's by default).
            choices_column: Column holding the candidate endings as one list; when set, ``ending_columns`` is unused.
            label_column: Column holding the index of the right ending (or the right ending's text).
            id_column: Column with example ids written next to predictions; row numbers when unset.
            max_length: Longest tokenized (context, ending) pair; longer ones are truncated and counted in the log.
            validation_fraction: Share of train held out (seeded) when there is no validation split.
            seed: Seed for the validation hold-out.
            pad_to_multiple_of: Pad batch length to a multiple of this (8 helps tensor cores on GPU).
            **kwargs: Data source, tokenizer, batch sizes, workers and cache (see SplitsDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        if not choices_column and len(ending_columns or []) < 2:
            raise ConfigError(f"data.ending_columns: got {ending_columns}; expected 2 or more columns holding the "
                              "candidate endings, or data.choices_column (one column holding a list of them)")
        self.num_choices: int | None = None

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading and checking the raw data (rank 0 only, in prepare_data)

    def choices(self, ds: datasets.Dataset, source: str, num_choices: int | None) -> list[list[str]]:
        """Each row's endings as a list: non-empty, and as many in every row as in the first one read."""
        h = self.hparams
        if not h.choices_column:
            for name in h.ending_columns:
                readers.require_text(ds, name, source)
            columns = [readers.column(ds, c).to_pylist() for c in h.ending_columns]
            return [[str(ending) for ending in row] for row in zip(*columns)]
        rows = readers.column(ds, h.choices_column).to_pylist()
        num_choices = num_choices or (len(rows[0]) if isinstance(rows[0], list) else 0)
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != num_choices or num_choices < 2:
                expected = f"{num_choices} endings like the other rows" if num_choices >= 2 else "2 or more endings"
                raise DataError(f"{readers.row_location(source, i)}: column {h.choices_column!r} is {row!r}; expected "
                                f"a list of {expected}")
            for k, ending in enumerate(row):
                if not isinstance(ending, str) or not ending.strip():
                    raise DataError(f"{readers.row_location(source, i)}: ending {k} of column {h.choices_column!r} is "
                                    f"{ending!r}; expected non-empty text")
        return rows

    def label_ids(self, ds: datasets.Dataset, source: str, choices: list[list[str]]) -> list[int]:
        """The right ending's index: an integer 0..N-1, or the text of one of the row's endings."""
        column = self.hparams.label_column
        ids = []
        for i, (value, endings) in enumerate(zip(readers.column(ds, column).to_pylist(), choices)):
            text = str(value).strip() if value is not None else ""
            if text.lstrip("-").isdigit() or (isinstance(value, float) and value.is_integer()):
                index = int(float(text))
            else:
                index = endings.index(value) if value in endings else -1
            if not 0 <= index < len(endings):
                raise DataError(f"{readers.row_location(source, i)}: column {column!r} is {value!r}; expected the "
                                f"index of the right ending (0..{len(endings) - 1}) or its text")
            ids.append(index)
        return ids

    def is_labeled(self, ds: datasets.Dataset) -> bool:
        """Test and predict data may come without labels (SWAG's test split uses -1 for 'unlabeled')."""
        column = self.hparams.label_column
        return column in ds.column_names and set(ds.unique(column)) not in ({-1}, {"-1"}, {None})

    def check_and_label(self) -> tuple[datasets.DatasetDict, int]:
        """Read every split, check columns, text, choices and labels; return splits of ``context``, ``question``,
        ``choices`` (and ``labels``), and the number of choices."""
        h = self.hparams
        raw, sources = self.read_raw()
        key_of = {h.context_column: "data.context_column", h.label_column: "data.label_column"}
        if not h.choices_column:
            key_of.update({c: "data.ending_columns" for c in h.ending_columns})
        for name, key in ((h.question_column, "question_column"), (h.choices_column, "choices_column"),
                          (h.id_column, "id_column")):
            if name:
                key_of[name] = f"data.{key}"
        num_choices, out = None, {}
        for split, ds in raw.items():
            source = sources[split]
            needed = [c for c in key_of if c != h.label_column]
            readers.require_columns(ds, needed + ([h.label_column] if split in ("train", "validation") else []),
                                    source, key_of)
            readers.require_text(ds, h.context_column, source)
            choices = self.choices(ds, source, num_choices)
            num_choices = len(choices[0])
            questions = readers.column(ds, h.question_column).to_pylist() if h.question_column else [""] * len(ds)
            ids = readers.column(ds, h.id_column).to_pylist() if h.id_column else range(len(ds))
            columns = {"context": readers.column(ds, h.context_column).to_pylist(),
                       "question": [q or "" for q in questions], "choices": choices,
                       "example_id": [str(i) for i in ids]}
            if split != "predict" and self.is_labeled(ds):
                columns["labels"] = self.label_ids(ds, source, choices)
            out[split] = datasets.Dataset.from_dict(columns)
        if "train" in out and "validation" not in out:
            out["train"], out["validation"] = self.hold_out(out["train"])
        return datasets.DatasetDict(out), num_choices

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing once, then loading on every rank

    def tokenize(self, batch: dict) -> dict:
        """Each example's choices as (context, question + ending) pairs, tokenized flat and regrouped per example."""
        n = len(batch["choices"][0])
        firsts = [context for context in batch["context"] for _ in range(n)]
        seconds = [f"{question} {ending}".strip()
                   for question, endings in zip(batch["question"], batch["choices"]) for ending in endings]
        enc = self.tokenizer(firsts, seconds, truncation=True, max_length=self.hparams.max_length)
        out = {key: [values[i:i + n] for i in range(0, len(values), n)] for key, values in enc.items()}
        out["truncated"] = [any(e.overflowing for e in enc.encodings[i:i + n]) for i in range(0, len(firsts), n)]
        return out

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata."""
        splits, num_choices = self.check_and_label()
        tokenized, truncated = {}, {}
        for split, ds in splits.items():
            ds = ds.map(self.tokenize, batched=True, desc=f"Tokenizing {split}",
                        new_fingerprint=f"{fingerprint}-{split}", remove_columns=["context", "question", "choices"])
            truncated[split] = int(sum(readers.column(ds, "truncated").to_pylist()))
            tokenized[split] = ds.remove_columns("truncated")
            if truncated[split]:
                rank_zero_warn(f"{truncated[split]} of {len(ds)} {split} examples had a choice truncated to "
                               f"data.max_length={self.hparams.max_length} tokens.")
        return tokenized, dict(num_choices=num_choices, id2label=None, truncated=truncated)

    def summary(self, meta: dict) -> str:
        return f"Tokenized {meta['sizes']} examples of {meta['num_choices']} choices"

    def setup(self, stage: str | None = None) -> None:
        self.meta = self.load_splits(stage)
        self.num_choices = self.meta["num_choices"]

    def collator(self) -> MultipleChoiceCollator:
        return MultipleChoiceCollator(self.tokenizer, self.hparams.pad_to_multiple_of)
