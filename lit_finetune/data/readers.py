"""Read a dataset's splits from local files or the Hugging Face hub, checking what `datasets` would accept silently."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Literal

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from lit_finetune.errors import ConfigError, DataError

# Builder and keyword arguments per file suffix. TSV files (GLUE-style) are unquoted, so quotes are plain text.
FORMATS = {
    ".csv": ("csv", dict(keep_default_na=False)),
    ".tsv": ("csv", dict(delimiter="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
TEXT_FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".txt")
TxtDocuments = Literal["line", "blank_line", "file"]


def split_documents(text: str, documents: TxtDocuments) -> list[str]:
    """A .txt file's documents: one per line, per blank-line-separated paragraph, or the whole file."""
    if documents == "file":
        parts = [text]
    elif documents == "blank_line":
        parts = re.split(r"\n\s*\n", text)
    else:
        parts = text.splitlines()
    return [part.strip() for part in parts if part.strip()]


def check_utf8(path: Path) -> None:
    """Fail with the byte offset and line of the first byte that is not UTF-8 (pandas would only say 'codec error')."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}: not valid UTF-8 at byte offset {err.start} (line {line}): "
                        f"{raw[err.start:err.start + 4]!r}; expected UTF-8 text (re-encode the file, e.g. "
                        f"`iconv -f latin1 -t utf-8`)") from None


def read_file(path: str | Path, key: str, txt_documents: TxtDocuments = "line",
              text_column: str = "text") -> datasets.Dataset:
    """One split from a local csv / tsv / json / jsonl / parquet file, or a .txt file whose documents (split by
    `txt_documents`) become the rows of `text_column`; `key` is the config key that named it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: file {path} does not exist")
    if path.suffix not in FORMATS and path.suffix != ".txt":
        raise DataError(f"{key}: {path} has suffix {path.suffix!r}; expected one of {', '.join(FORMATS)}, .txt")
    if path.suffix in TEXT_FORMATS:
        check_utf8(path)
    if path.suffix == ".txt":
        return datasets.Dataset.from_dict({text_column: split_documents(path.read_text("utf-8"), txt_documents)})
    builder, kwargs = FORMATS[path.suffix]
    try:
        return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as err:  # datasets/pandas/arrow parse errors: add the file name, keep the cause
        raise DataError(f"{key}: could not parse {path} as {path.suffix[1:]}: {err}") from err


def read_conll(path: str | Path, key: str, token_column: int = 0, tag_column: int = -1) -> datasets.Dataset:
    """Sentences of a CoNLL-style column file (one token per line, whitespace-separated columns, a blank line between
    sentences, ``-DOCSTART-`` lines skipped) as rows of ``tokens``, ``tags`` and ``line`` (where the sentence starts,
    for error messages). Ours, not `datasets`' conll builder, which pads or cuts a line with the wrong number of
    columns without a word."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: file {path} does not exist")
    check_utf8(path)
    rows = {"tokens": [], "tags": [], "line": []}
    tokens, tags, width, width_line = [], [], None, 0

    def end_sentence():
        if tokens:
            rows["tokens"].append(list(tokens))
            rows["tags"].append(list(tags))
            tokens.clear()
            tags.clear()

    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                end_sentence()
                continue
            if width is None:
                width, width_line = len(fields), number
                for name, index in (("conll_token_column", token_column), ("conll_tag_column", tag_column)):
                    if not -width <= index < width:
                        raise ConfigError(f"data.{name}: column {index} does not exist in {path}, whose lines have "
                                          f"{width} columns (line {number})")
            elif len(fields) != width:
                raise DataError(f"{path}, line {number}: {len(fields)} columns; expected {width} like line "
                                f"{width_line} (token, ..., tag separated by whitespace): {line.rstrip()!r}")
            if not tokens:
                rows["line"].append(number)
            tokens.append(fields[token_column])
            tags.append(fields[tag_column])
    end_sentence()
    return datasets.Dataset.from_dict(rows, features=datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")), "tags": datasets.Sequence(datasets.Value("string")),
        "line": datasets.Value("int64")}))


def read_hub(name: str, config: str | None) -> datasets.DatasetDict:
    """All splits of a hub dataset (or a dataset script/folder); offline users get a hint to use local files."""
    try:
        return datasets.load_dataset(name, config)
    except Exception as err:
        raise ConfigError(f"data.dataset_name: could not load {name!r} (config {config!r}): {err}. Offline, "
                          "give local files instead: --data.train_file / --data.validation_file / "
                          "--data.test_file (csv, tsv, json, jsonl, parquet)") from err


def column(ds: datasets.Dataset, name: str):
    """A column as an Arrow array, in the dataset's row order (``ds.data`` ignores a select/shuffle index)."""
    return ds.with_format("arrow")[name]


def row_location(path: str, index: int) -> str:
    """Human-readable place of a data row; CSV/TSV line numbers count the header line."""
    if Path(path).suffix in (".csv", ".tsv"):
        return f"{path}, row {index + 1} (line {index + 2})"
    if Path(path).suffix == ".jsonl":
        return f"{path}, row {index + 1} (line {index + 1})"
    return f"{path}, row {index + 1}"


def require_columns(split: datasets.Dataset, columns: list[str], source: str, key_of: dict[str, str]) -> None:
    """Every named column exists; otherwise list the ones that do."""
    for name in columns:
        if name not in split.column_names:
            raise DataError(f"{source}: no column {name!r} (set by {key_of[name]}); the columns are "
                            f"{split.column_names}")


def require_text(split: datasets.Dataset, name: str, source: str) -> None:
    """No null, empty or whitespace-only text: such rows would train on nothing but special tokens."""
    values = column(split, name)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    bad = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(values), ""), True)
    if pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        count = pc.sum(bad).as_py()
        raise DataError(f"{row_location(source, first)}: column {name!r} is empty or null ({count} such rows in "
                        f"this split); expected non-empty text")
