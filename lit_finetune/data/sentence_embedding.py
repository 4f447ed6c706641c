"""Sentences for contrastive sentence embeddings (SimCSE), and STS-style scored pairs to evaluate them.

Batch contract, training: ``input_ids``, ``attention_mask`` (the sentences); with supervision also
``positive_input_ids`` / ``positive_attention_mask`` and, with hard negatives, ``negative_input_ids`` /
``negative_attention_mask``. Validation: ``input_ids`` / ``attention_mask`` and ``pair_input_ids`` /
``pair_attention_mask`` for the two sentences, and ``score`` (their gold similarity).
"""

from __future__ import annotations

import datasets
import torch
from torch.utils.data import DataLoader

from lit_finetune import cache
from lit_finetune.bounds import PositiveInt
from lit_finetune.data import readers
from lit_finetune.data.base import TokenizedDataModule
from lit_finetune.errors import ConfigError, DataError

GROUPS = ("", "positive_", "negative_", "pair_")  # prefixes of the tokenized sentence fields


class SentenceGroupsCollator:
    """Pads each group of sentences (anchor, positive, negative, pair) to its own longest one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict:
        batch = {}
        for prefix in GROUPS:
            if f"{prefix}input_ids" in features[0]:
                padded = self.tokenizer.pad([{"input_ids": f[f"{prefix}input_ids"]} for f in features],
                                            return_tensors="pt")
                batch[f"{prefix}input_ids"] = padded["input_ids"]
                batch[f"{prefix}attention_mask"] = padded["attention_mask"]
        if "score" in features[0]:
            batch["score"] = torch.tensor([float(f["score"]) for f in features])
        return batch


class SentenceEmbeddingDataModule(TokenizedDataModule):
    """Sentences (or sentence / positive / negative rows) for SimCSE, with STS validation pairs.

    Training sentences (unsupervised SimCSE) or sentence / positive (/ hard negative) rows (supervised), and
    STS-style validation pairs with a similarity score.

    Raises: DataError for missing files, columns, empty sentences or non-numeric scores; ConfigError for settings.
    """

    cache_family = "sentence_embedding"

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        train_file: str | None = None,
        validation_file: str | None = None,
        validation_dataset: str | None = None,
        text_column: str = "text",
        positive_column: str | None = None,
        negative_column: str | None = None,
        sentence1_column: str = "sentence1",
        sentence2_column: str = "sentence2",
        score_column: str = "score",
        max_length: PositiveInt = 32,
        max_train_examples: PositiveInt | None = None,
        batch_size: PositiveInt = 64,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            dataset_name: Hub dataset of the training sentences (its ``train`` split); leave unset to read a file.
            dataset_config: Hub dataset configuration name, if the dataset has several.
            train_file: Local training sentences: .txt (one per line) or csv / tsv / jsonl / json / parquet.
            validation_file: Local STS-style pairs: two sentence columns and a similarity score.
            validation_dataset: Hub dataset of STS-style pairs (its ``validation`` split), e.g.
                ``sentence-transformers/stsb``: scored pairs usually come from another dataset than the training
                sentences, hence a source of their own.
            text_column: Column of the training sentences (tabular files and hub data).
            positive_column: Column of a positive for each sentence (supervised SimCSE, e.g. an NLI entailment).
            negative_column: Column of a hard negative for each sentence (e.g. an NLI contradiction).
            sentence1_column: First sentence of a validation pair.
            sentence2_column: Second sentence of a validation pair.
            score_column: Gold similarity of a validation pair (any scale; only the ranking matters).
            max_length: Tokens per sentence, special tokens included (longer sentences are truncated).
            max_train_examples: Keep only the first N training rows.
            batch_size: Sentences per training batch; the other sentences of the batch are the negatives.
            **kwargs: Tokenizer, evaluation batch size, workers and cache (see TokenizedDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, batch_size=batch_size, **kwargs)
        if not (train_file or dataset_name):
            raise ConfigError("data: give data.train_file or data.dataset_name (the training sentences)")
        if negative_column and not positive_column:
            raise ConfigError("data.negative_column: hard negatives need data.positive_column as well")
        self.files = {split: p for split, p in (("train", train_file), ("validation", validation_file)) if p}
        self.splits: datasets.DatasetDict | None = None

    def read(self, split: str) -> tuple[datasets.Dataset, str] | None:
        h = self.hparams
        path, hub, config = (h.train_file, h.dataset_name, h.dataset_config) if split == "train" else \
            (h.validation_file, h.validation_dataset, None)
        if path:  # a .txt file: one sentence per line
            return readers.read_file(path, f"data.{split}_file", "line", h.text_column), path
        if hub:
            return readers.read_hub(hub, config)[split], f"{hub} [{split}]"
        return None

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.hparams.max_length)["input_ids"]

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata."""
        h = self.hparams
        out = {}
        train, source = self.read("train")
        if h.max_train_examples:
            train = train.select(range(min(h.max_train_examples, len(train))))
        roles = {"": h.text_column, "positive_": h.positive_column, "negative_": h.negative_column}
        columns = {prefix: column for prefix, column in roles.items() if column}
        readers.require_columns(train, list(columns.values()), source,
                                {c: f"data.{'text' if not p else p[:-1]}_column" for p, c in columns.items()})
        for column in columns.values():
            readers.require_text(train, column, source)
        out["train"] = datasets.Dataset.from_dict({
            f"{prefix}input_ids": self.tokenize(readers.column(train, column).to_pylist())
            for prefix, column in columns.items()})
        validation = self.read("validation")
        if validation is not None:
            pairs, source = validation
            key_of = {h.sentence1_column: "data.sentence1_column", h.sentence2_column: "data.sentence2_column",
                      h.score_column: "data.score_column"}
            readers.require_columns(pairs, list(key_of), source, key_of)
            for column in (h.sentence1_column, h.sentence2_column):
                readers.require_text(pairs, column, source)
            scores = readers.column(pairs, h.score_column).to_pylist()
            for i, score in enumerate(scores):
                try:
                    float(score)
                except (TypeError, ValueError):
                    raise DataError(f"{readers.row_location(source, i)}: column {h.score_column!r} is {score!r}; "
                                    "expected a number (the pair's similarity)") from None
            out["validation"] = datasets.Dataset.from_dict({
                "input_ids": self.tokenize(readers.column(pairs, h.sentence1_column).to_pylist()),
                "pair_input_ids": self.tokenize(readers.column(pairs, h.sentence2_column).to_pylist()),
                "score": [float(s) for s in scores]})
        return out, dict(supervised=bool(h.positive_column))


    def setup(self, stage: str | None = None) -> None:
        self.splits, self.meta = cache.load(self.cache_path())
        if stage in ("fit", "validate") and "validation" not in self.splits:
            raise ConfigError("data: validation needs STS-style pairs; give data.validation_file or "
                              "data.validation_dataset")

    def loader(self, split: str, train: bool = False) -> DataLoader:
        # drop_last: every training batch has the full set of in-batch negatives.
        return self.dataloader(self.splits[split], train, SentenceGroupsCollator(self.tokenizer), drop_last=train)
