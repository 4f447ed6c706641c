"""Token classification (NER, chunking, POS) data: CoNLL-style column files, jsonl/parquet, or hub datasets.

Batch contract: ``input_ids``, ``attention_mask`` (and ``token_type_ids``), ``labels`` (tag id per sub-token, -100
where a sub-token carries no label), ``word_starts`` (1 at the first sub-token of each word, where tags are read off
for metrics, predictions and the CRF), ``example_id`` and ``tokens`` (lists, for the prediction file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_warn
from transformers import DataCollatorForTokenClassification

from lit_finetune.bounds import PositiveInt
from lit_finetune.data import readers
from lit_finetune.data.base import SplitsDataModule
from lit_finetune.data.tag_schemes import OUTSIDE, TagScheme, check_tag, first_invalid, split_tag
from lit_finetune.errors import ConfigError, DataError

TABLE_SUFFIXES = (".json", ".jsonl", ".parquet")  # anything else is read as a CoNLL column file


class TokenClassificationCollator:
    """Pads inputs per batch, labels with -100 and word starts with 0; passes ids and words through."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        passed = {key: [f.pop(key) for f in features] for key in ("example_id", "tokens", "word_starts")}
        for f in features:
            f.pop("length", None)
        batch = self.pad(features)
        starts = torch.zeros_like(batch["input_ids"])
        for row, flags in zip(starts, passed.pop("word_starts")):
            row[:len(flags)] = torch.tensor(flags)
        return {**batch, "word_starts": starts.bool(), **passed}


