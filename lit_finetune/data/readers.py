"""Read a dataset's splits from local files or the Hugging Face hub, checking what `datasets` would accept silently."""

from __future__ import annotations

import codecs
import csv
import glob
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from lit_finetune import cache
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


def split_documents(lines: Iterable[str], documents: TxtDocuments) -> Iterator[str]:
    """A .txt file's documents, read line by line: one per line, per paragraph (separated by blank or
    whitespace-only lines), or the whole file."""
    if documents == "file":
        text = "".join(lines).strip()
        if text:
            yield text
        return
    paragraph: list[str] = []
    for line in lines:
        if documents == "line":
            if line.strip():
                yield line.strip()
        elif line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).strip()
            paragraph = []
    if paragraph:
        yield "".join(paragraph).strip()


def txt_rows(paths: list[str], documents: TxtDocuments, column: str, signatures=None) -> Iterator[dict]:
    """Rows of `column` from .txt files, one document at a time (never a whole corpus in memory); the generator
    that `datasets` builds a table or a stream from. `signatures` (the files' contents) only key its cache."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for document in split_documents(f, documents):
                yield {column: document}


def natural_order(path: Path) -> list:
    """Sort key reading the digits in a name as numbers: 2_8.txt before 10_7.txt."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def class_folder_files(folder: Path, key: str, classes: list[str] | None) -> dict[str, list[Path]]:
    """The .txt files of each class subfolder (``train/pos/*.txt``, ``train/neg/*.txt``): every subfolder, or the
    `classes` named (in their order), each checked to hold text files."""
    subfolders = [folder / name for name in classes] if classes else \
        sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    missing = [d.name for d in subfolders if not d.is_dir()]
    if missing:
        raise DataError(f"{key}: {folder} has no class folder {missing[0]!r} (data.label_names names the class "
                        f"folders to read); it has {sorted(d.name for d in folder.iterdir() if d.is_dir())}")
    if not subfolders:
        raise DataError(f"{key}: {folder} has no subfolders; expected one folder of .txt files per class, named "
                        "after the class (e.g. pos/ and neg/)")
    files = {d.name: sorted(d.glob("*.txt"), key=natural_order) for d in subfolders}
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise DataError(f"{key}: class folder {folder / empty[0]} has no .txt files; expected one text file per "
                        "example")
    return files


def class_folder_rows(files: dict[str, list[str]], text_column: str, label_column: str,
                      signature: str | None = None) -> Iterator[dict]:
    """Rows of (text, class, file) from class folders, one file at a time, the classes taking turns (file 1 of
    each class, then file 2, ...) so that any first N rows hold every class. `signature` only keys the cache."""
    for turn in itertools.zip_longest(*([(name, path) for path in paths] for name, paths in files.items())):
        for name, path in filter(None, turn):
            data = Path(path).read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not valid UTF-8 at byte offset {err.start}: {data[err.start:err.start + 4]!r}"
                                "; expected UTF-8 text (re-encode it, e.g. `iconv -f latin1 -t utf-8`)") from None
            yield {text_column: text.strip(), label_column: name, "file": f"{name}/{Path(path).name}"}


def read_class_folders(folder: str | Path, key: str, text_column: str = "text", label_column: str = "label",
                       classes: list[str] | None = None) -> datasets.Dataset:
    """A split from a folder of class folders, one example per .txt file (IMDB's ``aclImdb/train/{pos,neg}``):
    the text, its class (the subfolder's name) and its ``file`` (``pos/0_9.txt``, e.g. for data.id_column)."""
    folder = Path(folder).expanduser()
    files = class_folder_files(folder, key, classes)
    features = datasets.Features({text_column: datasets.Value("string"), label_column: datasets.Value("string"),
                                  "file": datasets.Value("string")})
    kwargs = dict(files={name: [str(p) for p in paths] for name, paths in files.items()}, text_column=text_column,
                  label_column=label_column, signature=cache.folder_digest(folder))
    try:
        return datasets.Dataset.from_generator(class_folder_rows, features=features, gen_kwargs=kwargs)
    except Exception as err:  # `datasets` wraps what the generator raised
        cause = err
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def text_features(column: str) -> datasets.Features:
    return datasets.Features({column: datasets.Value("string")})


