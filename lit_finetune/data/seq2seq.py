"""Source -> target text pairs for sequence-to-sequence models (translation, summarization): from hub datasets,
local tables, or line-aligned parallel text files.

Batch contract (what the task module receives): ``input_ids``, ``attention_mask`` (the source, with
``source_prefix``), ``labels`` (target token ids, padded with -100 so the loss skips padding; absent when the split
has no targets), ``example_id``, ``source_text`` and ``target_text`` (lists of strings: the raw, untruncated texts,
written next to predictions and used as BLEU / ROUGE references; ``target_text`` absent without targets).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import datasets
from lightning.pytorch.utilities import rank_zero_warn
from transformers import DataCollatorForSeq2Seq

from lit_finetune.bounds import PositiveInt
from lit_finetune.data import readers
from lit_finetune.data.base import SplitsDataModule
from lit_finetune.errors import ConfigError, DataError

LANG = "{lang}"  # placeholder of a parallel-text path, e.g. train.{lang}.gz -> train.en.gz + train.de.gz
TEXT_KEYS = ("example_id", "source_text", "target_text")  # passed through the collator as lists of strings
TARGETS_REQUIRED = ("train", "validation")  # splits that must have targets; test may lack them (then only predict)


def read_lines(path: Path, key: str) -> list[str]:
    """Lines of a UTF-8 text file, gzip-compressed when it ends in .gz. Only '\\n' ends a line, so Unicode line
    separators inside a sentence (which `str.splitlines` would split at) never shift the alignment."""
    if not path.is_file():
        raise DataError(f"{key}: file {path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{key}: {path} is not a valid gzip file ({err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{key}: {path}, line {line} is not valid UTF-8; expected UTF-8 text") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def first_blank(lines: list[str]) -> int | None:
    return next((i for i, line in enumerate(lines) if not line.strip()), None)


class Seq2SeqCollator:
    """Pads inputs with the pad id and labels with -100 to each batch's longest (``DataCollatorForSeq2Seq``), and
    passes ids and raw texts through as lists."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        texts = {key: [f.pop(key) for f in features] for key in TEXT_KEYS if key in features[0]}
        for f in features:
            f.pop("length", None)
        batch = {k: v for k, v in self.pad(features).items() if v is not None}  # labels: None without targets
        return {**batch, **texts}