class TokenClassificationDataModule(SplitsDataModule):
    """Tagged words (NER, POS) from CoNLL files, tables or hub datasets.

    Tagged words from CoNLL-style files (one token per line, columns separated by whitespace, blank lines between
    sentences, ``-DOCSTART-`` skipped), from jsonl/parquet with list columns, or from hub datasets such as
    ``eriktks/conll2003``. Local .json, .jsonl and .parquet files are tables (a list of words and a list of tags per
    row); any other file is read as columns. Tags are checked against the tag scheme before anything is trained."""

    cache_family = "token_classification"

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        tokens_column: str = "tokens",
        tags_column: str = "ner_tags",
        conll_token_column: int = 0,
        conll_tag_column: int = -1,
        tag_scheme: TagScheme = "IOB2",
        label_names: list[str] | None = None,
        label_subwords: Literal["first", "all"] = "first",
        max_length: PositiveInt = 256,
        pad_to_multiple_of: PositiveInt | None = None,
        group_by_length: bool = False,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            tokens_column: Column with the list of words (tables and hub datasets).
            tags_column: Column with the list of tags, names or class ids (tables and hub datasets).
            conll_token_column: Index of the word column in column files (0 = first).
            conll_tag_column: Index of the tag column in column files (-1 = last).
            tag_scheme: How tags mark entities: IOB2 (B- opens every entity), IOB1 (B- only between two adjacent
                entities of one type) or BIOES; sequences the scheme forbids are an error.
            label_names: Tag names in id order: names integer tags, or fixes the order of string tags.
            label_subwords: Train on the first sub-token of each word only, or on all of them (each carries the
                word's tag). Metrics and predictions always read the first sub-token.
            max_length: Longest tokenized sentence; words past it are counted, left out of metrics and tagged O
                in predictions.
            pad_to_multiple_of: Pad batch length to a multiple of this (8 helps tensor cores on GPU).
            group_by_length: Sample training batches of sentences of similar length (less padding, faster epochs).
            **kwargs: Data source, tokenizer, batch sizes, workers and cache (see SplitsDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.id2label: dict[int, str] | None = None

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading and checking (rank 0, in prepare_data)

    def read_local(self, split: str, path: str) -> datasets.Dataset:
        """``tokens`` and ``tags`` (names or ids) and ``where`` (file and line or row) of each sentence."""
        h = self.hparams
        if Path(path).suffix not in TABLE_SUFFIXES:
            ds = readers.read_conll(path, f"data.{split}_file", h.conll_token_column, h.conll_tag_column)
            return ds.map(lambda line: {"where": f"{path}, line {line}"}, input_columns="line",
                          remove_columns=["line"])
        ds = readers.read_file(path, f"data.{split}_file")
        return self.table_columns(ds, str(path), split)

    def table_columns(self, ds: datasets.Dataset, source: str, split: str) -> datasets.Dataset:
        h = self.hparams
        needed = [h.tokens_column] + ([h.tags_column] if split != "predict" else [])
        readers.require_columns(ds, needed, source, {h.tokens_column: "data.tokens_column",
                                                     h.tags_column: "data.tags_column"})
        columns = {h.tokens_column: "tokens", h.tags_column: "tags"}
        ds = ds.select_columns([c for c in columns if c in ds.column_names]).rename_columns(
            {c: new for c, new in columns.items() if c in ds.column_names and c != new})
        return ds.add_column("where", [readers.row_location(source, i) for i in range(len(ds))])

    def read_raw(self) -> tuple[dict[str, datasets.Dataset], dict[str, str]]:
        """Every split as ``tokens``, ``tags`` and ``where``: hub splits mapped like tables."""
        raw, sources = super().read_raw()
        return ({split: ds if "where" in ds.column_names else self.table_columns(ds, sources[split], split)
                 for split, ds in raw.items()}, sources)

    def tag_names(self, raw: dict[str, datasets.Dataset]) -> list[str]:
        """Tag names in id order: from label_names, the hub's ClassLabel, or the training tags (O first)."""
        h = self.hparams
        if h.label_names:
            return list(h.label_names)
        feature = next((ds.features["tags"] for ds in raw.values() if "tags" in ds.column_names), None)
        inner = getattr(feature, "feature", None)
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
        if "train" not in raw:
            raise ConfigError("data: without training data the tag names are unknown; set data.label_names "
                              "(in the model's order) or give data.train_file")
        seen = {tag for tags in readers.column(raw["train"], "tags").to_pylist() for tag in tags}
        if any(not isinstance(tag, str) for tag in seen):
            raise ConfigError(f"data.label_names: the training tags are class ids {sorted(seen)[:10]}; name them "
                              "with data.label_names")
        return sorted(seen, key=lambda tag: (tag != OUTSIDE, split_tag(tag)[1], tag))

    def check_tags(self, ds: datasets.Dataset, split: str, names: list[str]) -> datasets.Dataset:
        """Tags as names, each known and well formed, in sequences the scheme allows."""
        scheme, label2id = self.hparams.tag_scheme, {name: i for i, name in enumerate(names)}
        rows = ds.to_dict()
        for tokens, tags, where in zip(rows["tokens"], rows["tags"], rows["where"]):
            if not tokens:
                raise DataError(f"{where}: a sentence with no tokens")
            if tags is None or len(tags) != len(tokens):
                raise DataError(f"{where}: {len(tokens)} tokens but {0 if tags is None else len(tags)} tags; "
                                "expected one tag per token")
            tags[:] = [names[t] if isinstance(t, int) and 0 <= t < len(names) else t for t in tags]
            for i, tag in enumerate(tags):
                if tag not in label2id:
                    raise DataError(f"{where} (token {i + 1}, {tokens[i]!r}): tag {tag!r} never occurs in the "
                                    f"training data; known tags are {names}")
                if not check_tag(tag, scheme):
                    raise DataError(f"{where} (token {i + 1}): tag {tag!r} is not a {scheme} tag (O, or "
                                    f"{'B/I/E/S' if scheme == 'BIOES' else 'B/I'}-TYPE); set data.tag_scheme")
        bad = [(where, tags, i) for tags, where in zip(rows["tags"], rows["where"])
               if (i := first_invalid(tags, scheme)) is not None]
        if bad:
            where, tags, i = bad[0]
            previous = tags[i - 1] if i else "the sentence start"
            raise DataError(f"{where}: tag {tags[i]!r} after {previous!r} (token {i + 1}) is not valid {scheme}; "
                            f"{len(bad)} of {len(ds)} {split} sentences break the scheme. Is the file in another "
                            "scheme? Set data.tag_scheme (IOB1 | IOB2 | BIOES).")
        return datasets.Dataset.from_dict({**rows, "labels": [[label2id[t] for t in tags] for tags in rows["tags"]]})

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing once, then loading on every rank

    def tokenize(self, batch: dict) -> dict:
        h = self.hparams
        enc = self.tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=h.max_length)
        labels, starts, dropped = [], [], []
        for i, word_tags in enumerate(batch["labels"]):
            row_labels, row_starts, previous = [], [], None
            for word in enc.word_ids(i):
                first = word is not None and word != previous
                row_starts.append(int(first))
                keep = first or (word is not None and h.label_subwords == "all")
                row_labels.append(word_tags[word] if keep else -100)
                previous = word
            labels.append(row_labels)
            starts.append(row_starts)
            dropped.append(len(word_tags) - sum(row_starts))
        return {**enc, "labels": labels, "word_starts": starts, "dropped_words": dropped,
                "length": [len(ids) for ids in enc["input_ids"]]}

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata."""
        raw, _ = self.read_raw()
        names = self.tag_names(raw)
        tokenized, dropped = {}, {}
        for split, ds in raw.items():
            labeled = split != "predict" and "tags" in ds.column_names
            if labeled:
                ds = self.check_tags(ds, split, names)
            else:  # words to tag: any tags the file has are not read
                empty = next((w for w, t in zip(ds["where"], ds["tokens"]) if not t), None)
                if empty:
                    raise DataError(f"{empty}: a sentence with no tokens")
                ds = ds.select_columns(["tokens", "where"])
                ds = ds.add_column("labels", [[0] * len(t) for t in ds["tokens"]])  # placeholders, dropped below
            ds = ds.add_column("example_id", [str(i) for i in range(len(ds))])
            ds = ds.map(self.tokenize, batched=True, desc=f"Tokenizing {split}",
                        new_fingerprint=f"{fingerprint}-{split}",
                        remove_columns=[c for c in ("tags", "where", "labels") if c in ds.column_names])
            dropped[split] = int(sum(ds["dropped_words"]))
            tokenized[split] = ds.remove_columns(["dropped_words"] + ([] if labeled else ["labels"]))
        for split, count in dropped.items():
            if count:
                rank_zero_warn(f"{count} words of the {split} split fall past data.max_length="
                               f"{self.hparams.max_length} tokens: left out of metrics, tagged O in predictions.")
        return tokenized, dict(id2label=dict(enumerate(names)), dropped_words=dropped)

    def summary(self, meta: dict) -> str:
        return f"Tokenized {meta['sizes']} sentences with {len(meta['id2label'])} tags"

    def setup(self, stage: str | None = None) -> None:
        meta = self.load_splits(stage)
        self.id2label = {int(k): v for k, v in meta["id2label"].items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def labels(self) -> dict[int, str]:
        """The tag set the task module adopts."""
        return self.id2label

    @property
    def tag_scheme(self) -> TagScheme:
        return self.hparams.tag_scheme

    def collator(self) -> TokenClassificationCollator:
        return TokenClassificationCollator(self.tokenizer, self.hparams.pad_to_multiple_of)