def expand_files(value: str | list[str], key: str) -> list[Path]:
    """The files a split's setting names: a path, a glob pattern (``data/train-*.txt``, ``**`` for subfolders) or
    a list of either; a pattern's matches in sorted order. All of one format, since one reader reads them."""
    patterns = [value] if isinstance(value, (str, Path)) else list(value)
    if not patterns:
        raise ConfigError(f"{key}: an empty list; expected a file, a glob pattern or a list of them")
    paths: list[Path] = []
    for pattern in map(str, patterns):
        pattern = str(Path(pattern).expanduser())
        if any(c in pattern for c in "*?["):
            matched = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matched:
                raise DataError(f"{key}: the pattern {pattern!r} matches no file")
            paths += matched
        else:
            paths.append(Path(pattern))
    suffixes = sorted({p.suffix for p in paths})
    if len(suffixes) > 1:
        raise DataError(f"{key}: the files mix formats ({', '.join(suffixes)}); expected one format per split")
    return paths


def source_name(value: str | list[str], paths: list[Path]) -> str:
    """How errors name a split's data: its file, or the setting and its file count (rows count across files)."""
    return str(paths[0]) if len(paths) == 1 else f"{value} ({len(paths)} files)"


def check_utf8(path: Path, chunk_bytes: int = 1 << 24) -> None:
    """Fail with the byte offset and line of the first byte that is not UTF-8 (pandas would only say 'codec error');
    read in chunks, so a large corpus is never in memory at once."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0  # bytes and newlines before the chunk
    with path.open("rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            pending = decoder.getstate()[0]  # the start of a character cut by the previous chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                at = offset - len(pending) + err.start
                line = lines - pending.count(b"\n") + (pending + chunk)[:err.start].count(b"\n") + 1
                f.seek(at)
                raise DataError(f"{path}: not valid UTF-8 at byte offset {at} (line {line}): {f.read(4)!r}; "
                                "expected UTF-8 text (re-encode the file, e.g. `iconv -f latin1 -t utf-8`)") from None
            if not chunk:
                return
            lines += chunk.count(b"\n")
            offset += len(chunk)


def check_table(path: Path) -> None:
    """Fail on what pandas reads without a word or reports vaguely, naming the line: an empty or header-only file,
    duplicate column names, a row with more or fewer fields than the header, and a quote that is never closed or
    swallows the lines after it (a stray ``"`` merges rows into one text)."""
    tsv = path.suffix == ".tsv"
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
                            strict=True)
        try:
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataError(f"{path}: the file is empty; expected a header line naming the columns, then rows")
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise DataError(f"{path}, line 1: column {duplicates[0]!r} appears {header.count(duplicates[0])} "
                                "times in the header; expected unique column names")
            rows = 0
            start = reader.line_num + 1  # the line the current record starts on
            for record in reader:
                if record and len(record) != len(header):
                    raise DataError(f"{path}, line {start}: {len(record)} fields; the header (line 1) has "
                                    f"{len(header)}{' (a tab inside a text?)' if tsv else ''}")
                spanned = reader.line_num - start + 1
                if spanned > 1 and any(line.count(",") >= len(header) - 1 >= 1
                                       for field in record for line in field.split("\n")[1:]):
                    raise DataError(f"{path}, line {start}: a quoted field opens here and runs over {spanned} lines "
                                    f"(to line {reader.line_num}), holding what look like rows of their own; an "
                                    "unbalanced quote? Escape a quote inside a field as \"\"")
                rows += bool(record)
                start = reader.line_num + 1
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                raise DataError(f"{path}, line {start}: a quote opened on this line is never closed (the field runs "
                                f"to the end of the file, line {reader.line_num}); escape a quote inside a field as "
                                '""') from None
            opened = f" (in a field quoted since line {start}: an unbalanced quote?)" if start < reader.line_num else ""
            raise DataError(f"{path}, line {reader.line_num}: {err}{opened}") from None
    if not rows:
        raise DataError(f"{path}: the file has a header ({', '.join(header)}) but no rows")


