"""Text classification data: single sentences or pairs, string or integer labels, label sets (multi-label), or
regression targets.

Batch contract (what the task module receives): ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
tokenizer makes them), ``labels`` (int class ids; floats for regression; a multi-hot float row per example for label
sets; absent for unlabeled prediction data) and
``example_id`` (a list of strings, the id column or the row number).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import datasets
from lightning.pytorch.utilities import rank_zero_warn
from transformers import DataCollatorWithPadding

from lit_finetune.bounds import OpenFraction, PositiveInt
from lit_finetune.data import readers
from lit_finetune.data.base import SplitsDataModule
from lit_finetune.errors import ConfigError, DataError

INTEGER = re.compile(r"[+-]?\d+")  # a label written as a class id
Truncation = Literal["head", "tail", "head_tail"]


class PaddingCollator:
    """Pads each batch to its own longest sequence (no fixed max-length padding) and passes example ids through."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        example_ids = [f.pop("example_id") for f in features]
        for f in features:
            f.pop("length", None)
        batch = self.pad(features)
        batch["example_id"] = example_ids
        return batch


class TextClassificationDataModule(SplitsDataModule):
    """Sequence / pair classification and regression data from hub datasets or local csv, tsv, json(l), parquet."""

    cache_family = "classification"

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        id_column: str | None = None,
        num_labels: PositiveInt | None = None,
        label_names: list[str] | None = None,
        multi_label: bool = False,
        label_delimiter: str | None = None,
        allow_no_label: bool = False,
        max_length: PositiveInt = 128,
        truncation: Truncation = "head",
        head_tokens: PositiveInt | None = None,
        group_by_length: bool = False,
        validation_fraction: OpenFraction = 0.1,
        seed: int = 42,
        pad_to_multiple_of: PositiveInt | None = None,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            text_column: Column holding the text (the first sentence for pair tasks).
            text_pair_column: Column holding the second sentence, for pair tasks (e.g. NLI, paraphrase).
            label_column: Column holding the label: a class name, a class id, or a number for regression.
            id_column: Column with example ids written next to predictions; row numbers when unset.
            num_labels: Number of classes, checked against the data (1 means regression); inferred when unset.
            label_names: Class names in id order, to name integer labels or fix the order of string labels.
            multi_label: Each example has a set of labels (any number of the classes): a list column
                (``["PER", "LOC"]`` in JSON), or a string split on ``label_delimiter``. The task then trains one
                sigmoid per class (``problem_type: multi_label_classification``).
            label_delimiter: What separates the labels of a multi-label string column, e.g. ``,`` or ``|``.
            allow_no_label: Multi-label examples may have an empty label set (none of the classes); refused when
                false, since an empty cell is more often a mistake.
            max_length: Longest tokenized input; longer ones are truncated and counted in the log.
            truncation: Which tokens of a longer text are kept: ``head`` (the first max_length), ``tail`` (the
                last) or ``head_tail`` (the first ``head_tokens`` and the last ones; best on IMDB in Sun et al.
                2019, "How to Fine-Tune BERT for Text Classification"). tail and head_tail: single texts only.
            head_tokens: Tokens kept from the start under head_tail; a quarter of max_length when unset (128 of 512,
                the paper's split).
            group_by_length: Sample training batches of similar length (less padding, faster epochs).
            validation_fraction: Share of train held out (stratified, seeded) when there is no validation split.
            seed: Seed for the validation hold-out and length-grouped sampling.
            pad_to_multiple_of: Pad batch length to a multiple of this (8 helps tensor cores on GPU).
            **kwargs: Data source, tokenizer, batch sizes, workers and cache (see SplitsDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        if multi_label and num_labels == 1:
            raise ConfigError("data.multi_label: regression (data.num_labels: 1) has no label sets; drop one of them")
        if label_delimiter is not None and not multi_label:
            raise ConfigError("data.label_delimiter: only multi-label data splits its labels; set data.multi_label: "
                              "true, or remove the delimiter")
        if truncation != "head" and text_pair_column:
            raise ConfigError(f"data.truncation: {truncation} keeps the end of a single text; a pair task "
                              "(data.text_pair_column) truncates the longer text from its end, so use head")
        if truncation == "head_tail" and head_tokens is not None and head_tokens >= max_length - 2:
            raise ConfigError(f"data.head_tokens: {head_tokens} leaves no room for the tail within "
                              f"data.max_length={max_length} (less the special tokens); expected fewer")
        if num_labels is not None and num_labels < 1:
            raise ConfigError(f"data.num_labels: got {num_labels}; expected 1 (regression) or the number of classes")
        self.id2label: dict[int, str] | None = None

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading and checking the raw data (rank 0 only, in prepare_data)

    @property
    def is_regression(self) -> bool:
        return self.hparams.num_labels == 1

    def is_labeled(self, ds: datasets.Dataset) -> bool:
        """Test and predict data may come without labels (GLUE's hub test sets use -1 for 'unlabeled')."""
        column = self.hparams.label_column
        if column not in ds.column_names:
            return False
        if self.hparams.multi_label:
            return True
        return set(ds.unique(column)) != {-1}  # class ids and STS-B's float scores alike

    def build_label_vocab(self, train: datasets.Dataset, source: str) -> dict[int, str] | None:
        """Class names in id order: from the hub's ClassLabel, from label_names, or the sorted training labels."""
        h = self.hparams
        if self.is_regression:
            return None
        if h.multi_label:
            return self.multi_label_vocab(train, source)
        feature = train.features[h.label_column]
        if isinstance(feature, datasets.ClassLabel) and not h.label_names:
            names = list(feature.names)
        else:
            values = train.unique(h.label_column)
            if any(v is None or v == "" for v in values):
                column = readers.column(train, h.label_column).to_pylist()
                index = next(i for i, v in enumerate(column) if v is None or v == "")
                raise DataError(f"{readers.row_location(source, index)}: column {h.label_column!r} is empty")
            if isinstance(feature, datasets.ClassLabel):
                values = [feature.int2str(v) for v in values]
            if h.label_names:
                names = list(h.label_names)
                if all(isinstance(v, int) for v in values):
                    unknown = [v for v in values if not 0 <= v < len(names)]
                    if unknown:
                        raise DataError(f"{source}: integer labels {sorted(unknown)} have no name in "
                                        f"data.label_names ({len(names)} names)")
            elif all(isinstance(v, (int, float)) and float(v).is_integer() for v in values):
                names = [str(int(v)) for v in sorted(values)]
                if names != [str(i) for i in range(len(names))]:
                    raise DataError(f"{source}: integer labels {names} are not 0..{len(names) - 1}; set "
                                    "data.label_names to name them, or use string labels")
            else:
                names = sorted(str(v) for v in values)
                self.check_label_kinds(train, source)
        if len(names) < 2:
            raise DataError(f"{source}: column {h.label_column!r} has a single class {names}; classification needs "
                            "at least 2 (set data.num_labels: 1 for regression)")
        return self.numbered(names)

    def numbered(self, names: list[str]) -> dict[int, str]:
        """The classes in id order, checked against ``num_labels`` when it is set."""
        h = self.hparams
        if h.num_labels is not None and h.num_labels != len(names):
            raise ConfigError(f"data.num_labels: set to {h.num_labels} but the training data has {len(names)} "
                              f"classes {names}; remove data.num_labels or fix it")
        return dict(enumerate(names))

    def label_sets(self, ds: datasets.Dataset, source: str) -> list[list[str]]:
        """Each row's labels: a list cell, or a string split on ``label_delimiter``; empty sets checked.

        Raises: DataError naming the row whose cell is neither, or whose set is empty when that is not allowed.
        """
        h, sets = self.hparams, []
        for i, cell in enumerate(readers.column(ds, h.label_column).to_pylist()):
            if isinstance(cell, str) and h.label_delimiter is not None:
                cell = [part.strip() for part in cell.split(h.label_delimiter) if part.strip()]
            elif cell is None or (isinstance(cell, str) and not cell.strip()):
                cell = []
            if not isinstance(cell, list):
                raise DataError(f"{readers.row_location(source, i)}: column {h.label_column!r} is {cell!r}; "
                                "multi-label data needs a list of labels per row (JSON), or a string of labels and "
                                "data.label_delimiter")
            if not cell and not h.allow_no_label:
                raise DataError(f"{readers.row_location(source, i)}: the label set is empty; set "
                                "data.allow_no_label: true if examples may have none of the labels")
            sets.append([str(label) for label in cell])
        return sets

    def multi_label_vocab(self, train: datasets.Dataset, source: str) -> dict[int, str]:
        """The classes of multi-label data: ``label_names`` (checked to cover the training labels) or the sorted
        union of the training label sets."""
        h = self.hparams
        seen = sorted({label for labels in self.label_sets(train, source) for label in labels})
        names = list(h.label_names) if h.label_names else seen
        unknown = sorted(set(seen) - set(names))
        if unknown:
            raise DataError(f"{source}: labels {unknown} are not in data.label_names {names}")
        if len(names) < 2:
            raise DataError(f"{source}: the label sets hold a single class {names}; multi-label classification "
                            "needs at least 2")
        return self.numbered(names)

    def check_label_kinds(self, train: datasets.Dataset, source: str) -> None:
        """String labels are names or ids, not both: "1" beside "positive" would become classes of their own.

        Raises: DataError naming a row of each kind.
        """
        column = [str(v) for v in readers.column(train, self.hparams.label_column).to_pylist()]
        number = next((i for i, v in enumerate(column) if INTEGER.fullmatch(v.strip())), None)
        name = next((i for i, v in enumerate(column) if not INTEGER.fullmatch(v.strip())), None)
        if number is not None and name is not None:
            raise DataError(f"{readers.row_location(source, number)}: label {column[number]!r} is a number, but "
                            f"{readers.row_location(source, name)} has label {column[name]!r}, a name; expected all "
                            "class names or all integer ids (data.label_names names ids)")

    def encode_labels(self, ds: datasets.Dataset, source: str, id2label: dict[int, str] | None) -> datasets.Dataset:
        """Labels as class ids (floats for regression, multi-hot rows for label sets), failing on a label that train
        never had."""
        column = self.hparams.label_column
        if self.hparams.multi_label:
            return self.encode_label_sets(ds, source, id2label)
        values = readers.column(ds, column).to_pylist()
        if column == "labels":
            ds = ds.remove_columns(column)
        if id2label is None:
            for i, v in enumerate(values):
                try:
                    float(v)
                except (TypeError, ValueError):
                    raise DataError(f"{readers.row_location(source, i)}: column {column!r} is {v!r}; expected a "
                                    "number for regression (data.num_labels: 1)") from None
            return ds.add_column("labels", [float(v) for v in values])
        label2id = {name: i for i, name in id2label.items()}
        feature = ds.features[column]
        integer_names = self.hparams.label_names and all(isinstance(v, int) for v in values)
        ids = []
        for i, v in enumerate(values):
            if isinstance(feature, datasets.ClassLabel):
                v = feature.int2str(v)
            elif integer_names:
                v = id2label.get(v, v)
            elif isinstance(v, float) and v.is_integer():
                v = int(v)
            if str(v) not in label2id:
                raise DataError(f"{readers.row_location(source, i)}: label {v!r} never occurs in the training "
                                f"data; known labels are {list(label2id)}")
            ids.append(label2id[str(v)])
        return ds.add_column("labels", ids)

    def encode_label_sets(self, ds: datasets.Dataset, source: str, id2label: dict[int, str]) -> datasets.Dataset:
        """Multi-label rows as multi-hot float vectors over the classes, in id order."""
        label2id = {name: i for i, name in id2label.items()}
        hot = []
        for i, labels in enumerate(self.label_sets(ds, source)):
            unknown = [label for label in labels if label not in label2id]
            if unknown:
                raise DataError(f"{readers.row_location(source, i)}: label {unknown[0]!r} never occurs in the "
                                f"training data; known labels are {list(label2id)}")
            row = [0.0] * len(label2id)
            for label in labels:
                row[label2id[label]] = 1.0
            hot.append(row)
        if self.hparams.label_column == "labels":
            ds = ds.remove_columns("labels")
        return ds.add_column("labels", hot)

    def check_and_label(self) -> tuple[datasets.DatasetDict, dict[int, str] | None]:
        """Read every split, check columns, text and labels, and return splits with a ``labels`` column."""
        h = self.hparams
        raw, sources = self.read_raw()
        key_of = {h.text_column: "data.text_column", h.label_column: "data.label_column"}
        text_columns = [h.text_column] + ([h.text_pair_column] if h.text_pair_column else [])
        if h.text_pair_column:
            key_of[h.text_pair_column] = "data.text_pair_column"
        if h.id_column:
            key_of[h.id_column] = "data.id_column"
        id2label = None
        if "train" in raw:
            readers.require_columns(raw["train"], [h.label_column], sources["train"], key_of)
            id2label = self.build_label_vocab(raw["train"], sources["train"])
        elif h.label_names:
            id2label = dict(enumerate(h.label_names))
        labels_known = id2label is not None or self.is_regression
        out = {}
        for split, ds in raw.items():
            readers.require_columns(ds, text_columns + ([h.id_column] if h.id_column else []), sources[split], key_of)
            for column in text_columns:
                readers.require_text(ds, column, sources[split])
            if split == "validation":  # (train was checked above)
                readers.require_columns(ds, [h.label_column], sources[split], key_of)
            if split != "predict" and self.is_labeled(ds):
                if not labels_known:
                    raise ConfigError(f"data: {sources[split]} has labels but there is no training data to number "
                                      "them from; give data.train_file or data.label_names (in the model's order)")
                ds = self.encode_labels(ds, sources[split], id2label)
            elif "labels" in ds.column_names:  # a raw column of that name, unencoded: not the batch's labels
                ds = ds.remove_columns("labels")
            ids = readers.column(ds, h.id_column).to_pylist() if h.id_column else range(len(ds))
            out[split] = ds.add_column("example_id", [str(i) for i in ids])
        if "train" in out and "validation" not in out:
            stratify_by = list(id2label.values()) if id2label and not h.multi_label else None
            out["train"], out["validation"] = self.hold_out(out["train"], stratify_by)
        return datasets.DatasetDict(out), id2label

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing once, then loading on every rank

    def read_local(self, split: str, path: str) -> datasets.Dataset:
        """A file of rows, or a folder of class folders with one .txt file per example (IMDB's layout)."""
        h = self.hparams
        if Path(path).expanduser().is_dir():
            return readers.read_class_folders(path, f"data.{split}_file", h.text_column, h.label_column,
                                              h.label_names)
        return super().read_local(split, path)

    def tokenize(self, batch: dict) -> dict:
        h = self.hparams
        if h.truncation != "head":
            return self.tokenize_keeping_the_end(batch[h.text_column])
        pair = batch[h.text_pair_column] if h.text_pair_column else None
        enc = self.tokenizer(batch[h.text_column], pair, truncation=True, max_length=h.max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        enc["truncated"] = [bool(e.overflowing) for e in enc.encodings]
        return dict(enc)

    def tokenize_keeping_the_end(self, texts: list[str]) -> dict:
        """``tail`` and ``head_tail`` truncation: each whole text tokenized with its special tokens, then the tokens
        between them cut to the last ones (after the first ``head_tokens`` under head_tail)."""
        h = self.hparams
        prefix, suffix = self.special_token_counts()
        budget = h.max_length - prefix - suffix
        head = 0 if h.truncation == "tail" else (h.head_tokens or h.max_length // 4)
        enc = dict(self.tokenizer(texts))
        enc["truncated"] = [len(ids) > h.max_length for ids in enc["input_ids"]]
        for name, rows in enc.items():
            if name != "truncated":
                enc[name] = [row if len(row) <= h.max_length else
                             row[:prefix + head] + row[len(row) - suffix - (budget - head):] for row in rows]
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    def special_token_counts(self) -> tuple[int, int]:
        """How many special tokens the tokenizer puts before and after a single text ([CLS] and [SEP]: 1 and 1)."""
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a")["input_ids"]
        start = next(i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare)
        return start, len(full) - start - len(bare)

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata."""
        splits, id2label = self.check_and_label()
        keep = {"input_ids", "attention_mask", "token_type_ids", "labels", "example_id", "length"}
        tokenized = datasets.DatasetDict({
            split: ds.map(self.tokenize, batched=True, desc=f"Tokenizing {split}",
                          new_fingerprint=f"{fingerprint}-{split}",
                          remove_columns=[c for c in ds.column_names if c not in ("labels", "example_id")])
            for split, ds in splits.items()})
        truncated = {split: int(sum(readers.column(ds, "truncated").to_pylist())) for split, ds in tokenized.items()}
        tokenized = datasets.DatasetDict({split: ds.select_columns([c for c in ds.column_names if c in keep])
                                          for split, ds in tokenized.items()})
        for split, ds in tokenized.items():
            if "labels" in ds.column_names and isinstance(ds.features["labels"], datasets.ClassLabel):
                tokenized[split] = ds.cast_column("labels", datasets.Value("int64"))
        for split, count in truncated.items():
            if count:
                rank_zero_warn(f"{count} of {len(tokenized[split])} {split} examples "
                               f"({100 * count / len(tokenized[split]):.1f}%) were truncated to "
                               f"data.max_length={self.hparams.max_length} tokens.")
        return tokenized, dict(id2label=id2label, truncated=truncated)

    def setup(self, stage: str | None = None) -> None:
        self.meta = meta = self.load_splits(stage)
        self.id2label = {int(k): v for k, v in meta["id2label"].items()} if meta["id2label"] else None

    @property
    def num_labels(self) -> int:
        return 1 if self.id2label is None else len(self.id2label)

    @property
    def multi_label(self) -> bool:
        """Whether each example has a set of labels, which the task module adopts (one sigmoid per class)."""
        return bool(self.hparams.multi_label)

    @property
    def labels(self) -> dict[int, str]:
        """The label set the task module adopts: the classes, or ``{0: "score"}`` for regression."""
        return self.id2label or {0: "score"}

    # ----------------------------------------------------------------------------------------------------------- #

    def collator(self) -> PaddingCollator:
        return PaddingCollator(self.tokenizer, self.hparams.pad_to_multiple_of)