class Seq2SeqDataModule(SplitsDataModule):
    """Translation / summarization pairs, tokenized once into a cache, padded per batch.

    Features: hub datasets (source/target columns, or a ``translation`` column of {lang: text} dicts as in wmt16);
    local csv / tsv / json(l) / parquet tables; line-aligned parallel text (plain or .gz) named by a ``{lang}``
    path, e.g. ``train_file: ../shared/data/multi30k/train.{lang}.gz`` with ``source_lang: en``, ``target_lang: de``;
    a source prefix for T5-style models; truncation counted and warned; length-grouped batches.
    Raises: DataError for missing or unreadable files, parallel files of different line counts, missing columns, or
    an empty source or target (targets are not read for predict), naming the file and line or row; ConfigError for
    inconsistent settings.
    """

    cache_family = "seq2seq"

    def __init__(
        self,
        model_name_or_path: str = "google-t5/t5-small",
        source_lang: str | None = None,
        target_lang: str | None = None,
        source_column: str | None = None,
        target_column: str | None = None,
        id_column: str | None = None,
        source_prefix: str = "",
        max_source_length: PositiveInt = 256,
        max_target_length: PositiveInt = 128,
        group_by_length: bool = False,
        seed: int = 42,
        pad_to_multiple_of: PositiveInt | None = None,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            source_lang: Source language code: fills ``{lang}`` in parallel-text paths, and is the default source
                column (hub translation sets such as bentrevett/multi30k name columns by language).
            target_lang: Target language code, as source_lang.
            source_column: Column of the input text; default source_lang, else ``source``.
            target_column: Column of the output text; default target_lang, else ``target``.
            id_column: Column with example ids written next to predictions; row numbers (from 0) when unset.
            source_prefix: Text put before every source, e.g. ``"translate English to German: "`` for T5.
            max_source_length: Longest tokenized source; longer ones are truncated and counted in the log.
            max_target_length: Longest tokenized target (training labels); longer ones are truncated and counted.
            group_by_length: Sample training batches of similar length (less padding, faster epochs).
            seed: Seed of length-grouped sampling.
            pad_to_multiple_of: Pad batch length to a multiple of this (8 helps tensor cores on GPU).
            **kwargs: Data source, tokenizer, batch sizes, workers and cache (see SplitsDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        for split, path in self.files.items():
            if LANG in path and not (source_lang and target_lang):
                raise ConfigError(f"data.{split}_file: {path} is a parallel-text path ({LANG}); set "
                                  "data.source_lang and data.target_lang (e.g. en and de) to fill it in")
        self.source_column = source_column or source_lang or "source"
        self.target_column = target_column or target_lang or "target"

    def source_files(self) -> dict[str, str]:
        return self.local_paths()

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading and checking the raw pairs (rank 0 only, in prepare_data)

    def parallel_paths(self, split: str) -> dict[str, Path]:
        """Source (and, except for predict, target) file of a ``{lang}`` path."""
        h, template = self.hparams, self.files[split]
        langs = {"source_text": h.source_lang} if split == "predict" else \
            {"source_text": h.source_lang, "target_text": h.target_lang}
        return {side: Path(template.replace(LANG, lang)).expanduser() for side, lang in langs.items()}

    def local_paths(self) -> dict[str, str]:
        """Every local file read, by split (and side, for parallel text)."""
        paths = {}
        for split, path in self.files.items():
            if LANG in path:
                paths.update({f"{split}.{side}": str(p) for side, p in self.parallel_paths(split).items()})
            else:
                paths[split] = path
        return paths

    def read_parallel(self, split: str) -> datasets.Dataset:
        """Line-aligned source and target files (the source alone for predict); a blank line would train or score on
        nothing, so it is an error."""
        key = f"data.{split}_file"
        paths = self.parallel_paths(split)
        sides = {side: read_lines(path, key) for side, path in paths.items()}
        counts = {side: len(lines) for side, lines in sides.items()}
        if len(set(counts.values())) > 1:
            raise DataError(f"{key}: {paths['source_text']} has {counts['source_text']} lines but "
                            f"{paths['target_text']} has {counts['target_text']}; parallel files need one sentence "
                            "per line, line i of one translating line i of the other")
        for side, lines in sides.items():
            blank = first_blank(lines)
            if blank is not None:
                count = sum(not line.strip() for line in lines)
                raise DataError(f"{paths[side]}, line {blank + 1}: empty {side.split('_')[0]} sentence ({count} "
                                "such lines in this file); expected text on every line")
        return datasets.Dataset.from_dict({**sides, "example_id": [str(i) for i in range(counts["source_text"])]})

    def read_table(self, split: str, ds: datasets.Dataset, source: str) -> datasets.Dataset:
        """A hub split or local table, checked and reduced to the contract's text columns."""
        h = self.hparams
        src, tgt = self.source_column, self.target_column
        if "translation" in ds.column_names and src not in ds.column_names and h.source_lang and h.target_lang:
            # wmt-style: one column of {lang: text} dicts
            ds = ds.map(lambda b: {src: [t[h.source_lang] for t in b["translation"]],
                                   tgt: [t[h.target_lang] for t in b["translation"]]}, batched=True)
        key_of = {src: "data.source_column", tgt: "data.target_column", h.id_column: "data.id_column"}
        needed = [src] + ([tgt] if split in TARGETS_REQUIRED else []) + ([h.id_column] if h.id_column else [])
        readers.require_columns(ds, needed, source, key_of)
        readers.require_text(ds, src, source)
        columns = {src: "source_text"}
        if tgt in ds.column_names and split != "predict":
            readers.require_text(ds, tgt, source)
            columns[tgt] = "target_text"
        ids = readers.column(ds, h.id_column).to_pylist() if h.id_column else range(len(ds))
        ds = ds.select_columns(list(columns)).rename_columns(columns)
        return ds.add_column("example_id", [str(i) for i in ids])

    def read_local(self, split: str, path: str) -> datasets.Dataset:
        """Line-aligned parallel files (a path with ``{lang}``, read into the contract's columns) or a table."""
        if LANG in path:
            return self.read_parallel(split)
        if Path(path).suffix not in readers.FORMATS:
            raise DataError(f"data.{split}_file: {path} is not a table ({', '.join(readers.FORMATS)}); for "
                            f"line-aligned parallel text give a path with {LANG}, e.g. train.{LANG}.gz")
        return super().read_local(split, path)

    def read_splits(self) -> datasets.DatasetDict:
        raw, sources = self.read_raw()  # tables are checked after the row limit: a quick run skips the rest
        return datasets.DatasetDict({
            split: ds if LANG in self.files.get(split, "") else self.read_table(split, ds, sources[split])
            for split, ds in raw.items()})

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing once, then loading on every rank

    def tokenize(self, batch: dict) -> dict:
        h = self.hparams
        sources = [h.source_prefix + text for text in batch["source_text"]]
        enc = self.tokenizer(sources, truncation=True, max_length=h.max_source_length, return_token_type_ids=False)
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
               "source_truncated": [bool(e.overflowing) for e in enc.encodings]}
        lengths = [len(ids) for ids in enc["input_ids"]]
        if "target_text" in batch:
            targets = self.tokenizer(text_target=batch["target_text"], truncation=True,
                                     max_length=h.max_target_length)
            out["labels"] = targets["input_ids"]
            out["target_truncated"] = [bool(e.overflowing) for e in targets.encodings]
            lengths = [n + len(ids) for n, ids in zip(lengths, targets["input_ids"])]
        out["length"] = lengths
        return out

    def warn_truncated(self, tokenized: datasets.DatasetDict) -> dict:
        counts = {}
        for split, ds in tokenized.items():
            for side, limit in (("source", "max_source_length"), ("target", "max_target_length")):
                if f"{side}_truncated" in ds.column_names:
                    count = int(sum(readers.column(ds, f"{side}_truncated").to_pylist()))
                    counts[f"{split}.{side}"] = count
                    if count:
                        rank_zero_warn(f"{count} of {len(ds)} {split} {side}s ({100 * count / len(ds):.1f}%) were "
                                       f"truncated to data.{limit}={self.hparams[limit]} tokens.")
        return counts

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata."""
        tokenized = datasets.DatasetDict({
            split: ds.map(self.tokenize, batched=True, desc=f"Tokenizing {split}",
                          new_fingerprint=f"{fingerprint}-{split}")
            for split, ds in self.read_splits().items()})
        truncated = self.warn_truncated(tokenized)
        tokenized = datasets.DatasetDict({
            split: ds.remove_columns([c for c in ds.column_names if c.endswith("_truncated")])
            for split, ds in tokenized.items()})
        return tokenized, dict(truncated=truncated)

    def summary(self, meta: dict) -> str:
        return f"Tokenized {meta['sizes']} pairs"

    def setup(self, stage: str | None = None) -> None:
        self.meta = self.load_splits(stage)

    # ----------------------------------------------------------------------------------------------------------- #

    def collator(self) -> Seq2SeqCollator:
        return Seq2SeqCollator(self.tokenizer, self.hparams.pad_to_multiple_of)