def check_file(path: Path, key: str) -> None:
    """What a local data file must be before any reader sees it: there, of a known format, UTF-8 text where it is
    text, a well-formed table where it is one, and not empty."""
    if not path.is_file():
        raise DataError(f"{key}: file {path} does not exist")
    if path.suffix not in FORMATS and path.suffix != ".txt":
        raise DataError(f"{key}: {path} has suffix {path.suffix!r}; expected one of {', '.join(FORMATS)}, .txt")
    if path.suffix in TEXT_FORMATS:
        check_utf8(path)
    if path.suffix in (".csv", ".tsv"):
        check_table(path)
    elif path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def read_file(path: str | Path, key: str, txt_documents: TxtDocuments = "line",
              text_column: str = "text") -> datasets.Dataset:
    """One split from a local csv / tsv / json / jsonl / parquet file, or a .txt file whose documents (split by
    `txt_documents`) become the rows of `text_column`; `key` is the config key that named it."""
    path = Path(path).expanduser()
    check_file(path, key)
    if path.suffix == ".txt":
        if next(txt_rows([str(path)], txt_documents, text_column), None) is None:  # `datasets` fails on no rows
            return datasets.Dataset.from_dict({text_column: []}, features=text_features(text_column))
        return datasets.Dataset.from_generator(txt_rows, features=text_features(text_column), gen_kwargs=dict(
            paths=[str(path)], documents=txt_documents, column=text_column, signatures=cache.content_digest(path)))
    builder, kwargs = FORMATS[path.suffix]
    try:
        # Read anew every time: `datasets` keys its own cache of a local file on its path and modification time,
        # so a file rewritten within the same second would come back as it was. Our tokenized cache covers content.
        return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data",
                                     download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD, **kwargs)
    except Exception as err:  # datasets/pandas/arrow parse errors: add the file name, keep the cause
        raise DataError(f"{key}: could not parse {path} as {path.suffix[1:]}: {err}") from err


def read_split(value: str | list[str], key: str, read_one) -> tuple[datasets.Dataset, str]:
    """A split from every file its setting names (see expand_files), each read by `read_one(path)`, concatenated
    (memory-mapped tables, not copies); and the name errors give it."""
    paths = expand_files(value, key)
    parts = [read_one(path) for path in paths]
    if len(parts) == 1:
        return parts[0], source_name(value, paths)
    for path, part in zip(paths[1:], parts[1:]):
        if part.features != parts[0].features:
            raise DataError(f"{key}: {path} has columns {dict(part.features)}; {paths[0]} has "
                            f"{dict(parts[0].features)}; expected the same columns in every file of a split")
    return datasets.concatenate_datasets(parts), source_name(value, paths)


def stream_split(value: str | list[str], key: str, txt_documents: TxtDocuments = "line",
                 text_column: str = "text") -> datasets.IterableDataset:
    """A split read as a stream from every file its setting names: nothing is loaded or cached up front, and
    each file is a shard that processes and loader workers divide between them. The files are checked first."""
    paths = expand_files(value, key)
    for path in paths:
        check_file(path, key)
    if paths[0].suffix == ".txt":
        return datasets.IterableDataset.from_generator(txt_rows, features=text_features(text_column), gen_kwargs=dict(
            paths=[str(p) for p in paths], documents=txt_documents, column=text_column))
    builder, kwargs = FORMATS[paths[0].suffix]
    return datasets.load_dataset(builder, data_files={"data": [str(p) for p in paths]}, split="data",
                                 streaming=True, **kwargs)


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


def read_hub(name: str, config: str | None, split: str | None = None, streaming: bool = False):
    """All splits of a hub dataset (or a dataset script/folder), or one split, read whole or as a stream; offline
    users get a hint to use local files."""
    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as err:
        raise ConfigError(f"data.dataset_name: could not load {name!r} (config {config!r}"
                          f"{f', split {split!r}' if split else ''}): {err}. Offline, give local files instead: "
                          "--data.train_file / --data.validation_file / --data.test_file (csv, tsv, json, jsonl, "
                          "parquet)") from err


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
